"""Streaming 8 kHz <-> 24 kHz resamplers for the call audio path (PCM16LE mono, any chunk length).

Why not soxr: python-soxr's `ResampleStream` works in internal blocks and holds back 40-75 ms per
direction on 20 ms chunks. These polyphase FIRs return every sample they can at once (zero backlog;
a Downsampler fed a length not divisible by 3 keeps at most 2 input samples for the next chunk) and
add only their linear-phase group delay (`delay_ms`: 1.29 ms up, 1.92 ms down).

The filters are equiripple (Parks-McClellan) designs at 24 kHz, shipped as coefficients so that
importing this module does not import scipy (0.7 s). tests/media/test_resample.py re-derives them:

- up (8k -> 24k, image rejection): `remez(63, [0, 3400, 4600, 12000], [1, 0], weight=[1, 30], fs=24000)`,
  times 3 for the zero-stuffing gain. Stop band >= 72 dB from 4600 Hz (the image of 3400 Hz),
  pass-band ripple 0.13 dB up to 3400 Hz. 21 taps per phase.
- down (24k -> 8k, anti-alias): `remez(97, [0, 3400, 4000, 12000], [1, 0], weight=[1, 100], fs=24000)`.
  Stop band >= 67 dB from 4000 Hz (nothing above the new Nyquist folds back audibly), pass-band
  ripple 0.7 dB peak to peak (relaxed on purpose: it buys a short filter, and so a short delay).
  Only every third output is computed.

Per chunk the work is one matrix product on a strided window view of a preallocated float history
buffer, then rounding and clipping to int16 into preallocated arrays; only the returned bytes are new.
"""

from __future__ import annotations

from typing import Final, Protocol

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided

from bridge.media.g711 import RATE_8K, RATE_24K, CodecError

FACTOR: Final = RATE_24K // RATE_8K  # 3

# Filter coefficients (see the module docstring for the design; the tests re-derive them).
_UP_TAPS: Final = (
    -0.0004423430550649132,
    -0.0006883394775016553,
    -0.00028060841925685727,
    0.0010883748757682537,
    0.002657537745958102,
    0.002865345928946526,
    0.0007804539759110796,
    -0.0024306359973383838,
    -0.003828201870060321,
    -0.001286031701656447,
    0.003753309892710115,
    0.00653621014166222,
    0.0031517977556851187,
    -0.004771945989615096,
    -0.010004998452866237,
    -0.005929998109997286,
    0.005909055433770511,
    0.014934977475281419,
    0.010380510614166878,
    -0.006957865199026947,
    -0.022046004302381777,
    -0.017598683164904684,
    0.00787714084477231,
    0.03341901839570336,
    0.030656574858455864,
    -0.008589256662773328,
    -0.05620396890522518,
    -0.06178028233891147,
    0.00904173696572569,
    0.1410437222018873,
    0.27039744682798916,
    0.32413785767384706,
    0.27039744682798916,
    0.1410437222018873,
    0.00904173696572569,
    -0.06178028233891147,
    -0.05620396890522518,
    -0.008589256662773328,
    0.030656574858455864,
    0.03341901839570336,
    0.00787714084477231,
    -0.017598683164904684,
    -0.022046004302381777,
    -0.006957865199026947,
    0.010380510614166878,
    0.014934977475281419,
    0.005909055433770511,
    -0.005929998109997286,
    -0.010004998452866237,
    -0.004771945989615096,
    0.0031517977556851187,
    0.00653621014166222,
    0.003753309892710115,
    -0.001286031701656447,
    -0.003828201870060321,
    -0.0024306359973383838,
    0.0007804539759110796,
    0.002865345928946526,
    0.002657537745958102,
    0.0010883748757682537,
    -0.00028060841925685727,
    -0.0006883394775016553,
    -0.0004423430550649132,
)
_DOWN_TAPS: Final = (
    -0.0005190205467888113,
    -0.0005979978336851382,
    3.739645409188147e-05,
    0.001850098518183951,
    0.004472938968753334,
    0.006656211685689737,
    0.0068764374908113005,
    0.00444528095247776,
    0.0003240916990997088,
    -0.0031635295411167334,
    -0.003800526726071337,
    -0.0011885299794233768,
    0.0026665916619380593,
    0.0046263678884315195,
    0.0028215238064854408,
    -0.0016422788672761637,
    -0.005240772899524941,
    -0.004730916229372119,
    5.0957310047735295e-06,
    0.005411516512260917,
    0.006834949650617189,
    0.0024420815676309705,
    -0.00475256811192578,
    -0.008817823373989071,
    -0.005695199215409262,
    0.002938324142150845,
    0.010279734108879278,
    0.00962330606733548,
    0.0003033261975838783,
    -0.010772377468773091,
    -0.014030368254307337,
    -0.005274636944148032,
    0.009712735308834064,
    0.018607372082165948,
    0.012323676562954385,
    -0.006355205388541497,
    -0.023027861556757692,
    -0.02216204816894316,
    -0.0006059266611901376,
    0.026928769788108643,
    0.036660981876197006,
    0.014290706900552603,
    -0.02998740749231014,
    -0.06274537024159411,
    -0.04691276169635075,
    0.03193861405560467,
    0.15079290918347257,
    0.2577949480862368,
    0.3007257031136267,
    0.2577949480862368,
    0.15079290918347257,
    0.03193861405560467,
    -0.04691276169635075,
    -0.06274537024159411,
    -0.02998740749231014,
    0.014290706900552603,
    0.036660981876197006,
    0.026928769788108643,
    -0.0006059266611901376,
    -0.02216204816894316,
    -0.023027861556757692,
    -0.006355205388541497,
    0.012323676562954385,
    0.018607372082165948,
    0.009712735308834064,
    -0.005274636944148032,
    -0.014030368254307337,
    -0.010772377468773091,
    0.0003033261975838783,
    0.00962330606733548,
    0.010279734108879278,
    0.002938324142150845,
    -0.005695199215409262,
    -0.008817823373989071,
    -0.00475256811192578,
    0.0024420815676309705,
    0.006834949650617189,
    0.005411516512260917,
    5.0957310047735295e-06,
    -0.004730916229372119,
    -0.005240772899524941,
    -0.0016422788672761637,
    0.0028215238064854408,
    0.0046263678884315195,
    0.0026665916619380593,
    -0.0011885299794233768,
    -0.003800526726071337,
    -0.0031635295411167334,
    0.0003240916990997088,
    0.00444528095247776,
    0.0068764374908113005,
    0.006656211685689737,
    0.004472938968753334,
    0.001850098518183951,
    3.739645409188147e-05,
    -0.0005979978336851382,
    -0.0005190205467888113,
)

_INT16_MIN: Final = -32768.0
_INT16_MAX: Final = 32767.0
# Input samples per chunk before a buffer has to grow (40 ms at 24 kHz, 120 ms at 8 kHz).
_INITIAL_CAPACITY_SAMPLES: Final = 960


class Resampler(Protocol):
    """What a call needs from a streaming resampler (these classes, or a soxr wrapper in a test)."""

    delay_ms: float

    def process(self, pcm16: bytes) -> bytes: ...

    def reset(self) -> None: ...


def _check_pcm16(pcm16: bytes) -> None:
    if len(pcm16) & 1:
        raise CodecError(f"PCM16 chunk of {len(pcm16)} bytes is not whole 16-bit samples")


def _to_int16_bytes(values: npt.NDArray[np.float64], staging: npt.NDArray[np.int16]) -> bytes:
    """Round half to even, clip to int16, return as little-endian bytes. `values` is scratch."""
    np.rint(values, out=values)
    np.minimum(values, _INT16_MAX, out=values)
    np.maximum(values, _INT16_MIN, out=values)
    np.copyto(staging, values, casting="unsafe")
    return staging.tobytes()


class Upsampler:
    """8 kHz -> 24 kHz, streaming: every input sample yields three output samples at once."""

    _phases: Final = np.array(
        # _phases[j, p] = h[3 * (M - 1 - j) + p]: row j multiplies the j-th oldest sample of a window.
        (np.asarray(_UP_TAPS, dtype=np.float64) * FACTOR).reshape(-1, FACTOR)[::-1, :]
    )
    taps_per_phase: Final = len(_UP_TAPS) // FACTOR
    delay_ms: float = (len(_UP_TAPS) - 1) / 2 * 1000 / RATE_24K

    def __init__(self) -> None:
        self._allocate(_INITIAL_CAPACITY_SAMPLES)

    def _allocate(self, capacity: int) -> None:
        hist = self.taps_per_phase - 1
        old = getattr(self, "_buf", None)
        self._capacity = capacity
        self._buf = np.zeros(hist + capacity, dtype=np.float64)
        if old is not None:
            self._buf[:hist] = old[:hist]
        step = self._buf.strides[0]
        # windows[i] = buf[i : i + M]: the M most recent input samples ending at chunk sample i.
        self._windows = as_strided(self._buf, shape=(capacity, self.taps_per_phase), strides=(step, step))
        self._out = np.empty((capacity, FACTOR), dtype=np.float64)
        self._staging = np.empty((capacity, FACTOR), dtype=np.int16)

    def reset(self) -> None:
        """Forget the history (start of a new, unrelated stream)."""
        self._buf[: self.taps_per_phase - 1] = 0.0

    def process(self, pcm16: bytes) -> bytes:
        """8 kHz PCM16LE of any length -> exactly three times as many 24 kHz samples."""
        n = len(pcm16) >> 1
        if n == 0 or len(pcm16) & 1:
            _check_pcm16(pcm16)
            return b""
        if n > self._capacity:
            self._allocate(n)
        hist = self.taps_per_phase - 1
        buf = self._buf
        buf[hist : hist + n] = np.frombuffer(pcm16, dtype="<i2")
        out = self._out[:n]
        np.matmul(self._windows[:n], self._phases, out=out)
        buf[:hist] = buf[n : n + hist]
        return _to_int16_bytes(out, self._staging[:n])


class Downsampler:
    """24 kHz -> 8 kHz, streaming: anti-alias FIR evaluated only at every third input sample.

    Output sample m is the filter output at input sample 3m + 2 (counting from the first sample
    ever fed), so every output is made as soon as its third input sample arrives: n samples in
    total give n // 3 out, 480 in always give 160 out, and other lengths carry the phase (at most
    two samples wait for the next chunk). Against the 8 kHz grid (sample m at 24 kHz sample 3m)
    the output lags by (N - 1) / 2 - 2 = 46 input samples: `delay_ms` = 1.92 ms.
    """

    _taps_rev: Final = np.array(np.asarray(_DOWN_TAPS, dtype=np.float64)[::-1])
    n_taps: Final = len(_DOWN_TAPS)
    delay_ms: float = ((len(_DOWN_TAPS) - 1) / 2 - (FACTOR - 1)) * 1000 / RATE_24K
    # Before any input, the buffer holds N - 3 zeros: the first window then ends at input sample 2.
    _start_fill: Final = len(_DOWN_TAPS) - FACTOR

    def __init__(self) -> None:
        self._fill = self._start_fill  # valid samples at the front of _buf (history + pending)
        self._allocate(_INITIAL_CAPACITY_SAMPLES)

    def _allocate(self, capacity: int) -> None:
        old = getattr(self, "_buf", None)
        self._capacity = capacity
        # History (N - 1) + up to 2 pending samples + one chunk.
        self._buf = np.zeros(self.n_taps + FACTOR + capacity, dtype=np.float64)
        if old is not None:
            self._buf[: self._fill] = old[: self._fill]
        step = self._buf.strides[0]
        max_out = (capacity + FACTOR) // FACTOR + 1
        self._windows = as_strided(self._buf, shape=(max_out, self.n_taps), strides=(FACTOR * step, step))
        self._out = np.empty(max_out, dtype=np.float64)
        self._staging = np.empty(max_out, dtype=np.int16)

    def reset(self) -> None:
        """Forget the history and the phase (start of a new, unrelated stream)."""
        self._fill = self._start_fill
        self._buf[: self._fill] = 0.0

    @property
    def pending_samples(self) -> int:
        """Input samples held for the next chunk (0-2): the only backlog this resampler has."""
        return self._fill - self._start_fill

    def process(self, pcm16: bytes) -> bytes:
        """24 kHz PCM16LE of any length -> 8 kHz PCM16LE (a third as many samples, phase carried)."""
        n = len(pcm16) >> 1
        if n == 0 or len(pcm16) & 1:
            _check_pcm16(pcm16)
            return b""
        if n > self._capacity:
            self._allocate(n)
        buf = self._buf
        fill = self._fill
        total = fill + n
        buf[fill:total] = np.frombuffer(pcm16, dtype="<i2")
        k = (total - self._start_fill) // FACTOR
        consumed = FACTOR * k
        out = self._out[:k]
        np.dot(self._windows[:k], self._taps_rev, out=out)
        self._fill = total - consumed
        buf[: self._fill] = buf[consumed:total]
        return _to_int16_bytes(out, self._staging[:k])
