"""The ops console (`/console`): server-rendered pages over the running bridge and its records.

    GET  /console                             live calls (flow, step, duration, provider) + recently ended
    POST /console/live/{call_id}/hangup       end a live call
    POST /console/live/{call_id}/transfer     transfer a live call to a target the dialplan names
    GET  /console/calls                       call history, searchable (the admin API's filters)
    GET  /console/calls/{call_id}             one call: timeline, transcript, recording, latency
    GET  /console/calls/{call_id}/recording   the recording (audio/wav) for the page's player
    GET  /console/dialplans                   every dialplan file checked, each flow as a diagram
    GET  /console/static/{name}               the console's CSS and JS (vendored, no CDN)

Mounted only when BRIDGE_ADMIN_TOKEN is set (404 otherwise). Every route needs the admin bearer or
the session cookie that a `?token=` link sets (bridge/web/auth.py). Every POST is CSRF-checked
(SameSite=Strict cookie, the console's own Origin, a per-session form token) and written to the
records' audit log before it is carried out; reads go through the records service, which audits
them too. Jinja2 templates (autoescaped) and assets ship in the package; no build step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse

from bridge.call.call import EndedCall
from bridge.cluster import Cluster, HangUpCall, TransferCall
from bridge.dialplan.loader import DialplanInvalid, load_dialplan
from bridge.errors import BridgeError
from bridge.records import store
from bridge.records.db import RecordsUnavailable
from bridge.records.recording import safe_name
from bridge.records.service import Records
from bridge.records.store import Actor, CallNotFound
from bridge.settings import Settings
from bridge.web import views
from bridge.web.auth import CSRF_FIELD, check_csrf, csrf_token, require_admin, token_login

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC = {
    "console.css": ("text/css; charset=utf-8", HERE / "static" / "console.css"),
    "console.js": ("text/javascript; charset=utf-8", HERE / "static" / "console.js"),
}
CSP = (
    "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; media-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
MAX_FORM_BYTES = 4096
WHO = "console"

if TYPE_CHECKING:
    from jinja2 import Environment


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


_environment: Environment | None = None


def _templates() -> Environment:
    """The console's templates. Jinja2 is imported with the first page (/console is off without
    BRIDGE_ADMIN_TOKEN, and a bridge that never serves it does not pay for it)."""
    global _environment
    if _environment is None:
        from jinja2 import Environment, FileSystemLoader, select_autoescape

        env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html", "svg"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters["duration"] = _fmt_duration
        _environment = env
    return _environment


def _headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": CSP,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def live_row(call: Any, now_s: float) -> dict[str, Any]:
    """What the live table shows of one running `Call` or one `EndedCall` (read on the event loop)."""
    s: EndedCall = call if isinstance(call, EndedCall) else call.summary()
    since = s.started_wall_s
    return {
        "call_id": s.call_id,
        "leg": s.leg,
        "caller": s.caller,
        "called": s.called,
        "flow": s.flow,
        "step": s.step,
        "state": s.state,
        "provider": s.provider,
        "started_s": since,
        "duration_s": (now_s - since) if since else None,
        "ended_reason": s.ended_reason,
        "ended_s": s.ended_wall_s,
        "error": s.operator_error,
    }


def mount_console(app: FastAPI, settings: Settings, records: Records) -> bool:
    """Add the `/console` routes when BRIDGE_ADMIN_TOKEN is set. Returns whether it did."""
    if not settings.admin_token:
        log.info("ops console off (BRIDGE_ADMIN_TOKEN is not set)")
        return False

    def actor(request: Request) -> Actor:
        source = request.client.host if request.client else "unknown"
        if settings.trust_proxy:
            forwarded = request.headers.get("x-forwarded-for", "")
            if forwarded.strip():
                source = forwarded.split(",")[-1].strip() or source
        return Actor(WHO, source)

    def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        body = (
            _templates()
            .get_template(template)
            .render(csrf=csrf_token(request), csrf_field=CSRF_FIELD, request_path=request.url.path, **context)
        )
        return HTMLResponse(body, status_code=status, headers=_headers())

    Handler = Callable[[Request], Awaitable[Response]]

    def guarded(handler: Handler, *, login: bool = False) -> Handler:
        async def route(request: Request) -> Response:
            if login:
                redirect = token_login(request)
                if redirect is not None:
                    return redirect
            request.state.how = require_admin(request)
            return await handler(request)

        route.__name__ = handler.__name__
        return route

    async def form_of(request: Request) -> dict[str, str]:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
            raise HTTPException(status_code=413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise HTTPException(status_code=413)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if body and kind != "application/x-www-form-urlencoded":
            raise HTTPException(status_code=415, detail="expected a form (application/x-www-form-urlencoded)")
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
        except (UnicodeDecodeError, ValueError) as exc:
            raise HTTPException(status_code=400, detail="malformed form") from exc
        values = dict(pairs)
        check_csrf(request, request.state.how, values)
        return values

    def find_live(call_id: str) -> Any:
        for call in list(app.state.calls):
            if call.started is not None and call.started.call_id == call_id:
                return call
        raise HTTPException(status_code=404, detail=f"no live call {call_id}")

    # -- pages -------------------------------------------------------------------------------------

    async def live(request: Request) -> Response:
        now = time.time()
        calls = [live_row(c, now) for c in list(app.state.calls)]
        calls.sort(key=lambda r: r["started_s"] or 0.0)
        recent = [live_row(c, now) for c in list(getattr(app.state, "recent_calls", []))[:20]]
        plan = app.state.dialplans.current()
        return page(
            request,
            "live.html",
            calls=calls,
            recent=recent,
            targets=views.transfer_targets(plan),
            note=request.query_params.get("note", ""),
            now=now,
            version=app.state.dialplans.version,
        )

    async def elsewhere(call_id: str) -> str:
        """The other instance holding `call_id` (docs/cluster.md), else 404."""
        cluster: Cluster | None = getattr(app.state, "cluster", None)
        owner = await cluster.owner_of(call_id) if cluster is not None else None
        if cluster is None or owner is None or owner == cluster.instance:
            raise HTTPException(status_code=404, detail=f"no live call {call_id}")
        return owner

    async def send_to(owner: str, message: HangUpCall | TransferCall) -> None:
        cluster: Cluster = app.state.cluster
        if not await cluster.send(owner, message):
            raise HTTPException(status_code=503, detail=f"instance {owner} holding the call did not answer")

    async def hangup(request: Request) -> Response:
        await form_of(request)
        call_id = request.path_params["call_id"]
        who = f"{WHO}@{actor(request).source}"
        try:
            call = find_live(call_id)
        except HTTPException:  # held by another instance of the cluster?
            owner = await elsewhere(call_id)
            await _audited(request, "console.hangup", call_id, {"instance": owner})
            await send_to(owner, HangUpCall(call_id, who))
        else:
            await _audited(request, "console.hangup", call_id, {})
            call.request_hang_up(who=who)
        return RedirectResponse(f"/console?note=hang-up+requested+for+{safe_name(call_id)}", status_code=303)

    async def transfer(request: Request) -> Response:
        form = await form_of(request)
        call_id = request.path_params["call_id"]
        who = f"{WHO}@{actor(request).source}"
        try:
            call = find_live(call_id)
        except HTTPException:
            call, owner = None, await elsewhere(call_id)
        # The holder checks again against the call's own dialplan version.
        allowed = views.transfer_targets(call.plan if call is not None else app.state.dialplans.current())
        target = form.get("target", "")
        if target not in allowed:
            # Transfers go only where the dialplan says (toll fraud): never a number typed in a form.
            raise HTTPException(status_code=422, detail=f"target must be one of the dialplan's: {allowed}")
        if call is None:
            await _audited(request, "console.transfer", call_id, {"target": target, "instance": owner})
            await send_to(owner, TransferCall(call_id, target, who))
        else:
            await _audited(request, "console.transfer", call_id, {"target": target})
            call.request_transfer(target, who=who)
        return RedirectResponse(f"/console?note=transfer+requested+for+{safe_name(call_id)}", status_code=303)

    async def _audited(request: Request, action: str, call_id: str, detail: dict[str, Any]) -> None:
        try:
            await records.audit(actor(request), action, call_id, detail)
        except RecordsUnavailable as exc:  # no audit entry, no action
            raise HTTPException(status_code=503, detail=f"audit log unavailable: {exc}") from exc

    async def history(request: Request) -> Response:
        params = {k: v for k, v in request.query_params.items() if v.strip() and k != "token"}
        error, status = "", 200
        result: dict[str, Any] = {"calls": [], "next_cursor": None}
        try:
            filters = store.parse_filters(params)
            result = await records.list_calls(filters, actor(request))
        except RecordsUnavailable as exc:
            error, status = str(exc), 503
        except BridgeError as exc:
            error, status = str(exc), 422
        next_params = {**params, "cursor": result.get("next_cursor") or ""}
        return page(
            request,
            "history.html",
            calls=result["calls"],
            next_cursor=result.get("next_cursor"),
            next_query=urlencode(next_params),
            params=params,
            error=error,
            status=status,
        )

    async def call_page(request: Request) -> Response:
        call_id = request.path_params["call_id"]
        try:
            record = await records.get_call(call_id, actor(request))
        except CallNotFound as exc:
            return page(request, "error.html", status=404, message=str(exc))
        except RecordsUnavailable as exc:
            return page(request, "error.html", status=503, message=str(exc))
        wave_view, wave_error = None, ""
        if record.get("recording"):
            try:
                opened = await records.open_recording(call_id, actor(request))
                wav = await asyncio.get_running_loop().run_in_executor(None, lambda: b"".join(opened.chunks))
                wave_view = views.waveform(wav, views.barge_in_marks(record))
            except BridgeError as exc:
                wave_error = str(exc)
        return page(
            request,
            "call.html",
            call=record,
            entries=views.timeline(record),
            wave=wave_view,
            wave_error=wave_error,
            chart=views.latency_chart(record.get("turns", [])),
        )

    async def recording(request: Request) -> Response:
        call_id = request.path_params["call_id"]
        try:
            opened = await records.open_recording(call_id, actor(request))
        except BridgeError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        headers = {**_headers(), "Content-Length": str(opened.wav_bytes)}
        return StreamingResponse(opened.chunks, media_type="audio/wav", headers=headers)

    async def dialplans(request: Request) -> Response:
        dialplan_store = app.state.dialplans
        files = await asyncio.get_running_loop().run_in_executor(None, _check_files, dialplan_store.paths)
        plan = dialplan_store.current()
        return page(
            request,
            "dialplans.html",
            files=files,
            flows=views.flow_diagram(plan),
            version=dialplan_store.version,
            last_errors=list(dialplan_store.last_errors),
            sources=[str(p) for p in plan.sources],
        )

    async def static(request: Request) -> Response:
        entry = STATIC.get(request.path_params["name"])
        if entry is None:
            raise HTTPException(status_code=404)
        media_type, path = entry
        headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        return Response(path.read_bytes(), media_type=media_type, headers=headers)

    router = APIRouter()
    routes: list[tuple[str, str, Handler, bool]] = [
        ("GET", "/console", live, True),
        ("POST", "/console/live/{call_id}/hangup", hangup, False),
        ("POST", "/console/live/{call_id}/transfer", transfer, False),
        ("GET", "/console/calls", history, True),
        ("GET", "/console/calls/{call_id}", call_page, True),
        ("GET", "/console/calls/{call_id}/recording", recording, False),
        ("GET", "/console/dialplans", dialplans, True),
        ("GET", "/console/static/{name}", static, False),
    ]
    for method, path, handler, login in routes:
        router.add_api_route(path, guarded(handler, login=login), methods=[method], include_in_schema=False)
    app.include_router(router)
    return True


def _check_files(paths: tuple[Path, ...]) -> list[views.FileCheck]:
    """Each dialplan file checked on its own (blocking reads: run in a thread)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        else:
            files.append(path)
    checks: list[views.FileCheck] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            checks.append(views.FileCheck(path, False, f"cannot read: {exc.strerror}", [], []))
            continue
        try:
            plan = load_dialplan(path)
        except DialplanInvalid as exc:
            checks.append(views.check_file(path, text, exc.problems, f"{len(exc.problems)} problem(s)"))
            continue
        except BridgeError as exc:
            checks.append(views.check_file(path, text, [str(exc)], "1 problem"))
            continue
        steps = sum(len(s) for s in plan.flows.values())
        checks.append(views.check_file(path, text, [], f"ok: {len(plan.flows)} flows, {steps} steps"))
    return checks
