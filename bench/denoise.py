"""Noise suppression in front of the barge-in detector, as measured by bench/bargein_call.py (issue 16).

Not in the product: in that bench no placement of it paid (results/bargein.md, phase 3 notes). Kept
here so the measurement can be repeated (`pip install -e '.[bench]'` installs `webrtc-noise-gain`).

`NoiseSuppressor.process(frame)` takes one 20 ms frame of 8 kHz PCM16 and returns it with stationary
noise (street hum, a car, a fan, line hiss) attenuated. `DenoisedDetector` puts it in front of a
`SpeechDetector` (what the detector hears; the echo canceller and the model do not).

The suppressor is WebRTC's (the `webrtc-noise-gain` wheel: the audio processing module's NS, no
automatic gain), which takes 10 ms of 16 kHz audio. The frame is upsampled 2x (zero-stuffing and a
31-tap Kaiser-windowed half-band low-pass), run through it as two 10 ms chunks, and decimated with
the same filter. The two filters add 1.9 ms of delay; the suppressor's own is measured in
tests/media/test_denoise.py. No I/O; per frame: two small convolutions and two native calls.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np

from bridge.errors import ConfigError
from bridge.media.g711 import FRAME_BYTES_PCM8K, FRAME_SAMPLES_8K
from bridge.media.vad import SpeechDetector, SpeechStart, SpeechStop

_TAPS: Final = 31
_HALF: Final = _TAPS - 1
_n = np.arange(_TAPS) - _HALF / 2
_LOWPASS: Final = np.sinc(_n / 2.0) * np.kaiser(_TAPS, 8.0)  # cut-off 4 kHz at 16 kHz
_LOWPASS /= _LOWPASS.sum()
_UP_TAPS: Final = 2.0 * _LOWPASS  # zero-stuffing halves the level
_CHUNK_BYTES_16K: Final = 2 * FRAME_SAMPLES_8K  # 10 ms at 16 kHz: 160 samples of PCM16
LEVELS: Final = (1, 2, 3, 4)  # WebRTC's suppression levels: 6, 12, 18, 21 dB at most


class NoiseSuppressor:
    """WebRTC noise suppression for one call's caller audio (8 kHz PCM16, 20 ms frames)."""

    def __init__(self, level: int = 2) -> None:
        if level not in LEVELS:
            raise ConfigError(f"noise suppression level must be one of {LEVELS}, got {level}")
        try:
            from webrtc_noise_gain import AudioProcessor
        except ImportError as exc:
            raise ConfigError("noise suppression needs webrtc-noise-gain (the bench extra)") from exc
        self._ns = AudioProcessor(0, level)  # no automatic gain
        # [the filter's history | this frame at 16 kHz], for the upsampler and the decimator
        self._up = np.zeros(_HALF + 2 * FRAME_SAMPLES_8K, dtype=np.float64)
        self._down = np.zeros(_HALF + 2 * FRAME_SAMPLES_8K, dtype=np.float64)

    def process(self, pcm16: bytes) -> bytes:
        """One 20 ms frame (320 bytes) in, one out."""
        if len(pcm16) != FRAME_BYTES_PCM8K:
            raise ConfigError(f"noise suppression takes 20 ms frames of 8 kHz PCM16, got {len(pcm16)} bytes")
        up = self._up
        up[:_HALF] = up[-_HALF:]
        stuffed = up[_HALF:]
        stuffed[:] = 0.0
        stuffed[::2] = np.frombuffer(pcm16, dtype="<i2")
        x16 = np.convolve(up, _UP_TAPS, mode="valid")
        raw = np.clip(np.rint(x16), -32768, 32767).astype("<i2").tobytes()
        half = _CHUNK_BYTES_16K
        cleaned = self._ns.Process10ms(raw[:half]).audio + self._ns.Process10ms(raw[half:]).audio
        down = self._down
        down[:_HALF] = down[-_HALF:]
        down[_HALF:] = np.frombuffer(cleaned, dtype="<i2")
        y = np.convolve(down, _LOWPASS, mode="valid")[::2]
        return np.clip(np.rint(y), -32768, 32767).astype("<i2").tobytes()


class DenoisedDetector(SpeechDetector):
    """A SpeechDetector that hears its input through a NoiseSuppressor."""

    def __init__(self, level: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suppressor = NoiseSuppressor(level)

    def feed(self, pcm16_8k: bytes) -> list[SpeechStart | SpeechStop]:
        return super().feed(self.suppressor.process(pcm16_8k))
