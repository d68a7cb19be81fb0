"""VAD on real phone speech: Silero at 8 kHz (and the webrtcvad fallback) through SpeechDetector."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.errors import ConfigError
from bridge.media.vad import SileroVad, SpeechDetector, SpeechStart, SpeechStop, WebRtcVad, create_vad
from tests.helpers.speech import (
    asterisk_prompt,
    chunks,
    dtmf_tone,
    mix,
    phone_speech,
    pink_noise,
    silence,
    speech_span_ms,
)

pytestmark = pytest.mark.slow  # loads the Silero model (and Piper for the test speech)

TOLERANCE_MS = 100


def run(detector: SpeechDetector, pcm: bytes, chunk_ms: int = 20) -> list[SpeechStart | SpeechStop]:
    events: list[SpeechStart | SpeechStop] = []
    for chunk in chunks(pcm, chunk_ms):
        events.extend(detector.feed(chunk))
    return events


@pytest.fixture(scope="module")
def utterance() -> bytes:
    return phone_speech("Hello, I would like to check the balance on my account please.")


def test_silero_probabilities_per_window() -> None:
    vad = SileroVad()
    probs = vad.process(silence(1000))
    assert len(probs) == 8000 // 256
    assert all(p < 0.1 for p in probs)
    assert vad.process(b"\x00" * 100) == [] or len(vad.process(b"")) == 0


def test_onset_and_offset_near_true_boundaries(utterance: bytes) -> None:
    lead_ms, tail_ms = 1000, 1200
    pcm = silence(lead_ms) + utterance + silence(tail_ms)
    true_start, true_end = speech_span_ms(utterance)
    events = run(SpeechDetector(), pcm)
    assert [type(e) for e in events] == [SpeechStart, SpeechStop]
    assert abs(events[0].audio_ms - (lead_ms + true_start)) <= TOLERANCE_MS
    assert abs(events[1].audio_ms - (lead_ms + true_end)) <= TOLERANCE_MS


def test_odd_chunk_sizes_give_the_same_events(utterance: bytes) -> None:
    pcm = silence(500) + utterance + silence(900)
    by_20ms = run(SpeechDetector(), pcm)
    detector = SpeechDetector()
    odd: list[SpeechStart | SpeechStop] = []
    for i in range(0, len(pcm), 333):  # odd byte counts, not frame aligned
        odd.extend(detector.feed(pcm[i : i + 333]))
    assert odd == by_20ms
    assert detector.position_ms == len(pcm) // 16


def test_human_prompt_detected() -> None:
    prompt = asterisk_prompt("hello-world")
    start, end = speech_span_ms(prompt, below_peak_db=25)
    events = run(SpeechDetector(), silence(600) + prompt + silence(900))
    assert [type(e) for e in events] == [SpeechStart, SpeechStop]
    # The soft "h" of this recording starts ~130 ms before Silero's first window above 0.5.
    assert -50 <= events[0].audio_ms - (600 + start) <= 2 * TOLERANCE_MS
    assert abs(events[1].audio_ms - (600 + end)) <= TOLERANCE_MS


def test_ignores_silence_dtmf_and_moderate_noise() -> None:
    tones = b"".join(dtmf_tone(d, 120) + silence(80) for d in "1234567890*#")
    for pcm in (silence(3000), tones, pink_noise(4000, snr_db=10)):
        detector = SpeechDetector()
        assert run(detector, pcm) == []
        assert not detector.speaking


def test_speech_in_noise_still_detected(utterance: bytes) -> None:
    pcm = silence(800) + utterance + silence(1000)
    noisy = mix(pcm, pink_noise(len(pcm) // 16, snr_db=10, seed=7))
    events = run(SpeechDetector(), noisy)
    assert isinstance(events[0], SpeechStart)
    assert abs(events[0].audio_ms - (800 + speech_span_ms(utterance)[0])) <= 2 * TOLERANCE_MS


def test_min_speech_ms_rejects_short_bursts() -> None:
    word = phone_speech("Yes.")
    start, end = speech_span_ms(word)
    length_ms = end - start
    pcm = silence(500) + word + silence(800)
    assert run(SpeechDetector(min_speech_ms=length_ms + 300), pcm) == []
    events = run(SpeechDetector(min_speech_ms=100), pcm)
    assert [type(e) for e in events] == [SpeechStart, SpeechStop]


def test_onset_is_reported_only_after_min_speech(utterance: bytes) -> None:
    detector = SpeechDetector(min_speech_ms=300)
    pcm = silence(500) + utterance
    fed_ms = 0
    for chunk in chunks(pcm):
        events = detector.feed(chunk)
        fed_ms += 20
        if events:
            assert isinstance(events[0], SpeechStart)
            assert fed_ms - events[0].audio_ms >= 300
            break
    else:
        pytest.fail("no onset")
    assert detector.speaking


def test_reset_starts_a_new_stream(utterance: bytes) -> None:
    detector = SpeechDetector()
    run(detector, silence(300) + utterance[: len(utterance) // 2])
    assert detector.speaking
    detector.reset()
    assert not detector.speaking
    assert detector.position_ms == 0
    events = run(detector, silence(400) + utterance + silence(800))
    assert abs(events[0].audio_ms - (400 + speech_span_ms(utterance)[0])) <= TOLERANCE_MS


def test_webrtc_fallback_same_interface(utterance: bytes) -> None:
    vad = create_vad("webrtc")
    assert isinstance(vad, WebRtcVad)
    assert vad.process(silence(100)) == [0.0] * 5
    events = run(SpeechDetector(vad=vad), silence(600) + utterance + silence(1000))
    assert isinstance(events[0], SpeechStart)
    assert abs(events[0].audio_ms - (600 + speech_span_ms(utterance)[0])) <= 2 * TOLERANCE_MS


def test_bad_settings_rejected() -> None:
    with pytest.raises(ConfigError):
        create_vad("nope")
    with pytest.raises(ConfigError):
        SpeechDetector(threshold=0.5, neg_threshold=0.7, vad=WebRtcVad())


def test_energy_onset_fires_once_per_burst_and_rearms_after_quiet() -> None:
    from bridge.media.vad import EnergyOnset

    e = EnergyOnset(frames=2, rearm_frames=3)
    assert [e.feed(f) for f in (True, False, True, True, True, True)] == [
        False,
        False,
        False,
        True,
        False,
        False,
    ]
    assert [e.feed(f) for f in (False, False, True, True)] == [False, False, False, False]  # not re-armed
    assert [e.feed(f) for f in (False, False, False, True, True)] == [False, False, False, False, True]


def _line_noise(ms: int, dbfs: float, seed: int = 5) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(ms * 8) * 10 ** (dbfs / 20) * 32768
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


@pytest.mark.parametrize("voice", ["piper", "human"])
def test_energy_gate_skips_quiet_line_without_moving_onsets(utterance: bytes, voice: str) -> None:
    """On a quiet line (-70 dBFS) Silero is not run outside speech, and the onsets and offsets of a
    normal and a quiet (-12 dB) talker stay where the ungated detector puts them."""
    speech = utterance if voice == "piper" else asterisk_prompt("hello-world")
    quiet = (np.frombuffer(speech, dtype="<i2") * 10 ** (-12 / 20)).astype("<i2").tobytes()
    for talker in (speech, quiet):
        pcm = silence(1500) + talker + silence(1500) + talker + silence(1200)
        pcm = mix(pcm, _line_noise(len(pcm) // 16, -70.0))
        ungated = SpeechDetector(gate_dbfs=None)
        gated = SpeechDetector()
        expected = run(ungated, pcm)
        got = run(gated, pcm)
        assert [type(e) for e in got] == [type(e) for e in expected] == [SpeechStart, SpeechStop] * 2
        # Silero's recurrent state differs (it did not hear the noise), so an event can move by a
        # window or three either way; over 40 prompts the mean onset moved by < 4 ms (load.md).
        assert all(abs(a.audio_ms - b.audio_ms) <= TOLERANCE_MS for a, b in zip(got, expected, strict=True))
        assert isinstance(gated.vad, SileroVad)
        assert isinstance(ungated.vad, SileroVad)
        assert ungated.vad.gated == 0
        assert gated.vad.gated >= (4200 - 2 * 600) // 32  # the line noise, less the offset hangovers


def test_energy_gate_never_gates_inside_speech_and_any_chunking_agrees(utterance: bytes) -> None:
    pcm = mix(silence(800) + utterance + silence(900), _line_noise(800 + 900 + len(utterance) // 16, -70.0))
    by_20ms = SpeechDetector()
    expected = run(by_20ms, pcm)
    whole = SpeechDetector()
    assert whole.feed(pcm) == expected  # one feed of many windows: the gate releases at the onset
    assert [type(e) for e in expected] == [SpeechStart, SpeechStop]
    assert isinstance(whole.vad, SileroVad)
    assert isinstance(by_20ms.vad, SileroVad)
    assert 0 < whole.vad.gated <= by_20ms.vad.gated  # ungated from the onset to the end of the feed
