"""Embedded engine figures (the `local` provider), with the real models.

- model load time at start-up, in a fresh engine process;
- end of caller speech (the engine's `speech_stopped`) -> first `response.output_audio.delta`, p50/p95,
  over real-time paced phone-speech turns (Piper through a telephone chain, µ-law);
- concurrent sessions in real time on this machine, with CPU use and memory per session;
- intent accuracy on generated in-grammar caller answers, and false matches on out-of-grammar speech
  (the recogniser with the turn's expected phrases + the responder's matcher, as in a session).

The engine runs in its own process (uvicorn + `mount_engine`); clients are raw websockets in this one.
Run: `.venv/bin/python -m bench engine` (writes bench/results/engine.md).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import websockets

from bench._proc import stop_bridge
from bridge.media import g711
from tests.helpers.servers import bind_ephemeral
from tests.helpers.speech import phone_speech, silence

RESULTS = Path(__file__).parent / "results" / "engine.md"

EXTENSION: dict[str, Any] = {
    "intents": [
        {
            "name": "billing",
            "phrases": ["billing", "my bill"],
            "reply": "I will connect you to billing.",
            "tool": "transfer",
            "arguments": {"target": "billing"},
        },
        {
            "name": "support",
            "phrases": ["technical support", "my internet is down"],
            "reply": "Let me get you to technical support.",
            "tool": "transfer",
            "arguments": {"target": "support"},
        },
        {
            "name": "sales",
            "phrases": ["sales", "buy a new phone"],
            "reply": "Our sales team can help.",
            "tool": "transfer",
            "arguments": {"target": "sales"},
        },
        {
            "name": "operator",
            "phrases": ["operator", "talk to a person"],
            "reply": "One moment.",
            "tool": "transfer",
        },
        {"name": "cancel", "phrases": ["cancel my account"], "reply": "I can help you cancel."},
        {"name": "yes", "phrases": ["yes"], "reply": "Great."},
        {"name": "no", "phrases": ["no"], "reply": "Okay."},
    ],
    "faq": [
        {
            "questions": ["what are your opening hours", "when are you open"],
            "answer": "We are open from nine to five, Monday to Friday.",
        },
        {"questions": ["where are you located"], "answer": "We are on Main Street, next to the bank."},
    ],
}

# (what the caller says, the intent or FAQ it should select)
IN_GRAMMAR: list[tuple[str, str]] = [
    ("Billing.", "billing"),
    ("Billing, please.", "billing"),
    ("My bill.", "billing"),
    ("Uh, billing.", "billing"),
    ("Technical support.", "support"),
    ("Technical support, please.", "support"),
    ("My internet is down.", "support"),
    ("Sales.", "sales"),
    ("Sales, please.", "sales"),
    ("Buy a new phone.", "sales"),
    ("Operator.", "operator"),
    ("Operator, please.", "operator"),
    ("Talk to a person.", "operator"),
    ("Cancel my account.", "cancel"),
    ("Yes.", "yes"),
    ("Yes, please.", "yes"),
    ("No.", "no"),
    ("No, thank you.", "no"),
    ("What are your opening hours?", "faq:0"),
    ("When are you open?", "faq:0"),
    ("Where are you located?", "faq:1"),
]
OUT_OF_GRAMMAR = [
    "I would like to order a large pizza.",
    "The weather is really nice today.",
    "My dog ate my homework.",
    "Can you recommend a good restaurant nearby?",
    "I am calling about the football game tonight.",
    "Please send me a brochure by mail.",
    "How much does shipping to Canada cost?",
    "I lost my keys yesterday afternoon.",
]
LATENCY_TURNS = [
    "Billing, please.",
    "What are your opening hours?",
    "Technical support.",
    "Operator.",
    "Yes.",
]
OOG_TIMEOUT_S = 30.0
BENCH_TOKEN = "bench-engine-token"  # the engine token the bench's server requires and its clients send

SERVER = """
import json, sys, time
t0 = time.perf_counter()
import uvicorn
from fastapi import FastAPI
from bridge.engine.server import mount_engine
from bridge.settings import Settings
app = FastAPI()
# its own token; no per-source rate limit in the way of many sessions from this one client address
services = mount_engine(app, Settings.from_env(rate_burst=1_000_000))  # BRIDGE_ENGINE_TOKEN from the env
services.cache_replies = sys.argv[2] != "nocache"
t1 = time.perf_counter()
report = services.preload()
report["imports"] = (t1 - t0) * 1000.0
print("LOAD " + json.dumps(report), flush=True)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", ws_max_size=1 << 20)
"""


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


class EngineProcess:
    def __init__(self, cache_replies: bool = True) -> None:
        sock = bind_ephemeral()
        self.port = sock.getsockname()[1]
        sock.close()
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=root, BRIDGE_ENGINE_TOKEN=BENCH_TOKEN)
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(self.port), "cache" if cache_replies else "nocache"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("LOAD "):
            raise RuntimeError(f"engine process failed to start: {line!r}")
        self.load = json.loads(line[5:])
        self.ps = psutil.Process(self.proc.pid)
        import socket

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                break
            time.sleep(0.05)
        self.start_to_ready_s = time.perf_counter() - started
        self.url = f"ws://127.0.0.1:{self.port}/v1/realtime"

    def stop(self) -> None:
        stop_bridge(self.proc)


async def run_session(
    url: str, utterances: list[bytes], out: list[dict[str, float]], ready: asyncio.Event
) -> None:
    """One caller: configure, then each utterance in real time (20 ms µ-law frames), awaiting each answer."""
    async with websockets.connect(
        url, additional_headers={"Authorization": "Bearer " + BENCH_TOKEN}, max_size=None
    ) as ws:
        events: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()

        async def reader() -> None:
            async for raw in ws:
                events.put_nowait((time.perf_counter(), json.loads(raw)))

        task = asyncio.create_task(reader())
        await ws.send(
            json.dumps(
                {
                    "type": "session.update",
                    "session": {
                        "type": "realtime",
                        "local_engine": EXTENSION,
                        "audio": {
                            "input": {"format": {"type": "audio/pcmu"}},
                            "output": {"format": {"type": "audio/pcmu"}},
                        },
                    },
                }
            )
        )
        ready.set()
        for utt in utterances:
            audio = g711.encode(silence(400) + utt + silence(1000), "pcmu")
            start = time.perf_counter()
            for i, off in enumerate(range(0, len(audio), 160)):
                payload = base64.b64encode(audio[off : off + 160]).decode()
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": payload}))
                delay = start + (i + 1) * 0.02 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            stopped = first = None
            while True:
                t, ev = await asyncio.wait_for(events.get(), 120)
                if ev["type"] == "input_audio_buffer.speech_stopped" and stopped is None:
                    stopped = t
                elif ev["type"] == "response.output_audio.delta" and first is None:
                    first = t
                elif ev["type"] == "response.done":
                    break
            if stopped is not None and first is not None:
                out.append({"latency_ms": (first - stopped) * 1000.0})
            await asyncio.sleep(0.3)
        task.cancel()


async def run_sessions(url: str, n: int, turns: list[bytes]) -> tuple[list[dict[str, float]], float]:
    out: list[dict[str, float]] = []
    readies = [asyncio.Event() for _ in range(n)]
    tasks = []
    for k in range(n):
        mine = turns[k % len(turns) :] + turns[: k % len(turns)]
        tasks.append(asyncio.create_task(run_session(url, mine, out, readies[k])))
        await asyncio.sleep(0.05)
    start = time.perf_counter()
    await asyncio.gather(*tasks)
    return out, time.perf_counter() - start


def accuracy() -> dict[str, Any]:
    """Recogniser (expected phrases of the extension) + matcher, one warm decoder, as in one session."""
    from bridge.engine.responder import match_turn
    from bridge.realtime.local_engine import parse_extension
    from bridge.speech.asr import Recognizer

    ext = parse_extension(EXTENSION)
    rec = Recognizer()
    rec.set_expected(ext.expected_phrases())

    def label(text: str) -> str | None:
        found = match_turn(ext, text)
        if found is None:
            return None
        return ext.intents[found.index].name if found.kind == "intent" else f"faq:{found.index}"

    correct, wrong, decode_ms = 0, [], []
    for text, want in IN_GRAMMAR:
        t0 = time.perf_counter()
        heard = rec.recognize(phone_speech(text)).text
        decode_ms.append((time.perf_counter() - t0) * 1000.0)
        got = label(heard)
        if got == want:
            correct += 1
        else:
            wrong.append(f"{text!r} -> {heard!r} ({got})")
    false_matches, oog_done, oog_ms, timed_out = [], 0, [], False
    for text in OUT_OF_GRAMMAR:
        result: dict[str, Any] = {}
        pcm = phone_speech(text)

        def work(pcm: bytes = pcm, result: dict[str, Any] = result) -> None:
            result["text"] = rec.recognize(pcm).text

        t0 = time.perf_counter()
        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        worker.join(OOG_TIMEOUT_S)
        if worker.is_alive():
            timed_out = True
            break
        oog_ms.append((time.perf_counter() - t0) * 1000.0)
        oog_done += 1
        got = label(result["text"])
        if got is not None:
            false_matches.append(f"{text!r} -> {result['text']!r} ({got})")
    return {
        "in_total": len(IN_GRAMMAR),
        "in_correct": correct,
        "wrong": wrong,
        "decode_ms": decode_ms,
        "oog_total": len(OUT_OF_GRAMMAR),
        "oog_done": oog_done,
        "oog_false": false_matches,
        "oog_ms": oog_ms,
        "oog_timed_out": timed_out,
    }


def main() -> None:
    load_before = os.getloadavg()[0]
    turns = [phone_speech(t) for t in LATENCY_TURNS]
    engine = EngineProcess()
    rows_conc: list[str] = []
    try:
        rss_idle = engine.ps.memory_info().rss
        # latency: one session, 4 rounds of the 5 turns (fixed replies cached, as shipped)
        lat, _ = asyncio.run(run_sessions(engine.url, 1, turns * 4))
        latencies = [r["latency_ms"] for r in lat]
        # concurrency
        for n in (1, 2, 4, 8, 12, 16):
            cpu0 = sum(engine.ps.cpu_times()[:2])
            res, wall = asyncio.run(run_sessions(engine.url, n, turns[:3]))
            cpu = sum(engine.ps.cpu_times()[:2]) - cpu0
            rss = engine.ps.memory_info().rss
            vals = [r["latency_ms"] for r in res]
            ok = len(vals) == 3 * n and pct(vals, 95) < 1000
            rows_conc.append(
                f"| {n} | {len(vals)}/{3 * n} | {pct(vals, 50):.0f} | {pct(vals, 95):.0f} | "
                f"{100 * cpu / wall:.0f}% | {(rss - rss_idle) / n / 2**20:.0f} | {'yes' if ok else 'no'} |"
            )
            print(rows_conc[-1], flush=True)
    finally:
        engine.stop()
    # latency again with every reply synthesized (what a chat-completions answer costs on top of the model)
    uncached = EngineProcess(cache_replies=False)
    try:
        lat, _ = asyncio.run(run_sessions(uncached.url, 1, turns * 2))
        latencies_nocache = [r["latency_ms"] for r in lat]
    finally:
        uncached.stop()
    acc = accuracy()
    load_after = os.getloadavg()[0]
    load = engine.load
    stopped_note = f" (stopped: one decode exceeded {OOG_TIMEOUT_S:.0f} s)" if acc["oog_timed_out"] else ""
    lines = [
        "# Embedded engine (`local` provider): latency, accuracy, capacity, start-up",
        "",
        f"Command: `.venv/bin/python -m bench engine`. Machine: {psutil.cpu_count()} cores; "
        f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after (other engineers at work "
        "on the same 2 cores: figures are noisy). Engine in its own process (uvicorn + `mount_engine`), "
        "clients here on 127.0.0.1.",
        "",
        "## Model load at start-up (fresh process)",
        "",
        "| what | ms |",
        "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in load.items()],
        f"| process start -> accepting connections | {engine.start_to_ready_s * 1000:.0f} |",
        "",
        "## End of caller speech -> first audio",
        "",
        "`input_audio_buffer.speech_stopped` received -> first `response.output_audio.delta` received, "
        f"one session, {len(latencies)} real-time paced turns (Piper phone speech, µ-law in and out, "
        "grammar from the intents). Target p50 <= 250 ms. (The speech_stopped event itself comes "
        "`silence_duration_ms` = 500 ms after the caller's last word.)",
        "",
        "| replies | turns | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|---|",
        f"| fixed replies cached (default) | {len(latencies)} | {pct(latencies, 50):.0f} | "
        f"{pct(latencies, 95):.0f} | {max(latencies):.0f} |",
        f"| every reply synthesized (`cache_replies=False`) | {len(latencies_nocache)} | "
        f"{pct(latencies_nocache, 50):.0f} | {pct(latencies_nocache, 95):.0f} | "
        f"{max(latencies_nocache):.0f} |",
        "",
        "## Concurrent sessions in real time",
        "",
        "N callers at once, each 3 turns paced in real time. 'real time' = every turn answered and p95 "
        "stop->first-audio < 1 s. Memory = engine RSS growth over the idle (models loaded) process, "
        "per session.",
        "",
        "| sessions | turns answered | p50 ms | p95 ms | engine CPU (% of one core) | MB / session "
        "| real time |",
        "|---|---|---|---|---|---|---|",
        *rows_conc,
        "",
        "## Intent accuracy",
        "",
        "Recogniser with the turn's expected phrases (the extension's intents + FAQ questions) + the "
        "responder's matcher, one warm decoder, Piper caller answers through the telephone chain.",
        "",
        "| set | utterances | result | decode ms p50 / max |",
        "|---|---|---|---|",
        f"| in-grammar | {acc['in_total']} | {acc['in_correct']}/{acc['in_total']} correct "
        f"({100 * acc['in_correct'] / acc['in_total']:.0f}%) | {pct(acc['decode_ms'], 50):.0f} / "
        f"{max(acc['decode_ms']):.0f} |",
        f"| out-of-grammar | {acc['oog_total']} | {len(acc['oog_false'])} false matches in {acc['oog_done']} "
        f"decoded{stopped_note}"
        f" | {pct(acc['oog_ms'], 50):.0f} / {max(acc['oog_ms'] or [float('nan')]):.0f} |",
        "",
    ]
    if acc["wrong"]:
        lines += ["In-grammar misses: " + "; ".join(acc["wrong"]), ""]
    if acc["oog_false"]:
        lines += ["False matches: " + "; ".join(acc["oog_false"]), ""]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))
