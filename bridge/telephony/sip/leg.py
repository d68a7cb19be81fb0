"""The SIP leg as the call sees it: a `Leg` over the bridge's own RTP sender and a SIP dialog.

Signalling lives in `bridge.telephony.sip.uas` / `.endpoint` (which creates these legs); audio
pacing in `bridge.telephony.rtp`. This module only turns them into the `Leg` protocol: events in order
(`CallStarted` first, `CallEnded` last), a flushable outbound queue, marks once played.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from bridge.media.g711 import FRAME_MS, Encoding
from bridge.telephony.leg import (
    AudioIn,
    CallEnded,
    CallStarted,
    Dtmf,
    LegEvent,
    LegKind,
    MarkPlayed,
)
from bridge.telephony.rtp.packet import RtpStats
from bridge.telephony.rtp.sender import RtpSender


class DialogControl(Protocol):
    """What the leg asks of the SIP side of its call."""

    async def hang_up(self) -> None: ...

    async def transfer(self, target: str) -> bool: ...


class SipLeg:
    """One SIP call as a `Leg` (see `bridge.telephony.leg`).

    `lead_ms` is 140 with `refill_ms` 100: the call's pacer wakes once per 100 ms and hands over
    five frames, so the RTP sender holds 40 to 140 ms; the shared RTP ticker transmits them on absolute
    20 ms deadlines. That queue is the bridge's own: `clear()` empties it at once (barge-in still
    silences the very next packet) and marks fire when their frame is transmitted, so what the caller
    heard stays exact to the frame. One wake-up per 20 ms frame per call was what the SIP leg spent
    most of its CPU on (bench/results/load_sip.md: 150 calls took a whole core of this VM; with the
    refill, 15 %). The floor of 40 ms remains because the call's pacer and the ticker are two 20 ms
    grids with unrelated phases: with no lead, any pacer wake-up later than the tick starved the
    sender for one tick, so comfort silence was inserted into the bot's speech every ~0.5 s (found
    by tests/sip/test_sip_e2e.py, which compares the prompt on the wire frame by frame).
    """

    kind: LegKind = "sip"
    lead_ms = 140
    refill_ms = 100

    def __init__(
        self, started: CallStarted, sender: RtpSender, control: DialogControl, stats: RtpStats | None = None
    ) -> None:
        self.encoding: Encoding = started.encoding
        self.started = started
        self.sender = sender
        self.stats = stats or sender.stats
        self._control = control
        self._queue: asyncio.Queue[LegEvent] = asyncio.Queue()
        self._queue.put_nowait(started)
        self._inbound_frames = 0
        self.ended: str | None = None
        self.done = asyncio.Event()  # set with `ended`
        self.transferred = False  # a REFER of ours was accepted

    # -- fed by the SIP/RTP side, on the event loop ----------------------------------------------

    def push_audio(self, frame: bytes) -> None:
        if self.ended is None:
            self._queue.put_nowait(AudioIn(frame, self._inbound_frames * FRAME_MS))
            self._inbound_frames += 1

    def push_dtmf(self, digit: str) -> None:
        if self.ended is None:
            self._queue.put_nowait(Dtmf(digit))

    def push_marks(self, names: list[str]) -> None:
        if self.ended is None:
            for name in names:
                self._queue.put_nowait(MarkPlayed(name))

    def end(self, reason: str) -> None:
        """The call is over (either side). Idempotent; later sends are no-ops."""
        if self.ended is None:
            self.ended = reason
            self.done.set()
            self.sender.clear()
            self._queue.put_nowait(CallEnded(reason))

    # -- Leg -------------------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[LegEvent]:
        while True:
            event = await self._queue.get()
            yield event
            if isinstance(event, CallEnded):
                return

    async def send_audio(self, frame: bytes) -> None:
        if self.ended is None:
            self.sender.queue_frame(frame)

    async def send_mark(self, name: str) -> None:
        if self.ended is None:
            self.sender.queue_mark(name)

    async def clear(self) -> None:
        if self.ended is None:
            self.push_marks(self.sender.clear())

    async def hang_up(self) -> None:
        """BYE, unless a transfer was accepted: the call is then the transferee's to end (the SIP core
        hangs up on the final NOTIFY, or after its TRANSFER_WAIT_S); a BYE at once would overtake the
        NOTIFY and may abort the transfer at the far end (tests/sip/test_sip_drain.py)."""
        if self.ended is None and not self.transferred:
            await self._control.hang_up()

    async def transfer(self, target: str) -> bool:
        if self.ended is not None:
            return False
        self.transferred = await self._control.transfer(target)
        return self.transferred

    async def send_dtmf(self, digits: str, duration_ms: int = 100) -> None:
        """Send RFC 4733 digits to the caller (for dialplans that talk to IVRs)."""
        if self.ended is None:
            for digit in digits:
                self.sender.queue_dtmf(digit, duration_ms)

    @property
    def played_ms(self) -> int:
        """Audio actually transmitted to the caller so far (the pacer's count, for truncation)."""
        return self.sender.frames_sent * FRAME_MS

    @property
    def queued_ms(self) -> int:
        return self.sender.queued_frames * FRAME_MS
