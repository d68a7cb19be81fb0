"""Between the browser's audio and the phone path: Opus 48 kHz in aiortc's frames <-> 8 kHz G.711.

So that the softphone sounds like a phone (ops hear what callers hear), both directions go through
G.711 at 8 kHz, the same frames a Twilio or SIP leg carries:

- browser -> bridge: aiortc's decoded Opus (48 kHz, s16, usually stereo) -> libswresample (PyAV)
  to 24 kHz mono -> `bridge.media.resample.Downsampler` (the bridge's own 300-3400 Hz anti-alias
  filter) to 8 kHz -> G.711 -> 20 ms frames of 160 bytes;
- bridge -> browser: 20 ms G.711 frames -> PCM16 8 kHz -> `Upsampler` to 24 kHz -> an `AudioFrame`
  that aiortc's Opus encoder resamples to 48 kHz.

No I/O, no clock: the leg's tasks call these once per 20 ms frame.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from av import AudioFrame, AudioResampler

from bridge.media import g711
from bridge.media.g711 import FRAME_BYTES_G711, FRAME_SAMPLES_24K, RATE_24K, Encoding
from bridge.media.resample import Downsampler, Upsampler

TIME_BASE_24K = Fraction(1, RATE_24K)


class BrowserToPhone:
    """Decoded browser frames (any rate and layout aiortc produces) -> 20 ms G.711 frames."""

    def __init__(self, encoding: Encoding) -> None:
        self.encoding = encoding
        self._resampler = AudioResampler(format="s16", layout="mono", rate=RATE_24K)
        self._down = Downsampler()
        self._pending = b""

    def feed(self, frame: AudioFrame) -> list[bytes]:
        pcm24k = b"".join(bytes(out.planes[0])[: out.samples * 2] for out in self._resampler.resample(frame))
        if not pcm24k:
            return []
        self._pending += g711.encode(self._down.process(pcm24k), self.encoding)
        count = len(self._pending) // FRAME_BYTES_G711
        frames = [self._pending[i * FRAME_BYTES_G711 : (i + 1) * FRAME_BYTES_G711] for i in range(count)]
        self._pending = self._pending[count * FRAME_BYTES_G711 :]
        return frames


class PhoneToBrowser:
    """20 ms G.711 frames -> 24 kHz mono s16 `AudioFrame`s with continuous timestamps."""

    def __init__(self, encoding: Encoding) -> None:
        self.encoding = encoding
        self._up = Upsampler()
        self._pts = 0

    def frame(self, payload: bytes) -> AudioFrame:
        pcm24k = self._up.process(g711.decode(payload, self.encoding))
        samples = np.frombuffer(pcm24k, dtype="<i2").reshape(1, -1)
        out = AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        out.sample_rate = RATE_24K
        out.time_base = TIME_BASE_24K
        out.pts = self._pts
        self._pts += FRAME_SAMPLES_24K
        return out

    def skip(self, frames: int) -> None:
        """The track stalled: move the media clock on by `frames` without sending them."""
        self._pts += frames * FRAME_SAMPLES_24K

    def reset(self) -> None:
        """After a barge-in: the next frame starts a new talkspurt (no filter tail of cut audio)."""
        self._up.reset()
