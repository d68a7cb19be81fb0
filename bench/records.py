"""Call records under load: the bridge in its own process (`ivr-bridge serve`, records on SQLite in a
temporary data directory), 50 concurrent calls from Twilio emulators, a stand-in realtime server in
this process answering every 2.5 s with 2 s of audio, its transcript and the turn events (so each
call writes timeline, transcript and turn rows), all on 127.0.0.1. Three runs:

- off: `BRIDGE_RECORDS=false` (no rows);
- records: rows only (the dialplan does not record audio);
- recordings: rows and the two-channel recording (`defaults.record: true`).

Reported: CPU seconds per call-second and what records / recordings add to it; rows written per
second (`ivr_bridge_records_written_total`); database write latency per batch, p50 / p99 from the
`ivr_bridge_records_write_seconds` histogram (the bucket bound at that rank); recording disk use per
call-minute. Run: `.venv/bin/python -m bench records` (about 3 minutes; writes bench/results/records.md).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import httpx
import psutil

from bench._proc import stop_bridge
from tests.helpers.realtime_standin import StandinRealtime, StandinSession
from tests.helpers.servers import bind_ephemeral
from tests.helpers.signals import pcm, tone, ulaw
from tests.helpers.twilio_emulator import TwilioEmulator

RESULTS = Path(__file__).parent / "results" / "records.md"
CALLS = int(os.environ.get("BENCH_RECORDS_CALLS", "50"))  # 50 unless the machine cannot carry it
SECONDS = 20.0
PLAN = """
defaults: {{record: {record}}}
numbers: {{default: main}}
flows:
  main:
    - agent: {{provider: openai, instructions: "You are a helpful phone assistant."}}
"""


class Bridge:
    def __init__(self, realtime_url: str, mode: str) -> None:
        sock = bind_ephemeral()
        self.port = sock.getsockname()[1]
        sock.close()
        self.root = Path(tempfile.mkdtemp(prefix=f"bench-records-{mode}-"))
        (self.root / "plans").mkdir()
        (self.root / "plans" / "main.yaml").write_text(PLAN.format(record=str(mode == "recordings").lower()))
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env.update(
            BRIDGE_DIALPLANS=str(self.root / "plans"),
            BRIDGE_DATA_DIR=str(self.root / "data"),
            BRIDGE_REALTIME_URL=realtime_url,
            BRIDGE_RECORDS="false" if mode == "off" else "true",
            BRIDGE_LOG_LEVEL="WARNING",
            BRIDGE_RATE_PER_SOURCE_PER_S="100000",
            BRIDGE_RATE_BURST="100000",
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve", "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        self.ps = psutil.Process(self.proc.pid)

    async def wait_ready(self) -> None:
        async with httpx.AsyncClient() as http:
            for _ in range(600):
                try:
                    if (await http.get(f"http://127.0.0.1:{self.port}/healthz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError("bridge did not start")

    async def metrics(self) -> str:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"http://127.0.0.1:{self.port}/metrics")).text

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def recordings(self) -> tuple[int, float]:
        """(bytes on disk, seconds of recorded calls) of the finished recordings."""
        size, seconds = 0, 0.0
        for path in (self.root / "data" / "recordings").rglob("*.wav"):
            size += path.stat().st_size
            with wave.open(str(path)) as w:
                seconds += w.getnframes() / w.getframerate()
        return size, seconds

    def stop(self) -> None:
        stop_bridge(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)


def counter_sum(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


def histogram_quantile(text: str, name: str, q: float) -> float:
    """The upper bound of the bucket holding the q-quantile (seconds); nan without observations."""
    buckets = sorted(
        (float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2)))
        for m in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} ([0-9.e+-]+)$', text, re.M)
    )
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    total = buckets[-1][1]
    for bound, count in buckets:
        if count >= q * total:
            return bound
    return float("inf")


async def talk(session: StandinSession, reply: bytes, seconds: float) -> None:
    for n in range(int(seconds // 5)):
        await asyncio.sleep(2.5)
        await session.send(
            {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 0, "item_id": f"u{n}"}
        )
        await session.send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": f"u{n}",
                "content_index": 0,
                "transcript": "I would like to know your opening hours please",
            }
        )
        task = asyncio.create_task(session.reply_audio(reply, realtime=1.0))
        await asyncio.sleep(0.05)
        rid = session.active_response
        if rid is not None:  # the transcript of the reply, as the real API sends it alongside the audio
            iid = next(reversed(session.item_audio_ms), "")
            loc = {"response_id": rid, "item_id": iid, "output_index": 0, "content_index": 0}
            text = "We are open Monday to Friday, nine to five."
            await session.send({"type": "response.output_audio_transcript.delta", **loc, "delta": text})
            await session.send({"type": "response.output_audio_transcript.done", **loc, "transcript": text})
        await task


async def run(mode: str) -> dict[str, float]:
    standin = StandinRealtime()
    await standin.start()
    bridge = Bridge(standin.url, mode)
    await bridge.wait_ready()
    await asyncio.sleep(1.0)
    caller = ulaw(tone(300, SECONDS, 8000, dbfs=-30))
    reply = pcm(tone(440, 2.0, 24000))
    try:
        opened = []
        for n in range(CALLS):
            twilio = TwilioEmulator(
                f"ws://127.0.0.1:{bridge.port}/twilio/media",
                stream_sid=f"MZ{n:032d}",
                call_sid=f"CA{mode}{n:030d}",
            )
            await twilio.open()
            await twilio.start()
            session = await standin.next_session(timeout=20)
            await asyncio.wait_for(session.updated.wait(), 20)
            opened.append((twilio, session))
        before = await bridge.metrics()
        cpu0, t0 = bridge.cpu_s(), time.monotonic()
        await asyncio.gather(
            *(asyncio.gather(t.stream_audio(caller), talk(s, reply, SECONDS)) for t, s in opened)
        )
        cpu, wall = bridge.cpu_s() - cpu0, time.monotonic() - t0
        for twilio, _ in opened:
            await twilio.stop()
            await twilio.close()
        await asyncio.sleep(3.0)  # the calls end, their recordings are finalized, the queue drains
        after = await bridge.metrics()
        disk, recorded_s = bridge.recordings()
    finally:
        bridge.stop()
        await standin.stop()
    name = "ivr_bridge_records_written_total"
    written = counter_sum(after, name) - counter_sum(before, name)
    return {
        "cpu_s_per_call_s": cpu / (CALLS * wall),
        "wall_s": wall,
        "rows_per_s": written / wall,
        "rows_per_call_s": written / (CALLS * wall),
        "write_p50_ms": 1000 * histogram_quantile(after, "ivr_bridge_records_write_seconds", 0.5),
        "write_p99_ms": 1000 * histogram_quantile(after, "ivr_bridge_records_write_seconds", 0.99),
        "batches": counter_sum(after, "ivr_bridge_records_write_seconds_count"),
        "lost": counter_sum(after, "ivr_bridge_records_lost_total"),
        "disk_kb_per_call_min": disk / 1024 / (recorded_s / 60.0) if recorded_s else 0.0,
    }


def main() -> None:
    results = {}
    for mode in ("off", "records", "recordings"):
        results[mode] = asyncio.run(run(mode))
        print(mode, results[mode], flush=True)
    off = results["off"]["cpu_s_per_call_s"]
    lines = [
        "# Call records under load (bridge in its own process, SQLite, Twilio emulators + stand-in upstream)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.2f} (other work shared the machine). "
        "Command: `.venv/bin/python -m bench records`.",
        "",
        f"Load: {CALLS} concurrent Twilio calls for {SECONDS:.0f} s each; caller audio all the time; "
        "every 2.5 s the stand-in model sends `speech_stopped`, the caller's transcript, 2 s of audio "
        "(pcm24k) and its transcript.",
        "",
        "| run | CPU s per call-second | added vs off | rows written / s | rows / call-second "
        "| DB write p50 / p99 per batch (ms, bucket bound) | batches | rows lost "
        "| recording KB per call-minute |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, r in results.items():
        added = r["cpu_s_per_call_s"] - off
        lines.append(
            f"| {mode} | {r['cpu_s_per_call_s']:.4f} | {'-' if mode == 'off' else f'{added:+.4f}'} | "
            f"{r['rows_per_s']:.0f} | {r['rows_per_call_s']:.2f} | "
            f"{r['write_p50_ms']:.0f} / {r['write_p99_ms']:.0f} | "
            f"{r['batches']:.0f} | {r['lost']:.0f} | {r['disk_kb_per_call_min']:.0f} |"
        )
    lines += [
        "",
        "Recording disk use is the 2-channel 8 kHz PCM16 WAV: 32 KB per second, about 1875 KB per "
        "call-minute "
        "(plus a header; `.wav.enc` adds 16 bytes of tag per ~1 s chunk). CPU differences of a few "
        "thousandths are within the noise of a shared 2-core machine.",
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print("wrote", RESULTS)
