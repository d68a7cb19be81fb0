"""Browser softphone figures.

(a) Mouth-to-ear in a real browser: headless Chromium (Debian's package) whose microphone is a WAV
    of 20 generated questions, calling an FAQ agent flow of the embedded engine through /phone. The
    page meters its own microphone stream and the stream it receives (WebAudio analysers on one
    clock, every 10 ms); per turn: end of the caller's question at the microphone -> first answer
    audio in the received stream. Includes the engine's end-of-turn wait (its VAD silence), speech
    recognition, synthesis, the bridge's 8 kHz G.711 path both ways, Opus, and the browser's jitter
    buffer; excludes the sound card.
(b) CPU per call-second of the bridge process (a subprocess, psutil) with the same call load on the
    WebRTC leg (aiortc clients in this process) and on the Twilio leg (Media Streams emulator): a
    flow that keeps playing a cached prompt while the caller streams audio.

Run: `.venv/bin/python -m bench softphone` (writes bench/results/softphone.md). About 5 minutes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from bench._proc import stop_bridge
from bridge.app import create_app
from bridge.media import g711
from bridge.settings import Settings
from tests.helpers.browser import chromium, write_mic_wav
from tests.helpers.servers import bind_ephemeral, serve
from tests.helpers.speech import phone_speech, silence
from tests.helpers.twilio_emulator import TwilioEmulator
from tests.helpers.webrtc_client import SoftphoneClient

RESULTS = Path(__file__).parent / "results" / "softphone.md"
TOKEN = "bench-softphone-token"
TURNS = 20
FIRST_QUESTION_MS = 4000
PERIOD_MS = 9000
QUESTIONS = ("what are your opening hours", "what is your address", "do you deliver")
PLAN = """
numbers:
  default: faq
  "+15550999": prompt_loop
flows:
  faq:
    - agent:
        provider: local
        instructions: "Answer briefly."
        faq:
          - question: [what are your opening hours, opening hours, when are you open]
            answer: "Nine to five, Monday to Friday."
          - question: [where are you, what is your address, address]
            answer: "At 100 Main Street."
          - question: [do you deliver, delivery]
            answer: "Yes, within ten miles."
  prompt_loop:
    - menu:
        prompt: "This is a long prompt that the bridge keeps playing, so that audio flows both ways."
        options: {"9": faq}
        timeout: 1s
        no_input: prompt_loop
        no_match: prompt_loop
"""
LOCAL_LOUD = 0.02  # page RMS (full scale 1.0) above which the microphone carries speech
REMOTE_LOUD = 0.02


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def plan_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="bench-softphone-"))
    (d / "main.yaml").write_text(PLAN)
    return d


def segments(times: np.ndarray, loud: np.ndarray, gap_ms: float = 400.0) -> list[tuple[float, float]]:
    """(start, end) of loud stretches, merging gaps shorter than `gap_ms`."""
    out: list[tuple[float, float]] = []
    for t in times[loud]:
        if out and t - out[-1][1] <= gap_ms:
            out[-1] = (out[-1][0], float(t))
        else:
            out.append((float(t), float(t)))
    return [s for s in out if s[1] - s[0] >= 200]


def mouth_to_ear(levels: list[list[float]]) -> list[float]:
    arr = np.asarray(levels, dtype=np.float64)
    t, local, remote = arr[:, 0], arr[:, 1], arr[:, 2]
    questions = segments(t, local > LOCAL_LOUD)
    latencies: list[float] = []
    answers = segments(t, remote > REMOTE_LOUD)
    for i, (_start, end) in enumerate(questions):
        limit = questions[i + 1][0] if i + 1 < len(questions) else t[-1]
        # The first answer that starts after the question ends (not the tail of an earlier one).
        onsets = [a for a, _b in answers if end < a < limit]
        if onsets:
            latencies.append(onsets[0] - end)
    return latencies


def browser_run(tmp: Path) -> dict[str, Any]:
    mic = bytearray(silence(FIRST_QUESTION_MS))
    for n in range(TURNS):
        q = phone_speech(QUESTIONS[n % len(QUESTIONS)])
        mic += q + silence(PERIOD_MS - len(q) // 16)
    mic += silence(30000)
    wav = write_mic_wav(tmp / "mic.wav", bytes(mic))
    plans = plan_dir()

    def make(port: int) -> Any:
        settings = Settings(
            dialplans=plans, data_dir=tmp / "data", port=port, admin_token=TOKEN, webrtc_hosts="127.0.0.1"
        )
        return create_app(settings)

    with serve(make) as (url, _app):
        driver = chromium(wav)
        try:
            driver.get(f"{url}/phone?token={TOKEN}")
            deadline = time.monotonic() + 10
            while not driver.find_elements("css selector", "#number option") and time.monotonic() < deadline:
                time.sleep(0.1)
            driver.execute_script('document.getElementById("number").value = "default";')
            driver.find_element("id", "call").click()
            time.sleep((FIRST_QUESTION_MS + TURNS * PERIOD_MS + 3000) / 1000)
            state = driver.execute_script("return window.softphone.state")
            driver.find_element("id", "hangup").click()
            time.sleep(0.5)
        finally:
            driver.quit()
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "softphone_state.json").write_text(json.dumps(state))
    latencies = mouth_to_ear(state["levels"])
    bot = Counter(e["text"] for e in state["transcript"] if e["who"] == "bot")
    return {"latencies": latencies, "answers": sum(bot.values()), "bot_lines": bot, "questions": TURNS}


# --------------------------------------------------------------------------- CPU per call-second


class BridgeProcess:
    def __init__(self, plans: Path, data: Path) -> None:
        sock = bind_ephemeral()
        self.port = sock.getsockname()[1]
        sock.close()
        env = dict(os.environ)
        env.update(
            BRIDGE_DIALPLANS=str(plans),
            BRIDGE_DATA_DIR=str(data),
            BRIDGE_ADMIN_TOKEN=TOKEN,
            BRIDGE_WEBRTC_HOSTS="127.0.0.1",
            BRIDGE_LOG_LEVEL="WARNING",
            BRIDGE_RATE_PER_SOURCE_PER_S="100000",
            BRIDGE_RATE_BURST="100000",
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve", "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.ps = psutil.Process(self.proc.pid)
        self.url = f"http://127.0.0.1:{self.port}"

    async def wait_ready(self) -> None:
        async with httpx.AsyncClient() as http:
            for _ in range(1200):
                try:
                    if (await http.get(self.url + "/readyz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError("bridge did not start")

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        stop_bridge(self.proc)


async def cpu_run(leg: str, calls: int, seconds: float) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-softphone-cpu-"))
    bridge = BridgeProcess(plan_dir(), tmp / "data")
    await bridge.wait_ready()
    speech = phone_speech("what are your opening hours") + silence(1000)
    caller = (speech * int(seconds * 16000 / len(speech) + 1))[: int(seconds * 16000)]
    try:
        if leg == "webrtc":
            clients = [SoftphoneClient(bridge.url, TOKEN) for _ in range(calls)]
            for client in clients:
                r = await client.call(number="+15550999", flow="prompt_loop")
                assert r.status_code == 200, r.text
            for client in clients:
                await client.wait_for(lambda e: e.get("type") == "transcript", timeout=30)
            await asyncio.sleep(1.0)
            cpu0, t0 = bridge.cpu_s(), time.monotonic()
            for client in clients:
                client.mic.say(caller)
            await asyncio.sleep(seconds)
            cpu, wall = bridge.cpu_s() - cpu0, time.monotonic() - t0
            for client in clients:
                await client.hang_up()
        else:
            media = bridge.url.replace("http://", "ws://") + "/twilio/media"
            emulators = []
            for n in range(calls):
                twilio = TwilioEmulator(
                    media,
                    stream_sid=f"MZ{n:032d}",
                    call_sid=f"CA{n:032d}",
                    custom_parameters={"flow": "prompt_loop"},
                )
                await twilio.open()
                await twilio.start()
                emulators.append(twilio)
            await asyncio.sleep(3.0)
            ulaw = g711.encode(caller, "pcmu")
            cpu0, t0 = bridge.cpu_s(), time.monotonic()
            await asyncio.gather(*(t.stream_audio(ulaw) for t in emulators))
            cpu, wall = bridge.cpu_s() - cpu0, time.monotonic() - t0
            for twilio in emulators:
                await twilio.stop()
                await twilio.close()
    finally:
        bridge.stop()
    return {"calls": calls, "wall_s": wall, "cpu_s_per_call_s": cpu / (calls * wall)}


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-softphone-"))
    browser = browser_run(tmp)
    cpu = {leg: asyncio.run(cpu_run(leg, calls=5, seconds=20.0)) for leg in ("twilio", "webrtc")}
    lat = browser["latencies"]
    load = os.getloadavg()
    lines = [
        "# Browser softphone",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, load average "
        f"{load[0]:.2f} at the end (other work shares the machine). `python -m bench softphone`.",
        "",
        "## Mouth-to-ear in a real browser (headless Chromium, WAV microphone, the engine's FAQ agent)",
        "",
        "End of the caller's question at the page's microphone stream -> first answer audio in the stream",
        "the page receives, both metered in the page (WebAudio analysers, 10 ms). It includes the engine's",
        "end-of-turn silence, recognition and synthesis, the 8 kHz G.711 path both ways, Opus and the",
        "browser's jitter buffer; not the sound card.",
        "",
        "| turns measured | answers shown | p50 ms | p95 ms | min ms | max ms |",
        "|---|---|---|---|---|---|",
        f"| {len(lat)} of {browser['questions']} | {browser['answers']} | {pct(lat, 50):.0f} "
        f"| {pct(lat, 95):.0f} | {pct(lat, 0):.0f} | {pct(lat, 100):.0f} |",
        "",
        "What the bot said (the page's transcript), by line:",
        "",
        *[f"- {count} x {text}" for text, count in browser["bot_lines"].most_common()],
        "",
        "## Bridge CPU per call-second, WebRTC leg beside the Twilio leg",
        "",
        "The bridge's main process (psutil; its speech-recognition worker processes are not counted);",
        "each call is a menu whose cached prompt loops while the caller streams speech, so both",
        "directions carry audio. WebRTC adds Opus decode + encode, SRTP and the 48/24 kHz resampling",
        "per call (aiortc encodes on a thread pool); Twilio adds JSON + base64 per frame.",
        "",
        "| leg | calls | seconds | CPU s per call-second |",
        "|---|---|---|---|",
    ]
    for leg, row in cpu.items():
        lines.append(f"| {leg} | {row['calls']} | {row['wall_s']:.1f} | {row['cpu_s_per_call_s']:.4f} |")
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
