"""What goes through the pipe between the bridge and a speech worker (bridge/speech/asr_pool.py).

Both ways a pipe write is a list of these messages (a batch). They are frozen, slotted dataclasses,
defined at module level so that a "spawn" worker unpickles them by name. `Feed` (one per 20 ms frame
and session) pickles as a plain constructor call: cheaper than the default slots state.

Requests (bridge -> worker): `Open`, `Expect`, `Begin`, `Feed`, `Partial`, `End`, `Close`, `Stop`.
`Partial` and `End` carry a request number that their answer repeats.
Answers (worker -> bridge): `Ready` or `Fatal` first, then `PartialText`, `TurnEnded`,
`RequestFailed` (to a request number) and `Log`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Open:
    """Create session `sid`'s recognizer ("lm" or "jsgf")."""

    sid: int
    mode: str


@dataclass(frozen=True, slots=True)
class Expect:
    """The phrases the session's next turn listens for (None: open transcription)."""

    sid: int
    phrases: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class Begin:
    """Start a turn."""

    sid: int


@dataclass(frozen=True, slots=True)
class Feed:
    """PCM16 8 kHz audio of the current turn."""

    sid: int
    pcm: bytes

    def __reduce__(self) -> tuple[type[Feed], tuple[int, bytes]]:
        return Feed, (self.sid, self.pcm)


@dataclass(frozen=True, slots=True)
class Partial:
    """Ask for the best hypothesis so far (answer: `PartialText`)."""

    sid: int
    req: int


@dataclass(frozen=True, slots=True)
class End:
    """Finish the turn (answer: `TurnEnded` or `RequestFailed`)."""

    sid: int
    req: int


@dataclass(frozen=True, slots=True)
class Close:
    """Drop the session's recognizer."""

    sid: int


@dataclass(frozen=True, slots=True)
class Stop:
    """Exit after answering what came before."""


Request = Open | Expect | Begin | Feed | Partial | End | Close | Stop


@dataclass(frozen=True, slots=True)
class Ready:
    """The worker has loaded its models: its pid and each model's load time (ms)."""

    pid: int
    load_report: dict[str, float]


@dataclass(frozen=True, slots=True)
class Fatal:
    """The worker could not start (it exits after sending this)."""

    reason: str


@dataclass(frozen=True, slots=True)
class PartialText:
    req: int
    text: str


@dataclass(frozen=True, slots=True)
class TurnEnded:
    """A turn's transcript, and the cepstral mean the session's next turn starts from."""

    req: int
    text: str
    search: str
    in_grammar: bool
    audio_ms: int
    cmn: str


@dataclass(frozen=True, slots=True)
class RequestFailed:
    req: int
    reason: str


@dataclass(frozen=True, slots=True)
class Log:
    """A record for the bridge's log (level as in `logging`)."""

    level: int
    text: str


Answer = PartialText | TurnEnded | RequestFailed
Reply = Ready | Fatal | Answer | Log
