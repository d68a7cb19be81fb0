"""What a call tells whoever watches it live: typed notes, no I/O.

The call (and its agent link) hand a `CallWatcher` one `CallNote` per fact worth showing a person:
what the bot said, what the caller said or pressed, barge-ins, the dialplan step entered, the end.
The browser softphone (`bridge.web.phone`) streams them to its page; nothing here knows who listens.
Notes are rare (a few per turn), never per audio frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "BargedIn",
    "BotSaid",
    "CallFinished",
    "CallNote",
    "CallWatcher",
    "CallerSaid",
    "KeyPressed",
    "StepEntered",
]


@dataclass(frozen=True, slots=True)
class BotSaid:
    """Words the bot speaks: a dialplan prompt (`say`) or an agent's answer (its transcript)."""

    text: str
    source: Literal["prompt", "agent"]


@dataclass(frozen=True, slots=True)
class CallerSaid:
    """Words recognised from the caller: by a menu listening for speech, or by the agent's session."""

    text: str
    source: Literal["menu", "agent"]


@dataclass(frozen=True, slots=True)
class KeyPressed:
    digit: str


@dataclass(frozen=True, slots=True)
class BargedIn:
    """The bot was cut off (by the caller's voice, the session's VAD, a key, or the dialplan)."""

    source: str  # "local_vad", "server_vad", "dtmf", "stop_prompts"


@dataclass(frozen=True, slots=True)
class StepEntered:
    """The dialplan runner moved to `flows.<flow>[<index>]`, a step of `kind` (say, menu, agent...)."""

    flow: str
    index: int
    kind: str


@dataclass(frozen=True, slots=True)
class CallFinished:
    reason: str


CallNote = BotSaid | CallerSaid | KeyPressed | BargedIn | StepEntered | CallFinished


class CallWatcher(Protocol):
    def note(self, note: CallNote) -> None:
        """Called on the event loop; must not block (queue the note and return)."""
