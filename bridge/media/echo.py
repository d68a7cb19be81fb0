"""Echo cancellation for 8 kHz phone audio, keyed to what the bridge itself played. No I/O.

The bridge knows exactly what it played and when, so the canceller gets the reference directly:

    ec = EchoCanceller()
    ec.far(played_frame, at_ms=ec.position_ms)   # when the frame starts playing (or at_ms=None: right
                                                 # after the previous far frame)
    cleaned = ec.near(caller_frame)              # one 20 ms PCM16 frame in, one out (no added latency)

Both streams share one clock: the near stream's, in samples from its start (`position_ms` is how much
caller audio has been processed). What remains unknown is the echo path: the round trip through the
network and the caller's phone (50-500 ms) and the speaker/room colouring. Three parts handle it:

1. Delay estimator: GCC-PHAT between the last 512 ms of caller audio and the reference over every lag
   up to `max_delay_ms`, smoothed over successive estimates, run every 250 ms while the reference is
   active. A new delay is adopted when its peak is clearly above the rest and stays put for two
   estimates (so a change of the path is tracked within about a second of bot speech).
2. Linear canceller: a partitioned-block frequency-domain NLMS filter (MDF: 160-sample blocks, FFT 320,
   `tail_ms` of taps starting 10 ms before the estimated delay), per-bin normalised step, and
   adaptation frozen while the caller talks (the residual is far above what the echo path explains).
3. Residual echo suppressor: a broadband gain per frame (ramped across the frame), closed when the
   residual is no more than the echo expected (the larger of: the coupling learned on echo-only
   frames, a 95th-percentile tracker, +6 dB; and the filter's own echo estimate), open as soon as the
   caller adds energy of their own, and held fully open while double talk is detected (the caller
   is passed whole, not chopped, for the upstream's VAD). Before the delay is known, the same gate
   runs against the loudest reference frame of the whole delay range with the weakest echo return
   loss the phone network allows (6 dB).

Silero VAD is nearly level-independent (a quiet echo of speech is still speech), so the suppressor
aims for silence, not for a pleasant residual: the cleaned signal is meant for barge-in detection and
for the upstream model, which should not hear the bot either.

With no reference in the filter's span (nothing played recently) the input frame is returned as is.
Per-frame work uses preallocated buffers and about twenty numpy calls; no logging.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bridge.errors import BridgeError
from bridge.media.g711 import FRAME_BYTES_PCM8K, FRAME_MS, FRAME_SAMPLES_8K, RATE_8K

# The canceller's block is one 20 ms frame (FRAME_SAMPLES_8K).
_FFT = 2 * FRAME_SAMPLES_8K
_BINS = FRAME_SAMPLES_8K + 1
_RING = 1 << 15  # samples of history per stream (4.1 s): max lead of `far` + max delay + estimator window
# The rings hold float32: 16-bit samples times 2**-15 are exact in it, and the arithmetic on what is
# read from them is float64 (the filter's spectra, the estimator's sums); half the memory per call.
_RING_DTYPE = np.float32
_ZEROS = np.zeros(_RING, dtype=_RING_DTYPE)  # silence to write into a ring: one read-only copy per process
_ZEROS.flags.writeable = False
_EST_WINDOW = 4096  # near samples per delay estimate (512 ms)
_EST_FFT = 8192
_EST_EVERY = 2000  # samples between delay estimates (250 ms)
_PRE_SAMPLES = 80  # filter taps before the estimated delay (10 ms)
_SCALE = 1.0 / 32768.0
_ACTIVE_POW = (10 ** (-55 / 20)) ** 2  # reference frame power below -55 dBFS counts as silence
_MIN_ERL_DB = -6.0  # the weakest echo return loss assumed before the delay is known
# Bot audio played without any echo delay being found: past this much, the line is taken to have no
# echo and the caller's audio passes untouched (estimation goes on: an echo that appears later is
# found and cancelled). Without it, a caller on a clean but noisy line could be gated for as long as
# the bot talks. Not while the estimator holds a candidate delay waiting for its confirmation: that
# is an echo about to be found (bench/bargein_call: the echo-only false stops at 1.6-1.8 s).
COLD_GATE_MS = 1500
# A frame's echo varies with its spectrum around the path's average coupling (a speaker's band-pass
# takes more of a low vowel than of a fricative): the bounds learnt from quiet frames are raised by
# this much (10 dB) before they gate. Without it, bench/bargein_call's echo-only false stops went
# from 2 to 6 in 10 bot-minutes and the cold start from 0 to 4 false stops; with it, both as before.
_BOUND_MARGIN = 10.0
# ... and each frame bounds them by the loudest of the last 3 caller frames (60 ms): an echo with a
# frame missing (the phone's playout ran late, a lost packet concealed as silence) is still an echo.
# With the frame alone, one silent frame under a playing bot let the next frames of echo pass whole
# (tests/media/test_echo.py, dropped frames: -1.5 dB instead of < -30 dB).
_BOUND_FRAMES = 3
_MIN_ERL = 10 ** (_MIN_ERL_DB / 10)
_KAPPA_QUANTILE = 0.95  # the suppressor's residual coupling: this quantile of echo-only frames
_OVER_SUPPRESS = 4.0  # ... times this (6 dB) is taken for echo
_ECHO_EST_WEIGHT = 1.0  # residual at least this share of the linear echo estimate's power
_NOISE_MARGIN = 1.0  # the kappa tracker counts residual above this many times the noise floor as echo
_LIN_FRAMES = 100  # echo-only frames of adaptation before the linear path gain caps the coupling (2 s)
_LIN_MARGIN_DB = 3.0
_NOISE_RISE = 10 ** (3.0 / 10 / 50)  # the noise floor (a minimum tracker) rises at most 3 dB/s
_OPEN_RATIO = 4.0  # residual this far (6 dB) above the echo expected: the caller talks, open at once
_OPEN_HOLD_FRAMES = 3  # ... and stay open this many frames after the last such frame (60 ms)
_ONSET_OVER_FLOOR = 8.0  # `caller_energy`: the residual this far (9 dB) above the noise level too


def _db(ratio: float) -> float:
    return 10.0 * math.log10(ratio)


class EchoCancellerError(BridgeError):
    """Audio handed to the echo canceller has the wrong size or format."""


@dataclass(slots=True)
class EchoStats:
    """What the canceller has learned; for tests, benches and metrics (not updated per sample)."""

    delay_ms: float | None = None  # estimated echo path delay (None until found)
    delay_changes: int = 0
    kappa_db: float = 0.0  # residual echo coupling the suppressor assumes, dB below the reference
    frames: int = 0
    frames_suppressed: int = 0  # frames whose gain ended below 0.1
    double_talk_frames: int = 0
    caller_energy_frames: int = 0  # frames with `caller_energy` set


class EchoCanceller:
    """Streaming echo canceller for one call's caller audio (8 kHz PCM16, 20 ms frames)."""

    def __init__(
        self,
        *,
        max_delay_ms: int = 500,
        tail_ms: int = 60,
        suppress: bool = True,
        initial_delay_ms: float | None = None,
        mu: float = 0.4,
    ) -> None:
        if not 20 <= max_delay_ms <= 1000:
            raise EchoCancellerError(f"max_delay_ms must be within 20..1000, got {max_delay_ms}")
        if not 20 <= tail_ms <= 200:
            raise EchoCancellerError(f"tail_ms must be within 20..200, got {tail_ms}")
        self.max_delay_samples = max_delay_ms * RATE_8K // 1000
        self.partitions = max(1, -(-tail_ms * RATE_8K // 1000 // FRAME_SAMPLES_8K))
        self.suppress = suppress
        self.mu = mu
        self.stats = EchoStats()
        P = self.partitions
        self._far = np.zeros(_RING, dtype=_RING_DTYPE)
        self._near = np.zeros(_RING, dtype=_RING_DTYPE)
        self._zeros = _ZEROS  # shared (read only): 256 KB less per call
        self._far_end = 0  # absolute index one past the last written far sample
        self._far_last_active = -(1 << 40)  # absolute index of the end of the last non-silent far write
        self._pos = 0  # near samples processed
        self._next_estimate = _EST_WINDOW
        # filter state
        self._W = np.zeros((P, _BINS), dtype=np.complex128)
        self._X = np.zeros((P, _BINS), dtype=np.complex128)
        self._xpow = np.zeros(_BINS, dtype=np.float64)
        self._x2 = np.zeros(_FFT, dtype=np.float64)
        self._e2 = np.zeros(_FFT, dtype=np.float64)
        self._d = np.zeros(FRAME_SAMPLES_8K, dtype=np.float64)
        self._e = np.zeros(FRAME_SAMPLES_8K, dtype=np.float64)
        self._ramp = np.arange(1, FRAME_SAMPLES_8K + 1, dtype=np.float64) / FRAME_SAMPLES_8K
        self._out = np.zeros(FRAME_SAMPLES_8K, dtype=np.int16)
        self._constrain_next = 0
        self._delay: int | None = None
        self._cold_frames = 0  # frames gated while the delay is unknown and the bot was playing
        # Before the delay is known: an upper bound of the echo coupling for each delay (in frames,
        # oldest first, as `_gate_unaligned` reads the reference), learnt from frames where the
        # caller's side was quiet while the bot played (see `_gate_unaligned`).
        self._coupling = np.full(
            (self.max_delay_samples + 2 * FRAME_SAMPLES_8K) // FRAME_SAMPLES_8K, _MIN_ERL, dtype=np.float64
        )
        # Caller-side power of the last `_BOUND_FRAMES` frames: a frame bounds the coupling by the
        # loudest of them, so one missing frame of echo does not pass as a clean line.
        self._recent_pow = np.zeros(_BOUND_FRAMES, dtype=np.float64)
        self._x_valid = False  # _X holds the spectra for the current delay
        self._dt_hold = 0
        self._open_hold = 0
        self._lin_erl = 0.0
        self._lin_frames = 0
        # suppressor state
        self._erl_db = _MIN_ERL_DB
        self._kappa_db = _MIN_ERL_DB
        self._near_s = 0.0
        self._err_s = 0.0
        self._noise = 1.0  # falls to the first frame's power at once (a minimum tracker)
        self._gain = 1.0
        # This frame's residual stands well above the echo expected and the noise level: the caller
        # (or another sound of theirs) adds energy; set by `near` on frames that echo could reach.
        self.caller_energy = False
        # delay estimator state
        self._acc = np.zeros(self.max_delay_samples + 1, dtype=np.float64)
        self._acc_n = 0
        self._candidate: int | None = None
        self._band = np.zeros(_EST_FFT // 2 + 1, dtype=bool)
        freqs = np.fft.rfftfreq(_EST_FFT, 1.0 / RATE_8K)
        self._band[(freqs >= 250.0) & (freqs <= 3500.0)] = True
        if initial_delay_ms is not None:
            self._set_delay(int(initial_delay_ms * RATE_8K / 1000))
            self.stats.delay_changes = 0

    # ------------------------------------------------------------------------------------------
    # reference

    @property
    def position_ms(self) -> float:
        """Caller audio processed so far (ms): the clock `far(..., at_ms=...)` is expressed in."""
        return self._pos * 1000.0 / RATE_8K

    @property
    def aligned(self) -> bool:
        """The echo path's delay is known (before that, `near` only gates against the loudest
        reference in the delay range, which can attenuate a caller who talks over the bot)."""
        return self._delay is not None

    @property
    def delay_ms(self) -> float | None:
        return None if self._delay is None else self._delay * 1000.0 / RATE_8K

    def far(self, pcm16: bytes, at_ms: float | None = None) -> None:
        """What the bridge played: PCM16 8 kHz (any whole number of samples), starting at `at_ms` on
        the near clock (None: right after the previous far audio, or now if that is in the past)."""
        if len(pcm16) & 1:
            raise EchoCancellerError(f"far audio must be PCM16 (an even byte count), got {len(pcm16)} bytes")
        n = len(pcm16) // 2
        if n == 0:
            return
        start = max(self._far_end, self._pos) if at_ms is None else round(at_ms * RATE_8K / 1000.0)
        end = start + n
        oldest = self._pos - self.max_delay_samples - _EST_WINDOW - _FFT
        if end > oldest + _RING:
            raise EchoCancellerError(
                f"far audio at {start * 1000 // RATE_8K} ms is too far ahead of the caller audio "
                f"({self._pos * 1000 // RATE_8K} ms processed)"
            )
        if start > self._far_end:  # a gap: nothing was played there
            gap_from = max(self._far_end, oldest)
            self._write(self._far, gap_from, self._zeros[: start - gap_from])
        x = np.frombuffer(pcm16, dtype="<i2").astype(np.float64) * _SCALE
        if start < oldest:
            x = x[oldest - start :]
            start = oldest
            if x.size == 0:
                return
        self._write(self._far, start, x)
        self._far_end = max(self._far_end, end)
        if float(np.dot(x, x)) > _ACTIVE_POW * x.size:
            self._far_last_active = max(self._far_last_active, end)

    @staticmethod
    def _write(ring: np.ndarray, start: int, x: np.ndarray) -> None:
        if x.size == 0:
            return
        i = start % _RING
        first = min(x.size, _RING - i)
        ring[i : i + first] = x[:first]
        if first < x.size:
            ring[: x.size - first] = x[first:]

    def _read(self, ring: np.ndarray, start: int, out: np.ndarray) -> np.ndarray:
        """out[:] = ring[start : start + len(out)] (absolute indices)."""
        n = out.size
        i = start % _RING
        first = min(n, _RING - i)
        out[:first] = ring[i : i + first]
        if first < n:
            out[first:] = ring[: n - first]
        return out

    # ------------------------------------------------------------------------------------------
    # caller audio

    def near(self, pcm16: bytes) -> bytes:
        """One 20 ms frame of caller audio (320 bytes PCM16 8 kHz) -> the same frame with the echo removed."""
        if len(pcm16) != FRAME_BYTES_PCM8K:
            raise EchoCancellerError(
                f"near audio must be one 20 ms frame of PCM16 at 8 kHz ({FRAME_BYTES_PCM8K} bytes), "
                f"got {len(pcm16)}"
            )
        pos = self._pos
        self.caller_energy = False
        if self._far_end < pos + FRAME_SAMPLES_8K:
            # Nothing was played up to here: the ring must read as silence, not as audio of 4 s ago.
            start = max(self._far_end, pos - self.max_delay_samples - _EST_WINDOW - _FFT)
            self._write(self._far, start, self._zeros[: pos + FRAME_SAMPLES_8K - start])
            self._far_end = pos + FRAME_SAMPLES_8K
        d = self._d
        np.multiply(np.frombuffer(pcm16, dtype="<i2"), _SCALE, out=d)
        self._write(self._near, pos, d)
        self.stats.frames += 1
        self._pos = pos + FRAME_SAMPLES_8K
        if self._pos >= self._next_estimate:
            self._next_estimate = self._pos + _EST_WINDOW // 2
            if self._far_last_active > self._pos - self.max_delay_samples - _EST_WINDOW:
                # Every 250 ms until a delay is found, then every 500 ms to track changes.
                self._next_estimate = self._pos + (_EST_EVERY if self._delay is None else 2 * _EST_EVERY)
                self._estimate_delay()
        span_start = pos - self.max_delay_samples - self.partitions * FRAME_SAMPLES_8K
        if self._far_last_active <= span_start:
            # Nothing played that could still echo: pass the audio through untouched.
            self._gain = 1.0
            self._x_valid = False
            return pcm16
        if self._delay is None:
            self._cold_frames += 1
            if self._cold_frames * FRAME_MS > COLD_GATE_MS and self._candidate is None:
                self._gain = 1.0  # no echo found in that much bot audio: a clean line
                return pcm16
            return self._gate_unaligned(pcm16, pos)
        return self._cancel(pos)

    def _gate_unaligned(self, pcm16: bytes, pos: int) -> bytes:
        """Delay unknown: suppress the frame as far as echo could explain it.

        Echo at delay d is the reference frame played d ago times the path's coupling, at most
        `_MIN_ERL` to begin with. Every frame also bounds the coupling at each delay from above:
        whatever this frame holds, caller or noise included, is at least the echo, so coupling(d) <=
        near power / reference power at d (the smallest of three neighbouring reference frames, for
        an echo that straddles frames or rings in the room), raised by `_BOUND_MARGIN`. On a clean
        line the first quiet frames under a playing bot bring the bounds down to the noise, and a
        caller who answers a prompt early is heard before any delay could be found; on a line with
        echo the bounds stay at or above the true coupling, so the echo stays gated."""
        x = self._far
        lo = (pos - self.max_delay_samples - FRAME_SAMPLES_8K) % _RING
        hi = (pos + FRAME_SAMPLES_8K) % _RING
        seg = x[lo:hi] if lo < hi else np.concatenate((x[lo:], x[:hi]))
        m = self._coupling.size
        far = np.mean(np.square(seg[: m * FRAME_SAMPLES_8K]).reshape(m, FRAME_SAMPLES_8K), axis=1)
        d = self._d
        near_pow = float(np.dot(d, d)) / FRAME_SAMPLES_8K
        self._track_noise(near_pow)
        recent = self._recent_pow
        recent[self._cold_frames % _BOUND_FRAMES] = near_pow
        floor = far.copy()  # the smallest of each frame and its neighbours
        np.minimum(floor[1:], far[:-1], out=floor[1:])
        np.minimum(floor[:-1], far[1:], out=floor[:-1])
        bounded = floor > _ACTIVE_POW
        if bounded.any():
            bound = _BOUND_MARGIN * float(np.max(recent)) / np.maximum(floor, _ACTIVE_POW)
            np.minimum(self._coupling, bound, out=self._coupling, where=bounded)
        echo = 2.0 * float(np.max(self._coupling * far))
        gain = 1.0 - echo / max(near_pow - self._noise, 1e-12)
        gain = min(1.0, max(0.0, gain))
        # Closing is immediate: a ramp down from the open gain of the frame before (the bot was
        # silent, the caller's audio passed as is) lets the start of the echo through.
        return self._apply_gain(d, gain, ramp=gain > self._gain)

    def _cancel(self, pos: int) -> bytes:
        assert self._delay is not None
        P = self.partitions
        B = FRAME_SAMPLES_8K
        base = pos - self._delay + _PRE_SAMPLES  # far index aligned with near index `pos` at tap 0
        X = self._X
        if not self._x_valid:
            for p in range(P):
                X[p] = np.fft.rfft(self._read(self._far, base - (p + 1) * B, self._x2))
            self._x_valid = True
        else:
            X[1:] = X[:-1]
            X[0] = np.fft.rfft(self._read(self._far, base - B, self._x2))
        x2 = self._x2  # holds [previous far block | current far block]
        far_pow = float(np.dot(x2[B:], x2[B:])) / B
        # Reference power over the whole span the echo path can reach (tail smearing).
        span = self._read(self._far, base - P * B, np.empty(P * B + B))
        far_span_pow = float(np.max(np.mean(np.square(span).reshape(P + 1, B), axis=1)))
        W = self._W
        Y = np.einsum("pk,pk->k", W, X)
        y = np.fft.irfft(Y)[B:]
        d = self._d
        e = self._e
        np.subtract(d, y, out=e)
        near_pow = float(np.dot(d, d)) / B
        e_pow = float(np.dot(e, e)) / B
        y_pow = float(np.dot(y, y)) / B
        self._near_s += 0.1 * (near_pow - self._near_s)
        self._err_s += 0.1 * (e_pow - self._err_s)
        if self._err_s > 2.0 * self._near_s + 1e-10 and y_pow > 0.5 * near_pow:
            # The filter adds more than it removes (diverged, or the path changed): start over.
            W[:] = 0
            e[:] = d
            e_pow = near_pow
            self._err_s = self._near_s
        self._track_noise(e_pow)
        active = far_span_pow > _ACTIVE_POW
        floor = self._noise
        excess = max(e_pow - floor, 0.0)
        if active:
            # Double talk: the caller's audio is well above what the echo path gives back.
            near_db = _db(max(near_pow - floor, 1e-12) / far_span_pow)
            if near_db > self._erl_db + 6.0:
                self._dt_hold = 5
                self.stats.double_talk_frames += 1
            elif self._dt_hold:
                self._dt_hold -= 1
            if not self._dt_hold:
                # Quantile trackers (dB): the echo path's gain (80th percentile) and the residual
                # coupling after the filter (90th percentile), on echo-only frames.
                self._erl_db += 1.0 * (0.8 - (near_db < self._erl_db))
                # Noise above its floor is not echo: a frame's noise power varies by a few dB.
                # Only where the echo the path gives back stands above the noise floor: elsewhere
                # the residual is noise, and counting it as echo closes the gate on the caller.
                if far_span_pow * 10.0 ** (self._erl_db / 10.0) > floor:
                    res_db = _db(max(e_pow - _NOISE_MARGIN * floor, 1e-12) / far_span_pow)
                    self._kappa_db += 1.0 * (_KAPPA_QUANTILE - (res_db < self._kappa_db))
                self.stats.kappa_db = self._kappa_db
                if far_pow > _ACTIVE_POW:
                    # The linear filter's view of the echo path gain (noise does not inflate it).
                    self._lin_erl += 0.05 * (y_pow / far_pow - self._lin_erl)
                    self._lin_frames += 1
        # Adapt (NLMS per bin) when the reference is active and the caller is not talking.
        xpow = self._xpow
        xpow *= 0.7
        xpow += 0.3 * np.square(np.abs(X[0]))
        if far_pow > _ACTIVE_POW and not self._dt_hold:
            e2 = self._e2
            e2[B:] = e
            E = np.fft.rfft(e2)
            step = self.mu / (P * xpow + P * _ACTIVE_POW * _FFT)
            W += np.conj(X) * (E * step)
            # Gradient constraint on one partition per frame (MDF): keep each partition causal.
            c = self._constrain_next
            w = np.fft.irfft(W[c])
            w[B:] = 0.0
            W[c] = np.fft.rfft(w)
            self._constrain_next = (c + 1) % P
        if not self.suppress or not active:
            return self._apply_gain(e, 1.0)
        # Residual echo: the coupling learned on echo-only frames, or the filter's own echo estimate
        # (what it predicts is there; when the caller talks, their speech is far above it).
        kappa_db = self._kappa_db
        if self._lin_frames >= _LIN_FRAMES:
            # In noise the residual trackers count noise as echo; the residual cannot exceed the
            # echo path's own gain (as the converged linear filter sees it) by much.
            kappa_db = min(kappa_db, _db(max(self._lin_erl, 1e-12)) + _LIN_MARGIN_DB)
        echo = max(_OVER_SUPPRESS * 10.0 ** (kappa_db / 10.0) * far_span_pow, _ECHO_EST_WEIGHT * y_pow)
        gain = 1.0 - echo / max(excess, 1e-12)
        if excess > _OPEN_RATIO * echo:
            # Well above any echo this frame can hold: the caller. Open within this frame (no ramp
            # from a closed gate, which would cost the onset half a frame) and hold it open.
            self._open_hold = _OPEN_HOLD_FRAMES
            if excess > _ONSET_OVER_FLOOR * floor:
                self.caller_energy = True
                self.stats.caller_energy_frames += 1
            return self._apply_gain(e, 1.0, ramp=False)
        if self._open_hold:
            self._open_hold -= 1
            if gain > 0.0:
                gain = 1.0
        if self._dt_hold and gain > 0.0:
            gain = 1.0  # the caller is talking: pass them whole (no chopping for the upstream's VAD)
        return self._apply_gain(e, min(1.0, max(0.0, gain)))

    def _track_noise(self, pow_: float) -> None:
        n = self._noise
        self._noise = pow_ if pow_ < n else n * _NOISE_RISE

    def _apply_gain(self, x: np.ndarray, gain: float, *, ramp: bool = True) -> bytes:
        g0 = self._gain
        self._gain = gain
        if gain < 0.1:
            self.stats.frames_suppressed += 1
        out = self._out
        if g0 == gain or not ramp:
            np.multiply(x, 32768.0 * gain, out=x)
        else:
            x *= 32768.0
            x *= g0 + (gain - g0) * self._ramp
        np.rint(x, out=x)
        np.clip(x, -32768, 32767, out=x)
        out[:] = x
        return out.tobytes()

    # ------------------------------------------------------------------------------------------
    # delay estimation

    def _estimate_delay(self) -> None:
        W = _EST_WINDOW
        D = self.max_delay_samples
        end = self._pos
        n = self._read(self._near, end - W, np.empty(W))
        x = self._read(self._far, end - W - D, np.empty(W + D))
        n_pow = float(np.dot(n, n)) / W
        x_pow = float(np.dot(x, x)) / x.size
        if x_pow < _ACTIVE_POW or n_pow < 1e-10:
            return
        N = np.fft.rfft(n, _EST_FFT)
        X = np.fft.rfft(x, _EST_FFT)
        G = np.conj(N) * X
        mag = np.abs(G)
        G /= mag + 1e-12 * float(np.max(mag))
        G[~self._band] = 0.0
        c = np.fft.irfft(G)[: D + 1][::-1]  # c[d]: near vs far d samples earlier
        acc = self._acc
        acc *= 0.6
        acc += c
        self._acc_n += 1
        if self._acc_n < 2:
            return
        peak = int(np.argmax(acc))
        top = float(acc[peak])
        lo, hi = max(0, peak - 40), min(acc.size, peak + 41)
        rest = np.concatenate((acc[:lo], acc[hi:]))
        floor = float(np.max(rest)) if rest.size else 0.0
        spread = float(np.std(acc)) + 1e-12
        self._check_candidate(peak, top, floor, spread)

    def _check_candidate(self, peak: int, top: float, floor: float, spread: float) -> None:
        confident = top > 1.5 * floor and top > 6.0 * spread
        if not confident:
            self._candidate = None
            return
        current = self._delay
        if current is not None and abs(peak - current) <= _PRE_SAMPLES // 2:
            self._candidate = None
            return
        if self._candidate is not None and abs(peak - self._candidate) <= 16:
            self._set_delay(peak)
            self._candidate = None
        else:
            self._candidate = peak

    def _set_delay(self, delay_samples: int) -> None:
        self._delay = max(_PRE_SAMPLES, delay_samples)
        self._W[:] = 0
        self._x_valid = False
        self._erl_db = _MIN_ERL_DB
        self._kappa_db = _MIN_ERL_DB
        self._near_s = self._err_s = 0.0
        self._dt_hold = 0
        self._lin_erl = 0.0
        self._lin_frames = 0
        self.stats.delay_ms = self._delay * 1000.0 / RATE_8K
        self.stats.delay_changes += 1
