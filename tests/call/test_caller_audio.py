"""CallerFront: the call's composition of echo canceller and barge-in detector, on a fake clock.

The reference is fed as the pacer schedules frames (the call's clock, 100 ms ahead of the caller
audio, as on Twilio), the caller audio as the leg delivers it; the echo comes back 150 ms later
at 15 dB echo return loss (speaker + room colouring from tests/media/test_echo.py)."""

from __future__ import annotations

import numpy as np

from bridge.call.caller_audio import CallerFront
from bridge.media.echo import EchoCanceller
from bridge.media.g711 import FRAME_BYTES_PCM8K
from bridge.media.vad import SpeechDetector, SpeechStart
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
