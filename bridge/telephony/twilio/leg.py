"""`TwilioLeg`: one Twilio Media Streams websocket as a `Leg` (bridge.telephony.leg).

The no-I/O `TwilioStream` core turns each text frame into leg events; this shell reads the socket,
sends what the call asks for, and closes the socket. Bad input ends only that stream, with a log
line and a close code: binary frames 1003, malformed or out-of-order messages 1007, oversized
messages 1009, unauthorised streams 1008 (policy violation), streams beyond `BRIDGE_MAX_CALLS` 1013
(try again later). Whether a started stream may go on is its `guard`'s decision (routes.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from bridge.errors import BridgeError
from bridge.media.g711 import Encoding
from bridge.telephony.leg import CallEnded, CallStarted, LegEvent, LegKind, MarkPlayed
from bridge.telephony.twilio.call_registry import Transfer
from bridge.telephony.twilio.continuation import TwilioContinuer
from bridge.telephony.twilio.messages import MAX_MESSAGE_BYTES, TwilioProtocolError
from bridge.telephony.twilio.stream import TwilioStream

log = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013

DRAIN_MARK = "bridge-continue"
DRAIN_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class StreamRefusal:
    """A started stream refused with a close code other than 1008 (e.g. 1013 when full)."""

    code: int
    reason: str


# Decides whether a started stream may go on (issue: stream tokens). Returns a refusal (a reason
# closed with 1008, or a `StreamRefusal`) or None.
StartGuard = Callable[[CallStarted], Awaitable[str | StreamRefusal | None]]


class TwilioLeg:
    """One Twilio Media Streams websocket as a `Leg`."""

    kind: LegKind = "twilio"

    def __init__(
        self,
        ws: WebSocket,
        *,
        lead_ms: int = 100,
        guard: StartGuard | None = None,
        continuer: TwilioContinuer | None = None,
    ) -> None:
        self._ws = ws
        self._stream = TwilioStream()
        self._guard = guard
        self._continuer = continuer
        self._drained = asyncio.Event()
        self._ended = False
        self.encoding: Encoding = "pcmu"
        self.lead_ms = lead_ms
        self.started: CallStarted | None = None

    @property
    def ended(self) -> bool:
        return self._ended

    async def events(self) -> AsyncIterator[LegEvent]:
        while not self._ended:
            try:
                message = await self._ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                message = {"type": "websocket.disconnect"}
            if message["type"] == "websocket.disconnect":
                self._ended = True
                yield CallEnded("closed")
                return
            text = message.get("text")
            if text is None:
                await self._refuse(CLOSE_UNSUPPORTED_DATA, "binary frame (Media Streams sends JSON text)")
                yield CallEnded("error: binary frame")
                return
            if len(text) > MAX_MESSAGE_BYTES:
                await self._refuse(CLOSE_TOO_BIG, f"message of {len(text)} bytes is over 64 KiB")
                yield CallEnded("error: message too big")
                return
            try:
                events = self._stream.receive(text)
            except TwilioProtocolError as exc:
                await self._refuse(CLOSE_INVALID_PAYLOAD, str(exc))
                yield CallEnded(f"error: {exc}")
                return
            for event in events:
                if isinstance(event, CallStarted):
                    refusal = await self._guard(event) if self._guard is not None else None
                    if refusal is not None:
                        if isinstance(refusal, StreamRefusal):
                            code, reason = refusal.code, refusal.reason
                        else:
                            code, reason = CLOSE_POLICY_VIOLATION, refusal
                        await self._refuse(code, reason)
                        yield CallEnded(f"refused: {reason}")
                        return
                    self.encoding = event.encoding
                    self.started = event
                elif isinstance(event, CallEnded):
                    self._ended = True
                elif isinstance(event, MarkPlayed) and event.name == DRAIN_MARK:
                    self._drained.set()
                yield event
                if self._ended:
                    return

    async def _refuse(self, code: int, reason: str) -> None:
        sid = self._stream.stream_sid or "-"
        log.warning("twilio stream %s closed (%d): %s", sid, code, reason)
        self._ended = True
        await self._close(code, reason[:120])

    async def _close(self, code: int, reason: str = "") -> None:
        if self._ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
                await self._ws.close(code=code, reason=reason)

    async def _send(self, text: str) -> None:
        if self._ended:
            return
        try:
            await self._ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._ended = True

    async def send_audio(self, frame: bytes) -> None:
        if not self._ended:
            await self._send(self._stream.media_message(frame))

    async def send_mark(self, name: str) -> None:
        if not self._ended:
            await self._send(self._stream.mark_message(name))

    async def clear(self) -> None:
        if not self._ended and self._stream.started:
            await self._send(self._stream.clear_message())

    async def hang_up(self) -> None:
        """End the stream; with `<Connect>` Twilio then moves on to what follows (hang-up)."""
        self._ended = True
        await self._close(CLOSE_NORMAL)

    async def transfer(self, target: str) -> bool:
        """Continue the call with `<Dial>` to `target` once what was sent has played, then end the
        stream. Call it from a task other than the one reading `events()` (the played-out mark is
        seen there), after the call's pacer has handed over its last frame."""
        if self._continuer is None or self.started is None or self._ended:
            return False
        try:
            path = await self._continuer.continue_call(self.started.call_id, Transfer(target), time.time())
        except BridgeError as exc:
            log.error("transfer of %s to %s refused: %s", self.started.call_id, target, exc)
            return False
        if path == "none":
            return False
        await self._drain()
        self._ended = True
        await self._close(CLOSE_NORMAL)
        return True

    async def _drain(self) -> None:
        """Wait until Twilio has played everything sent so far (a mark echoed), bounded."""
        if self._ended or not self._stream.started:
            return
        self._drained.clear()
        await self._send(self._stream.mark_message(DRAIN_MARK))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                await self._drained.wait()

    async def finish(self) -> None:
        """Close the socket when the call is over (after `stop` too: nothing more is sent)."""
        self._ended = True
        await self._close(CLOSE_NORMAL)
