"""bridge/media/echo.py: the echo canceller on real (Piper) bot speech through a synthetic echo path."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import butter, lfilter, sosfilt

from bridge.media.echo import COLD_GATE_MS, EchoCanceller, EchoCancellerError
from bridge.media.g711 import FRAME_BYTES_PCM8K
from tests.helpers.speech import phone_speech, silence

BOT_LINES = [
    "Thanks for calling. I can help you with billing, orders, or technical support.",
    "Your order number four two seven one shipped yesterday and should arrive on Friday.",
    "I'm sorry, I didn't catch that. Could you say it again, please?",
]


@pytest.fixture(scope="module")
def bot() -> np.ndarray:
    pcm = b"".join(phone_speech(t) + silence(300) for t in BOT_LINES) * 2
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


@pytest.fixture(scope="module")
def caller() -> np.ndarray:
    return np.frombuffer(phone_speech("Wait, I need to talk to a person.", voice="espeak"), "<i2").astype(
        float
    )


def echo_path(x: np.ndarray, delay_ms: float, erl_db: float, seed: int = 3) -> np.ndarray:
    """Speaker band-pass + a 30 ms decaying room response, then delay and echo return loss."""
    rng = np.random.default_rng(seed)
    ir = rng.standard_normal(240) * np.exp(-np.arange(240) / 40.0)
    ir[0] += 2.0
    sos = butter(2, [350.0, 3200.0], btype="bandpass", fs=8000, output="sos")
    y = sosfilt(sos, lfilter(ir, [1.0], x))
    y *= np.sqrt(np.mean(x**2) / np.mean(y**2)) * 10 ** (-erl_db / 20)
    d = int(delay_ms * 8)
    return np.concatenate([np.zeros(d), y[: len(x) - d]])


def to_pcm(x: np.ndarray) -> bytes:
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


def run(ec: EchoCanceller, near: bytes, far: bytes | None, *, skip_silent_far: bool = True) -> np.ndarray:
    """Feed 20 ms frames as the call does: the far frame that starts playing now (only while the bot
    speaks, unless skip_silent_far is False), then the caller's frame."""
    out = bytearray()
    for i in range(0, len(near) - FRAME_BYTES_PCM8K + 1, FRAME_BYTES_PCM8K):
        if far is not None and i + FRAME_BYTES_PCM8K <= len(far):
            frame = far[i : i + FRAME_BYTES_PCM8K]
            if any(frame) or not skip_silent_far:
                ec.far(frame, at_ms=ec.position_ms)
        out += ec.near(near[i : i + FRAME_BYTES_PCM8K])
    return np.frombuffer(bytes(out), dtype="<i2").astype(np.float64)


def echo_passed_before_alignment_db(far: bytes, echo: bytes) -> float:
    """Play `far` with `echo` as the caller's audio, frame by frame: the share of the echo's energy
    that the canceller passed (dB) while its delay was not yet found."""
    ec = EchoCanceller()
    given = out = 0.0
    for i in range(0, len(echo) - FRAME_BYTES_PCM8K + 1, FRAME_BYTES_PCM8K):
        ec.far(far[i : i + FRAME_BYTES_PCM8K], at_ms=ec.position_ms)
        cleaned = np.frombuffer(ec.near(echo[i : i + FRAME_BYTES_PCM8K]), dtype="<i2").astype(np.float64)
        if not ec.aligned:
            frame = np.frombuffer(echo[i : i + FRAME_BYTES_PCM8K], dtype="<i2").astype(np.float64)
            given += float(np.sum(frame**2))
            out += float(np.sum(cleaned**2))
    assert given > 0, "the delay was found before any echo arrived"
    return float(10 * np.log10(max(out, 1.0) / given))


def erle_db(echo: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(echo**2) / max(np.sum(out**2), 1.0)))


def test_erle_on_150ms_15db_echo(bot: np.ndarray) -> None:
    echo = echo_path(bot, 150, 15)
    ec = EchoCanceller()
    out = run(ec, to_pcm(echo), to_pcm(bot))
    half = len(out) // 2
    assert ec.delay_ms is not None
    assert abs(ec.delay_ms - 150) < 10
    # Whole path (filter + suppressor) after convergence: the echo is all but gone.
    assert erle_db(echo[half : len(out)], out[half:]) > 30
    # The linear filter alone also removes most of it.
    lin = EchoCanceller(suppress=False)
    out_lin = run(lin, to_pcm(echo), to_pcm(bot), skip_silent_far=False)
    assert erle_db(echo[half : len(out_lin)], out_lin[half:]) > 12


def test_double_talk_preserves_the_caller(bot: np.ndarray, caller: np.ndarray) -> None:
    echo = echo_path(bot, 150, 15)
    onset = len(bot) // 2
    near = echo.copy()
    near[onset : onset + len(caller)] += caller
    ec = EchoCanceller()
    out = run(ec, to_pcm(near), to_pcm(bot))
    seg = slice(onset, onset + len(caller))
    got = out[seg]
    corr = float(np.dot(got, caller) / np.sqrt(np.dot(got, got) * np.dot(caller, caller)))
    assert corr > 0.9
    # Not attenuated either: the caller's level is kept within 2 dB.
    assert abs(10 * np.log10(np.dot(got, got) / np.dot(caller, caller))) < 2.0
    # And the caller talking over the bot did not make the filter diverge: echo after it is still removed.
    after = slice(onset + len(caller) + 4000, len(out))
    assert erle_db(echo[after], out[after]) > 25


def test_tracks_a_change_of_delay(bot: np.ndarray) -> None:
    long_bot = np.concatenate([bot, bot])
    first = echo_path(long_bot, 100, 15)
    second = echo_path(long_bot, 320, 15)
    switch = len(long_bot) // 2
    near = np.concatenate([first[:switch], second[switch:]])
    ec = EchoCanceller()
    out = run(ec, to_pcm(near), to_pcm(long_bot))
    assert ec.delay_ms is not None
    assert abs(ec.delay_ms - 320) < 10
    assert ec.stats.delay_changes >= 2
    tail = slice(len(out) - len(out) // 5, len(out))  # last 20 %: converged on the new path
    assert erle_db(near[tail], out[tail]) > 25


def test_no_reference_passes_audio_unchanged(caller: np.ndarray) -> None:
    near = to_pcm(np.concatenate([caller, caller * 0.3]))
    near = near[: len(near) // FRAME_BYTES_PCM8K * FRAME_BYTES_PCM8K]
    ec = EchoCanceller()
    assert run(ec, near, None).astype("<i2").tobytes() == near
    # An all-zero reference (the bot "playing" digital silence) is no reference.
    ec = EchoCanceller()
    assert run(ec, near, bytes(len(near)), skip_silent_far=False).astype("<i2").tobytes() == near


def test_reference_long_ago_passes_audio_unchanged(bot: np.ndarray, caller: np.ndarray) -> None:
    ec = EchoCanceller()
    run(ec, to_pcm(echo_path(bot[:40000], 150, 15)), to_pcm(bot[:40000]))
    later = to_pcm(np.concatenate([np.zeros(8000), caller]))
    later = later[: len(later) // FRAME_BYTES_PCM8K * FRAME_BYTES_PCM8K]
    out = run(ec, later, None)
    # Once the last reference is older than the longest echo path (500 ms + the filter), audio is untouched.
    assert out[4800:].astype("<i2").tobytes() == later[4800 * 2 :]


def test_a_clean_line_passes_the_caller_once_no_echo_was_found(bot: np.ndarray, caller: np.ndarray) -> None:
    """No echo at all while the bot plays loudly: until COLD_GATE_MS of bot audio have gone by without
    an echo delay being found, a quieter caller is gated; after that the line counts as clean and the
    caller's audio passes untouched (so a caller can still barge in over a loud bot)."""
    seconds = 6
    loud_bot = bot[: seconds * 8000] * 2.0
    talk = np.tile(caller, seconds * 8000 // len(caller) + 1)[: seconds * 8000] * 0.5  # 6+ dB below the bot
    near = to_pcm(talk)
    ec = EchoCanceller()
    out = run(ec, near, to_pcm(loud_bot))
    assert not ec.aligned
    given = np.frombuffer(near, dtype="<i2")
    assert out[-16000:].astype("<i2").tobytes() == given[-16000:].tobytes()  # the last 2 s untouched
    first = COLD_GATE_MS * 8  # samples
    assert np.sum(np.abs(out[:first])) < 0.5 * np.sum(np.abs(given[:first]))  # gated while cold


def test_bad_frames_are_rejected_clearly() -> None:
    ec = EchoCanceller()
    with pytest.raises(EchoCancellerError, match="one 20 ms frame of PCM16 at 8 kHz"):
        ec.near(bytes(160))
    with pytest.raises(EchoCancellerError, match="320 bytes"):
        ec.near(bytes(321))
    with pytest.raises(EchoCancellerError, match="even byte count"):
        ec.far(bytes(161))
    with pytest.raises(EchoCancellerError, match="too far ahead"):
        ec.far(bytes(320), at_ms=60_000)
    with pytest.raises(EchoCancellerError, match="max_delay_ms"):
        EchoCanceller(max_delay_ms=5000)


def test_a_caller_who_answers_early_on_a_clean_line_is_heard_at_once(
    bot: np.ndarray, caller: np.ndarray
) -> None:
    """A menu prompt plays loudly on a line without echo; the caller keeps quiet for 0.6 s, then
    answers 6 dB below the bot, long before COLD_GATE_MS: the quiet frames under the playing bot
    already bound the echo coupling at every delay to the noise, so the answer passes whole."""
    loud_bot = bot[:16000] * 2.0
    talk = np.zeros(16000)
    answer = caller[: 16000 - 4800] * 0.5
    talk[4800 : 4800 + answer.size] = answer
    ec = EchoCanceller()
    out = run(ec, to_pcm(talk), to_pcm(loud_bot))
    assert not ec.aligned  # no delay was (or could be) found: the bounds alone let the caller through
    early = slice(4800, COLD_GATE_MS * 8)
    assert np.sum(out[early] ** 2) > 0.95 * np.sum(talk[early] ** 2)


@pytest.mark.parametrize(("erl_db", "delay_ms"), [(6.0, 300.0), (10.0, 300.0), (10.0, 100.0)])
def test_echo_stays_gated_before_its_delay_is_found(bot: np.ndarray, erl_db: float, delay_ms: float) -> None:
    """The coupling bounds never fall below the echo actually there: until the delay is found,
    the echo of a loud bot comes out at least 30 dB down (nothing for a detector to fire on)."""
    loud_bot = to_pcm(bot[:16000] * 2.0)
    echo = to_pcm(echo_path(bot[:16000] * 2.0, delay_ms, erl_db))
    assert echo_passed_before_alignment_db(loud_bot, echo) < -30


def test_the_echo_of_a_bot_that_resumes_after_a_pause_is_gated_from_its_first_frame(bot: np.ndarray) -> None:
    """The bot speaks 0.3 s, pauses 0.8 s (the canceller passes the caller's audio as is: nothing
    could echo), then speaks again, before the echo delay is found (10 ms on the canceller's clock,
    ERL 10 dB). The gate closes on the first frame of the returning echo instead of ramping down
    across it from the open frame before: the ramp let ~-20 dB of it through (a false barge-in at
    1.8 s in bench/bargein_call)."""
    x = np.concatenate([bot[:2400], np.zeros(6400), bot[14400:22400]])
    echo = to_pcm(echo_path(x, 10, 10))
    far = to_pcm(x)
    ec = EchoCanceller()
    step = FRAME_BYTES_PCM8K
    start = (2400 + 6400) * 2
    resumed = range(start, start + 8 * step, step)  # the first 160 ms after the pause
    given = passed = 0.0
    for i in range(0, len(echo) - step + 1, step):
        if any(far[i : i + step]):
            ec.far(far[i : i + step], at_ms=ec.position_ms)
        cleaned = ec.near(echo[i : i + step])
        if i in resumed:
            assert not ec.aligned, "the delay was found before the bot resumed (else no proof)"
            given += float(np.sum(np.frombuffer(echo[i : i + step], dtype="<i2").astype(np.float64) ** 2))
            passed += float(np.sum(np.frombuffer(cleaned, dtype="<i2").astype(np.float64) ** 2))
    assert given > 0
    assert 10 * np.log10(max(passed, 1.0) / given) < -40


def test_echo_with_dropped_frames_stays_gated_before_its_delay_is_found(bot: np.ndarray) -> None:
    """An echo with a missing 20 ms frame here and there (the far end's playout ran late, a lost
    packet concealed as silence) is still an echo: a silent frame under a playing bot bounds the
    coupling at every delay to almost nothing, and before the bound took the neighbouring frames into
    account the next frames of echo passed whole (a false barge-in 0.7 s into a reply in
    tests/call/test_echo_bargein.py, whose emulated phone drops an echo frame when its player is late)."""
    loud_bot = to_pcm(bot[:16000] * 2.0)
    e = echo_path(bot[:16000] * 2.0, 150.0, 10.0)
    for k in range(1500, 16000 - 160, 1600):  # one frame in ten, aligned to the frames
        e[k - k % 160 : k - k % 160 + 160] = 0.0
    assert echo_passed_before_alignment_db(loud_bot, to_pcm(e)) < -30
