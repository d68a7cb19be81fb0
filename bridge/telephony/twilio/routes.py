"""Twilio HTTP shell: the webhooks (`/twilio/voice`, `/twilio/status`, `/twilio/continue`) and the
Media Streams websocket (`/twilio/media`), as the methods of `TwilioRoutes`.

With `TWILIO_AUTH_TOKEN` every webhook and upgrade must be signed and every stream must carry the
token its TwiML gave it; without it the bridge runs in a loudly logged development mode.

Admission (docs/security.md): the call slot is taken when an authenticated stream starts (its
token checked) and given back when that stream's handler ends, whatever ends it, so no slot
outlives its websocket. The voice webhook only looks at `full` to answer busy TwiML early; a call
admitted there can still meet a full bridge at stream start (a race between two webhooks), and
then its stream is closed with 1013 and the call goes on to the `<Connect action>` URL, which
hangs up. Every webhook and stream upgrade first passes a per-source token bucket (429).

With several instances (`shared`, the cluster's state in Redis: bridge/cluster, docs/cluster.md)
the same checks also run cluster-wide: the source's bucket, the stream token spent once anywhere,
and a cluster admission lease (BRIDGE_CLUSTER_MAX_CALLS). Each shared check answers None when Redis
is not usable, and the local check then decides alone.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from fastapi import APIRouter, Request, Response, WebSocket

from bridge.limits import RateLimiter, Slots
from bridge.metrics import METRICS, BridgeMetrics
from bridge.settings import Settings
from bridge.telephony.leg import CallStarted
from bridge.telephony.twilio import twiml
from bridge.telephony.twilio.auth import (
    STREAM_TOKEN_PARAMETER,
    StreamTokenError,
    TwilioGuard,
    WebhookBodyError,
    client_source,
    parse_form,
    request_target,
    token_nonce,
)
from bridge.telephony.twilio.call_registry import (
    CALL_STATUSES,
    STREAM_EVENTS,
    CallRegistry,
    InProcessCallRegistry,
    StatusEvent,
)
from bridge.telephony.twilio.continuation import TwilioContinuer, continuation_twiml
from bridge.telephony.twilio.leg import (
    CLOSE_POLICY_VIOLATION,
    CLOSE_TRY_AGAIN_LATER,
    StreamRefusal,
    TwilioLeg,
)

log = logging.getLogger(__name__)

# Runs the call for a leg once the websocket is accepted.
CallRunner = Callable[[TwilioLeg], Awaitable[object]]
# The dialplan flow for a called number, None when the bridge does not serve it.
FlowFor = Callable[[str], str | None]


class SharedAdmission(Protocol):
    """Cluster-wide checks (bridge/cluster/shell.Cluster). None: not known now, decide locally."""

    async def allow(self, source: str, rate_per_s: float, burst: int) -> bool | None: ...

    async def spend_token(self, nonce: str, expires_s: int) -> bool | None: ...

    async def cluster_full(self, limit: int) -> bool | None: ...

    async def acquire_lease(self, call_id: str, limit: int) -> bool | None: ...

    async def release_lease(self, call_id: str) -> None: ...


UNKNOWN_NUMBER_TEXT = "Sorry, this number is not in service. Goodbye."
_BODY_STATUS = {"too_large": 413, "not_form": 415, "bad_encoding": 400}


class TwilioRoutes:
    """The Twilio routes over their dependencies; `router()` mounts them.

    `call_slots` is the process-wide admission (shared with the SIP leg; its own
    `Slots(settings.max_calls)` when None); `rate_limiter` the per-source buckets (from settings
    when None), on the `monotonic` clock; `clock` gives the wall-clock seconds that stream tokens and
    the call registry use.
    """

    def __init__(
        self,
        settings: Settings,
        run_call: CallRunner,
        *,
        flow_for: FlowFor | None = None,
        call_slots: Slots | None = None,
        rate_limiter: RateLimiter | None = None,
        registry: CallRegistry | None = None,
        shared: SharedAdmission | None = None,
        metrics: BridgeMetrics | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.run_call = run_call
        self.flow_for = flow_for
        self.slots = call_slots if call_slots is not None else Slots(settings.max_calls)
        self.limiter = rate_limiter or RateLimiter(settings.rate_per_source_per_s, settings.rate_burst)
        self.calls: CallRegistry = registry if registry is not None else InProcessCallRegistry()
        self.shared = shared
        self.cluster_max_calls = settings.cluster_max_calls if shared is not None else None
        self.stats = metrics if metrics is not None else METRICS
        self.clock = clock
        self.monotonic = monotonic
        self.security = TwilioGuard(settings)
        # Set once the process drains (SIGTERM): new calls get busy TwiML, or a <Redirect> to
        # BRIDGE_DRAIN_REDIRECT_URL; calls in progress are not touched.
        self.draining = False
        self.continuer = TwilioContinuer(settings, self.calls, self.stats)
        if self.security.development_mode:
            log.warning(
                "TWILIO_AUTH_TOKEN is not set: DEVELOPMENT MODE, Twilio webhook signatures and media-stream "
                "tokens are NOT enforced. Never expose this bridge to the internet like this."
            )

    def router(self) -> APIRouter:
        router = APIRouter()
        router.add_api_route("/twilio/voice", self.voice, methods=["POST"])
        router.add_api_route("/twilio/status", self.status, methods=["POST"])
        router.add_api_route("/twilio/continue", self.continue_call, methods=["POST"])
        router.add_api_websocket_route("/twilio/media", self.media)
        return router

    # -- routes ----------------------------------------------------------------------------------

    async def voice(self, request: Request) -> Response:
        """The incoming-call webhook: busy, not-in-service, or `<Connect><Stream>` with the call's
        context and a stream token as `<Parameter>`s."""
        started = time.perf_counter()
        admitted = await self._admit(request, "/twilio/voice")
        if isinstance(admitted, Response):
            return admitted
        try:
            return await self._answer_call(request, dict(admitted))
        finally:
            self.stats.webhook_seconds.observe(time.perf_counter() - started, route="/twilio/voice")

    async def status(self, request: Request) -> Response:
        """Call and stream status callbacks, recorded in the call registry."""
        admitted = await self._admit(request, "/twilio/status")
        if isinstance(admitted, Response):
            return admitted
        form = dict(admitted)
        call_sid = form.get("CallSid", "")
        stream_event, call_status = form.get("StreamEvent", ""), form.get("CallStatus", "")
        if stream_event in STREAM_EVENTS:
            event = StatusEvent("stream", stream_event, self.clock(), form.get("StreamError", ""))
        elif call_status in CALL_STATUSES:
            event = StatusEvent("call", call_status, self.clock(), form.get("SipResponseCode", ""))
        else:
            self.stats.webhook_rejections.inc(route="/twilio/status", reason="unknown_status")
            return Response(status_code=400)
        if not call_sid:
            self.stats.webhook_rejections.inc(route="/twilio/status", reason="no_call_sid")
            return Response(status_code=400)
        self.stats.status_events.inc(kind=event.kind, status=event.status)
        await self.calls.record_status(call_sid, event)
        return Response(status_code=204)

    async def continue_call(self, request: Request) -> Response:
        """`<Connect action>`: what Twilio does once the stream ended (transfer, else hang up)."""
        admitted = await self._admit(request, "/twilio/continue")
        if isinstance(admitted, Response):
            return admitted
        call_sid = dict(admitted).get("CallSid", "")
        decided = await self.calls.take_continuation(call_sid)
        return _xml(continuation_twiml(decided))

    async def media(self, ws: WebSocket) -> None:
        """One Media Streams websocket: checked, admitted at `start`, run as a call, released."""
        self.stats.webhook_requests.inc(route="/twilio/media")
        if not await self._within_rate(ws.client.host if ws.client else None, ws.headers, "/twilio/media"):
            await _deny_upgrade(ws, 429)
            return
        refusal = self.security.check_upgrade(request_target(ws.scope), ws.headers)
        await ws.accept()
        if refusal is not None:
            self.stats.webhook_rejections.inc(route="/twilio/media", reason=refusal)
            log.warning("twilio stream upgrade refused: %s", refusal)
            with contextlib.suppress(RuntimeError):
                await ws.close(code=CLOSE_POLICY_VIOLATION, reason=refusal)
            return
        admission = _StreamAdmission(self)
        leg = TwilioLeg(
            ws, lead_ms=self.settings.playout_lead_ms, guard=admission.admit, continuer=self.continuer
        )
        admission.leg = leg
        try:
            await self.run_call(leg)
        except Exception:
            log.exception("call on twilio stream failed")
        finally:
            await admission.release()

    # -- helpers ---------------------------------------------------------------------------------

    async def _answer_call(self, request: Request, form: dict[str, str]) -> Response:
        call_sid, caller, called = form.get("CallSid", ""), form.get("From", ""), form.get("To", "")
        if self.draining:
            self.stats.admission_rejections.inc(leg="twilio", reason="draining")
            redirect = self.settings.drain_redirect_url
            log.info("call %s refused: draining (%s)", call_sid, "redirected" if redirect else "busy")
            return _xml(twiml.redirect(redirect) if redirect else twiml.reject_busy())
        if self.slots.full:  # only a look: the slot itself is taken when the stream starts
            self.stats.admission_rejections.inc(leg="twilio", reason="max_calls")
            log.warning(
                "call %s refused busy: %d calls in progress (BRIDGE_MAX_CALLS)", call_sid, self.slots.in_use
            )
            return _xml(twiml.reject_busy())
        limit = self.cluster_max_calls
        if self.shared is not None and limit is not None and await self.shared.cluster_full(limit):
            # (None, Redis down: the local admission above decides alone)
            self.stats.admission_rejections.inc(leg="twilio", reason="cluster_max_calls")
            log.warning("call %s refused busy: BRIDGE_CLUSTER_MAX_CALLS reached", call_sid)
            return _xml(twiml.reject_busy())
        flow = self.flow_for(called) if self.flow_for is not None else None
        if self.flow_for is not None and flow is None:
            self.stats.webhook_rejections.inc(route="/twilio/voice", reason="unknown_number")
            log.warning("call %s to %s: no dialplan flow for this number", call_sid, called)
            return _xml(twiml.say_and_hangup(UNKNOWN_NUMBER_TEXT))
        action_url = self._public_url(request, "/twilio/continue")
        params = {"caller": caller, "called": called, "callSid": call_sid}
        if flow is not None:
            params["flow"] = flow
        try:
            params[STREAM_TOKEN_PARAMETER] = self.security.issue_token(call_sid, self.clock())
        except ValueError:
            self.stats.webhook_rejections.inc(route="/twilio/voice", reason="bad_call_sid")
            return Response(status_code=400)
        await self.calls.open_call(
            call_sid, caller=caller, called=called, flow=flow, has_action_url=True, now_s=self.clock()
        )
        body = twiml.connect_stream(
            self._public_url(request, "/twilio/media", websocket=True),
            params,
            action_url=action_url,
            status_callback=self._public_url(request, "/twilio/status"),
        )
        return _xml(body)

    def _public_url(self, request: Request, path: str, *, websocket: bool = False) -> str:
        """`path` on the bridge's public base (BRIDGE_PUBLIC_URL, else the host Twilio called)."""
        target = request_target(request.scope)
        return self.security.public_url(target, request.headers, path, websocket=websocket)

    async def _within_rate(self, peer: str | None, headers: Mapping[str, str], route: str) -> bool:
        source = client_source(peer, headers, self.settings.trust_proxy)
        allowed = self.limiter.allow(source, self.monotonic())
        if allowed and self.shared is not None:  # the same bucket across instances (None: local only)
            limiter = self.limiter
            allowed = await self.shared.allow(source, limiter.rate_per_s, limiter.burst) is not False
        if allowed:
            return True
        self.stats.admission_rejections.inc(leg="twilio", reason="rate")
        self.stats.webhook_rejections.inc(route=route, reason="rate")
        log.warning("twilio %s from %s refused: over %g requests/s", route, source, self.limiter.rate_per_s)
        return False

    async def _admit(self, request: Request, route: str) -> list[tuple[str, str]] | Response:
        """The signed form of a webhook, or the refusal to send back."""
        self.stats.webhook_requests.inc(route=route)
        if not await self._within_rate(
            request.client.host if request.client else None, request.headers, route
        ):
            return Response(status_code=429, headers={"Retry-After": "1"})
        try:
            body = await _read_body(request, self.security.max_body_bytes)
            form = parse_form(body, request.headers.get("content-type"), self.security.max_body_bytes)
        except WebhookBodyError as exc:
            self.stats.webhook_rejections.inc(route=route, reason=exc.reason)
            log.warning("twilio %s refused (%s): %s", route, exc.reason, exc)
            return Response(status_code=_BODY_STATUS[exc.reason])
        refusal = self.security.check_webhook(request_target(request.scope), request.headers, form)
        if refusal is not None:
            self.stats.webhook_rejections.inc(route=route, reason=refusal)
            client = request.client.host if request.client else "?"
            log.warning("twilio %s from %s refused: %s", route, client, refusal)
            return Response(status_code=403)
        return form


class _StreamAdmission:
    """What one media stream holds once started: its call slot and its place in the call registry.

    `admit` is the leg's start guard (stream token, then a call slot, then the registry);
    `release` gives back whatever was taken, the slot first.
    """

    def __init__(self, routes: TwilioRoutes) -> None:
        self.security = routes.security
        self.slots = routes.slots
        self.calls = routes.calls
        self.stats = routes.stats
        self.clock = routes.clock
        self.shared = routes.shared
        self.cluster_max_calls = routes.cluster_max_calls
        self.leg: TwilioLeg | None = None
        self._holds_slot = False
        self._lease: str | None = None
        self._attached: CallStarted | None = None

    async def admit(self, event: CallStarted) -> str | StreamRefusal | None:
        token = event.params.get(STREAM_TOKEN_PARAMETER)
        try:
            self.security.check_token(token, event.call_id, self.clock())
        except StreamTokenError as exc:
            self.stats.webhook_rejections.inc(route="/twilio/media", reason=f"token_{exc.reason}")
            return str(exc)
        spent = token_nonce(token) if self.shared is not None else None
        if self.shared is not None and spent is not None and await self.shared.spend_token(*spent) is False:
            self.stats.webhook_rejections.inc(route="/twilio/media", reason="token_replayed")
            return "stream token was already used (on another instance)"
        if not self.slots.try_acquire():
            self.stats.admission_rejections.inc(leg="twilio", reason="max_calls")
            return StreamRefusal(CLOSE_TRY_AGAIN_LATER, f"bridge is at BRIDGE_MAX_CALLS ({self.slots.limit})")
        self._holds_slot = True
        if self.shared is not None and self.cluster_max_calls is not None:
            leased = await self.shared.acquire_lease(event.call_id, self.cluster_max_calls)
            if leased is False:
                self.stats.admission_rejections.inc(leg="twilio", reason="cluster_max_calls")
                limit = self.cluster_max_calls
                return StreamRefusal(
                    CLOSE_TRY_AGAIN_LATER, f"cluster is at BRIDGE_CLUSTER_MAX_CALLS ({limit})"
                )
            if leased:
                self._lease = event.call_id
        if not await self.calls.attach_stream(event.call_id, event.stream_id, self._close_leg, self.clock()):
            self.stats.webhook_rejections.inc(route="/twilio/media", reason="stream_not_allowed")
            return "call has ended or already has an open stream"
        self._attached = event
        return None

    async def _close_leg(self, reason: str) -> None:
        """The registry's request to close this stream (the call ended elsewhere)."""
        log.info("closing twilio stream: %s", reason)
        if self.leg is not None:
            await self.leg.finish()

    async def release(self) -> None:
        if self._holds_slot:  # first: nothing below may keep the slot from being given back
            self._holds_slot = False
            self.slots.release()
        if self._lease is not None and self.shared is not None:
            lease, self._lease = self._lease, None
            await self.shared.release_lease(lease)
        if self.leg is not None:
            await self.leg.finish()
        if self._attached is not None:
            attached, self._attached = self._attached, None
            await self.calls.detach_stream(attached.call_id, attached.stream_id, self.clock())


def _xml(body: str) -> Response:
    return Response(content=body, media_type="application/xml")


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


async def _deny_upgrade(ws: WebSocket, status: int) -> None:
    """Refuse a websocket upgrade with an HTTP status (403 when the server cannot send one)."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        headers = {"Retry-After": "1"} if status == 429 else None
        await ws.send_denial_response(Response(status_code=status, headers=headers))
    else:
        await ws.close(code=CLOSE_TRY_AGAIN_LATER)
