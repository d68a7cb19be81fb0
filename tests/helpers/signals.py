"""Test signals and measurements: tones, G.711, SINAD, real speech from the asterisk prompts."""

from __future__ import annotations

import wave

import numpy as np

from bridge.media import g711
from tests.helpers.sysdeps import asterisk_sound


def tone(freq_hz: float, seconds: float, rate: int, dbfs: float = -10.0) -> np.ndarray:
    n = round(seconds * rate)
    amp = 32767 * 10 ** (dbfs / 20)
    return np.round(amp * np.sin(2 * np.pi * freq_hz * np.arange(n) / rate)).astype(np.int16)


def pcm(samples: np.ndarray) -> bytes:
    return samples.astype("<i2").tobytes()


def samples(pcm16: bytes) -> np.ndarray:
    return np.frombuffer(pcm16, dtype="<i2").astype(np.float64)


def ulaw(samples_8k: np.ndarray) -> bytes:
    return g711.encode(pcm(samples_8k), "pcmu")


def sinad_db(signal: np.ndarray, freq_hz: float, rate: int) -> float:
    """Tone power over everything else, after a least-squares fit of the tone (gain, phase, DC)."""
    t = np.arange(len(signal)) / rate
    w = 2 * np.pi * freq_hz * t
    basis = np.column_stack([np.sin(w), np.cos(w), np.ones_like(t)])
    coef, *_ = np.linalg.lstsq(basis, signal, rcond=None)
    fitted = basis[:, :2] @ coef[:2]
    residual = signal - basis @ coef
    return float(10 * np.log10(np.sum(fitted**2) / max(np.sum(residual**2), 1e-12)))


def speech_8k(name: str = "hello-world") -> np.ndarray:
    """A real human prompt (8 kHz, 16-bit) from Debian's asterisk-core-sounds-en-wav."""
    with wave.open(str(asterisk_sound(name))) as w:
        assert w.getframerate() == 8000
        assert w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()


def onset_s(x: np.ndarray, rate: int = 8000, threshold_dbfs: float = -35.0) -> float:
    """First 10 ms window whose RMS passes `threshold_dbfs` (the true speech onset)."""
    win = rate // 100
    limit = 32768 * 10 ** (threshold_dbfs / 20)
    for i in range(0, len(x) - win, win):
        if np.sqrt(np.mean(x[i : i + win].astype(np.float64) ** 2)) > limit:
            return i / rate
    raise ValueError("no onset")
