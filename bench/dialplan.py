"""Dialplan figures: load time of the shipped dialplans, DTMF -> next prompt's first audio, and spoken
menu-option accuracy on the default menu (real recognizer with the menu's grammar, generated phone speech).

Run: `.venv/bin/python -m bench dialplan` -> bench/results/dialplan.md
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "dialplan.md"
EXAMPLES = ("dialplans", "dialplans/examples/business-hours-cloud.yaml")

# What callers might say to the default menu, and the option each should reach (None: no option).
UTTERANCES: tuple[tuple[str, str | None], ...] = (
    ("questions", "1"),
    ("question", "1"),
    ("I have a question", "1"),
    ("help", "1"),
    ("help please", "1"),
    ("opening hours", "1"),
    ("hours", "1"),
    ("one", "1"),
    ("operator", "0"),
    ("operator please", "0"),
    ("a person", "0"),
    ("human", "0"),
    ("representative", "0"),
    ("zero", "0"),
    ("I want to talk to a person", "0"),
    ("person please", "0"),
    ("pizza delivery", None),
    ("what's the weather like", None),
)


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def bench_load() -> list[str]:
    from bridge.dialplan.loader import load_dialplan

    rows = []
    for rel in EXAMPLES:
        path = REPO / rel
        start = time.perf_counter()
        load_dialplan(path)
        first_ms = (time.perf_counter() - start) * 1000.0
        times = []
        for _ in range(50):
            start = time.perf_counter()
            load_dialplan(path)
            times.append((time.perf_counter() - start) * 1000.0)
        rows.append(
            f"| load + validate `{rel}` | first {first_ms:.1f} ms; then median "
            f"{statistics.median(times):.2f} ms, p95 {_pct(times, 0.95):.2f} ms (n=50) |"
        )
    return rows


def bench_dtmf_to_prompt() -> list[str]:
    from bridge.dialplan.loader import load_dialplan
    from bridge.dialplan.runner import Runner, Say
    from bridge.speech.tts import PromptCache, Synthesizer

    plan = load_dialplan(REPO / "dialplans/examples/business-hours-cloud.yaml")
    runner_us: list[float] = []
    next_text = ""
    for i in range(200):
        r = Runner(plan, flow="after_hours", now_ms=0)
        first = r.start(0)
        r.on_prompt_done(first[-1].prompt_id, 10)  # type: ignore[union-attr]
        start = time.perf_counter()
        out = r.on_dtmf("1", 20 + i)
        runner_us.append((time.perf_counter() - start) * 1e6)
        next_text = next(a.text for a in out if isinstance(a, Say))
    synth = Synthesizer(out_rate=8000, cache=PromptCache())
    synth.synthesize("Warm up.")  # load the voice outside the measurement
    cold: list[float] = []
    for _ in range(5):
        start = time.perf_counter()
        next(iter(synth.stream(next_text)))
        cold.append((time.perf_counter() - start) * 1000.0)
    synth.cached(next_text)
    warm: list[float] = []
    for _ in range(200):
        start = time.perf_counter()
        synth.cached(next_text)
        warm.append((time.perf_counter() - start) * 1000.0)
    return [
        f"| runner: DTMF `1` in a menu -> the next step's `Say` | median "
        f"{statistics.median(runner_us):.0f} µs, "
        f"p95 {_pct(runner_us, 0.95):.0f} µs (n=200) |",
        f"| next prompt's first audio, synthesized ({synth.voice}, first sentence) | median "
        f"{statistics.median(cold):.0f} ms (n=5) |",
        f"| next prompt's first audio, from the prompt cache | median "
        f"{statistics.median(warm) * 1000:.0f} µs |",
        f"| => DTMF to first prompt audio (excluding leg and playout) | cached: "
        f"{statistics.median(runner_us) / 1000 + statistics.median(warm):.2f} ms; uncached: "
        f"{statistics.median(runner_us) / 1000 + statistics.median(cold):.0f} ms |",
    ]


E2E_PLAN = """\
numbers: {default: main}
flows:
  main:
    - menu:
        prompt: "For billing, press 1. For your account, press 2. For anything else, please stay on the line."
        options: {"1": billing, "2": account}
        timeout: 20s
  billing:
    - menu: {prompt: "You have reached billing. Press star to go back.", options: {"*": main}, timeout: 30s}
  account:
    - menu: {prompt: "Hello {caller}, this is your account.", options: {"*": main}, timeout: 30s}
"""


def bench_dtmf_e2e(calls: int = 6) -> list[str]:
    """A real bridge on a socket, the Twilio emulator as caller: press a digit during the menu prompt,
    time until the emulator plays the first frame of the next prompt."""
    import asyncio
    import sys
    import tempfile

    import numpy as np

    sys.path.insert(0, str(REPO))
    from bridge.app import create_app
    from bridge.media import g711
    from bridge.settings import Settings
    from tests.helpers.servers import serve
    from tests.helpers.twilio_emulator import TwilioEmulator

    def speech(frame: bytes) -> bool:
        x = np.frombuffer(g711.decode(frame, "pcmu"), dtype=np.int16).astype(np.float64)
        return float(np.sqrt(np.mean(x * x))) > 150.0

    async def one(url: str, n: int, digit: str) -> float:
        twilio = TwilioEmulator(
            url.replace("http://", "ws://") + "/twilio/media",
            call_sid=f"CA{n:032d}",
            stream_sid=f"MZ{n:032d}",
            custom_parameters={"caller": f"+1555{n:07d}"},
        )
        await twilio.open()
        await twilio.start()
        try:
            for _ in range(1500):  # wait for the menu prompt to be heard
                if any(speech(p.payload) for p in twilio.played):
                    break
                await asyncio.sleep(0.01)
            pressed = time.monotonic()
            await twilio.dtmf(digit)
            for _ in range(3000):
                cleared = [t for t in twilio.clears if t >= pressed]
                if cleared:
                    heard = [p.at for p in twilio.played if p.at > cleared[0] and speech(p.payload)]
                    if heard:
                        return (heard[0] - pressed) * 1000.0
                await asyncio.sleep(0.005)
            raise RuntimeError("the next prompt was never heard")
        finally:
            await twilio.stop()
            await twilio.close()

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "main.yaml").write_text(E2E_PLAN)

        def make(port: int) -> object:
            return create_app(Settings(port=port, dialplans=Path(tmp)), preload_models=True)

        with serve(make) as (url, _app):
            cached = [asyncio.run(one(url, i, "1")) for i in range(calls)]
            fresh = [asyncio.run(one(url, 100 + i, "2")) for i in range(calls)]
    first = cached.pop(0)  # the first "billing" prompt was synthesized, the rest came from the cache
    return [
        f"| Twilio path end to end: DTMF during the menu prompt -> first audio of the next prompt, "
        f"cached prompt | median {statistics.median(cached):.0f} ms, max {max(cached):.0f} ms "
        f"(n={len(cached)}; first, uncached: {first:.0f} ms) |",
        f"| same, prompt with a variable (`Hello {{caller}}, ...`: synthesized every time) | median "
        f"{statistics.median(fresh):.0f} ms, max {max(fresh):.0f} ms (n={len(fresh)}) |",
    ]


def bench_recognition() -> tuple[list[str], list[str]]:
    import sys

    sys.path.insert(0, str(REPO))
    from bridge.dialplan.loader import load_dialplan
    from bridge.dialplan.matching import match_option, spoken_phrases
    from bridge.dialplan.schema import MenuStep
    from bridge.speech.asr import Recognizer
    from tests.helpers.speech import phone_speech, silence

    plan = load_dialplan(REPO / "dialplans")
    menu = plan.flows["main"][1]
    assert isinstance(menu, MenuStep)
    rec = Recognizer()
    rec.set_expected(spoken_phrases(menu))
    rows: list[str] = []
    detail: list[str] = []
    for voice in ("piper", "espeak"):
        right = total = false_accept = rejected_oog = oog = 0
        for text, want in UTTERANCES:
            audio = silence(300) + phone_speech(text, voice=voice) + silence(300)
            got_text = rec.recognize(audio).text
            got = match_option(menu, got_text)
            if want is None:
                oog += 1
                rejected_oog += got is None
                false_accept += got is not None
            else:
                total += 1
                right += got == want
            mark = "ok" if got == want else "MISS"
            detail.append(f"| {voice} | {text} | {want or '-'} | {got_text!r} | {got or '-'} | {mark} |")
        rows.append(
            f"| spoken option accuracy, {voice} voice ({total} in-menu utterances) | "
            f"{right}/{total} = {right / total:.0%}; out-of-menu rejected {rejected_oog}/{oog} |"
        )
    return rows, detail


def main() -> None:
    load = os.getloadavg()
    rows = bench_load() + bench_dtmf_to_prompt() + bench_dtmf_e2e()
    rec_rows, detail = bench_recognition()
    rows += rec_rows
    after = os.getloadavg()
    text = "\n".join(
        [
            "# Dialplan figures",
            "",
            f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores; load average "
            f"{load[0]:.1f} before / {after[0]:.1f} after (other engineers' work was running).",
            "Command: `.venv/bin/python -m bench dialplan`.",
            "",
            "| what | figure |",
            "|---|---|",
            *rows,
            "",
            "Spoken options: the default menu's grammar (`spoken_phrases`), pocketsphinx via "
            "`bridge.speech.asr.Recognizer`, phone speech from `tests/helpers/speech.py` (Piper joe or "
            "espeak-ng, band-passed, 8 kHz, µ-law round trip), matched by `match_option`.",
            "",
            "| voice | caller says | expected | recognised | option | |",
            "|---|---|---|---|---|---|",
            *detail,
            "",
        ]
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
