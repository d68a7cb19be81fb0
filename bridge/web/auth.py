"""Who may open the operator pages (/phone, /console): the admin token, as a bearer or a session.

- `Authorization: Bearer <BRIDGE_ADMIN_TOKEN>` (scripts, tests), compared in constant time; or
- a session cookie (`ivr_bridge_session`) that a one-time token link sets, like Jupyter's: opening
  `/phone?token=<BRIDGE_ADMIN_TOKEN>` checks the token, sets the cookie (HttpOnly, SameSite=Strict,
  Secure over https, expiring after `SESSION_TTL_S`) and answers 303 to the same URL without the
  token, so the token does not stay in the address bar, the history or a Referer.

The cookie is `v1.<expiry s>.<nonce>.<HMAC-SHA256>`, keyed by a key derived from the admin token:
changing BRIDGE_ADMIN_TOKEN ends every session. Nothing is stored server side.

Routes that change state (the softphone's offer) also call `require_same_origin`: a request
authenticated by the cookie must carry an `Origin` equal to the bridge's own (a cross-site form or
fetch cannot ride on the operator's session; SameSite=Strict already keeps the cookie off it).

`make_session` / `check_session` are the core (no I/O, time is an input); `require_admin`,
`token_login` and `require_same_origin` are the request-level shell every operator route uses.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Literal
from urllib.parse import urlencode

from fastapi import HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from bridge.settings import Settings

SESSION_COOKIE = "ivr_bridge_session"
SESSION_TTL_S = 8 * 3600
TOKEN_PARAM = "token"
_KEY_LABEL = b"ivr-bridge admin session v1"

AuthKind = Literal["bearer", "cookie"]


# -- core: no I/O ------------------------------------------------------------------------------


def _session_key(admin_token: str) -> bytes:
    return hmac.new(admin_token.encode("utf-8"), _KEY_LABEL, hashlib.sha256).digest()


def _mac(key: bytes, body: str) -> str:
    digest = hmac.new(key, body.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def make_session(admin_token: str, now_s: float, ttl_s: int = SESSION_TTL_S) -> str:
    """A session cookie value valid until `now_s + ttl_s`."""
    body = f"v1.{int(now_s) + ttl_s}.{secrets.token_urlsafe(12)}"
    return f"{body}.{_mac(_session_key(admin_token), body)}"


def check_session(admin_token: str, value: str, now_s: float) -> bool:
    """True when `value` is a session cookie made with this admin token and not yet expired."""
    parts = value.split(".")
    if len(parts) != 4 or parts[0] != "v1":
        return False
    body, given = ".".join(parts[:3]), parts[3]
    expected = _mac(_session_key(admin_token), body)
    if not hmac.compare_digest(given.encode("ascii", "replace"), expected.encode("ascii")):
        return False
    try:
        expiry = int(parts[1])
    except ValueError:
        return False
    return now_s < expiry


def token_matches(admin_token: str, given: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), admin_token.encode("utf-8"))


# -- request shell ------------------------------------------------------------------------------


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _unauthorized() -> HTTPException:
    return HTTPException(
        status_code=401, detail="admin token required", headers={"WWW-Authenticate": "Bearer"}
    )


def admin_auth(request: Request, now_s: float | None = None) -> AuthKind | None:
    """How the request proves it holds the admin token, or None when it does not."""
    token = _settings(request).admin_token
    if not token:
        return None
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token_matches(token, given.strip()):
        return "bearer"
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and check_session(token, cookie, time.time() if now_s is None else now_s):
        return "cookie"
    return None


def require_admin(request: Request) -> AuthKind:
    """The request's admin credential; else 401 (404 when BRIDGE_ADMIN_TOKEN is unset)."""
    if not _settings(request).admin_token:
        raise HTTPException(status_code=404)
    kind = admin_auth(request)
    if kind is None:
        raise _unauthorized()
    return kind


def own_origins(request: Request) -> set[str]:
    """The origins the bridge's pages are served from: the Host the request came to (and the
    forwarded one behind a trusted proxy) and BRIDGE_PUBLIC_URL's."""
    settings = _settings(request)
    origins = {f"{request.url.scheme}://{request.headers.get('host', '')}"}
    if settings.trust_proxy:
        proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip()
        host = request.headers.get("x-forwarded-host", "").split(",")[0].strip()
        if proto and host:
            origins.add(f"{proto}://{host}")
    if settings.public_url:
        public = settings.public_url.rstrip("/")
        scheme, _, rest = public.partition("://")
        origins.add(f"{scheme}://{rest.split('/', 1)[0]}")
    return origins


def require_same_origin(request: Request, kind: AuthKind) -> None:
    """403 unless the request's Origin is the bridge's own. Bearer requests (scripts) may omit it;
    cookie requests (browsers, which always send Origin on a POST) may not."""
    origin = request.headers.get("origin")
    if origin is None and kind == "bearer":
        return
    if origin is None or origin not in own_origins(request):
        raise HTTPException(status_code=403, detail="cross-origin request refused")


def token_login(request: Request) -> Response | None:
    """For `?token=...` links: 303 to the same URL without the token, setting the session cookie;
    401 for a wrong token; None when the URL has no token (the caller checks the request as usual)."""
    given = request.query_params.get(TOKEN_PARAM)
    if given is None:
        return None
    token = _settings(request).admin_token
    if not token:
        raise HTTPException(status_code=404)
    if not token_matches(token, given):
        raise _unauthorized()
    rest = [(k, v) for k, v in request.query_params.multi_items() if k != TOKEN_PARAM]
    target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        make_session(token, time.time()),
        max_age=SESSION_TTL_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
