"""Twilio HTTP shell: the voice webhook (TwiML) and the Media Streams websocket.

`TwilioLeg` adapts one Media Streams websocket to the `Leg` protocol through the no-I/O
`TwilioStream` core. Bad input ends only that stream, with a log line and a close code:
binary frames 1003, malformed or out-of-order messages 1007, oversized messages 1009,
unauthorised streams 1008 (policy violation).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState
from twilio.twiml.voice_response import Connect, VoiceResponse

from bridge.settings import Settings
from bridge.telephony import twilio as tw
from bridge.telephony.events import CallEnded, CallStarted, Encoding, LegEvent

log = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009

# Decides whether a started stream may go on (issue: stream tokens). Returns a refusal reason or None.
StartGuard = Callable[[CallStarted], Awaitable[str | None]]
# Runs the call for a leg once the websocket is accepted.
CallRunner = Callable[["TwilioLeg"], Awaitable[object]]


class TwilioLeg:
    """One Twilio Media Streams websocket as a `Leg`."""

    def __init__(self, ws: WebSocket, *, lead_ms: int = 100, guard: StartGuard | None = None) -> None:
        self._ws = ws
        self._stream = tw.TwilioStream()
        self._guard = guard
        self._ended = False
        self.encoding: Encoding = "pcmu"
        self.lead_ms = lead_ms
        self.close_code: int | None = None
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
            if len(text) > tw.MAX_MESSAGE_BYTES:
                await self._refuse(CLOSE_TOO_BIG, f"message of {len(text)} bytes is over 64 KiB")
                yield CallEnded("error: message too big")
                return
            try:
                events = self._stream.receive(text)
            except tw.TwilioProtocolError as exc:
                await self._refuse(CLOSE_INVALID_PAYLOAD, str(exc))
                yield CallEnded(f"error: {exc}")
                return
            for event in events:
                if isinstance(event, CallStarted):
                    refusal = await self._guard(event) if self._guard is not None else None
                    if refusal is not None:
                        await self._refuse(CLOSE_POLICY_VIOLATION, refusal)
                        yield CallEnded(f"refused: {refusal}")
                        return
                    self.encoding = event.encoding
                    self.started = event
                elif isinstance(event, CallEnded):
                    self._ended = True
                yield event
                if self._ended:
                    return

    async def _refuse(self, code: int, reason: str) -> None:
        sid = self._stream.stream_sid or "-"
        log.warning("twilio stream %s closed (%d): %s", sid, code, reason)
        self._ended = True
        await self._close(code, reason[:120])

    async def _close(self, code: int, reason: str = "") -> None:
        if self.close_code is None:
            self.close_code = code
        if self._ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError):
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
            await self._send(tw.media_message(self._stream.stream_sid, frame))

    async def send_mark(self, name: str) -> None:
        if not self._ended:
            await self._send(tw.mark_message(self._stream.stream_sid, name))

    async def clear(self) -> None:
        if not self._ended and self._stream.stream_sid:
            await self._send(tw.clear_message(self._stream.stream_sid))

    async def hang_up(self) -> None:
        """End the stream; with `<Connect>` Twilio then moves on to what follows (hang-up)."""
        self._ended = True
        await self._close(CLOSE_NORMAL)

    async def transfer(self, target: str) -> bool:
        return False  # needs the call's continuation (issue: Twilio in production)

    async def finish(self) -> None:
        """Close the socket when the call is over (after `stop` too: nothing more is sent)."""
        self._ended = True
        await self._close(CLOSE_NORMAL)


def stream_url(settings: Settings, request_base: str) -> str:
    """The wss:// URL Twilio must open: BRIDGE_PUBLIC_URL's host, else the host it called."""
    base = settings.public_url or request_base
    parts = urlsplit(base)
    scheme = "ws" if parts.scheme in ("http", "ws") else "wss"
    path = parts.path.rstrip("/")
    return f"{scheme}://{parts.netloc}{path}/twilio/media"


def connect_twiml(url: str, parameters: dict[str, str]) -> str:
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=url)
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response)


def twilio_router(settings: Settings, run_call: CallRunner, guard: StartGuard | None = None) -> APIRouter:
    router = APIRouter()

    @router.post("/twilio/voice")
    async def voice(request: Request) -> Response:
        form = await request.form()
        params = {
            "caller": str(form.get("From", "")),
            "called": str(form.get("To", "")),
            "callSid": str(form.get("CallSid", "")),
        }
        url = stream_url(settings, str(request.base_url))
        return Response(content=connect_twiml(url, params), media_type="application/xml")

    @router.websocket("/twilio/media")
    async def media(ws: WebSocket) -> None:
        await ws.accept()
        leg = TwilioLeg(ws, lead_ms=settings.playout_lead_ms, guard=guard)
        try:
            await run_call(leg)
        except Exception:
            log.exception("call on twilio stream failed")
        finally:
            await leg.finish()

    return router
