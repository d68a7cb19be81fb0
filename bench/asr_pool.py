"""Speech recognition in worker processes (bridge/speech/asr_pool.py) against the in-process Recognizer.

- an asyncio loop in this process ticking on absolute 20 ms deadlines (what the RTP and Twilio pacers
  do) while N sessions recognise real-time paced phone speech: max lateness and late ticks;
- end() latency (end of the turn's audio -> transcript) with the audio fed in real time;
- worker start-up and memory (RSS and USS) idle and with sessions.

Run: `.venv/bin/python -m bench asr_pool` (writes bench/results/asr_pool.md).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bridge.speech.asr import Recognizer
from bridge.speech.asr_pool import AsrPool, RemoteRecognizer
from tests.helpers.speech import chunks, phone_speech, silence

RESULTS = Path(__file__).parent / "results" / "asr_pool.md"
MENU = ["billing", "sales", "technical support", "operator", "cancel my account"]
MENU_TURNS = ["Technical support.", "I want to cancel my account.", "Four five six seven."]
OPEN_TURN = "I have a question about my last payment."
MB = 1024 * 1024


def _turns() -> list[tuple[list[str] | None, bytes]]:
    turns: list[tuple[list[str] | None, bytes]] = [
        (MENU, silence(300) + phone_speech(s) + silence(250)) for s in MENU_TURNS
    ]
    turns.append((None, silence(300) + phone_speech(OPEN_TURN) + silence(250)))
    return turns


def _session(rec: Any, turns: list[tuple[list[str] | None, bytes]], end_ms: list[float]) -> None:
    """Feed every turn in real time (20 ms chunks on absolute deadlines), then time end()."""
    for expected, pcm in turns:
        rec.set_expected(expected)
        rec.begin()
        start = time.perf_counter()
        for i, chunk in enumerate(chunks(pcm, 20)):
            rec.feed(chunk)
            delay = start + (i + 1) * 0.020 - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        t0 = time.perf_counter()
        rec.end()
        end_ms.append((time.perf_counter() - t0) * 1000.0)


async def _measure(recs: list[Any], turns: list[tuple[list[str] | None, bytes]]) -> dict[str, float]:
    end_ms: list[float] = []
    threads = [threading.Thread(target=_session, args=(rec, turns, end_ms)) for rec in recs]
    start = time.perf_counter()
    lateness: list[float] = []
    for t in threads:
        t.start()
    n = 0
    while any(t.is_alive() for t in threads):
        n += 1
        deadline = start + n * 0.020
        await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
        lateness.append((time.perf_counter() - deadline) * 1000.0)
    for t in threads:
        t.join()
    lateness.sort()
    minutes = n * 0.020 / 60.0
    return {
        "ticks": n,
        "p99": lateness[int(len(lateness) * 0.99)],
        "max": lateness[-1],
        "late10": sum(1 for x in lateness if x > 10.0) / minutes,
        "late20": sum(1 for x in lateness if x > 20.0) / minutes,
        "end_p50": statistics.median(end_ms),
        "end_max": max(end_ms),
    }


def _memory(pool: AsrPool) -> list[tuple[float, float]]:
    out = []
    for w in pool.workers():
        info = psutil.Process(w.pid).memory_full_info()
        out.append((info.rss / MB, info.uss / MB))
    return out


def main() -> None:
    load = os.getloadavg()
    turns = _turns()
    rows: list[str] = []
    # in-process: the recognizers' decoders are built (and warmed) before measuring
    for n in (1, 4):
        recs: list[Any] = [Recognizer() for _ in range(n)]
        for rec in recs:
            rec.set_expected(MENU)
            rec.recognize(turns[0][1])
            rec.set_expected(None)
            rec.recognize(turns[0][1])
        m = asyncio.run(_measure(recs, turns))
        rows.append(_row("in-process `Recognizer` (before)", n, m))
    pool = AsrPool(2)
    t0 = time.perf_counter()
    pool.start()
    start_s = time.perf_counter() - t0
    idle = _memory(pool)
    per_sessions: list[tuple[int, list[tuple[float, float]]]] = []
    for n in (1, 4):
        recs = [RemoteRecognizer(pool) for _ in range(n)]
        for rec in recs:
            rec.set_expected(MENU)
            rec.recognize(turns[0][1])
            rec.set_expected(None)
            rec.recognize(turns[0][1])
        m = asyncio.run(_measure(recs, turns))
        rows.append(_row("`RemoteRecognizer`, pool of 2 workers (after)", n, m))
        per_sessions.append((n, _memory(pool)))
        for rec in recs:
            rec.close()
    pool.close()
    lines = [
        "# Speech recognition in worker processes (`bridge/speech/asr_pool.py`)",
        "",
        f"`.venv/bin/python -m bench asr_pool`, 2 cores. Load average at start: {load[0]:.2f} / "
        f"{load[1]:.2f} (other engineers' work was running; figures may be disturbed by that).",
        "",
        "## An event loop's 20 ms deadlines while sessions recognise real-time phone speech",
        "",
        "Each session: 3 menu answers (domain LM) and 1 open question (general LM), Piper phone speech fed "
        "in 20 ms chunks in real time from its own thread (as `_AsrWorker` does). Meanwhile an asyncio loop "
        "in the same process sleeps to absolute 20 ms deadlines (like the RTP and Twilio pacers); lateness = "
        "wake-up time minus deadline. end() = end of the turn's audio -> transcript.",
        "",
        "| recognizer | sessions | ticks | lateness p99 (ms) | max (ms) | ticks > 10 ms late / min "
        "| > 20 ms / min | end() p50 (ms) | end() max (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## Workers",
        "",
        f"Start-up of 2 workers (spawn, imports, general LM + dictionary loaded): {start_s:.2f} s.",
        "",
        "| state | worker RSS (MB) | worker USS (MB) |",
        "|---|---|---|",
        _mem_row("idle (models loaded, no session)", idle),
        *(_mem_row(f"{n} session(s) open over the 2 workers (each: general + one domain decoder)", m)
          for n, m in per_sessions),
        "",
        "USS is memory only that worker holds (what stopping it frees). Sessions stay pinned to their "
        "worker, so each worker's growth is its own sessions' decoders (the general-LM decoder is built on "
        "a session's first open turn, a domain decoder per phrase set).",
    ]  # fmt: skip
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(RESULTS.read_text())


def _row(label: str, n: int, m: dict[str, float]) -> str:
    return (
        f"| {label} | {n} | {m['ticks']:.0f} | {m['p99']:.1f} | {m['max']:.1f} | {m['late10']:.1f} "
        f"| {m['late20']:.1f} | {m['end_p50']:.0f} | {m['end_max']:.0f} |"
    )


def _mem_row(label: str, mem: list[tuple[float, float]]) -> str:
    rss = " / ".join(f"{r:.0f}" for r, _ in mem)
    uss = " / ".join(f"{u:.0f}" for _, u in mem)
    return f"| {label} | {rss} | {uss} |"
