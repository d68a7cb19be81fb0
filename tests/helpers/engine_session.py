"""Drive an `EngineSession` (bridge/engine/session.py) in tests: frames, a fake clock, tone "speech".

Turn detection runs the real SpeechDetector (hysteresis, timing) over a tiny energy VAD so that the
tests can use tones as "speech" with exact, known boundaries; the Silero path is covered end to end in
tests/engine/test_e2e_speech.py.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from bridge.engine.commands import GenerateReply, Synthesize
from bridge.engine.responder import Reply
from bridge.engine.session import EngineSession
from bridge.media import g711
from bridge.media.vad import SpeechDetector


class EnergyVad:
    """1.0 for a 20 ms window louder than -40 dBFS, else 0.0 (the Vad protocol of bridge.media.vad)."""

    window_samples = 160

    def __init__(self) -> None:
        self._pending = b""

    def reset(self) -> None:
        self._pending = b""

    def process(self, pcm16_8k: bytes) -> list[float]:
        data = self._pending + pcm16_8k
        n = len(data) // 320
        self._pending = data[n * 320 :]
        out = []
        for i in range(n):
            x = np.frombuffer(data[i * 320 : (i + 1) * 320], dtype="<i2").astype(np.float64)
            out.append(1.0 if np.sqrt(np.mean(x * x)) > 327 else 0.0)
        return out


def energy_detector(threshold: float, min_speech_ms: int, min_silence_ms: int) -> SpeechDetector:
    return SpeechDetector(
        threshold=threshold, min_speech_ms=min_speech_ms, min_silence_ms=min_silence_ms, vad=EnergyVad()
    )


def tone(ms: int, hz: float = 440.0, rate: int = 8000, dbfs: float = -12.0) -> bytes:
    t = np.arange(ms * rate // 1000) / rate
    return (np.sin(2 * np.pi * hz * t) * 32767 * 10 ** (dbfs / 20)).astype("<i2").tobytes()


def quiet(ms: int, rate: int = 8000) -> bytes:
    return bytes(ms * rate // 1000 * 2)


class Harness:
    """Drives an EngineSession with frames and a fake clock; collects events and commands."""

    def __init__(self, *, beta: bool = False) -> None:
        self.now = 1000.0
        self.s = EngineSession(energy_detector, beta=beta, now_ms=self.now)
        self.events: list[dict[str, Any]] = []
        self.commands: list[Any] = []
        self.collect()

    def collect(self) -> list[dict[str, Any]]:
        new = self.s.take_events()
        self.events.extend(new)
        self.commands.extend(self.s.take_commands())
        return new

    def send(self, event: dict[str, Any] | str) -> list[dict[str, Any]]:
        self.s.receive(event if isinstance(event, str) else json.dumps(event), self.now)
        return self.collect()

    def update(self, **session: Any) -> list[dict[str, Any]]:
        return self.send({"type": "session.update", "session": {"type": "realtime", **session}})

    def append_8k(self, pcm: bytes, enc: str = "pcmu", frame_ms: int = 20) -> list[dict[str, Any]]:
        """Append 8 kHz PCM as G.711 frames (the session must be configured for `enc`)."""
        out = []
        step = frame_ms * 16
        for i in range(0, len(pcm), step):
            payload = g711.encode(pcm[i : i + step], enc)  # type: ignore[arg-type]
            out += self.send(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(payload).decode()}
            )
            self.now += frame_ms
        return out

    def types(self, events: list[dict[str, Any]] | None = None) -> list[str]:
        return [e["type"] for e in (self.events if events is None else events)]

    def of(self, etype: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == etype]

    def take(self, kind: type) -> list[Any]:
        found = [c for c in self.commands if isinstance(c, kind)]
        self.commands = [c for c in self.commands if not isinstance(c, kind)]
        return found


def pcmu_session(**td: Any) -> Harness:
    h = Harness()
    turn_detection = {"type": "server_vad", **td} if td is not None else None
    h.update(
        audio={
            "input": {
                "format": {"type": "audio/pcmu"},
                "turn_detection": turn_detection,
                "transcription": {"model": "whisper-1"},
            },
            "output": {"format": {"type": "audio/pcmu"}},
        }
    )
    return h


def speak_turn(h: Harness, speech_ms: int = 800, lead_ms: int = 1000, tail_ms: int = 700) -> None:
    h.append_8k(quiet(lead_ms) + tone(speech_ms) + quiet(tail_ms))


def start_reply(h: Harness, text: str = "First sentence. Second sentence.") -> Synthesize:
    h.send({"type": "response.create"})
    (gen,) = h.take(GenerateReply)
    h.s.reply_ready(gen.response_id, Reply(text), h.now)
    h.collect()
    (syn,) = h.take(Synthesize)
    return syn
