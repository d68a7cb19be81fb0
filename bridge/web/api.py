"""The admin API over the call records (docs/records.md, docs/security.md).

Every route takes `Authorization: Bearer <BRIDGE_ADMIN_TOKEN>` (compared in constant time; 401
otherwise). With no admin token configured the routes are not mounted at all (404). Every request
that gets through is written to the audit log (who: `admin-token`, from where: the client address).

    GET    /api/calls                    filters: from, to, flow, since, until, text; limit, cursor
    GET    /api/calls/{call_id}          the whole record (events, transcript, turns)
    GET    /api/calls/{call_id}/recording  audio/wav (decrypted on the fly when encrypted)
    DELETE /api/calls/{call_id}          erase one call (rows, transcript, recording file)
    DELETE /api/calls?caller=+E164       erase every call from that number
    GET    /api/audit                    the audit log (limit, cursor); it has no DELETE
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from bridge.errors import BridgeError
from bridge.records import store
from bridge.records.crypto import KeyMissing, RecordsCryptoError, WrongKey
from bridge.records.db import RecordsUnavailable
from bridge.records.recording import RecordingCorrupt, RecordingMissing, safe_name
from bridge.records.service import Records
from bridge.records.store import Actor, CallNotFound, FilterError
from bridge.settings import Settings

log = logging.getLogger(__name__)

ADMIN_WHO = "admin-token"


def _authorized(authorization: str | None, token: str) -> bool:
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8"))


def _problem(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def _error_response(exc: BridgeError) -> Response:
    if isinstance(exc, FilterError):
        return _problem(422, str(exc))
    if isinstance(exc, CallNotFound | RecordingMissing):
        return _problem(404, str(exc))
    if isinstance(exc, RecordingCorrupt):
        return _problem(409, f"recording unreadable: {exc}")
    if isinstance(exc, WrongKey | KeyMissing):
        return _problem(500, f"recording cannot be decrypted: {exc}")
    if isinstance(exc, RecordsCryptoError):
        return _problem(409, f"recording unreadable: {exc}")
    if isinstance(exc, RecordsUnavailable):
        return _problem(503, str(exc), {"Retry-After": "5"})
    return _problem(400, str(exc))


def mount_admin_api(app: FastAPI, settings: Settings, records: Records) -> bool:
    """Add the `/api` routes to `app` when BRIDGE_ADMIN_TOKEN is set. Returns whether it did."""
    token = settings.admin_token
    if not token:
        log.info("admin API off (BRIDGE_ADMIN_TOKEN is not set)")
        return False

    def actor(request: Request) -> Actor:
        source = request.client.host if request.client else "unknown"
        if settings.trust_proxy:
            forwarded = request.headers.get("x-forwarded-for", "")
            if forwarded.strip():
                source = forwarded.split(",")[-1].strip() or source
        return Actor(ADMIN_WHO, source)

    Handler = Callable[[Request], Awaitable[Response]]

    def admin(handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            if not _authorized(request.headers.get("authorization"), token):
                return Response(status_code=401, headers={"WWW-Authenticate": 'Bearer realm="admin"'})
            try:
                return await handler(request)
            except BridgeError as exc:
                return _error_response(exc)

        guarded.__name__ = handler.__name__
        return guarded

    router = APIRouter()

    async def list_calls(request: Request) -> Response:
        filters = store.parse_filters(dict(request.query_params))
        return JSONResponse(await records.list_calls(filters, actor(request)))

    async def show_call(request: Request) -> Response:
        return JSONResponse(await records.get_call(request.path_params["call_id"], actor(request)))

    async def recording(request: Request) -> Response:
        call_id = request.path_params["call_id"]
        opened = await records.open_recording(call_id, actor(request))
        headers = {
            "Content-Length": str(opened.wav_bytes),
            "Content-Disposition": f'attachment; filename="{safe_name(call_id)}.wav"',
            "Cache-Control": "no-store",
        }
        return StreamingResponse(opened.chunks, media_type="audio/wav", headers=headers)

    async def delete_call(request: Request) -> Response:
        erased = await records.delete_call(request.path_params["call_id"], actor(request))
        return JSONResponse({"deleted": erased.counts()})

    async def delete_by_caller(request: Request) -> Response:
        params = dict(request.query_params)
        unknown = sorted(set(params) - {"caller"})
        if unknown:
            raise FilterError(
                f"unknown parameter(s) {', '.join(unknown)}; DELETE /api/calls takes caller=+E164"
            )
        caller = params.get("caller")
        if caller is None:
            raise FilterError(
                "caller: required (DELETE /api/calls?caller=%2B15551234567 erases that caller's calls)"
            )
        if caller.startswith(" "):  # an unencoded "+" in a query string reads as a space
            caller = "+" + caller.lstrip(" ")
        erased = await records.erase_caller(caller, actor(request))
        return JSONResponse({"deleted": erased.counts()})

    async def audit(request: Request) -> Response:
        params = dict(request.query_params)
        unknown = sorted(set(params) - {"limit", "cursor"})
        if unknown:
            raise FilterError(
                f"unknown parameter(s) {', '.join(unknown)}; GET /api/audit takes limit, cursor"
            )
        page = store.parse_filters({k: v for k, v in params.items()})
        return JSONResponse(await records.list_audit(actor(request), limit=page.limit, cursor=page.cursor))

    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/api/calls", list_calls),
        ("DELETE", "/api/calls", delete_by_caller),
        ("GET", "/api/calls/{call_id}", show_call),
        ("DELETE", "/api/calls/{call_id}", delete_call),
        ("GET", "/api/calls/{call_id}/recording", recording),
        ("GET", "/api/audit", audit),
    ]
    for method, path, handler in routes:
        router.add_api_route(path, admin(handler), methods=[method], include_in_schema=False)
    app.include_router(router)
    return True


__all__: list[Any] = ["mount_admin_api"]
