"""CallerFront: the call's composition of echo canceller and barge-in detector, on a fake clock.

The reference is fed as the pacer schedules frames (the call's clock, 100 ms ahead of the caller
audio, as on Twilio), the caller audio as the leg delivers it; the echo comes back 150 ms later
at 15 dB echo return loss (speaker + room colouring from tests/media/test_echo.py)."""

from __future__ import annotations

import numpy as np

from bridge.call.caller_audio import CallerFront
from bridge.media.echo import EchoCanceller
from bridge.media.g711 import FRAME_BYTES_PCM8K
from bridge.media.vad import EarlyOnset, EnergyOnset, SpeechDetector, SpeechStart
from tests.helpers.speech import phone_speech, silence
from tests.media.test_echo import echo_path, to_pcm

CLOCK_OFFSET_MS = 123_456.0  # the call's clock is not the caller-audio clock


def front(echo: bool = True) -> CallerFront:
    detector = SpeechDetector(threshold=0.5, min_speech_ms=64, min_silence_ms=300)
    return CallerFront(detector, EchoCanceller() if echo else None)


def run(f: CallerFront, near: bytes, far: bytes | None, lead_ms: float = 100.0) -> tuple[bytes, list[int]]:
    """Per 20 ms: the pacer sends the far frame due `lead_ms` ahead, then the caller frame arrives."""
    out = bytearray()
    onsets: list[int] = []
    step = FRAME_BYTES_PCM8K
    lead = int(lead_ms // 20) * step
    for i in range(0, len(near) - step + 1, step):
        now = CLOCK_OFFSET_MS + i / 16
        j = i + lead
        if far is not None and j + step <= len(far):
            f.played(far[j : j + step], now + lead_ms)
        cleaned, changes = f.hear(near[i : i + step], now + 20)
        out += cleaned
        onsets += [i // 16 for c in changes if isinstance(c, SpeechStart)]
    return bytes(out), onsets


def bot_audio() -> bytes:
    lines = [
        "Thanks for calling. I can help you with billing, orders, or technical support.",
        "Your order number four two seven one shipped yesterday and should arrive on Friday.",
    ]
    return b"".join(phone_speech(t) + silence(300) for t in lines) * 2


def test_the_bots_echo_does_not_reach_the_detector() -> None:
    far = bot_audio()
    x = np.frombuffer(far, dtype="<i2").astype(np.float64)
    near = to_pcm(echo_path(x, 150, 15))
    raw_onsets = run(front(echo=False), near, far)[1]
    cleaned, onsets = run(front(), near, far)
    assert raw_onsets, "the echo alone must trigger the bare detector (else this test proves nothing)"
    assert onsets == []
    y = np.frombuffer(cleaned, dtype="<i2").astype(np.float64)
    n = np.frombuffer(near, dtype="<i2").astype(np.float64)[: len(y)]
    half = len(y) // 2  # after convergence: at least 20 dB less echo
    assert np.sum(n[half:] ** 2) / max(np.sum(y[half:] ** 2), 1.0) > 10 ** (20 / 10)


def test_the_caller_over_the_echo_is_detected_promptly() -> None:
    far = bot_audio()
    x = np.frombuffer(far, dtype="<i2").astype(np.float64)
    caller = np.frombuffer(phone_speech("Wait, I need to talk to a person.", voice="espeak"), "<i2")
    near_x = echo_path(x, 150, 15)
    at = 6 * 8000
    near_x[at : at + len(caller)] += caller
    _, onsets = run(front(), to_pcm(near_x), far)
    assert len(onsets) == 1
    assert 0 <= onsets[0] - 6000 < 400


def test_no_bot_audio_passes_the_very_same_bytes() -> None:
    f = front()
    frame = to_pcm(np.full(160, 1000.0))
    cleaned, _ = f.hear(frame, 0.0)
    assert cleaned is frame
    f.use_echo = False  # the agent step turned it off: not even fed
    f.played(frame, 20.0)
    assert f.hear(frame, 20.0)[0] is frame


def upstream_onsets(audio: bytes) -> list[int]:
    """Onsets of the engine's server-VAD defaults (0.5, 200 ms) on what goes to the model."""
    up = SpeechDetector(threshold=0.5, min_speech_ms=200, min_silence_ms=500)
    return [e.audio_ms for e in up.feed(audio) if isinstance(e, SpeechStart)]


def test_before_the_echo_path_is_found_the_model_gets_the_gated_audio() -> None:
    """The first second of the bot's speech, before alignment: the model's VAD must not hear the echo
    (loud: 10 dB echo return loss), which it does with the audio as is."""
    far = silence(100) + bot_audio()[: 16000 * 3]  # the pacer's lead: every frame that echoes is fed
    x = np.frombuffer(far, dtype="<i2").astype(np.float64)
    near = to_pcm(echo_path(x, 50, 10))
    f = CallerFront(
        SpeechDetector(threshold=0.3, min_speech_ms=32, min_silence_ms=300),
        EchoCanceller(),
        gate_upstream_unaligned=False,
    )
    assert upstream_onsets(run(f, near, far)[0]), "the raw echo must reach the model's VAD (else no proof)"
    f = CallerFront(SpeechDetector(threshold=0.3, min_speech_ms=32, min_silence_ms=300), EchoCanceller())
    assert upstream_onsets(run(f, near, far)[0]) == []


def test_a_caller_over_the_bot_on_a_line_without_echo_reaches_the_model_whole() -> None:
    """No echo at all (the path is never found): once the detector hears the caller, the model and the
    menu get the caller's audio as is."""
    far = bot_audio()[: 16000 * 3]
    caller = phone_speech("Operator.", voice="espeak")
    near = silence(500) + caller + silence(500)
    f = CallerFront(SpeechDetector(threshold=0.3, min_speech_ms=32, min_silence_ms=300), EchoCanceller())
    out, onsets = run(f, near, far)
    assert onsets
    start = onsets[0] * 16 + 3 * FRAME_BYTES_PCM8K  # a few frames after the detector's onset ...
    end = 500 * 16 + len(caller) - 2 * FRAME_BYTES_PCM8K
    assert out[start:end] == near[start:end]  # ... to the end of the word: untouched


def test_an_unvoiced_onset_over_the_echo_gives_an_early_onset_before_the_detector() -> None:
    far = bot_audio()
    x = np.frombuffer(far, dtype="<i2").astype(np.float64)
    caller = np.frombuffer(phone_speech("Stop, I want to cancel my order.", voice="espeak"), "<i2")
    near_x = echo_path(x, 150, 15)
    at = 6 * 8000
    near_x[at : at + len(caller)] += caller
    f = CallerFront(SpeechDetector(threshold=0.5, min_speech_ms=64, min_silence_ms=300), EchoCanceller())
    f.onsets = EnergyOnset()  # off by default (see bench/results/bargein.md, phase 3)
    step = FRAME_BYTES_PCM8K
    near = to_pcm(near_x)
    early: list[int] = []
    speech: list[int] = []
    for i in range(0, len(near) - step + 1, step):
        now = CLOCK_OFFSET_MS + i / 16
        if i + 5 * step + step <= len(far):
            f.played(far[i + 5 * step : i + 6 * step], now + 100)
        for c in f.hear(near[i : i + step], now + 20)[1]:
            (early if isinstance(c, EarlyOnset) else speech).append(i // 16)
    assert early
    assert speech
    assert 6000 <= early[0] < speech[0] <= 6400
