"""The events every leg produces, and the `Leg` protocol: what a call asks of a leg.

The Twilio leg (Media Streams), the SIP leg (pyVoIP signalling + the bridge's own RTP) and the
browser softphone's WebRTC leg (aiortc) all produce these events and all implement `Leg`, so
`bridge.call` and the dialplan runner never know which one they are talking to.

Audio on a leg is always 8 kHz G.711 in the leg's `encoding`, in 20 ms frames (160 bytes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from bridge.media.g711 import Encoding

__all__ = [
    "AudioIn",
    "CallEnded",
    "CallStarted",
    "Dtmf",
    "Leg",
    "LegEvent",
    "LegKind",
    "MarkPlayed",
]

# Which telephony a leg speaks (metrics labels, logs); a constant of each leg class.
LegKind = Literal["twilio", "sip", "webrtc"]


@dataclass(frozen=True, slots=True)
class CallStarted:
    """The leg is up and audio can flow. `params` are Twilio `customParameters` or SIP headers."""

    call_id: str  # Twilio CallSid, or SIP Call-ID
    stream_id: str  # Twilio StreamSid, or a bridge-made id for SIP
    caller: str = ""
    called: str = ""
    encoding: Encoding = "pcmu"
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AudioIn:
    """One inbound chunk of caller audio (normally 20 ms = 160 bytes of G.711)."""

    payload: bytes
    timestamp_ms: int  # position in the leg's inbound stream


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str  # 0-9 * # A-D


@dataclass(frozen=True, slots=True)
class MarkPlayed:
    """The far end has played every frame sent before the mark called `name`."""

    name: str


@dataclass(frozen=True, slots=True)
class CallEnded:
    reason: str  # "stop", "hangup", "closed", "bye", "cancel", "error: ..."


LegEvent = CallStarted | AudioIn | Dtmf | MarkPlayed | CallEnded


class Leg(Protocol):
    """The phone side of one call, as the call sees it.

    `events()` yields `CallStarted` first and `CallEnded` last (then stops). Sending methods
    are no-ops once the leg has ended: nothing is sent after the far end said goodbye.
    """

    kind: LegKind
    encoding: Encoding
    # How far ahead of real time the call's pacer may send audio. Twilio buffers (100 ms); the
    # SIP leg keeps a small flushable queue (40 ms) in front of its own RTP clock, so a late pacer
    # wake-up never starves the sender (barge-in still silences the very next packet).
    lead_ms: int

    def events(self) -> AsyncIterator[LegEvent]: ...

    async def send_audio(self, frame: bytes) -> None:
        """Queue one 20 ms G.711 frame for the caller."""

    async def send_mark(self, name: str) -> None:
        """Ask to be told (`MarkPlayed`) once everything sent so far has been played."""

    async def clear(self) -> None:
        """Drop everything sent but not yet played (barge-in)."""

    async def hang_up(self) -> None:
        """End the call."""

    async def transfer(self, target: str) -> bool:
        """Hand the call to `target` (E.164 or SIP URI). False if this leg cannot."""
