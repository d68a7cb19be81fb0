"""What the embedded engine's session asks its I/O shell (bridge/engine/server.py) to do. No I/O.

The session cores queue these on the `Outbox`; the shell takes them (`EngineSession.take_commands`) and
runs the recogniser, the responder or the synthesizer, and feeds the results back into the session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from bridge.engine.responder import Turn
from bridge.media.vad import SpeechStart, SpeechStop


@dataclass(frozen=True, slots=True)
class AsrBegin:
    """Start recognising a turn (item_id) with this pre-roll audio (8 kHz PCM16)."""

    item_id: str
    pcm16_8k: bytes


@dataclass(frozen=True, slots=True)
class AsrAudio:
    item_id: str
    pcm16_8k: bytes


@dataclass(frozen=True, slots=True)
class AsrEnd:
    """Finish the turn; answer with `transcript_done(item_id, ...)` or `transcript_failed`."""

    item_id: str


@dataclass(frozen=True, slots=True)
class AsrDiscard:
    item_id: str


@dataclass(frozen=True, slots=True)
class SetExpected:
    """The phrases the recogniser should expect from now on (None: the general language model)."""

    phrases: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class WhisperTranscribe:
    """Transcribe a committed turn with Whisper, in the `live` lane (a reply waits for it) or the
    `record` lane (only the transcript event does); answer with `whisper_done(item_id, text)` or
    `whisper_failed`. Asking again for `live` promotes a queued `record` job."""

    item_id: str
    pcm16_8k: bytes
    priority: Literal["live", "record"]


@dataclass(frozen=True, slots=True)
class WarmWhisper:
    """The session will need this Whisper lane: start its worker now (loading takes about a second)."""

    priority: Literal["live", "record"]


@dataclass(frozen=True, slots=True)
class GenerateReply:
    """Ask the responder; answer with `reply_ready(response_id, reply)` or `work_failed`."""

    response_id: str
    turn: Turn


@dataclass(frozen=True, slots=True)
class Synthesize:
    """Speak `text`; feed `audio_chunk(response_id, sentence, pcm16)` per sentence, then `synthesis_done`."""

    response_id: str
    item_id: str
    text: str
    rate_hz: int
    cacheable: bool = False  # a fixed reply (intent, FAQ, greeting, ...): its audio may be cached


@dataclass(frozen=True, slots=True)
class Prewarm:
    """Synthesize these fixed replies ahead of time at this rate (into the process-wide prompt cache)."""

    texts: tuple[str, ...]
    rate_hz: int


@dataclass(frozen=True, slots=True)
class CancelWork:
    """Stop whatever runs for this response (reply generation, synthesis) as soon as possible."""

    response_id: str


@dataclass(frozen=True, slots=True)
class EgressRefused:
    """A client event tried to choose where the engine sends requests (answered with an `error`; count it)."""


Command = (
    AsrBegin
    | AsrAudio
    | AsrEnd
    | AsrDiscard
    | SetExpected
    | WhisperTranscribe
    | WarmWhisper
    | GenerateReply
    | Synthesize
    | CancelWork
    | Prewarm
    | EgressRefused
)


class Detector(Protocol):
    """What the session needs from a speech detector (bridge.media.vad.SpeechDetector)."""

    def feed(self, pcm16_8k: bytes) -> list[SpeechStart | SpeechStop]: ...


DetectorFactory = Callable[[float, int, int], Detector]  # (threshold, min_speech_ms, min_silence_ms)
