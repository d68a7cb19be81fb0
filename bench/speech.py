"""Speech components: model load times, VAD cost, ASR speed/accuracy per search, TTS latency, memory.

Writes bench/results/speech.md. Run: .venv/bin/python -m bench speech
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "speech.md"

PHRASE_SETS: dict[str, tuple[list[str], list[tuple[str, str]]]] = {
    "menu": (
        ["billing", "sales", "technical support", "operator", "cancel my account"],
        [
            ("Billing.", "billing"), ("Sales please.", "sales"), ("Technical support.", "technical support"),
            ("Operator.", "operator"), ("I want to cancel my account.", "cancel my account"),
            ("Um, billing please.", "billing"), ("Sales.", "sales"), ("Support please.", "support"),
            ("Yes.", "yes|yeah|yep|yup"), ("No.", "no|nope"),
        ],
    ),
    "orders": (
        ["track my order", "return an item", "talk to an agent", "store hours"],
        [
            ("I want to track my order.", "track my order"), ("Return an item.", "return an item"),
            ("Can I talk to an agent?", "talk to an agent"), ("Store hours.", "store hours"),
            ("Track my order please.", "track my order"), ("Yes please.", "yes|yeah|yep|yup"),
            ("My order number is four two seven one.", "four|two|seven|one"),
        ],
    ),
}  # fmt: skip
OUT_OF_GRAMMAR = [
    "What time do you close today?",
    "I have a question about my last payment.",
    "Can you tell me where the nearest store is?",
    "My dog ate my homework yesterday.",
    "The weather is really nice this morning.",
    "I would like to speak to someone about a problem.",
    "Hello, is anybody there?",
    "I already called you twice this week.",
]
GENERAL = [
    ("I have a question about my billing statement.", None),
    ("What time do you close today?", None),
    ("I would like to speak to someone about a problem.", None),
    ("Can you tell me where the nearest store is?", None),
]


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1e6


def main() -> None:
    from bridge.media.vad import SileroVad, WebRtcVad
    from bridge.speech.asr import Recognizer
    from bridge.speech.models import SharedModels
    from bridge.speech.tts import Synthesizer
    from tests.helpers.speech import chunks, phone_speech, silence

    load_avg = os.getloadavg()
    rows: list[str] = []
    base_rss = rss_mb()

    # -- loads ------------------------------------------------------------------------------------
    shared = SharedModels()
    import bridge.speech.models as models

    models._shared = shared  # measure a fresh process-wide holder
    shared.vad_session()
    shared.piper_voice()
    shared.sphinx()
    shared.pronunciations()
    rss_models = rss_mb()
    load = shared.load_report()

    # -- VAD --------------------------------------------------------------------------------------
    speech = b"".join(phone_speech(s) for s, _ in PHRASE_SETS["menu"][1]) + silence(2000)
    frames = chunks(speech, 20)
    vad_us: dict[str, float] = {}
    for name, vad in (("silero", SileroVad()), ("webrtc", WebRtcVad())):
        start = time.perf_counter()
        for frame in frames:
            vad.process(frame)
        vad_us[name] = (time.perf_counter() - start) / len(frames) * 1e6

    # -- ASR: accuracy, RTF, finalisation ---------------------------------------------------------
    asr_rows: list[str] = []
    mem_rows: list[str] = []
    for mode in ("lm", "jsgf"):
        before = rss_mb()
        rec = Recognizer(shared, mode=mode)
        hits = total = false_matches = 0
        decode_s = audio_s = 0.0
        fin_ms: list[float] = []
        misses: list[str] = []
        for phrases, answers in PHRASE_SETS.values():
            rec.set_expected(phrases)
            for text, expected in answers:
                pcm = silence(300) + phone_speech(text) + silence(250)
                start = time.perf_counter()
                result = rec.recognize(pcm)
                decode_s += time.perf_counter() - start
                audio_s += len(pcm) / 16000
                fin_ms.append(result.elapsed_ms)
                total += 1
                ok = result.in_grammar and any(f" {o} " in f" {result.text} " for o in expected.split("|"))
                hits += ok
                if not ok:
                    misses.append(f"{text!r} -> {result.text!r}")
            for text in OUT_OF_GRAMMAR:
                pcm = silence(300) + phone_speech(text) + silence(250)
                start = time.perf_counter()
                result = rec.recognize(pcm)
                decode_s += time.perf_counter() - start
                audio_s += len(pcm) / 16000
                fin_ms.append(result.elapsed_ms)
                false_matches += result.in_grammar
        mem_rows.append(f"| {mode} phrase-set decoders ({len(PHRASE_SETS)} sets) | {rss_mb() - before:.0f} |")
        asr_rows.append(
            f"| {mode} | {hits}/{total} | {false_matches}/{len(OUT_OF_GRAMMAR) * len(PHRASE_SETS)} "
            f"| {decode_s / audio_s:.3f} | {statistics.median(fin_ms):.0f} / {max(fin_ms):.0f} |"
        )
        if misses:
            asr_rows.append(f"|  misses: {'; '.join(misses)} | | | | |")
    # general LM
    before = rss_mb()
    rec = Recognizer(shared)
    rec.set_expected(None)
    rec.recognize(silence(500))  # creates the general decoder
    mem_rows.append(f"| general-LM decoder (shared LM) | {rss_mb() - before:.0f} |")
    words_total = words_hit = 0
    decode_s = audio_s = 0.0
    fin_ms = []
    for text, _ in GENERAL:
        pcm = silence(300) + phone_speech(text) + silence(250)
        start = time.perf_counter()
        result = rec.recognize(pcm)
        decode_s += time.perf_counter() - start
        audio_s += len(pcm) / 16000
        fin_ms.append(result.elapsed_ms)
        ref = [w.strip(".,?").lower() for w in text.split()]
        words_total += len(ref)
        words_hit += sum(1 for w in ref if w in result.text.split())
    asr_rows.append(
        f"| general LM | {words_hit}/{words_total} words | – | {decode_s / audio_s:.3f} "
        f"| {statistics.median(fin_ms):.0f} / {max(fin_ms):.0f} |"
    )

    # -- TTS --------------------------------------------------------------------------------------
    reply = "Thanks for calling Acme. Your order shipped yesterday and arrives on Monday. Anything else?"
    tts_rows: list[str] = []
    for engine in ("piper", "espeak"):
        synth = Synthesizer(out_rate=8000, engine=engine, cache=None)
        ttfa: list[float] = []
        rtf: list[float] = []
        for _ in range(3):
            start = time.perf_counter()
            first = None
            samples = 0
            for _text, audio in synth.stream(reply, threading.Event()):
                if first is None:
                    first = time.perf_counter() - start
                samples += len(audio)
            total_s = time.perf_counter() - start
            ttfa.append((first or 0) * 1000)
            rtf.append(total_s / (samples / 8000))
        tts_rows.append(f"| {synth.voice} | {statistics.median(ttfa):.0f} | {statistics.median(rtf):.3f} |")

    rows += [
        "# Speech components",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores; load average at start "
        f"{load_avg[0]:.1f} / {load_avg[1]:.1f} / {load_avg[2]:.1f} (others were working: expect noise).",
        "Test speech: Piper joe voice through the telephone chain (tests/helpers/speech.py), so accuracy is",
        "on synthetic phone speech; human callers do worse (reference §3.2).",
        "",
        "## Model loads (ms)",
        "",
        "| model | load ms |",
        "|---|---|",
        *[f"| {name} | {ms:.0f} |" for name, ms in load.items()],
        f"| RSS after loading all shared models | +{rss_models - base_rss:.0f} MB |",
        "",
        "## VAD cost per 20 ms frame (1 thread)",
        "",
        "| VAD | µs / 20 ms frame |",
        "|---|---|",
        f"| Silero 8 kHz (onnxruntime, 256-sample windows) | {vad_us['silero']:.1f} |",
        f"| webrtcvad mode 2 | {vad_us['webrtc']:.1f} |",
        "",
        "## ASR (pocketsphinx 5.1.1, 20 ms chunks, decoder warm across turns)",
        "",
        "Intent accuracy: an answer counts when the expected phrase appears in the transcript and the",
        "transcript is flagged `in_grammar`. False matches: out-of-grammar sentences flagged `in_grammar`.",
        "RTF includes resampling; finalisation = `end()` (flush + final passes), median / max.",
        "",
        "| search | in-grammar answers recognised | false matches | RTF | finalisation ms |",
        "|---|---|---|---|---|",
        *asr_rows,
        "",
        "## Memory per recognizer (RSS growth)",
        "",
        "| what | MB |",
        "|---|---|",
        *mem_rows,
        "",
        "## TTS (1 onnxruntime thread, 8 kHz out, 3-sentence reply)",
        "",
        "| voice | time to first audio ms (median) | RTF (median) |",
        "|---|---|---|",
        *tts_rows,
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(rows))
    print("\n".join(rows))
