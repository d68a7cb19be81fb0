"""Twilio HTTP shell: the voice webhook (TwiML) and the Media Streams websocket.

`TwilioLeg` adapts one Media Streams websocket to the `Leg` protocol through the no-I/O
`TwilioStream` core. Bad input ends only that stream, with a log line and a close code:
binary frames 1003, malformed or out-of-order messages 1007, oversized messages 1009,
unauthorised streams 1008 (policy violation), streams beyond `BRIDGE_MAX_CALLS` 1013 (try again later).

Admission (docs/security.md): the call slot is taken when an authenticated stream starts (its
token checked) and given back when that stream's handler ends, whatever ends it, so no slot
outlives its websocket. The voice webhook only looks at `full` to answer busy TwiML early; a call
admitted there can still meet a full bridge at stream start (a race between two webhooks), and
then its stream is closed with 1013 and the call goes on to the `<Connect action>` URL, which
hangs up. Every webhook and stream upgrade first passes a per-source token bucket (429).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState
from twilio.twiml.voice_response import Connect, VoiceResponse

from bridge.errors import BridgeError
from bridge.limits import RateLimiter, Slots
from bridge.metrics import METRICS, BridgeMetrics
from bridge.settings import Settings
from bridge.telephony import twilio as tw
from bridge.telephony import twilio_twiml as twiml
from bridge.telephony.call_registry import (
    CALL_STATUSES,
    STREAM_EVENTS,
    CallRegistry,
    InProcessCallRegistry,
    StatusEvent,
    Transfer,
)
from bridge.telephony.events import CallEnded, CallStarted, Encoding, LegEvent, MarkPlayed
from bridge.telephony.twilio_auth import (
    STREAM_TOKEN_PARAMETER,
    StreamTokenError,
    TwilioGuard,
    WebhookBodyError,
    client_source,
    parse_form,
    request_target,
)
from bridge.telephony.twilio_continuation import TwilioContinuer, continuation_twiml

log = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013


@dataclass(frozen=True)
class StreamRefusal:
    """A started stream refused with a close code other than 1008 (e.g. 1013 when full)."""

    code: int
    reason: str


# Decides whether a started stream may go on (issue: stream tokens). Returns a refusal (a reason
# closed with 1008, or a `StreamRefusal`) or None.
StartGuard = Callable[[CallStarted], Awaitable[str | StreamRefusal | None]]
# Runs the call for a leg once the websocket is accepted.
CallRunner = Callable[["TwilioLeg"], Awaitable[object]]
# The dialplan flow for a called number, None when the bridge does not serve it.
FlowFor = Callable[[str], str | None]

DRAIN_MARK = "bridge-continue"
DRAIN_TIMEOUT_S = 10.0


class TwilioLeg:
    """One Twilio Media Streams websocket as a `Leg`."""

    def __init__(
        self,
        ws: WebSocket,
        *,
        lead_ms: int = 100,
        guard: StartGuard | None = None,
        continuer: TwilioContinuer | None = None,
    ) -> None:
        self._ws = ws
        self._stream = tw.TwilioStream()
        self._guard = guard
        self._continuer = continuer
        self._drained = asyncio.Event()
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
        if self.close_code is None:
            self.close_code = code
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
        if self._ended or not self._stream.stream_sid:
            return
        self._drained.clear()
        await self._send(tw.mark_message(self._stream.stream_sid, DRAIN_MARK))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                await self._drained.wait()

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


UNKNOWN_NUMBER_TEXT = "Sorry, this number is not in service. Goodbye."


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused (`WebhookBodyError`) as soon as it passes `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise WebhookBodyError("too_large", f"webhook body of {declared} bytes exceeds {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise WebhookBodyError("too_large", f"webhook body exceeds {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


_BODY_STATUS = {"too_large": 413, "not_form": 415, "bad_encoding": 400}


def twilio_router(
    settings: Settings,
    run_call: CallRunner,
    guard: StartGuard | None = None,
    *,
    twilio_guard: TwilioGuard | None = None,
    registry: CallRegistry | None = None,
    metrics: BridgeMetrics | None = None,
    flow_for: FlowFor | None = None,
    continuer: TwilioContinuer | None = None,
    clock: Callable[[], float] = time.time,
    call_slots: Slots | None = None,
    rate_limiter: RateLimiter | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> APIRouter:
    """`POST /twilio/voice`, `POST /twilio/status`, `POST /twilio/continue`, `WS /twilio/media`.

    With `TWILIO_AUTH_TOKEN` every webhook and upgrade must be signed and every stream must carry
    the token its TwiML gave it; without it the bridge runs in a loudly logged development mode.
    `call_slots` is the process-wide admission (shared with the SIP leg; its own
    `Slots(settings.max_calls)` when None); `rate_limiter` the per-source buckets (from settings
    when None), on the `monotonic` clock.
    """
    router = APIRouter()
    slots = call_slots if call_slots is not None else Slots(settings.max_calls)
    limiter = rate_limiter or RateLimiter(settings.rate_per_source_per_s, settings.rate_burst)
    security = twilio_guard or TwilioGuard(settings)
    calls: CallRegistry = registry if registry is not None else InProcessCallRegistry()
    stats = metrics if metrics is not None else METRICS
    continuation = continuer or TwilioContinuer(settings, calls, stats)
    if security.development_mode:
        log.warning(
            "TWILIO_AUTH_TOKEN is not set: DEVELOPMENT MODE, Twilio webhook signatures and media-stream "
            "tokens are NOT enforced. Never expose this bridge to the internet like this."
        )

    def within_rate(peer: str | None, headers: Mapping[str, str], route: str) -> bool:
        source = client_source(peer, headers, settings.trust_proxy)
        if limiter.allow(source, monotonic()):
            return True
        stats.admission_rejections.inc(leg="twilio", reason="rate")
        stats.webhook_rejections.inc(route=route, reason="rate")
        log.warning("twilio %s from %s refused: over %g requests/s", route, source, limiter.rate_per_s)
        return False

    async def admit(request: Request, route: str) -> list[tuple[str, str]] | Response:
        """The signed form of a webhook, or the refusal to send back."""
        stats.webhook_requests.inc(route=route)
        if not within_rate(request.client.host if request.client else None, request.headers, route):
            return Response(status_code=429, headers={"Retry-After": "1"})
        try:
            body = await _read_body(request, security.max_body_bytes)
            form = parse_form(body, request.headers.get("content-type"), security.max_body_bytes)
        except WebhookBodyError as exc:
            stats.webhook_rejections.inc(route=route, reason=exc.reason)
            log.warning("twilio %s refused (%s): %s", route, exc.reason, exc)
            return Response(status_code=_BODY_STATUS[exc.reason])
        refusal = security.check_webhook(request_target(request.scope), request.headers, form)
        if refusal is not None:
            stats.webhook_rejections.inc(route=route, reason=refusal)
            client = request.client.host if request.client else "?"
            log.warning("twilio %s from %s refused: %s", route, client, refusal)
            return Response(status_code=403)
        return form

    def xml(body: str) -> Response:
        return Response(content=body, media_type="application/xml")

    @router.post("/twilio/voice")
    async def voice(request: Request) -> Response:
        started = time.perf_counter()
        admitted = await admit(request, "/twilio/voice")
        if isinstance(admitted, Response):
            return admitted
        form = dict(admitted)
        call_sid, caller, called = form.get("CallSid", ""), form.get("From", ""), form.get("To", "")
        try:
            if slots.full:  # only a look: the slot itself is taken when the stream starts
                stats.admission_rejections.inc(leg="twilio", reason="max_calls")
                log.warning("call %s refused busy: %d calls in progress (BRIDGE_MAX_CALLS)", call_sid,
                            slots.in_use)
                return xml(twiml.reject_busy())
            flow = flow_for(called) if flow_for is not None else None
            if flow_for is not None and flow is None:
                stats.webhook_rejections.inc(route="/twilio/voice", reason="unknown_number")
                log.warning("call %s to %s: no dialplan flow for this number", call_sid, called)
                return xml(twiml.say_and_hangup(UNKNOWN_NUMBER_TEXT))
            target = request_target(request.scope)
            action_url = security.public_url(target, request.headers, "/twilio/continue")
            params = {"caller": caller, "called": called, "callSid": call_sid}
            if flow is not None:
                params["flow"] = flow
            try:
                params[STREAM_TOKEN_PARAMETER] = security.issue_token(call_sid, clock())
            except ValueError:
                stats.webhook_rejections.inc(route="/twilio/voice", reason="bad_call_sid")
                return Response(status_code=400)
            await calls.open_call(
                call_sid, caller=caller, called=called, flow=flow, has_action_url=True, now_s=clock()
            )
            body = twiml.connect_stream(
                security.public_url(target, request.headers, "/twilio/media", websocket=True),
                params,
                action_url=action_url,
                status_callback=security.public_url(target, request.headers, "/twilio/status"),
            )
            return xml(body)
        finally:
            stats.webhook_seconds.observe(time.perf_counter() - started, route="/twilio/voice")

    @router.post("/twilio/status")
    async def status(request: Request) -> Response:
        admitted = await admit(request, "/twilio/status")
        if isinstance(admitted, Response):
            return admitted
        form = dict(admitted)
        call_sid = form.get("CallSid", "")
        stream_event, call_status = form.get("StreamEvent", ""), form.get("CallStatus", "")
        if stream_event in STREAM_EVENTS:
            event = StatusEvent("stream", stream_event, clock(), form.get("StreamError", ""))
        elif call_status in CALL_STATUSES:
            event = StatusEvent("call", call_status, clock(), form.get("SipResponseCode", ""))
        else:
            stats.webhook_rejections.inc(route="/twilio/status", reason="unknown_status")
            return Response(status_code=400)
        if not call_sid:
            stats.webhook_rejections.inc(route="/twilio/status", reason="no_call_sid")
            return Response(status_code=400)
        stats.status_events.inc(kind=event.kind, status=event.status)
        await calls.record_status(call_sid, event)
        return Response(status_code=204)

    @router.post("/twilio/continue")
    async def continue_call(request: Request) -> Response:
        admitted = await admit(request, "/twilio/continue")
        if isinstance(admitted, Response):
            return admitted
        call_sid = dict(admitted).get("CallSid", "")
        decided = await calls.take_continuation(call_sid)
        return xml(continuation_twiml(decided))

    @router.websocket("/twilio/media")
    async def media(ws: WebSocket) -> None:
        stats.webhook_requests.inc(route="/twilio/media")
        if not within_rate(ws.client.host if ws.client else None, ws.headers, "/twilio/media"):
            await _deny_upgrade(ws, 429)
            return
        refusal = security.check_upgrade(request_target(ws.scope), ws.headers)
        await ws.accept()
        if refusal is not None:
            stats.webhook_rejections.inc(route="/twilio/media", reason=refusal)
            log.warning("twilio stream upgrade refused: %s", refusal)
            with contextlib.suppress(RuntimeError):
                await ws.close(code=CLOSE_POLICY_VIOLATION, reason=refusal)
            return
        attached: list[CallStarted] = []
        holding: list[bool] = []  # one entry while this stream holds a call slot

        async def admit_stream(event: CallStarted) -> str | StreamRefusal | None:
            try:
                security.check_token(event.params.get(STREAM_TOKEN_PARAMETER), event.call_id, clock())
            except StreamTokenError as exc:
                stats.webhook_rejections.inc(route="/twilio/media", reason=f"token_{exc.reason}")
                return str(exc)
            if not slots.try_acquire():
                stats.admission_rejections.inc(leg="twilio", reason="max_calls")
                return StreamRefusal(CLOSE_TRY_AGAIN_LATER, f"bridge is at BRIDGE_MAX_CALLS ({slots.limit})")
            holding.append(True)
            if not await calls.attach_stream(event.call_id, event.stream_id, leg_closer, clock()):
                stats.webhook_rejections.inc(route="/twilio/media", reason="stream_not_allowed")
                return "call has ended or already has an open stream"
            attached.append(event)
            if guard is not None:
                return await guard(event)
            return None

        async def leg_closer(reason: str) -> None:
            log.info("closing twilio stream: %s", reason)
            await leg.finish()

        leg = TwilioLeg(ws, lead_ms=settings.playout_lead_ms, guard=admit_stream, continuer=continuation)
        try:
            await run_call(leg)
        except Exception:
            log.exception("call on twilio stream failed")
        finally:
            if holding:  # first: nothing below may keep the slot from being given back
                holding.clear()
                slots.release()
            await leg.finish()
            for event in attached:
                await calls.detach_stream(event.call_id, event.stream_id, clock())

    return router


async def _deny_upgrade(ws: WebSocket, status: int) -> None:
    """Refuse a websocket upgrade with an HTTP status (403 when the server cannot send one)."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        headers = {"Retry-After": "1"} if status == 429 else None
        await ws.send_denial_response(Response(status_code=status, headers=headers))
    else:
        await ws.close(code=CLOSE_TRY_AGAIN_LATER)
