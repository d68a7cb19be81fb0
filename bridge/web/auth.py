"""Admin authentication for the browser pages (`/console`, `/phone`) and their CSRF defence.

- `require_admin(request)`: the request carries `Authorization: Bearer <BRIDGE_ADMIN_TOKEN>` or a
  valid session cookie; else HTTP 401. With no admin token configured everything is absent: 404.
  Returns how the request got in (`"bearer"` or `"cookie"`).
- `token_login(request)`: a link with `?token=<BRIDGE_ADMIN_TOKEN>` (what an operator bookmarks or
  is sent) sets the session cookie and answers 303 to the same URL without the token, so the
  token leaves the address bar and the history; a wrong token is 401. Without `?token=`: None.
- The cookie (`ivr_admin`) is `v1.<expiry>.<HMAC-SHA256>`, keyed by a key derived from the admin
  token (changing the token ends every session), HttpOnly, SameSite=Strict, Secure over https,
  valid `SESSION_TTL_S`. Every comparison is constant-time.
- `check_csrf(request, form)`: a POST authenticated by the cookie must come from the console's own
  origin (`Origin`, else `Referer`; neither is refused) and carry the form field `csrf`, an HMAC of
  the session (`csrf_token(request)`). Bearer requests are not a browser's ambient credential and
  need neither.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import urlencode, urlsplit

from fastapi import HTTPException, Request, Response
from fastapi.responses import RedirectResponse

from bridge.settings import Settings

COOKIE = "ivr_admin"
SESSION_TTL_S = 8 * 3600
CSRF_FIELD = "csrf"
_KEY_LABEL = b"ivr-bridge admin session v1"


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _admin_token(request: Request) -> str:
    token = _settings(request).admin_token
    if not token:
        raise HTTPException(status_code=404)
    return token


def session_key(admin_token: str) -> bytes:
    """The cookie key, derived from the admin token (never the token itself)."""
    return hmac.new(admin_token.encode("utf-8"), _KEY_LABEL, hashlib.sha256).digest()


def _mac(key: bytes, body: str) -> str:
    digest = hmac.new(key, body.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def issue_session(admin_token: str, now_s: float, ttl_s: int = SESSION_TTL_S) -> str:
    body = f"v1.{int(now_s) + ttl_s}"
    return f"{body}.{_mac(session_key(admin_token), body)}"


def check_session(value: str | None, admin_token: str, now_s: float) -> bool:
    if not value:
        return False
    version, _, rest = value.partition(".")
    expiry, _, mac = rest.partition(".")
    if version != "v1" or not expiry.isdigit() or not mac:
        return False
    expected = _mac(session_key(admin_token), f"v1.{expiry}")
    if not hmac.compare_digest(mac.encode("ascii", "replace"), expected.encode("ascii")):
        return False
    return int(expiry) > now_s


def _bearer_ok(authorization: str | None, token: str) -> bool:
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8"))


def require_admin(request: Request) -> str:
    """ "bearer" or "cookie"; HTTPException 404 when no admin token is configured, 401 otherwise."""
    token = _admin_token(request)
    if _bearer_ok(request.headers.get("authorization"), token):
        return "bearer"
    if check_session(request.cookies.get(COOKIE), token, time.time()):
        return "cookie"
    raise HTTPException(status_code=401, headers={"WWW-Authenticate": 'Bearer realm="admin"'})


def _secure(request: Request) -> bool:
    settings = _settings(request)
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip()
    return request.url.scheme == "https" or (settings.trust_proxy and forwarded == "https")


def token_login(request: Request) -> Response | None:
    """A `?token=` link: 303 to the clean URL with the session cookie set (401 if the token is
    wrong, 404 when there is no admin token). None when the request has no `token` parameter."""
    given = request.query_params.get("token")
    if given is None:
        return None
    token = _admin_token(request)
    if not hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
        raise HTTPException(status_code=401)
    rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
    target = request.url.path + ("?" + urlencode(rest) if rest else "")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        issue_session(token, time.time()),
        max_age=SESSION_TTL_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def csrf_token(request: Request) -> str:
    """The CSRF form value of this session (empty for a bearer request without a cookie)."""
    token = _admin_token(request)
    session = request.cookies.get(COOKIE) or ""
    return _mac(session_key(token), "csrf." + session) if session else ""


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""


def allowed_origins(request: Request) -> set[str]:
    host = request.headers.get("host", "")
    origins = {f"{request.url.scheme}://{host}".lower()}
    if _secure(request):
        origins.add(f"https://{host}".lower())
    public = _settings(request).public_url
    if public:
        origins.add(_origin_of(str(public)))
    return origins


def require_same_origin(request: Request, how: str) -> None:
    """Refuse (403) a cookie-authenticated request whose Origin (or Referer) is not the bridge's own.
    Bearer requests (scripts) need none: a browser never sends the bearer by itself."""
    if how == "bearer":
        return
    origin = request.headers.get("origin") or _origin_of(request.headers.get("referer", ""))
    if not origin or origin.lower() not in allowed_origins(request):
        raise HTTPException(status_code=403, detail="cross-origin request refused (Origin)")


def check_csrf(request: Request, how: str, form: Mapping[str, str]) -> None:
    """Refuse (403) a cookie-authenticated POST from another origin or without the CSRF field."""
    if how == "bearer":
        return
    require_same_origin(request, how)
    expected = csrf_token(request)
    given = form.get(CSRF_FIELD, "")
    if not expected or not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        raise HTTPException(status_code=403, detail="missing or wrong CSRF token")


__all__ = [
    "COOKIE",
    "CSRF_FIELD",
    "SESSION_TTL_S",
    "check_csrf",
    "check_session",
    "csrf_token",
    "issue_session",
    "require_admin",
    "require_same_origin",
    "token_login",
]
