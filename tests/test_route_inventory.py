"""docs/security.md lists every route the app serves, and each protected route refuses strangers.

The app is the real one (`create_app`, the repo's dialplans, every optional token set so every
optional route is mounted); its routes are walked (HTTP and WebSocket, through included routers).
A route missing from the inventory, or an inventory row for a route that no longer exists, fails.
Then, over real sockets, each row's `auth` is checked: without credentials the route refuses,
with them it lets the request through.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.routing import Mount, Route, WebSocketRoute
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bridge.app import create_app
from bridge.settings import Settings
from tests.helpers.servers import serve

REPO = Path(__file__).resolve().parents[1]
SECURITY_DOC = REPO / "docs" / "security.md"

AUTH = "inventory-auth-token"
ENGINE = "inventory-engine-token"
METRICS_TOKEN = "inventory-metrics-token"
ADMIN = "inventory-admin-token"
KNOWN_AUTH = {
    "twilio-signature",
    "twilio-signature+stream-token",
    "engine-token",
    "metrics-token",
    "admin-token",
    "none",
}


def inventory() -> dict[str, str]:
    """`{"METHOD /path": auth}` from the route table of docs/security.md."""
    rows: dict[str, str] = {}
    columns: list[str] | None = None
    for line in SECURITY_DOC.read_text().splitlines():
        if not line.startswith("|"):
            if columns is not None and rows:
                break
            columns = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if columns is None:
            if "route" in cells and "auth" in cells:
                columns = cells
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        route = cells[columns.index("route")].strip("`")
        auth = cells[columns.index("auth")].strip("`")
        assert route not in rows, f"docs/security.md lists {route} twice"
        rows[route] = auth
    assert rows, "docs/security.md has no route table (a table with `route` and `auth` columns)"
    return rows


def _contexts(app: FastAPI) -> Iterator[tuple[object, str, set[str] | None]]:
    """(route object, path, methods) for every route, through included routers."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before lazy included routers: app.routes is flat
        for route in app.routes:
            yield route, str(getattr(route, "path", "")), getattr(route, "methods", None)
        return
    for ctx in iter_route_contexts(app.routes):
        yield ctx.original_route, str(ctx.path), ctx.methods


def served_routes(app: FastAPI) -> set[str]:
    served: set[str] = set()
    for route, path, methods in _contexts(app):
        if isinstance(route, WebSocketRoute) or type(route).__name__ == "APIWebSocketRoute":
            served.add(f"WS {path}")
        elif isinstance(route, Route) or type(route).__name__ == "APIRoute":
            names = set(methods or ())
            if "GET" in names:
                names.discard("HEAD")  # Starlette answers HEAD on every GET route
            served.update(f"{m} {path}" for m in names)
        elif isinstance(route, Mount):
            served.add(f"MOUNT {path}")
        else:
            raise AssertionError(f"route {route!r}: unknown kind; teach tests/test_route_inventory.py")
    return served


def full_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "dialplans": REPO / "dialplans",
        "twilio_auth_token": AUTH,
        "engine_token": ENGINE,
        "metrics_token": METRICS_TOKEN,
        "admin_token": ADMIN,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def test_every_served_route_is_in_the_inventory_and_every_row_is_served() -> None:
    app = create_app(full_settings(), preload_models=False)
    served = served_routes(app)
    listed = inventory()
    assert served - set(listed) == set(), "routes served but not in docs/security.md"
    assert set(listed) - served == set(), "docs/security.md lists routes the app does not serve"
    assert set(listed.values()) <= KNOWN_AUTH, f"unknown auth kinds: {set(listed.values()) - KNOWN_AUTH}"


def test_api_docs_and_schema_are_not_served() -> None:
    app = create_app(full_settings(), preload_models=False)
    served = served_routes(app)
    for path in ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"):
        assert f"GET {path}" not in served


# --------------------------------------------------------------------------- auth behaviour


def sign(url: str, form: dict[str, str], token: str = AUTH) -> str:
    payload = url + "".join(k + v for k, v in sorted(form.items()))
    return base64.b64encode(hmac.new(token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


@pytest.fixture
def bridge_url() -> Iterator[str]:
    def make(port: int) -> FastAPI:
        return create_app(full_settings(public_url=f"http://127.0.0.1:{port}"), preload_models=False)

    with serve(make) as (url, _app):
        yield url


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


async def check_http(base: str, method: str, path: str, auth: str) -> None:
    url = base + concrete(path)
    async with httpx.AsyncClient() as http:
        if auth == "none":
            r = await http.request(method, url)
            assert r.status_code == 200, (method, path, r.status_code)
        elif auth == "twilio-signature":
            form = {
                "CallSid": "CA00000000000000000000000000000009",
                "From": "+15551230000",
                "To": "+15557650000",
                "CallStatus": "completed",
            }
            r = await http.request(method, url, data=form)
            assert r.status_code == 403, (method, path, "unsigned", r.status_code)
            r = await http.request(
                method, url, data=form, headers={"X-Twilio-Signature": sign(url, form, "x")}
            )
            assert r.status_code == 403, (method, path, "wrong key", r.status_code)
            assert r.content == b""
            r = await http.request(method, url, data=form, headers={"X-Twilio-Signature": sign(url, form)})
            assert r.status_code not in (401, 403), (method, path, "signed", r.status_code)
        elif auth in ("metrics-token", "admin-token"):
            token = METRICS_TOKEN if auth == "metrics-token" else ADMIN
            r = await http.request(method, url)
            assert r.status_code in (401, 403), (method, path, "no bearer", r.status_code)
            r = await http.request(method, url, headers={"Authorization": "Bearer wrong-" + token})
            assert r.status_code in (401, 403), (method, path, "wrong bearer", r.status_code)
            assert token not in r.text
            r = await http.request(method, url, headers={"Authorization": "Bearer " + token})
            assert r.status_code not in (401, 403), (method, path, "right bearer", r.status_code)
        else:
            raise AssertionError(f"no check for auth {auth!r} on {method} {path}")


async def refused_before_any_message(url: str, headers: dict[str, str]) -> bool:
    """True if the upgrade is refused, or the socket closes with 1008 before any message."""
    try:
        async with connect(url, additional_headers=headers, open_timeout=5) as ws:
            try:
                await ws.recv()
            except ConnectionClosed as exc:
                return exc.rcvd is not None and exc.rcvd.code == 1008
            return False
    except InvalidStatus as exc:
        return exc.response.status_code in (401, 403)


async def check_ws(base: str, path: str, auth: str) -> None:
    ws_base = base.replace("http://", "ws://")
    url = ws_base + concrete(path)
    if auth == "engine-token":
        assert await refused_before_any_message(url, {}), path
        assert await refused_before_any_message(url, {"Authorization": "Bearer wrong"}), path
        async with connect(url, additional_headers={"Authorization": "Bearer " + ENGINE}) as ws:
            first = json.loads(await ws.recv())
            assert first["type"] == "session.created", (path, first)
    elif auth == "twilio-signature+stream-token":
        start = {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": "MZ1",
            "start": {
                "streamSid": "MZ1",
                "accountSid": "AC1",
                "callSid": "CA00000000000000000000000000000009",
                "tracks": ["inbound"],
                "customParameters": {},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
        for headers in ({}, {"X-Twilio-Signature": sign(url, {})}):  # unsigned; signed without token
            async with connect(url, additional_headers=headers) as ws:
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
                    await ws.send(json.dumps(start))
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        await ws.recv()
                assert ws.close_code == 1008, (path, headers, ws.close_code)
    else:
        raise AssertionError(f"no check for auth {auth!r} on WS {path}")


async def test_each_route_authenticates_as_the_inventory_says(bridge_url: str) -> None:
    for route, auth in inventory().items():
        method, _, path = route.partition(" ")
        if method == "WS":
            await check_ws(bridge_url, path, auth)
        elif method == "MOUNT":
            continue
        else:
            await check_http(bridge_url, method, path, auth)


async def test_metrics_is_open_without_a_token(tmp_path: Path) -> None:
    def make(port: int) -> FastAPI:
        return create_app(Settings(dialplans=REPO / "dialplans"), preload_models=False)

    with serve(make) as (url, _app):
        async with httpx.AsyncClient() as http:
            r = await http.get(url + "/metrics")
    assert r.status_code == 200
    assert "ivr_bridge_admission_rejections_total" in r.text
