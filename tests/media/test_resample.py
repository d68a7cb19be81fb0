"""Streaming resamplers: state carried across chunks, exact polyphase maths, quality, phase carry."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from bridge.media import resample
from bridge.media.g711 import CodecError
from bridge.media.resample import Downsampler, Resampler, Upsampler

RNG_SEED = 20261123


def _noise(n: int, seed: int = RNG_SEED, scale: float = 4000.0) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).normal(0, scale, n), -32768, 32767).astype("<i2")


def _tone(freq_hz: float, rate_hz: int, n: int, amplitude: float = 16000.0) -> np.ndarray:
    t = np.arange(n) / rate_hz
    return np.rint(amplitude * np.sin(2 * np.pi * freq_hz * t + 0.3)).astype("<i2")


def _feed(rs: Resampler, x: np.ndarray, lengths: list[int]) -> np.ndarray:
    out: list[bytes] = []
    i = 0
    k = 0
    while i < len(x):
        n = lengths[k % len(lengths)]
        out.append(rs.process(x[i : i + n].tobytes()))
        i += n
        k += 1
    return np.frombuffer(b"".join(out), dtype="<i2")


def _sinad_db(y: np.ndarray, freq_hz: float, rate_hz: int) -> float:
    """Tone power over everything else, after a least-squares fit of the tone (gain and phase free)."""
    t = np.arange(len(y)) / rate_hz
    w = 2 * np.pi * freq_hz * t
    basis = np.column_stack([np.sin(w), np.cos(w), np.ones_like(t)])
    yf = y.astype(np.float64)
    coef, *_ = np.linalg.lstsq(basis, yf, rcond=None)
    fit = basis[:, :2] @ coef[:2]
    resid = yf - basis @ coef
    return float(10 * np.log10(np.sum(fit**2) / np.sum(resid**2)))


def test_filters_are_the_documented_remez_designs() -> None:
    up = signal.remez(63, [0, 3400, 4600, 12000], [1, 0], weight=[1, 30], fs=24000)
    down = signal.remez(97, [0, 3400, 4000, 12000], [1, 0], weight=[1, 100], fs=24000)
    np.testing.assert_allclose(resample._UP_TAPS, up, atol=1e-12)
    np.testing.assert_allclose(resample._DOWN_TAPS, down, atol=1e-12)
    assert Upsampler.delay_ms == pytest.approx(31 / 24)
    assert Downsampler.delay_ms == pytest.approx(46 / 24)  # output m = filter output at input 3m + 2
    assert Upsampler.delay_ms <= 3.0
    assert Downsampler.delay_ms <= 3.0


def test_upsampler_equals_zero_stuffing_plus_fir() -> None:
    x = _noise(1600)
    y = _feed(Upsampler(), x, [160])
    stuffed = np.zeros(3 * len(x))
    stuffed[::3] = 3 * x.astype(np.float64)
    ref = np.clip(np.rint(signal.lfilter(resample._UP_TAPS, 1, stuffed)), -32768, 32767)
    np.testing.assert_array_equal(y, ref)


def test_downsampler_equals_fir_then_every_third_sample() -> None:
    x = _noise(4800, seed=7)
    y = _feed(Downsampler(), x, [480])
    ref = np.clip(np.rint(signal.lfilter(resample._DOWN_TAPS, 1, x.astype(np.float64))[2::3]), -32768, 32767)
    np.testing.assert_array_equal(y, ref)


ODD_LENGTHS = [1, 2, 0, 5, 7, 160, 479, 481, 13, 1000, 3, 4, 2000, 11]


@pytest.mark.parametrize("cls", [Upsampler, Downsampler])
def test_chunked_output_equals_one_shot(cls: type[Upsampler] | type[Downsampler]) -> None:
    x = _noise(12000, seed=3)
    one_shot = np.frombuffer(cls().process(x.tobytes()), dtype="<i2")
    for lengths in ([160], [480], ODD_LENGTHS, [1]):
        chunked = _feed(cls(), x, lengths)
        np.testing.assert_array_equal(chunked, one_shot)


@pytest.mark.parametrize("seed", range(5))
def test_random_chunking_downsampler(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = _noise(9000, seed=seed)
    lengths = [int(v) for v in rng.integers(0, 1200, 40)]
    chunked = _feed(Downsampler(), x, lengths)
    one_shot = np.frombuffer(Downsampler().process(x.tobytes()), dtype="<i2")
    np.testing.assert_array_equal(chunked, one_shot)


def test_downsampler_output_count_and_phase_carry() -> None:
    d = Downsampler()
    # Output m is taken at input sample 3m + 2: n inputs in total give n // 3 outputs.
    fed = 0
    got = 0
    for n in [1, 1, 1, 2, 5, 480, 481, 478, 7]:
        got += len(d.process(bytes(2 * n))) // 2
        fed += n
        assert got == fed // 3
        assert d.pending_samples == fed % 3
    d.reset()
    assert d.pending_samples == 0
    assert len(d.process(bytes(960))) == 320


def test_twenty_ms_chunks_have_no_backlog() -> None:
    u, d = Upsampler(), Downsampler()
    for _ in range(10):
        assert len(u.process(bytes(320))) == 960
        assert len(d.process(bytes(960))) == 320


def test_delay_matches_impulse_response_peak() -> None:
    # Up: an 8 kHz impulse comes out as the (symmetric) filter, centred delay_ms later.
    x = np.zeros(160, dtype="<i2")
    x[10] = 10000
    y = np.frombuffer(Upsampler().process(x.tobytes()), dtype="<i2")
    assert int(np.argmax(y)) == 30 + round(Upsampler.delay_ms * 24)
    # Down: an impulse at 24 kHz sample 300 (= 8 kHz sample 100) peaks 1.92 ms (15.3 samples) later.
    x = np.zeros(960, dtype="<i2")
    x[300] = 30000
    y = np.frombuffer(Downsampler().process(x.tobytes()), dtype="<i2")
    assert int(np.argmax(y)) == round(100 + Downsampler.delay_ms * 8)


@pytest.mark.parametrize("freq_hz", [300, 1000, 3400])
def test_upsampler_sinad(freq_hz: float) -> None:
    x = _tone(freq_hz, 8000, 8000)
    y = _feed(Upsampler(), x, [160])[600:]  # skip the filter's start-up
    assert _sinad_db(y, freq_hz, 24000) >= 60


@pytest.mark.parametrize("freq_hz", [300, 1000, 3400])
def test_downsampler_sinad(freq_hz: float) -> None:
    x = _tone(freq_hz, 24000, 24000)
    y = _feed(Downsampler(), x, [480])[200:]
    assert _sinad_db(y, freq_hz, 8000) >= 60


@pytest.mark.parametrize("freq_hz", [4100, 5000, 7000, 11000])
def test_downsampler_stop_band(freq_hz: float) -> None:
    x = _tone(freq_hz, 24000, 24000)
    y = _feed(Downsampler(), x, [480])[200:].astype(np.float64)
    x_rms = np.sqrt(np.mean(x.astype(np.float64) ** 2))
    y_rms = np.sqrt(np.mean(y**2))
    assert 20 * np.log10(max(y_rms, 1e-9) / x_rms) <= -60


def test_round_trip_keeps_telephone_band_noise() -> None:
    # Band-limited noise 300-3400 Hz at 8 kHz, up then down: only the filters' ripple should remain.
    b = signal.firwin(255, [300, 3400], pass_zero=False, fs=8000)
    x = signal.lfilter(b, 1, _noise(16000, seed=11).astype(np.float64))
    y = _feed(Downsampler(), _feed(Upsampler(), np.rint(x).astype("<i2"), [160]), [480]).astype(np.float64)
    # Reference: x delayed by the two group delays (a fractional number of 8 kHz samples).
    lag = (Upsampler.delay_ms + Downsampler.delay_ms) * 8
    spectrum = np.fft.rfft(x)
    spectrum *= np.exp(-2j * np.pi * np.fft.rfftfreq(len(x)) * lag)
    ref = np.fft.irfft(spectrum, len(x))[400:-400]
    out = y[400 : len(x) - 400]
    gain = np.dot(out, ref) / np.dot(ref, ref)
    snr = 10 * np.log10(np.sum(ref**2) / np.sum((out - gain * ref) ** 2))
    assert snr > 20  # bounded by pass-band ripple (0.13 dB up, 0.7 dB down), not by aliasing
    assert 0.9 < gain < 1.1


def test_clipping_saturates_instead_of_wrapping() -> None:
    square = np.tile(np.r_[np.full(12, 32767), np.full(12, -32768)], 100).astype("<i2")
    y = _feed(Downsampler(), square, [480]).astype(np.int64)
    assert y.max() == 32767  # the FIR overshoots (Gibbs): clipped at full scale
    assert y.min() == -32768
    # No wrap-around: on the plateaus' centres the sign follows the input.
    x8 = np.tile(np.r_[np.full(4, 1), np.full(4, -1)], 100)
    lag = round(Downsampler.delay_ms * 8)
    assert np.all(np.sign(y[lag + 2 :: 8][:50]) == x8[2::8][:50])
    u = _feed(Upsampler(), np.tile(np.r_[np.full(4, 32767), np.full(4, -32768)], 50).astype("<i2"), [160])
    assert u.max() == 32767
    assert u.min() == -32768


@pytest.mark.parametrize("cls", [Upsampler, Downsampler])
def test_reset_forgets_history(cls: type[Upsampler] | type[Downsampler]) -> None:
    x = _noise(2000, seed=5)
    fresh = cls().process(x.tobytes())
    rs = cls()
    rs.process(_noise(1001, seed=6).tobytes())
    rs.reset()
    assert rs.process(x.tobytes()) == fresh


@pytest.mark.parametrize("cls", [Upsampler, Downsampler])
def test_large_chunk_grows_buffers_and_keeps_state(cls: type[Upsampler] | type[Downsampler]) -> None:
    x = _noise(30000, seed=9)
    one_shot = np.frombuffer(cls().process(x.tobytes()), dtype="<i2")
    np.testing.assert_array_equal(_feed(cls(), x, [100, 10000, 7, 5000, 160]), one_shot)


@pytest.mark.parametrize("cls", [Upsampler, Downsampler])
def test_bad_input(cls: type[Upsampler] | type[Downsampler]) -> None:
    rs = cls()
    assert rs.process(b"") == b""
    with pytest.raises(CodecError, match="not whole 16-bit samples"):
        rs.process(b"\x00\x01\x02")
