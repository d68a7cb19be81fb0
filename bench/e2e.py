"""End-to-end figures through the real app on the Twilio path, with the embedded engine.

One bridge (`create_app`, models preloaded) serves a copy of `dialplans/` plus bench flows reached by
their own called numbers; every call is placed like Twilio places it (POST /twilio/voice, then the
media stream with the TwiML's parameters; tests/helpers/e2e.py) and what the caller hears is what the
Twilio emulator played in real time.

(a) DTMF digit -> first audio of the next prompt at the caller: pressed while the menu waits in
    silence, and pressed during the menu prompt (barge-in: `clear`, then the next prompt);
(b) spoken options of the default menu (its prompt and option words, copied from default.yaml, with
    targets that report the choice and loop back): in-grammar phrasings in several generated voices,
    and out-of-grammar sentences (false matches);
(c) embedded engine: the caller's end of speech -> first answer audio at the caller (FAQ agent);
(d) dialplan validate + load time for dialplans/, and file edit -> new version serving (hot reload).

Run: `.venv/bin/python -m bench e2e` (writes bench/results/e2e.md). Takes about 6 minutes.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import tempfile
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bridge.app import create_app
from bridge.dialplan.loader import load_dialplan
from bridge.settings import Settings
from tests.helpers.e2e import Caller, EngineTap, healthz, live_call, place_call, wait_until
from tests.helpers.servers import serve
from tests.helpers.speech import phone_speech, silence, speech_span_ms, telephone_chain

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "e2e.md"

DTMF_NUMBER = "+15550301"
MENU_NUMBER = "+15550302"
FAQ_NUMBER = "+15550303"

BENCH_PLAN = f"""
numbers:
  "{DTMF_NUMBER}": dtmf_loop
  "{FAQ_NUMBER}": faq_bench
flows:
  dtmf_loop:
    - menu:
        prompt: "Press 1 or 2."
        options: {{"1": b_one, "2": b_two}}
        timeout: 60s
        no_input: dtmf_loop
        no_match: dtmf_loop
  b_one:
    - say: "You pressed one."
    - goto: dtmf_loop
  b_two:
    - say: "You pressed two."
    - goto: dtmf_loop
  faq_bench:
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
"""

FAQ_QUESTIONS = (
    "What are your opening hours?", "What is your address?", "Do you deliver?", "When are you open?",
)  # fmt: skip

# The default menu's options: what a caller might say, and the option it should reach (None: none).
IN_GRAMMAR: tuple[tuple[str, str], ...] = (
    ("Questions.", "1"), ("I have a question.", "1"), ("Help, please.", "1"), ("Opening hours.", "1"),
    ("Hours.", "1"), ("Operator.", "0"), ("Operator, please.", "0"), ("A person, please.", "0"),
    ("Human.", "0"), ("Representative.", "0"),
)  # fmt: skip
OUT_OF_GRAMMAR: tuple[str, ...] = (
    "Pizza delivery.", "What's the weather like?", "My account number is wrong.", "Good morning.",
)  # fmt: skip
VOICES = ("piper", "piper-fast", "espeak", "espeak-f3")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms_summary(values: list[float]) -> str:
    if not values:
        return "n=0"
    return (
        f"p50 {pct(values, 0.5) * 1000:.0f} ms, p95 {pct(values, 0.95) * 1000:.0f} ms, "
        f"max {max(values) * 1000:.0f} ms (n={len(values)})"
    )


# -- generated caller speech, several voices -----------------------------------------------------------


def voice_speech(text: str, voice: str) -> bytes:
    """Phone speech (PCM16 8 kHz) in one of VOICES: Piper joe (normal, 15% faster) or espeak-ng
    (en-us male, en-us+f3 female), all through the same telephone chain."""
    if voice in ("piper", "espeak"):
        return phone_speech(text, voice)
    if voice == "piper-fast":
        from piper import SynthesisConfig

        from tests.helpers.speech import _piper_voice

        pv = _piper_voice()
        config = SynthesisConfig(
            normalize_audio=True, volume=0.5, noise_scale=0.5, noise_w_scale=0.6, length_scale=0.85
        )
        audio = np.concatenate([c.audio_float_array for c in pv.synthesize(text, config)])
        return telephone_chain(audio.astype(np.float64), int(pv.config.sample_rate))
    if voice == "espeak-f3":
        proc = subprocess.run(
            ["espeak-ng", "-v", "en-us+f3", "-s", "150", "-p", "60", "--stdout", text],
            capture_output=True,
            check=True,
        )
        with wave.open(io.BytesIO(proc.stdout)) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return telephone_chain(pcm.astype(np.float64) / 32768.0, rate)
    raise ValueError(voice)


# -- the bridge ----------------------------------------------------------------------------------------


def prepare_plans(root: Path) -> Path:
    plans = root / "dialplans"
    plans.mkdir()
    shutil.copy(REPO / "dialplans" / "default.yaml", plans / "default.yaml")
    shutil.copytree(REPO / "dialplans" / "audio", plans / "audio")
    (plans / "bench.yaml").write_text(BENCH_PLAN)
    # The default menu, with targets that say which option won and come back to the menu.
    default = yaml.safe_load((REPO / "dialplans" / "default.yaml").read_text())
    menu = dict(default["flows"]["main"][1]["menu"])
    targets = {"1": "chose_1", "0": "chose_0"}
    menu["options"] = {k: dict(v, goto=targets[k]) for k, v in menu["options"].items()}
    menu.update(retries=0, no_match="chose_none", no_input="spoken_menu", timeout="60s")
    spoken = {
        "numbers": {MENU_NUMBER: "spoken_menu"},
        "flows": {
            "spoken_menu": [{"menu": menu}],
            "chose_1": [{"say": "One."}, {"goto": "spoken_menu"}],
            "chose_0": [{"say": "Zero."}, {"goto": "spoken_menu"}],
            "chose_none": [{"say": "None."}, {"goto": "spoken_menu"}],
        },
    }
    (plans / "bench-spoken.yaml").write_text(yaml.safe_dump(spoken, sort_keys=False))
    return plans


async def at_flow(app: Any, caller: Caller, flows: tuple[str, ...], within_s: float) -> str | None:
    def where() -> str | None:
        call = live_call(app, caller.call_sid)
        runner = call.runner if call is not None else None
        return runner.flow if runner is not None and runner.flow in flows else None

    try:
        result: str = await wait_until(where, within_s)
        return result
    except TimeoutError:
        return None


async def wait_menu(app: Any, caller: Caller, flow: str) -> float:
    """Wait until the call stands at the menu (step 0) of `flow`; returns when it was seen there. The
    previous prompt was played out before the runner moved on, so audio after this is the menu's."""

    def ready() -> bool:
        call = live_call(app, caller.call_sid)
        return call is not None and call.runner is not None and call.runner.position == (flow, 0)

    await wait_until(ready, 15, f"menu {flow}")
    return time.monotonic()


# (a) --------------------------------------------------------------------------------------------------


async def bench_dtmf(url: str, app: Any, presses: int = 20) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"uncached": [], "waiting": [], "during_prompt": []}
    caller = await place_call(url, called=DTMF_NUMBER)
    try:
        for i in range(presses + 2 + 10):
            at_menu = await wait_menu(app, caller, "dtmf_loop")
            heard = await caller.wait_speech(at_menu, timeout=10)
            during = i >= presses + 2
            if during:
                await asyncio.sleep(0.3)  # press while the menu prompt plays
            else:
                await caller.wait_quiet(heard - 0.01, quiet_s=0.3)
            clears = len(caller.twilio.clears)
            t0 = await caller.press("1" if i % 2 == 0 else "2")
            if during:
                await caller.twilio.wait_for(lambda n=clears: len(caller.twilio.clears) > n, timeout=5)
                after = caller.twilio.clears[-1]
            else:
                after = t0
            first = await caller.wait_speech(after, timeout=10)
            kind = "during_prompt" if during else ("uncached" if i < 2 else "waiting")
            out[kind].append(first - t0)
            await at_flow(app, caller, ("dtmf_loop",), 10)
    finally:
        await caller.hang_up()
    return out


# (b) --------------------------------------------------------------------------------------------------

CHOICES = {"chose_1": "1", "chose_0": "0", "chose_none": "no match"}


async def bench_spoken(
    url: str, app: Any, voices: tuple[str, ...], speech: dict[tuple[str, str], bytes]
) -> list[tuple[str, str, str, str]]:
    """Returns (voice, sentence, expected, got) with got "1", "0", "no match" or "nothing"."""
    rows: list[tuple[str, str, str, str]] = []
    caller = await place_call(url, called=MENU_NUMBER)
    try:
        for voice in voices:
            items = [(s, e) for s, e in IN_GRAMMAR] + [(s, "none") for s in OUT_OF_GRAMMAR]
            for sentence, expected in items:
                at_menu = await wait_menu(app, caller, "spoken_menu")
                await caller.wait_speech(at_menu, timeout=10)
                await asyncio.sleep(0.3)
                await caller.say(silence(100) + speech[voice, sentence], tail_s=0.2)
                flow = await at_flow(app, caller, tuple(CHOICES), 6)
                got = CHOICES[flow] if flow is not None else "nothing"
                rows.append((voice, sentence, expected, got))
                if flow is not None:
                    await at_flow(app, caller, ("spoken_menu",), 10)
                else:  # nothing decided: the menu waits out its timeout; call again for the next one
                    await caller.hang_up()
                    caller = await place_call(url, called=MENU_NUMBER)
    finally:
        await caller.hang_up()
    return rows


# (c) --------------------------------------------------------------------------------------------------


async def bench_engine(url: str, app: Any, turns: int = 20) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"caller": [], "engine": [], "unanswered": []}
    speech = {q: phone_speech(q) for q in FAQ_QUESTIONS}
    caller = await place_call(url, called=FAQ_NUMBER)
    try:
        call = await wait_until(lambda: live_call(app, caller.call_sid), 10)
        await wait_until(lambda: call.agent is not None, 10)
        tap = EngineTap(app)
        await wait_until(tap.poll, 10)
        await asyncio.sleep(0.5)
        for i in range(turns):
            pcm = speech[FAQ_QUESTIONS[i % len(FAQ_QUESTIONS)]]
            n_events = len(tap.events)
            start, _ = await caller.say(pcm)
            end_of_speech = start + speech_span_ms(pcm)[1] / 1000
            try:
                first = await caller.wait_speech(end_of_speech, timeout=8)
            except TimeoutError:  # the turn was not detected or not answered
                out["unanswered"].append(float(i))
                continue
            out["caller"].append(first - end_of_speech)
            events = tap.events[n_events:]
            stopped = next(
                (t for t, _, e in events if e["type"] == "input_audio_buffer.speech_stopped"), None
            )
            delta = next((t for t, _, e in events if e["type"] == "response.output_audio.delta"), None)
            if stopped is not None and delta is not None:
                out["engine"].append(delta - stopped)
            await caller.wait_quiet(first - 0.01, quiet_s=0.5)
    finally:
        await caller.hang_up()
    return out


# (d) --------------------------------------------------------------------------------------------------


def bench_load(n: int = 30) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        load_dialplan(REPO / "dialplans")
        times.append(time.perf_counter() - t0)
    return times


async def bench_reload(url: str, plans: Path, n: int = 3) -> list[float]:
    times = []
    bench_file = plans / "bench.yaml"
    for i in range(n):
        before = (await healthz(url))["dialplan_version"]
        text = bench_file.read_text().replace("Press 1 or 2.", f"Press 1 or 2 ({i}).", 1)
        bench_file.write_text(text)
        times.append(await until_version(url, before + 1))
        bench_file.write_text(text.replace(f" ({i}).", ".", 1))
        times.append(await until_version(url, before + 2))
    return times


async def until_version(url: str, version: int) -> float:
    """Seconds until /healthz reports `version` (polled every 20 ms, at most 30 s)."""
    t0 = time.monotonic()
    for _ in range(1500):
        if (await healthz(url))["dialplan_version"] >= version:
            break
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


# -- report -----------------------------------------------------------------------------------------------


def write_report(figures: dict[str, Any], load_before: float, load_after: float, elapsed_s: float) -> None:
    dtmf, spoken, engine = figures["dtmf"], figures["spoken"], figures["engine"]
    load, reload_s, cli_s = figures["load"], figures["reload"], figures["cli"]
    lines = [
        "# End to end through the real app (Twilio path, embedded engine)",
        "",
        f"Command: `.venv/bin/python -m bench e2e` ({elapsed_s / 60:.1f} min). Machine: 2 cores; load "
        f"average (1 min) {load_before:.2f} before, {load_after:.2f} after (other engineers at work on "
        "the same cores: figures are noisy). One bridge (`create_app`, models preloaded) under uvicorn on "
        "127.0.0.1; calls placed as Twilio places them (webhook, TwiML, media stream) by the Twilio "
        "emulator, which plays what it receives in real time: 'heard' = the emulator started playing a "
        "frame louder than -47 dBFS.",
        "",
        "## (a) DTMF digit -> first audio of the next prompt, at the caller",
        "",
        "Menu `Press 1 or 2.`; each option says a short line (local Piper prompt, cached after its first "
        "use) and returns to the menu.",
        "",
        "| pressed | figure |",
        "|---|---|",
        f"| menu waiting in silence, prompt cached | {ms_summary(dtmf['waiting'])} |",
        f"| menu waiting, first use of each prompt (synthesized) | {ms_summary(dtmf['uncached'])} |",
        "| during the menu prompt (`clear`, then the next prompt), cached | "
        f"{ms_summary(dtmf['during_prompt'])} |",
        "",
        "## (b) Spoken options of the default menu",
        "",
        "The default menu's prompt and option words (copied from `dialplans/default.yaml`; each option "
        "reports itself and loops back, no retries), one call, the caller answering 0.3 s into the "
        "prompt. Recognition is the bridge's `MenuListener` (Silero VAD turn + pocketsphinx with the "
        "menu's phrases) and the runner's `match_option`. Voices: Piper joe (the engine's own voice), "
        "Piper 15% faster with more variation, espeak-ng en-us, espeak-ng en-us+f3; all through the "
        "telephone chain of tests/helpers/speech.py.",
        "",
        "| voice | in-grammar right | wrong option | no match / nothing | out-of-grammar false matches |",
        "|---|---|---|---|---|",
    ]
    for voice in VOICES:
        rows = [r for r in spoken if r[0] == voice]
        ing = [r for r in rows if r[2] != "none"]
        oog = [r for r in rows if r[2] == "none"]
        right = sum(1 for r in ing if r[3] == r[2])
        wrong = sum(1 for r in ing if r[3] in ("0", "1") and r[3] != r[2])
        missed = len(ing) - right - wrong
        false = sum(1 for r in oog if r[3] in ("0", "1"))
        lines.append(
            f"| {voice} | {right}/{len(ing)} ({100 * right / max(1, len(ing)):.0f}%) | {wrong} | {missed} "
            f"| {false}/{len(oog)} |"
        )
    ing_all = [r for r in spoken if r[2] != "none"]
    oog_all = [r for r in spoken if r[2] == "none"]
    right_all = sum(1 for r in ing_all if r[3] == r[2])
    false_all = sum(1 for r in oog_all if r[3] in ("0", "1"))
    lines += [
        f"| all | {right_all}/{len(ing_all)} ({100 * right_all / max(1, len(ing_all)):.0f}%) | "
        f"{sum(1 for r in ing_all if r[3] in ('0', '1') and r[3] != r[2])} | "
        f"{sum(1 for r in ing_all if r[3] not in ('0', '1'))} | {false_all}/{len(oog_all)} |",
        "",
        "<details><summary>every utterance</summary>",
        "",
        "| voice | caller says | expected | got |",
        "|---|---|---|---|",
        *[
            f"| {v} | {s} | {e} | {g}{'' if g == e or (e == 'none' and g not in ('0', '1')) else ' ✗'} |"
            for v, s, e, g in spoken
        ],
        "",
        "</details>",
        "",
        "## (c) Embedded engine: caller's end of speech -> first answer audio at the caller",
        "",
        "FAQ agent (`provider: local`, short cached answers), one call, Piper questions in turn. The end of "
        "speech is the last loud 10 ms of the utterance as sent; the engine's turn detection waits "
        "`silence_duration_ms` (500 ms by default) of silence before it answers, so that is in the figure.",
        "",
        "| measured | figure |",
        "|---|---|",
        f"| caller: end of speech -> first answer audio heard | {ms_summary(engine['caller'])} |",
        f"| engine alone: `speech_stopped` -> first `response.output_audio.delta` emitted | "
        f"{ms_summary(engine['engine'])} |",
        f"| turns not answered within 8 s | {len(engine['unanswered'])} of "
        f"{len(engine['unanswered']) + len(engine['caller'])} |",
        "",
        "## (d) Dialplans: validate + load, hot reload",
        "",
        "| what | figure |",
        "|---|---|",
        f"| `load_dialplan('dialplans')` (validate + load, {len(load)} runs) | "
        f"first {load[0] * 1000:.1f} ms; p50 {pct(load, 0.5) * 1000:.1f} ms, "
        f"p95 {pct(load, 0.95) * 1000:.1f} ms |",
        f"| `ivr-bridge dialplan check dialplans` (whole process) | {cli_s * 1000:.0f} ms |",
        f"| file saved -> new version serving (`/healthz`), watcher polls every 1 s and waits one quiet "
        f"poll | {ms_summary(reload_s)} |",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


async def run_calls(
    url: str, app: Any, plans: Path, figures: dict[str, Any], log: Callable[[str], None]
) -> None:
    figures["dtmf"] = await bench_dtmf(url, app)
    log(f"dtmf: {ms_summary(figures['dtmf']['waiting'])}")
    figures["engine"] = await bench_engine(url, app)
    log(f"engine: {ms_summary(figures['engine']['caller'])}")
    speech = {
        (voice, sentence): voice_speech(sentence, voice)
        for voice in VOICES
        for sentence in [s for s, _ in IN_GRAMMAR] + list(OUT_OF_GRAMMAR)
    }
    half = len(VOICES) // 2
    results = await asyncio.gather(
        bench_spoken(url, app, VOICES[:half], speech), bench_spoken(url, app, VOICES[half:], speech)
    )  # two callers at once, two voices each
    figures["spoken"] = results[0] + results[1]
    log(f"spoken: {len(figures['spoken'])} utterances")
    figures["reload"] = await bench_reload(url, plans)


def main() -> None:
    t_start = time.monotonic()
    load_before = os.getloadavg()[0]
    figures: dict[str, Any] = {"load": bench_load()}
    t0 = time.perf_counter()
    subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-m", "bridge", "dialplan", "check", "dialplans"],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    figures["cli"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        plans = prepare_plans(Path(tmp))
        load_dialplan(plans)  # fail early on a bad bench plan

        def make(port: int) -> Any:
            return create_app(Settings(port=port, dialplans=plans), preload_models=True)

        with serve(make) as (url, app):
            asyncio.run(run_calls(url, app, plans, figures, lambda m: print(m, flush=True)))
    write_report(figures, load_before, os.getloadavg()[0], time.monotonic() - t_start)


if __name__ == "__main__":
    main()
