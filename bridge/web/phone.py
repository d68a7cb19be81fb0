"""The browser softphone: `GET /phone` (a page), `POST /phone/offer` (WebRTC signalling).

A newcomer who runs `make run` can call the bot from a browser: pick a number or a flow, call, hear
the greeting, talk, press keys, hang up. The call is a `WebRtcLeg` (bridge/telephony/webrtc) run by
the same `run_call` as Twilio and SIP calls (same `Call`, dialplans, barge-in, metrics, call slot),
and its notes (bridge/call/watch.py) stream to the page over the data channel: transcript lines,
keys, barge-ins, dialplan steps.

Routes (only with BRIDGE_ADMIN_TOKEN; bridge/web/auth.py, docs/security.md):

    GET  /phone             the page (`?token=...` sets the session cookie and redirects, 303)
    GET  /phone/phone.js    its script (vanilla, no build step), GET /phone/phone.css its style
    GET  /phone/config      the dialplan's numbers and flows (JSON)
    POST /phone/offer       {"sdp", "type": "offer", "number"?, "flow"?}
                            -> {"sdp", "type": "answer", "call_id"}
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from bridge import metrics
from bridge.call.watch import (
    BargedIn,
    BotSaid,
    CallerSaid,
    CallFinished,
    CallNote,
    CallWatcher,
    KeyPressed,
    StepEntered,
)
from bridge.dialplan.store import DialplanStore
from bridge.errors import BridgeError
from bridge.limits import Slots
from bridge.settings import Settings
from bridge.telephony.leg import CallStarted, Leg
from bridge.telephony.webrtc.peer import IcePolicy, WebRtcError, answer_offer  # aiortc loads at the 1st offer
from bridge.web.auth import require_admin, require_same_origin, token_login

if TYPE_CHECKING:
    from bridge.telephony.webrtc.leg import WebRtcLeg  # imports aiortc and PyAV (~35 MB): types only here

log = logging.getLogger(__name__)

CallRunner = Callable[[Leg, CallWatcher | None], Awaitable[None]]

OFFER_MAX_BYTES = 64 * 1024
CALLER_ID = "softphone"
STATIC = ("index.html", "phone.js", "phone.css")
CONTENT_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
}
# The page loads only its own script and style; audio comes from the peer connection.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "media-src 'self' blob: mediastream:; img-src 'self' data:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _static(name: str) -> bytes:
    return resources.files("bridge.web").joinpath("static", "phone", name).read_bytes()


class PageFeed:
    """A `CallWatcher` that sends each note to the page as one JSON event on the data channel."""

    def __init__(self, leg: WebRtcLeg) -> None:
        self._leg = leg
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()

    def event(self, note: CallNote) -> dict[str, Any]:
        match note:
            case BotSaid(text, source):
                return {"type": "transcript", "who": "bot", "text": text, "source": source}
            case CallerSaid(text, source):
                return {"type": "transcript", "who": "caller", "text": text, "source": source}
            case KeyPressed(digit):
                return {"type": "key", "digit": digit}
            case BargedIn(source):
                return {"type": "barge_in", "source": source}
            case StepEntered(flow, index, kind):
                return {"type": "step", "flow": flow, "index": index, "kind": kind}
            case CallFinished(reason):
                return {"type": "ended", "reason": reason}

    def note(self, note: CallNote) -> None:
        event = self.event(note)
        event["t_ms"] = round((self._loop.time() - self._t0) * 1000)
        self._leg.send_event(event)


def mount_phone(
    app: FastAPI,
    settings: Settings,
    *,
    run_call: CallRunner,
    call_slots: Slots,
    dialplans: DialplanStore,
) -> bool:
    """Add the softphone routes when BRIDGE_ADMIN_TOKEN is set. Returns whether it did."""
    if not settings.admin_token:
        log.info("softphone /phone off (BRIDGE_ADMIN_TOKEN is not set)")
        return False
    try:
        policy = IcePolicy.from_settings(settings.webrtc_hosts, settings.webrtc_ports, settings.host)
    except WebRtcError as exc:
        log.error("softphone /phone off: %s", exc)
        return False
    router = APIRouter()
    tasks: set[asyncio.Task[None]] = set()
    app.state.phone_calls = tasks

    def static_response(name: str) -> Response:
        kind = name.rsplit(".", 1)[1]
        return Response(_static(name), media_type=CONTENT_TYPES[kind], headers=PAGE_HEADERS)

    @router.get("/phone")
    async def page(request: Request) -> Response:
        login = token_login(request)
        if login is not None:
            return login
        require_admin(request)
        return static_response("index.html")

    @router.get("/phone/phone.js")
    async def script(request: Request) -> Response:
        require_admin(request)
        return static_response("phone.js")

    @router.get("/phone/phone.css")
    async def style(request: Request) -> Response:
        require_admin(request)
        return static_response("phone.css")

    @router.get("/phone/config")
    async def config(request: Request) -> Response:
        require_admin(request)
        plan = dialplans.current()
        numbers = sorted(plan.numbers)
        return JSONResponse(
            {"numbers": numbers, "flows": sorted(plan.flows), "version": dialplans.version},
            headers={"Cache-Control": "no-store"},
        )

    @router.post("/phone/offer")
    async def offer(request: Request) -> Response:
        kind = require_admin(request)
        require_same_origin(request, kind)
        body = await request.body()
        if len(body) > OFFER_MAX_BYTES:
            raise HTTPException(413, detail="offer too large")
        try:
            data = json.loads(body)
        except ValueError:
            raise HTTPException(400, detail="the body must be JSON: {sdp, type: offer}") from None
        if not isinstance(data, dict) or data.get("type") != "offer" or not isinstance(data.get("sdp"), str):
            raise HTTPException(400, detail="the body must be JSON: {sdp, type: offer}")
        plan = dialplans.current()
        number = str(data.get("number") or "default")
        flow = data.get("flow")
        if flow is not None and (not isinstance(flow, str) or flow not in plan.flows):
            raise HTTPException(400, detail=f"no flow named {flow!r}")
        if not call_slots.try_acquire():
            metrics.METRICS.admission_rejections.inc(leg="webrtc", reason="max_calls")
            raise HTTPException(503, detail="too many calls", headers={"Retry-After": "5"})
        call_id = "WR" + secrets.token_hex(16)
        started = CallStarted(
            call_id=call_id,
            stream_id="WS" + secrets.token_hex(8),
            caller=CALLER_ID,
            called=number,
            encoding="pcmu",
            params={"flow": flow} if flow else {},
        )
        try:
            leg, answer_sdp = await answer_offer(data["sdp"], started, policy)
        except WebRtcError as exc:
            call_slots.release()
            raise HTTPException(400, detail=str(exc)) from None
        except BaseException:
            call_slots.release()
            raise
        feed = PageFeed(leg)
        leg.send_event({"type": "call", "call_id": call_id, "number": number, "flow": flow})

        async def run() -> None:
            watchdog = asyncio.get_running_loop().create_task(leg.watch_connect())
            try:
                await run_call(leg, feed)
            except BridgeError as exc:
                log.warning("softphone call %s failed: %s", call_id, exc)
            finally:
                watchdog.cancel()
                await leg.close()
                call_slots.release()

        task = asyncio.get_running_loop().create_task(run(), name=f"phone-{call_id}")
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        log.info("softphone call %s to %s (flow %s)", call_id, number, flow or "by number")
        return JSONResponse({"type": "answer", "sdp": answer_sdp, "call_id": call_id})

    app.include_router(router)
    return True
