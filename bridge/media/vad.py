"""Voice activity detection on 8 kHz PCM16 phone audio.

`SileroVad` runs the vendored Silero model at its native 8 kHz on the process-wide onnxruntime
session (one per process, 1 thread); each stream keeps only its recurrent state and a 288-sample
window buffer. `WebRtcVad` is the tiny fallback (0/1 per 20 ms) for when onnxruntime or the model is
unavailable. `SpeechDetector` turns either's per-window probabilities into onset/offset events with
hysteresis, counting time in samples from the start of the stream.

Per-frame work (~100 frames/s per call) is allocation-light: no logging, no formatting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from bridge.errors import ConfigError
from bridge.media.g711 import FRAME_SAMPLES_8K, RATE_8K
from bridge.media.model_files import silero_session

log = logging.getLogger(__name__)

SILERO_WINDOW_SAMPLES = 256
SILERO_CONTEXT_SAMPLES = 32
WEBRTC_FRAME_SAMPLES = FRAME_SAMPLES_8K  # webrtcvad takes 10, 20 or 30 ms: one 20 ms frame
_INT16_SCALE = np.float32(1.0 / 32768.0)
_TAIL_ENERGY_RATIO = 10.0 ** (-30.0 / 10.0)  # offset = last window within 30 dB of the utterance's peak
_DIGITAL_SILENCE_ENERGY = (2.0 / 32768.0) ** 2  # a window no louder than 2 LSB RMS
# Outside speech, windows quieter than this are not given to Silero (prob 0): a quiet caller is
# ~-28 dBFS active and soft unvoiced onsets ~25 dB below that, well above it. The recurrent state is
# kept across gated windows: resetting it made onsets 8-15 ms later (bench/results/load.md, "Optimisations").
GATE_DBFS = -62.0


class Vad(Protocol):
    """What SpeechDetector needs from a VAD."""

    window_samples: int

    def process(self, pcm16_8k: bytes) -> list[float]: ...

    def reset(self) -> None: ...


class SileroVad:
    """Silero VAD for one stream. Returns the speech probability of each completed 256-sample window."""

    window_samples = SILERO_WINDOW_SAMPLES

    def __init__(self) -> None:
        self._session = silero_session()
        # [32 context samples | 256 window samples]; filled in place.
        self._input = np.zeros((1, SILERO_CONTEXT_SAMPLES + SILERO_WINDOW_SAMPLES), dtype=np.float32)
        self._buf = self._input[0]
        self._fill = SILERO_CONTEXT_SAMPLES
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._sr = np.array(RATE_8K, dtype=np.int64)
        self._feeds = {"input": self._input, "state": self._state, "sr": self._sr}
        self._odd = b""
        self.energies: list[float] = []  # mean square of each window returned by the last process()
        # Set by SpeechDetector before each process(): windows below `gate_energy` (mean square) score
        # 0 without running the model, until one scores >= `gate_release` (the caller may be starting).
        self.gate_energy = 0.0
        self.gate_release = 2.0
        self.gated = 0  # windows gated so far (for benches and tests)

    def reset(self) -> None:
        self._buf[:] = 0.0
        self._fill = SILERO_CONTEXT_SAMPLES
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._feeds["state"] = self._state
        self._odd = b""

    def process(self, pcm16_8k: bytes) -> list[float]:
        if self._odd:
            pcm16_8k = self._odd + pcm16_8k
            self._odd = b""
        if len(pcm16_8k) & 1:
            self._odd = pcm16_8k[-1:]
            pcm16_8k = pcm16_8k[:-1]
        samples = np.frombuffer(pcm16_8k, dtype=np.int16)
        out: list[float] = []
        energies: list[float] = []
        self.energies = energies
        total = SILERO_CONTEXT_SAMPLES + SILERO_WINDOW_SAMPLES
        pos, n = 0, samples.shape[0]
        buf = self._buf
        while pos < n:
            take = min(total - self._fill, n - pos)
            np.multiply(samples[pos : pos + take], _INT16_SCALE, out=buf[self._fill : self._fill + take])
            self._fill += take
            pos += take
            if self._fill == total:
                window = buf[SILERO_CONTEXT_SAMPLES:]
                energy = float(np.dot(window, window)) / SILERO_WINDOW_SAMPLES
                if energy <= _DIGITAL_SILENCE_ENERGY:
                    # Digital silence (a muted line, µ-law 0xFF): no speech, and a fresh recurrent
                    # state. Fed long runs of exact zeros, Silero's state drifts until whole
                    # utterances that follow score below threshold (seen on 3 s pauses).
                    out.append(0.0)
                    self._state = np.zeros((2, 1, 128), dtype=np.float32)
                    self._feeds["state"] = self._state
                elif energy < self.gate_energy:
                    out.append(0.0)  # too quiet to be the start of speech: no model run
                    self.gated += 1
                else:
                    prob, state = self._session.run(None, self._feeds)
                    self._state = state
                    self._feeds["state"] = state
                    p = float(prob[0, 0])
                    if p >= self.gate_release:
                        self.gate_energy = 0.0
                    out.append(p)
                energies.append(energy)
                buf[:SILERO_CONTEXT_SAMPLES] = buf[total - SILERO_CONTEXT_SAMPLES :]
                self._fill = SILERO_CONTEXT_SAMPLES
        return out


class WebRtcVad:
    """webrtcvad fallback for one stream: 1.0 or 0.0 per 20 ms frame. Fine on quiet lines, weak in noise."""

    window_samples = WEBRTC_FRAME_SAMPLES

    def __init__(self, mode: int = 2) -> None:
        try:
            import webrtcvad
        except ImportError as exc:
            raise ConfigError("webrtcvad-wheels is not installed") from exc
        self._vad = webrtcvad.Vad(mode)
        self._pending = bytearray()

    def reset(self) -> None:
        self._pending.clear()

    def process(self, pcm16_8k: bytes) -> list[float]:
        pending = self._pending
        pending += pcm16_8k
        frame_bytes = WEBRTC_FRAME_SAMPLES * 2
        n = len(pending) // frame_bytes
        if n == 0:
            return []
        is_speech = self._vad.is_speech
        out = [
            1.0 if is_speech(bytes(pending[i * frame_bytes : (i + 1) * frame_bytes]), RATE_8K) else 0.0
            for i in range(n)
        ]
        del pending[: n * frame_bytes]
        return out


def create_vad(kind: str = "silero") -> SileroVad | WebRtcVad:
    """A VAD for one stream. "silero" falls back to webrtcvad (logged) if the model cannot load."""
    if kind == "webrtc":
        return WebRtcVad()
    if kind != "silero":
        raise ConfigError(f"unknown VAD kind {kind!r}: expected 'silero' or 'webrtc'")
    try:
        return SileroVad()
    except ConfigError as exc:
        log.warning("Silero VAD unavailable (%s); falling back to webrtcvad", exc)
        return WebRtcVad()


@dataclass(frozen=True, slots=True)
class SpeechStart:
    audio_ms: int  # where speech began, in ms from the start of the stream


@dataclass(frozen=True, slots=True)
class EarlyOnset:
    """The caller's audio rose well above the residual echo and the noise for `EnergyOnset.frames`
    frames: a likely onset, tens of ms before the VAD can tell (unvoiced sounds score low until voicing).
    Not speech yet: the barge-in pauses on it and resumes unless the detector confirms."""

    audio_ms: int  # end of the frame that completed it, in ms from the start of the stream


class EnergyOnset:
    """Energy onsets from per-frame flags (the echo canceller's `caller_energy`): `frames` flagged
    frames in a row fire once; it re-arms after `rearm_frames` unflagged frames in a row. No I/O."""

    def __init__(self, frames: int = 2, rearm_frames: int = 15) -> None:
        self.frames = frames
        self.rearm_frames = rearm_frames
        self._run = 0
        self._quiet = rearm_frames
        self._armed = True

    def feed(self, flagged: bool) -> bool:
        if flagged:
            self._run += 1
            self._quiet = 0
            if self._armed and self._run >= self.frames:
                self._armed = False
                return True
            return False
        self._run = 0
        self._quiet += 1
        if self._quiet >= self.rearm_frames:
            self._armed = True
        return False


@dataclass(frozen=True, slots=True)
class SpeechStop:
    audio_ms: int  # where speech ended, in ms from the start of the stream


class SpeechDetector:
    """Streaming speech onset/offset with hysteresis over a VAD's per-window probabilities.

    A window counts as speech at `prob >= threshold`; once speech (or a candidate onset) is running it
    continues while `prob >= neg_threshold` (default `threshold - 0.15`). Onset is reported once speech
    has lasted `min_speech_ms` (SpeechStart.audio_ms = where it began); offset after `min_silence_ms`
    below `neg_threshold` (SpeechStop.audio_ms = end of the last window at or above `threshold`).
    With Silero, windows below `gate_dbfs` score 0 without a model run while neither speech nor a
    candidate onset is running (None: every window is scored).
    """

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        min_speech_ms: int = 200,
        min_silence_ms: int = 500,
        neg_threshold: float | None = None,
        fast_threshold: float | None = None,
        vad: Vad | None = None,
        gate_dbfs: float | None = GATE_DBFS,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"VAD threshold must be between 0 and 1, got {threshold}")
        self.threshold = threshold
        self.neg_threshold = max(0.01, threshold - 0.15) if neg_threshold is None else neg_threshold
        if self.neg_threshold > threshold:
            raise ConfigError(f"VAD neg_threshold {self.neg_threshold} is above threshold {threshold}")
        if fast_threshold is not None and not threshold <= fast_threshold <= 1.0:
            raise ConfigError(f"VAD fast_threshold {fast_threshold} must be within threshold..1")
        # One window at or above this confirms an onset at once (no `min_speech_ms` wait).
        self.fast_threshold = 2.0 if fast_threshold is None else fast_threshold
        self.vad: Vad = vad if vad is not None else create_vad()
        self._window = self.vad.window_samples
        # Silero is skipped on windows below `gate_dbfs` while no speech (nor candidate onset) runs.
        self._gated_vad = self.vad if isinstance(self.vad, SileroVad) and gate_dbfs is not None else None
        self._gate_energy = 0.0 if gate_dbfs is None else 10.0 ** (gate_dbfs / 10.0)
        self._min_speech_samples = min_speech_ms * RATE_8K // 1000
        self._min_silence_samples = min_silence_ms * RATE_8K // 1000
        self._pos = 0  # samples of completed VAD windows
        self._fed = 0  # bytes fed
        self._speaking = False
        self._start: int | None = None  # candidate or confirmed onset (samples)
        self._silence_start: int | None = None
        self._last_voiced_end = 0  # end of the last window at or above threshold (samples)
        self._peak_energy = 0.0  # loudest window of the current utterance (when the VAD reports energy)
        self._last_loud_end = 0  # end of the last window within 30 dB of that peak

    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def voiced_ms(self) -> int:
        """How long the current utterance has been voiced: from its onset to the end of its last
        window at or above `threshold` (0 when the caller is not talking)."""
        if not self._speaking or self._start is None:
            return 0
        return (self._last_voiced_end - self._start) * 1000 // RATE_8K

    @property
    def hearing(self) -> bool:
        """The caller may be talking: speech, or a candidate onset not yet `min_speech_ms` long."""
        return self._start is not None

    @property
    def position_ms(self) -> int:
        """How much audio has been fed, in ms from the start of the stream."""
        return self._fed // 2 * 1000 // RATE_8K

    def reset(self) -> None:
        """Forget everything (VAD state and position): the next feed starts a new stream at 0 ms."""
        self.vad.reset()
        self._pos = 0
        self._fed = 0
        self._speaking = False
        self._start = None
        self._silence_start = None
        self._last_voiced_end = 0
        self._peak_energy = 0.0
        self._last_loud_end = 0

    def feed(self, pcm16_8k: bytes) -> list[SpeechStart | SpeechStop]:
        self._fed += len(pcm16_8k)
        gated = self._gated_vad
        if gated is not None:
            gated.gate_energy = 0.0 if self._speaking or self._start is not None else self._gate_energy
            gated.gate_release = self.threshold
        probs = self.vad.process(pcm16_8k)
        if not probs:
            return []
        events: list[SpeechStart | SpeechStop] = []
        window = self._window
        energies: list[float] | None = getattr(self.vad, "energies", None)
        if energies is not None and len(energies) != len(probs):
            energies = None
        for i, prob in enumerate(probs):
            begin = self._pos
            self._pos = end = begin + window
            if energies is not None:
                energy = energies[i]
                if energy > self._peak_energy:
                    self._peak_energy = energy
                if energy >= self._peak_energy * _TAIL_ENERGY_RATIO:
                    self._last_loud_end = end
            if self._speaking:
                if prob >= self.threshold:
                    self._silence_start = None
                    self._last_voiced_end = end
                elif prob < self.neg_threshold:
                    if self._silence_start is None:
                        self._silence_start = begin
                    if end - self._silence_start >= self._min_silence_samples:
                        stop = self._last_voiced_end
                        if self._start is not None and self._start < self._last_loud_end < stop:
                            stop = self._last_loud_end  # Silero holds on over quiet tails: trim them
                        events.append(SpeechStop(stop * 1000 // RATE_8K))
                        self._peak_energy = 0.0
                        self._speaking = False
                        self._start = None
                        self._silence_start = None
            elif self._start is None:
                if prob >= self.threshold:
                    self._start = begin
                    if window >= self._min_speech_samples or prob >= self.fast_threshold:
                        self._confirm(events)
            elif prob >= self.neg_threshold:
                if end - self._start >= self._min_speech_samples or prob >= self.fast_threshold:
                    self._confirm(events)
            else:
                self._start = None
        return events

    def _confirm(self, events: list[SpeechStart | SpeechStop]) -> None:
        assert self._start is not None
        self._speaking = True
        self._silence_start = None
        self._last_voiced_end = self._pos
        events.append(SpeechStart(self._start * 1000 // RATE_8K))
