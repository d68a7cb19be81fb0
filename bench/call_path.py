"""Call-path figures: the bridge in its own process (`ivr-bridge serve`), driven by Twilio
emulators and a stand-in realtime server in this process, all on 127.0.0.1.

- bridge-added latency: caller frame sent -> its `input_audio_buffer.append` received, and
  first model audio delta sent -> first Twilio `media` received (p50/p99);
- barge-in: true speech onset (real prompt) -> Twilio `clear` received;
- truncate error: |audio_end_ms - audio the emulator really played|, plain and paused-model;
- CPU seconds per call-second and RSS per call with 50 concurrent calls, pcm24k and pcmu.

Run: `.venv/bin/python -m bench call_path` (writes bench/results/call_path.md).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from bench._proc import stop_bridge
from tests.helpers.realtime_standin import AGENT_ONLY, StandinRealtime, StandinSession
from tests.helpers.servers import bind_ephemeral
from tests.helpers.signals import onset_s, pcm, speech_8k, tone, ulaw
from tests.helpers.twilio_emulator import TwilioEmulator

RESULTS = Path(__file__).parent / "results" / "call_path.md"

SILENCE = b"\xff" * 160
# Real human speech the caller barges in with (Debian asterisk-core-sounds-en-wav).
PROMPTS = ("hello-world", "agent-pass", "auth-thankyou", "call-waiting", "cancelled")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


class BridgeProcess:
    def __init__(self, realtime_url: str, fmt: str) -> None:
        sock = bind_ephemeral()
        self.port = sock.getsockname()[1]
        sock.close()
        plan_dir = Path(tempfile.mkdtemp(prefix="bench-dialplan-"))
        (plan_dir / "main.yaml").write_text(AGENT_ONLY)
        env = dict(os.environ)
        env.update(
            BRIDGE_DIALPLANS=str(plan_dir),
            BRIDGE_REALTIME_URL=realtime_url,
            BRIDGE_UPSTREAM_FORMAT=fmt,
            BRIDGE_LOG_LEVEL="WARNING",
            # Every emulated call comes from 127.0.0.1: lift the per-source limit, not under test here.
            BRIDGE_RATE_PER_SOURCE_PER_S="100000",
            BRIDGE_RATE_BURST="100000",
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve", "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        self.ps = psutil.Process(self.proc.pid)

    @property
    def media_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/twilio/media"

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

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def stop(self) -> None:
        stop_bridge(self.proc)


async def open_call(
    bridge: BridgeProcess, standin: StandinRealtime, n: int
) -> tuple[TwilioEmulator, StandinSession]:
    twilio = TwilioEmulator(bridge.media_url, stream_sid=f"MZ{n:032d}", call_sid=f"CA{n:032d}")
    await twilio.open()
    await twilio.start()
    session = await standin.next_session(timeout=20)
    await asyncio.wait_for(session.updated.wait(), 20)
    return twilio, session


def item_ms(twilio: TwilioEmulator, before: float) -> int:
    return 20 * sum(1 for p in twilio.played if p.at < before and p.payload != SILENCE)


def _append_delays(session: StandinSession, base: int, sent: list[float]) -> list[float]:
    """Each caller frame's send time -> the arrival of the first append whose running byte total
    covers it (the bridge batches caller audio into appends of up to APPEND_MS)."""
    per_frame = (len(session.appended) - base) / len(sent)
    delays = []
    for k, s in enumerate(sent):
        covered = base + (k + 1) * per_frame
        arrival = next(t for t, total in session.append_times if total >= covered - 1e-6)
        delays.append(arrival - s)
    return delays


async def _turn(
    bridge: BridgeProcess, standin: StandinRealtime, n: int, reply: bytes, out: dict[str, list[float]]
) -> None:
    twilio, session = await open_call(bridge, standin, n)
    # Upstream latency: time each caller frame is sent vs. its append arriving.
    # The bridge batches caller audio into appends of APPEND_MS (bridge/call/upstream.py), so a
    # frame's arrival is that of the first append whose running byte total covers it.
    frame = ulaw(tone(1000, 0.02, 8000))
    base = len(session.appended)
    sent: list[float] = []
    for _ in range(50):
        sent.append(time.monotonic())
        await twilio.send_media(frame)
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    out["up"] += _append_delays(session, base, sent)
    # Downstream latency, then barge-in and truncate accuracy (odd turns: the model pauses 1 s).
    paused = n % 2 == 1
    media_before = len(twilio.messages("media"))
    task = asyncio.create_task(
        session.reply_audio(reply, realtime=1.0, pause_after_ms=1000 if paused else None, pause_s=1.0)
    )
    await twilio.wait_for(lambda: len(twilio.messages("media")) > media_before, timeout=5)
    assert session.first_delta_at is not None
    out["down"].append(twilio.messages("media")[media_before][0] - session.first_delta_at)
    target = 1500 if paused else 800  # ms heard before the caller talks (paused: after the pause)
    await twilio.wait_for(lambda: item_ms(twilio, time.monotonic()) >= target, timeout=10)
    speech = speech_8k(PROMPTS[n % len(PROMPTS)])
    start = time.monotonic()
    await twilio.stream_audio(ulaw(speech), start_at=start)
    await twilio.wait_for(lambda: bool(session.truncates), timeout=5)
    await task
    clear_at = twilio.clears[0]
    out["barge"].append(clear_at - (start + onset_s(speech)))
    err = abs(session.truncates[0]["audio_end_ms"] - item_ms(twilio, clear_at))
    out["paused_err" if paused else "trunc_err"].append(err)
    await asyncio.sleep(1.0)
    # The same while the caller talks (real speech): the bridge then sends every frame at once
    # (its detector hears a possible onset), from ~100 ms after the onset on.
    talk = ulaw(speech)
    first = int(onset_s(speech) * 50) + 5
    base = len(session.appended)
    sent = []
    for i in range(0, len(talk) - 159, 160):
        sent.append(time.monotonic())
        await twilio.send_media(talk[i : i + 160])
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    out["up_talk"] += _append_delays(session, base, sent)[first:]
    await twilio.stop()
    await twilio.close()


async def latency_run(fmt: str, turns: int = 10) -> dict[str, float]:
    standin = StandinRealtime()
    await standin.start()
    bridge = BridgeProcess(standin.url, fmt)
    await bridge.wait_ready()
    kinds = ("up", "up_talk", "down", "barge", "trunc_err", "paused_err")
    out: dict[str, list[float]] = {k: [] for k in kinds}
    reply = pcm(tone(440, 3.0, 24000)) if fmt == "pcm24k" else ulaw(tone(440, 3.0, 8000))
    try:
        for n in range(turns):
            await _turn(bridge, standin, n, reply, out)
    finally:
        bridge.stop()
        await standin.stop()
    return {
        "up_p50_ms": pct(out["up"], 50) * 1000,
        "up_p99_ms": pct(out["up"], 99) * 1000,
        "up_talk_p50_ms": pct(out["up_talk"], 50) * 1000,
        "up_talk_p99_ms": pct(out["up_talk"], 99) * 1000,
        "down_p50_ms": pct(out["down"], 50) * 1000,
        "down_p99_ms": pct(out["down"], 99) * 1000,
        "barge_p50_ms": pct(out["barge"], 50) * 1000,
        "barge_max_ms": max(out["barge"]) * 1000,
        "trunc_err_max_ms": max(out["trunc_err"]),
        "paused_trunc_err_max_ms": max(out["paused_err"]),
        "turns": turns,
    }


async def load_run(fmt: str, calls: int = 50, seconds: float = 20.0) -> dict[str, float]:
    standin = StandinRealtime()
    await standin.start()
    bridge = BridgeProcess(standin.url, fmt)
    await bridge.wait_ready()
    await asyncio.sleep(1.0)
    rss_idle = bridge.rss_mb()
    caller = ulaw(tone(300, seconds, 8000, dbfs=-30))
    reply = pcm(tone(440, 2.0, 24000)) if fmt == "pcm24k" else ulaw(tone(440, 2.0, 8000))
    try:
        opened = [await open_call(bridge, standin, n) for n in range(calls)]

        async def one(twilio: TwilioEmulator, session: StandinSession) -> None:
            async def talk() -> None:
                for _ in range(int(seconds // 5)):
                    await asyncio.sleep(2.5)
                    await session.reply_audio(reply, realtime=1.0)

            await asyncio.gather(twilio.stream_audio(caller), talk())

        cpu0, t0 = bridge.cpu_s(), time.monotonic()
        rss_peak = 0.0
        run = asyncio.gather(*(one(t, s) for t, s in opened))
        while not run.done():
            rss_peak = max(rss_peak, bridge.rss_mb())
            await asyncio.sleep(0.5)
        await run
        cpu, wall = bridge.cpu_s() - cpu0, time.monotonic() - t0
        for twilio, _ in opened:
            await twilio.stop()
            await twilio.close()
    finally:
        bridge.stop()
        await standin.stop()
    return {
        "calls": calls,
        "wall_s": wall,
        "cpu_s_per_call_s": cpu / (calls * wall),
        "rss_idle_mb": rss_idle,
        "rss_per_call_mb": (rss_peak - rss_idle) / calls,
    }


def main() -> None:
    rows = []
    for fmt in ("pcm24k", "pcmu"):
        lat = asyncio.run(latency_run(fmt))
        load = asyncio.run(load_run(fmt))
        rows.append((fmt, lat, load))
        print(fmt, lat, load, flush=True)
    lines = [
        "# Call path (bridge in its own process, Twilio emulator + stand-in realtime server, loopback)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.2f}. Command: `.venv/bin/python -m bench call_path`.",
        "",
        "| upstream format | caller frame -> append p50 / p99 (ms): quiet (tone) / talking "
        "| first model audio -> Twilio media p50 / p99 (ms) | speech onset -> clear p50 / max (ms) "
        "| truncate error max (ms) | paused-model truncate error max (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for fmt, lat, _ in rows:
        lines.append(
            f"| {fmt} | {lat['up_p50_ms']:.2f} / {lat['up_p99_ms']:.2f}; {lat['up_talk_p50_ms']:.2f} / "
            f"{lat['up_talk_p99_ms']:.2f} | {lat['down_p50_ms']:.2f} / "
            f"{lat['down_p99_ms']:.2f} | {lat['barge_p50_ms']:.0f} / {lat['barge_max_ms']:.0f} | "
            f"{lat['trunc_err_max_ms']:.0f} | {lat['paused_trunc_err_max_ms']:.0f} |"
        )
    lines += [
        "",
        "| upstream format | concurrent calls | CPU s per call-second | RSS idle (MB) | RSS per call (MB) |",
        "|---|---|---|---|---|",
    ]
    for fmt, _, load in rows:
        lines.append(
            f"| {fmt} | {load['calls']} | {load['cpu_s_per_call_s']:.4f} | {load['rss_idle_mb']:.0f} | "
            f"{load['rss_per_call_mb']:.2f} |"
        )
    lines += [
        "",
        "Barge-in runs use the local Silero VAD with the default settings (threshold 0.5, "
        f"min_speech_ms 64) on real prompts ({', '.join(PROMPTS)}, asterisk-core-sounds-en); "
        "onset is the first 10 ms window above -35 dBFS. Truncate error compares audio_end_ms "
        "with the frames the Twilio emulator had started playing when the clear arrived. "
        "Caller frame -> append: quiet = a 1 kHz tone (no speech to the detector), sent two frames "
        "per append (APPEND_MS 40: half the messages), so every other frame waits up to 20 ms; "
        "talking = the same prompts from 100 ms after their onset, sent frame by frame (the "
        "server's VAD decides barge-ins and the end of the turn on them).",
        "",
    ]
    RESULTS.write_text("\n".join(lines))
    print("wrote", RESULTS)
