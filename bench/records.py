"""Call records under load: the bridge in its own process (`ivr-bridge serve`, records on SQLite in a
temporary data directory), 50 concurrent calls from Twilio emulators, a stand-in realtime server in
this process answering every 2.5 s with 2 s of audio, its transcript and the turn events (so each
call writes timeline, transcript and turn rows), all on 127.0.0.1. Three runs:

- off: `BRIDGE_RECORDS=false` (no rows);
- records: rows only (the dialplan does not record audio);
- recordings: rows and the two-channel recording (`defaults.record: true`).

Reported: CPU seconds per call-second and what records / recordings add to it; rows written per
second (`ivr_bridge_records_written_total`); the writer's own latency per row, from the call handing it
over (enqueue, `time.monotonic()`) to the commit of its transaction, p50 / p99 over every row of the
run (`ivr_bridge_records_commit_latency_seconds`, interpolated inside its fine buckets as Prometheus'
`histogram_quantile` does), and the transaction time per batch; recording disk use per call-minute.
Then, in this process, the audio-path cost of handing a record to the writer: a `CallRecorder`'s
`event`, `transcript`, `turn` and a recording frame, timed one by one (`perf_counter_ns`, p50 / p99).

The stand-in realtime server runs on its own thread and event loop: with 50 emulators on the bench's
loop, a shared loop answered the bridge's keepalive pings too late (the bridge then dropped the
upstream, 1011) and the bench could not hold 50 calls.

Run: `.venv/bin/python -m bench records` (about 4 minutes; writes bench/results/records.md);
`BENCH_RECORDS_CALLS=5 BENCH_RECORDS_SECONDS=10` for a quick check (results then go to stdout only).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

from bench._proc import stop_bridge
from tests.helpers.realtime_standin import StandinRealtime, StandinSession
from tests.helpers.servers import bind_ephemeral
from tests.helpers.signals import pcm, tone, ulaw
from tests.helpers.twilio_emulator import TwilioEmulator

RESULTS = Path(__file__).parent / "results" / "records.md"
CALLS = int(os.environ.get("BENCH_RECORDS_CALLS", "50"))  # 50 unless the machine cannot carry it
SECONDS = float(os.environ.get("BENCH_RECORDS_SECONDS", "20"))
FULL_SIZE = CALLS == 50 and SECONDS == 20.0  # only a full-size run replaces bench/results/records.md
T = TypeVar("T")
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


def buckets_of(text: str, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a histogram in Prometheus text, by bound."""
    return sorted(
        (float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2)))
        for m in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} ([0-9.e+-]+)$', text, re.M)
    )


def histogram_quantile(
    after: list[tuple[float, float]], q: float, before: list[tuple[float, float]] | None = None
) -> float:
    """The q-quantile (seconds) of the observations between two scrapes, interpolated linearly inside
    the bucket that holds it (Prometheus' `histogram_quantile`); nan without observations."""
    prior = dict(before or [])
    buckets = [(bound, count - prior.get(bound, 0.0)) for bound, count in after]
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * ((rank - below) / max(count - below, 1e-12))
        lower, below = bound, count
    return float("inf")


class LoopThread:
    """An event loop on its own thread (the stand-in server lives there, away from the emulators)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="standin-loop", daemon=True)
        self._thread.start()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


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
    side = LoopThread()
    standin = StandinRealtime()
    await side.run(standin.start())
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
            session = await side.run(standin.next_session(timeout=20))
            await side.run(asyncio.wait_for(session.updated.wait(), 20))
            opened.append((twilio, session))
        before = await bridge.metrics()
        cpu0, t0 = bridge.cpu_s(), time.monotonic()
        await asyncio.gather(
            *(asyncio.gather(t.stream_audio(caller), side.run(talk(s, reply, SECONDS))) for t, s in opened)
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
        await side.run(standin.stop())
        side.stop()
    name = "ivr_bridge_records_written_total"
    written = counter_sum(after, name) - counter_sum(before, name)
    rows = buckets_of(after, "ivr_bridge_records_commit_latency_seconds")
    batches = buckets_of(after, "ivr_bridge_records_write_seconds")
    return {
        "cpu_s_per_call_s": cpu / (CALLS * wall),
        "wall_s": wall,
        "rows_per_s": written / wall,
        "rows_per_call_s": written / (CALLS * wall),
        # over every row of the run (the call rows written while the calls were being placed included)
        "commit_p50_ms": 1000 * histogram_quantile(rows, 0.5),
        "commit_p99_ms": 1000 * histogram_quantile(rows, 0.99),
        "commit_rows": rows[-1][1] if rows else 0.0,
        "batch_p50_ms": 1000 * histogram_quantile(batches, 0.5),
        "batch_p99_ms": 1000 * histogram_quantile(batches, 0.99),
        "batches": counter_sum(after, "ivr_bridge_records_write_seconds_count"),
        "lost": counter_sum(after, "ivr_bridge_records_lost_total"),
        "disk_kb_per_call_min": disk / 1024 / (recorded_s / 60.0) if recorded_s else 0.0,
    }


async def handoff_cost(n: int = 20_000) -> dict[str, tuple[float, float, float]]:
    """What the call's side pays to hand a record to the writer, in this process (SQLite in a temporary
    directory, the writer task on this loop but never running while the timed loop runs):
    {what: (p50 µs, p99 µs, mean µs)}. Each hand-off is timed alone with `perf_counter_ns` (its own
    overhead, ~0.1 µs, is included)."""
    from bridge.records import Records, TurnStages
    from bridge.settings import Settings

    root = Path(tempfile.mkdtemp(prefix="bench-records-handoff-"))
    records = Records(Settings(data_dir=root, dialplans=root))
    await records.start()
    frame = bytes(320)  # one 20 ms PCM16 8 kHz frame
    stages = TurnStages(
        caller_stopped_ms=100, upstream_stopped_ms=150, first_delta_ms=400, first_played_ms=450
    )
    clock = time.perf_counter_ns
    results: dict[str, tuple[float, float, float]] = {}
    try:
        rec = records.start_call(leg="twilio", call_id="CAbench", from_number="+15550001", to_number="+1555")
        recording = rec.recording
        assert recording is not None
        cases = {
            "event (timeline row)": lambda i: rec.event("barge_in", i, source="local_vad", heard_ms=i),
            "transcript line": lambda i: rec.transcript("caller", i, "what are your opening hours"),
            "turn latencies": lambda i: rec.turn(stages, i),
            "recording frame (caller)": lambda i: recording.caller(frame, i * 20),
            "recording frame (bot)": lambda i: recording.bot(frame, i * 20),
        }
        for what, hand in cases.items():
            times = []
            for i in range(n):
                t = clock()
                hand(i)
                times.append(clock() - t)
            await records.flush()  # let the writer store them before the next kind (the queue holds 20 000)
            times.sort()
            results[what] = (
                times[len(times) // 2] / 1000,
                times[int(len(times) * 0.99)] / 1000,
                statistics.fmean(times) / 1000,
            )
        rec.end("hangup", n * 20)
        await records.flush()
    finally:
        await records.stop()
        shutil.rmtree(root, ignore_errors=True)
    return results


def main() -> None:
    results = {}
    for mode in ("off", "records", "recordings"):
        results[mode] = asyncio.run(run(mode))
        print(mode, results[mode], flush=True)
    handoff = asyncio.run(handoff_cost())
    for what, (p50, p99, mean) in handoff.items():
        print(f"hand-off {what}: p50 {p50:.2f} µs, p99 {p99:.2f} µs, mean {mean:.2f} µs", flush=True)
    off = results["off"]["cpu_s_per_call_s"]
    lines = [
        "# Call records under load (bridge in its own process, SQLite, Twilio emulators + stand-in upstream)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.2f} (other work shared the machine). "
        "Command: `.venv/bin/python -m bench records`.",
        "",
        f"Load: {CALLS} concurrent Twilio calls for {SECONDS:.0f} s each; caller audio all the time; "
        "every 2.5 s the stand-in model (on its own thread and event loop) sends `speech_stopped`, the "
        "caller's transcript, 2 s of audio (pcm24k) and its transcript.",
        "",
        "Commit latency: per row, from the call handing it to the writer (`time.monotonic()` at enqueue) to "
        "the commit of the transaction that stored it (queue wait, batching, retries and the transaction), "
        "p50 / p99 over every row of the run, interpolated inside the histogram's buckets "
        "(`ivr_bridge_records_commit_latency_seconds`, 0.5 ms to 30 s). Batch: one transaction's time "
        "(`ivr_bridge_records_write_seconds`, same interpolation, coarser buckets).",
        "",
        "| run | CPU s per call-second | added vs off | rows written / s | rows / call-second "
        "| commit latency per row p50 / p99 (ms) | rows | transaction per batch p50 / p99 (ms) | batches "
        "| rows lost | recording KB per call-minute |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, r in results.items():
        added = r["cpu_s_per_call_s"] - off
        lines.append(
            f"| {mode} | {r['cpu_s_per_call_s']:.4f} | {'-' if mode == 'off' else f'{added:+.4f}'} | "
            f"{r['rows_per_s']:.0f} | {r['rows_per_call_s']:.2f} | "
            f"{r['commit_p50_ms']:.1f} / {r['commit_p99_ms']:.1f} | {r['commit_rows']:.0f} | "
            f"{r['batch_p50_ms']:.1f} / {r['batch_p99_ms']:.1f} | "
            f"{r['batches']:.0f} | {r['lost']:.0f} | {r['disk_kb_per_call_min']:.0f} |"
        )
    lines += [
        "",
        "## The audio path's cost of handing a record to the writer",
        "",
        "In the bench process: one `CallRecorder` (SQLite), each hand-off timed alone (`perf_counter_ns`, "
        "whose own ~0.1 µs is included), 20 000 of each; the writer stores them between kinds.",
        "",
        "| hand-off | p50 (µs) | p99 (µs) | mean (µs) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {what} | {p50:.2f} | {p99:.2f} | {mean:.2f} |" for what, (p50, p99, mean) in handoff.items()
    ]
    lines += [
        "",
        "Recording disk use is the 2-channel 8 kHz PCM16 WAV: 32 KB per second, about 1875 KB per "
        "call-minute "
        "(plus a header; `.wav.enc` adds 16 bytes of tag per ~1 s chunk). CPU differences of a few "
        "thousandths are within the noise of a shared 2-core machine.",
        "",
    ]
    if not FULL_SIZE:
        print("\n".join(lines))
        print(f"(not written to {RESULTS}: a reduced run, {CALLS} calls of {SECONDS:g} s)")
        return
    RESULTS.write_text("\n".join(lines))
    print("wrote", RESULTS)
