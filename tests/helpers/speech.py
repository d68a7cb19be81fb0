"""Real test speech, generated offline: Piper or espeak-ng through a telephone chain, asterisk prompts,
silence, pink noise and DTMF tones. Everything is PCM16 little-endian mono at 8 kHz (bytes).

The telephone chain: 4th-order Butterworth band-pass 300-3400 Hz at the source rate, soxr HQ down to
8 kHz, active-speech level set to SPEECH_DBFS (peak kept under -1 dBFS), then a G.711 µ-law round trip.
Generated speech is cached for the whole test session (memory + a temp dir), so tests don't
re-synthesize.
"""

from __future__ import annotations

import audioop
import functools
import hashlib
import tempfile
import wave
from pathlib import Path

import numpy as np

from bridge.media.g711 import RATE_8K
from tests.helpers.sysdeps import asterisk_sound, require_binary

SPEECH_DBFS = -20.0  # active speech RMS of phone_speech(); pink_noise(snr_db) is relative to it
DTMF_HZ = {
    "1": (697, 1209), "2": (697, 1336), "3": (697, 1477), "A": (697, 1633),
    "4": (770, 1209), "5": (770, 1336), "6": (770, 1477), "B": (770, 1633),
    "7": (852, 1209), "8": (852, 1336), "9": (852, 1477), "C": (852, 1633),
    "*": (941, 1209), "0": (941, 1336), "#": (941, 1477), "D": (941, 1633),
}  # fmt: skip

_cache_dir: Path | None = None


def cache_dir() -> Path:
    """One temp dir per test session (per process) for generated audio."""
    global _cache_dir
    if _cache_dir is None:
        _cache_dir = Path(tempfile.mkdtemp(prefix="ivr-speech-"))
    return _cache_dir


# ---------------------------------------------------------------------------------------------------
# sources


@functools.lru_cache(maxsize=1)
def _piper_voice():  # type: ignore[no-untyped-def]
    from bridge.speech.models import get_shared_models

    return get_shared_models().piper_voice()


def _piper_raw(text: str) -> tuple[np.ndarray, int]:
    from piper import SynthesisConfig

    voice = _piper_voice()
    # No sampling noise: the same text gives bit-identical audio on every run, so speech tests
    # cannot pass or fail by the luck of one synthesis.
    config = SynthesisConfig(normalize_audio=True, volume=0.5, noise_scale=0.0, noise_w_scale=0.0)
    audio = np.concatenate([c.audio_float_array for c in voice.synthesize(text, config)])
    return audio.astype(np.float64), int(voice.config.sample_rate)


def _espeak_raw(text: str) -> tuple[np.ndarray, int]:
    import io
    import subprocess

    espeak = require_binary("espeak-ng")
    proc = subprocess.run(
        [espeak, "-v", "en-us", "-s", "160", "--stdout", text], capture_output=True, check=True
    )
    with wave.open(io.BytesIO(proc.stdout)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float64) / 32768.0, rate


# ---------------------------------------------------------------------------------------------------
# telephone chain


def telephone_chain(audio: np.ndarray, rate_hz: int, level_dbfs: float = SPEECH_DBFS) -> bytes:
    """Float audio at rate_hz -> band-limited, leveled, µ-law round-tripped PCM16 8 kHz bytes."""
    import soxr
    from scipy.signal import butter, sosfiltfilt

    sos = butter(4, [300.0, 3400.0], btype="bandpass", fs=rate_hz, output="sos")
    x = sosfiltfilt(sos, audio)
    if rate_hz != RATE_8K:
        x = soxr.resample(x, rate_hz, RATE_8K, quality="HQ")
    rms = active_rms(x)
    if rms > 0:
        gain = min(10 ** (level_dbfs / 20) / rms, 10 ** (-1 / 20) / max(np.max(np.abs(x)), 1e-9))
        x = x * gain
    pcm = np.clip(np.rint(x * 32768), -32768, 32767).astype("<i2").tobytes()
    return audioop.ulaw2lin(audioop.lin2ulaw(pcm, 2), 2)


def active_rms(x: np.ndarray, frame: int = 80) -> float:
    """RMS over frames within 30 dB of the loudest frame (a rough active speech level)."""
    n = len(x) // frame
    if n == 0:
        return float(np.sqrt(np.mean(np.square(x)))) if len(x) else 0.0
    energies = np.mean(np.square(np.asarray(x[: n * frame], dtype=np.float64).reshape(n, frame)), axis=1)
    active = energies[energies >= energies.max() * 1e-3]
    return float(np.sqrt(active.mean())) if active.size else 0.0


def phone_speech(text: str, voice: str = "piper") -> bytes:
    """`text` spoken by Piper (joe) or espeak-ng, through the telephone chain. Cached per session."""
    key = hashlib.sha1(f"{voice}\0{text}".encode()).hexdigest()[:16]
    path = cache_dir() / f"{voice}-{key}.pcm"
    if path.exists():
        return path.read_bytes()
    if voice == "piper":
        audio, rate = _piper_raw(text)
    elif voice == "espeak":
        audio, rate = _espeak_raw(text)
    else:
        raise ValueError(f"unknown voice {voice!r}")
    pcm = telephone_chain(audio, rate)
    path.write_bytes(pcm)
    return pcm


def asterisk_prompt(name: str) -> bytes:
    """A human-recorded prompt (e.g. "hello-world") from asterisk-core-sounds-en-wav, µ-law round-tripped.
    A missing prompt fails the calling test (or skips it where packages cannot be installed)."""
    path = asterisk_sound(name)
    with wave.open(str(path)) as w:
        if w.getframerate() != RATE_8K or w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{path}: expected 8 kHz 16-bit mono")
        pcm = w.readframes(w.getnframes())
    return audioop.ulaw2lin(audioop.lin2ulaw(pcm, 2), 2)


# ---------------------------------------------------------------------------------------------------
# other signals


def silence(ms: int) -> bytes:
    return bytes(ms * RATE_8K // 1000 * 2)


def pink_noise(ms: int, snr_db: float, seed: int = 1) -> bytes:
    """Pink noise whose RMS is `snr_db` below the phone_speech() level (SPEECH_DBFS)."""
    n = ms * RATE_8K // 1000
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.standard_normal(n + 1))
    freqs = np.fft.rfftfreq(n + 1, 1 / RATE_8K)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0
    x = np.fft.irfft(spectrum, n + 1)[:n]
    x *= 10 ** ((SPEECH_DBFS - snr_db) / 20) / max(float(np.sqrt(np.mean(x**2))), 1e-12)
    return np.clip(np.rint(x * 32768), -32768, 32767).astype("<i2").tobytes()


def dtmf_tone(digit: str, ms: int, dbfs: float = -10.0) -> bytes:
    """A DTMF digit, each of its two tones at `dbfs` peak."""
    low, high = DTMF_HZ[digit.upper()]
    t = np.arange(ms * RATE_8K // 1000) / RATE_8K
    amp = 10 ** (dbfs / 20)
    x = amp * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t))
    return np.clip(np.rint(x * 32768), -32768, 32767).astype("<i2").tobytes()


def mix(a: bytes, b: bytes) -> bytes:
    """Sum two PCM16 signals (the shorter one padded with silence), clipped."""
    x = np.frombuffer(a, dtype="<i2").astype(np.int32)
    y = np.frombuffer(b, dtype="<i2").astype(np.int32)
    n = max(len(x), len(y))
    out = np.zeros(n, dtype=np.int32)
    out[: len(x)] += x
    out[: len(y)] += y
    return np.clip(out, -32768, 32767).astype("<i2").tobytes()


def speech_span_ms(pcm: bytes, below_peak_db: float = 35.0) -> tuple[int, int]:
    """(first, last) ms of the signal whose 10 ms energy is within `below_peak_db` of the loudest:
    the true speech boundaries of a clean utterance."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    frame = RATE_8K // 100
    n = len(x) // frame
    energies = np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1)
    active = np.nonzero(energies >= energies.max() * 10 ** (-below_peak_db / 10))[0]
    return int(active[0]) * 10, (int(active[-1]) + 1) * 10


def duration_ms(pcm: bytes) -> int:
    return len(pcm) // 2 * 1000 // RATE_8K


def chunks(pcm: bytes, ms: int = 20) -> list[bytes]:
    step = ms * RATE_8K // 1000 * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]
