"""Who may talk to the bridge's Twilio routes: webhook signatures, signed stream upgrades, stream tokens.

No I/O here: the routes hand in the URL they were called on, the headers and the parsed form, and
get back a yes/no (or a reason). Facts this follows (reference section 10.4):

- Twilio signs the URL it called (scheme, host, path and query byte-for-byte) plus the POST form
  fields (sorted by name, empty values included) with the auth token, HMAC-SHA1 by default, or
  HMAC-SHA256 with a SharedKey secret when `X-Twilio-Webhooks-Signature-Settings` says so.
- Behind a proxy the app sees another URL; the signed one is rebuilt from `BRIDGE_PUBLIC_URL`, or
  from `X-Forwarded-Proto` / `X-Forwarded-Host` (first values) when the proxy is trusted.
- The media-stream upgrade carries `X-Twilio-Signature` over the `wss://` URL with empty params.
  That signature is the same for every call (the URL has no query string), so it proves little on
  its own: each `<Connect><Stream>` also carries a short-lived, single-use token bound to the
  CallSid (HMAC-SHA256 with a server secret) in its `<Parameter>`s.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl

from twilio.request_validator import RequestValidator

from bridge.errors import ProtocolError
from bridge.settings import Settings

try:  # twilio >= 9.13: SharedKey (HMAC-SHA256) webhooks
    from twilio.request_validator import get_signature_algorithm as _library_signature_algorithm
except ImportError:  # pragma: no cover - older helper libraries
    _library_signature_algorithm = None

SIGNATURE_HEADER = "X-Twilio-Signature"
SIGNATURE_SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
HMAC_SHA1 = "HMAC_SHA1"
HMAC_SHA256 = "HMAC_SHA256"

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 200

STREAM_TOKEN_PARAMETER = "bridge_token"
_TOKEN_VERSION = "v1"
_TOKEN_MAX_CHARS = 256
_CALL_SID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_DERIVE_LABEL = b"ivr-bridge stream token v1"

FormData = Sequence[tuple[str, str]] | Mapping[str, str]
BodyRejection = Literal["too_large", "not_form", "bad_encoding"]
TokenRejection = Literal["missing", "malformed", "bad_mac", "wrong_call", "expired", "replayed"]


class WebhookBodyError(ProtocolError):
    """A webhook body the bridge will not read: too large, not a form, or not UTF-8."""

    def __init__(self, reason: BodyRejection, detail: str) -> None:
        super().__init__(detail)
        self.reason: BodyRejection = reason


class StreamTokenError(ProtocolError):
    """A media stream's token is missing, malformed, forged, expired, replayed or for another call."""

    def __init__(self, reason: TokenRejection, detail: str) -> None:
        super().__init__(detail)
        self.reason: TokenRejection = reason


# --------------------------------------------------------------------------- URLs


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup for plain dicts and Starlette `Headers` alike."""
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    if value is None:
        lowered = name.lower()
        for key, item in headers.items():
            if key.lower() == lowered:
                return item
    return value


def _first(value: str | None) -> str | None:
    if value is None:
        return None
    head = value.split(",", 1)[0].strip()
    return head or None


def request_target(scope: Mapping[str, object]) -> str:
    """Path and query of an ASGI request exactly as received (`raw_path`), not re-encoded.

    Starlette's `request.url` decodes the path (`%20` becomes a space), which would break the
    signature; the raw bytes are what Twilio signed.
    """
    raw = scope.get("raw_path")
    if isinstance(raw, bytes | bytearray) and raw:
        path = bytes(raw).decode("latin-1")
    else:
        path = str(scope.get("path") or "/")
    query = scope.get("query_string") or b""
    if isinstance(query, bytes | bytearray) and query:
        return path + "?" + bytes(query).decode("latin-1")
    return path


def client_source(peer: str | None, headers: Mapping[str, str], trust_proxy: bool) -> str:
    """The address a request is counted against by the per-source rate limit.

    The TCP peer, unless the bridge trusts its proxy (`BRIDGE_TRUST_PROXY`): then the last
    `X-Forwarded-For` entry, the client address that proxy itself appended. Earlier entries are
    whatever the client chose to send: keyed on them, a flood could give each request a fresh bucket.
    """
    if trust_proxy:
        forwarded = _header(headers, "x-forwarded-for")
        if forwarded:
            hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
            if hops:
                return hops[-1]
    return peer or "?"


def _split_request_url(request_url: str) -> tuple[str, str, str]:
    """`(scheme, host, target)`; `target` keeps path and query byte-for-byte."""
    if request_url.startswith("/"):
        return "", "", request_url
    scheme, sep, rest = request_url.partition("://")
    if not sep:
        return "", "", "/" + request_url
    slash = rest.find("/")
    question = rest.find("?")
    cut = min(i for i in (slash, question, len(rest)) if i >= 0)
    host, target = rest[:cut], rest[cut:]
    if not target.startswith("/"):
        target = "/" + target
    return scheme.lower(), host, target


_TO_WS = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}
_TO_HTTP = {"wss": "https", "ws": "http", "https": "https", "http": "http"}


def public_url_for(
    request_url: str,
    headers: Mapping[str, str],
    settings: Settings,
    trust_proxy: bool | None = None,
    *,
    websocket: bool = False,
) -> str:
    """The URL Twilio called (and signed), rebuilt from what the app received.

    `request_url` is the URL as the app saw it, or just its path and query (see `request_target`).
    Order: trusted `X-Forwarded-Proto`/`X-Forwarded-Host` (+ `X-Forwarded-Prefix`) when
    `trust_proxy` (default `settings.trust_proxy`) and the proxy sent them; else
    `BRIDGE_PUBLIC_URL` + path + query; else the request's own scheme and `Host`.
    `websocket=True` gives the `wss://` (or `ws://`) form used for the media-stream upgrade.
    """
    if trust_proxy is None:
        trust_proxy = settings.trust_proxy
    scheme, host, target = _split_request_url(request_url)
    host = _header(headers, "host") or host
    forwarded_proto = _first(_header(headers, "x-forwarded-proto")) if trust_proxy else None
    forwarded_host = _first(_header(headers, "x-forwarded-host")) if trust_proxy else None
    if forwarded_proto or forwarded_host:
        scheme = (forwarded_proto or scheme or "https").lower()
        host = forwarded_host or host
        prefix = (_first(_header(headers, "x-forwarded-prefix")) or "").rstrip("/")
        url = f"{scheme}://{host}{prefix}{target}"
    elif settings.public_url:
        url = settings.public_url.rstrip("/") + target
    else:
        url = f"{scheme or 'http'}://{host}{target}"
    scheme, sep, rest = url.partition("://")
    mapping = _TO_WS if websocket else _TO_HTTP
    return mapping.get(scheme.lower(), scheme.lower()) + sep + rest


def public_base_url(
    request_url: str, headers: Mapping[str, str], settings: Settings, *, websocket: bool = False
) -> str:
    """Scheme, host (and prefix) of the bridge as Twilio sees it, no trailing slash, for building
    the stream URL and the `<Connect action>` URL."""
    scheme, host, _ = _split_request_url(request_url)
    base = f"{scheme}://{host}/" if scheme else "/"
    return public_url_for(base, headers, settings, websocket=websocket).rstrip("/")


# --------------------------------------------------------------------------- webhooks


class _FormParams:
    """The form as the library's validator reads it: names by iteration, values by `getall`."""

    __slots__ = ("_values",)

    def __init__(self, form: FormData) -> None:
        values: dict[str, list[str]] = {}
        items = form.items() if isinstance(form, Mapping) else form
        for name, value in items:
            values.setdefault(name, []).append(value)
        self._values = values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def getall(self, name: str) -> list[str]:
        return self._values[name]


def parse_form(body: bytes, content_type: str | None, max_bytes: int) -> list[tuple[str, str]]:
    """Decode a webhook body into `(name, value)` pairs, empty values kept (Twilio signs them).

    Raises `WebhookBodyError` for a body over `max_bytes`, a content type other than
    `application/x-www-form-urlencoded`, bad UTF-8 or more than `MAX_FORM_FIELDS` fields.
    """
    if len(body) > max_bytes:
        raise WebhookBodyError("too_large", f"webhook body of {len(body)} bytes exceeds {max_bytes}")
    media_type, _, params = (content_type or "").partition(";")
    if media_type.strip().lower() != FORM_CONTENT_TYPE:
        raise WebhookBodyError("not_form", f"webhook body is {content_type!r}, expected {FORM_CONTENT_TYPE}")
    charset = "utf-8"
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    if charset not in ("utf-8", "utf8"):
        raise WebhookBodyError("bad_encoding", f"webhook body charset {charset!r}, expected utf-8")
    try:
        text = body.decode("utf-8")
        return parse_qsl(
            text, keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=MAX_FORM_FIELDS
        )
    except UnicodeDecodeError as exc:
        raise WebhookBodyError("bad_encoding", f"webhook body is not valid url-encoded UTF-8: {exc}") from exc
    except ValueError as exc:  # max_num_fields exceeded
        raise WebhookBodyError("not_form", f"webhook form rejected: {exc}") from exc


def signature_algorithm(headers: Mapping[str, str]) -> str:
    """`HMAC_SHA1` unless `X-Twilio-Webhooks-Signature-Settings` names another algorithm."""
    settings_header = _header(headers, SIGNATURE_SETTINGS_HEADER)
    if _library_signature_algorithm is not None:
        return str(_library_signature_algorithm(settings_header)).upper()
    for part in (settings_header or "").split(","):  # pragma: no cover - older helper libraries
        name, sep, value = part.partition("=")
        if sep and name.strip() == "algorithm" and value.strip():
            return value.strip().upper()
    return HMAC_SHA1  # pragma: no cover


def verify_webhook(
    url: str,
    form: FormData,
    headers: Mapping[str, str],
    *,
    auth_token: str,
    signing_secret: str | None = None,
) -> bool:
    """True if `X-Twilio-Signature` signs `url` + `form` with the auth token (HMAC-SHA1) or, when
    `X-Twilio-Webhooks-Signature-Settings` asks for HMAC-SHA256, with `signing_secret` (the
    SharedKey secret; the auth token when None). Missing signature: False."""
    signature = _header(headers, SIGNATURE_HEADER)
    if not signature:
        return False
    algorithm = signature_algorithm(headers)
    secret = signing_secret if (algorithm == HMAC_SHA256 and signing_secret) else auth_token
    try:
        return bool(RequestValidator(secret).validate(url, _FormParams(form), signature, algorithm=algorithm))
    except ValueError:  # e.g. a non-numeric port in a forwarded host
        return False


def verify_stream_upgrade(
    wss_url: str, headers: Mapping[str, str], *, auth_token: str, signing_secret: str | None = None
) -> bool:
    """True if the media-stream upgrade's `X-Twilio-Signature` signs `wss_url` with empty params."""
    return verify_webhook(wss_url, (), headers, auth_token=auth_token, signing_secret=signing_secret)


# --------------------------------------------------------------------------- stream tokens


def _key(secret: bytes | str) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def _mac(secret: bytes | str, body: str) -> str:
    digest = hmac.new(_key(secret), body.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def issue_stream_token(
    call_sid: str, secret: bytes | str, now_s: float, ttl_s: int = 120, *, nonce: str | None = None
) -> str:
    """A token that lets one media stream for `call_sid` start within `ttl_s` seconds, once.

    Shape: `v1.<CallSid>.<expiry unix s>.<nonce>.<base64url HMAC-SHA256 of the rest>`.
    """
    if not _CALL_SID_RE.match(call_sid):
        raise ValueError(f"CallSid {call_sid!r} is not a Twilio SID")
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")
    nonce = nonce if nonce is not None else secrets.token_urlsafe(12)
    if not _NONCE_RE.match(nonce):
        raise ValueError("nonce must be 8-64 url-safe characters")
    body = f"{_TOKEN_VERSION}.{call_sid}.{int(now_s) + ttl_s}.{nonce}"
    return body + "." + _mac(secret, body)


@dataclass
class UsedTokens:
    """Nonces of stream tokens already spent, each kept until its token expires.

    Per instance (in memory). With several instances (BRIDGE_REDIS_URL) the Twilio routes also spend
    each nonce in Redis (`SET NX`, bridge/cluster), so a token is good once across the cluster; this
    set still decides alone while Redis is unreachable. Memory is bounded by issued tokens x TTL,
    and only the bridge can issue tokens.
    """

    _expiry_by_nonce: dict[str, int] = field(default_factory=dict)
    _heap: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self._expiry_by_nonce)

    def prune(self, now_s: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now_s:
            _, nonce = heapq.heappop(heap)
            self._expiry_by_nonce.pop(nonce, None)

    def consume(self, nonce: str, expires_s: int, now_s: float) -> bool:
        """Mark `nonce` spent. False if it already was."""
        self.prune(now_s)
        if nonce in self._expiry_by_nonce:
            return False
        self._expiry_by_nonce[nonce] = expires_s
        heapq.heappush(self._heap, (expires_s, nonce))
        return True


def check_stream_token(
    token: str | None,
    call_sid: str,
    secret: bytes | str,
    now_s: float,
    used: UsedTokens | None = None,
) -> None:
    """Accept `token` for the stream of `call_sid` at `now_s`, or raise `StreamTokenError`.

    Checks, in order: present and well-formed, MAC, CallSid, expiry, and (with `used`) that it
    was not spent before; a token that passes is spent.
    """
    if not token:
        raise StreamTokenError("missing", "media stream has no stream token")
    if not isinstance(token, str) or len(token) > _TOKEN_MAX_CHARS:
        raise StreamTokenError("malformed", "stream token is not a short string")
    parts = token.split(".")
    if len(parts) != 5 or parts[0] != _TOKEN_VERSION:
        raise StreamTokenError("malformed", "stream token does not have the v1 shape")
    _, token_call, expiry, nonce, mac = parts
    if not (expiry.isdigit() and _CALL_SID_RE.match(token_call) and _NONCE_RE.match(nonce)):
        raise StreamTokenError("malformed", "stream token fields are malformed")
    expected = _mac(secret, f"{_TOKEN_VERSION}.{token_call}.{expiry}.{nonce}")
    if not hmac.compare_digest(expected, mac):
        raise StreamTokenError("bad_mac", "stream token signature does not match (forged or other secret)")
    if not hmac.compare_digest(token_call, call_sid):
        raise StreamTokenError("wrong_call", f"stream token was issued for {token_call}, not {call_sid}")
    expires_s = int(expiry)
    if now_s >= expires_s:
        raise StreamTokenError("expired", f"stream token expired {now_s - expires_s:.0f} s ago")
    if used is not None and not used.consume(nonce, expires_s, now_s):
        raise StreamTokenError("replayed", "stream token was already used")


def token_nonce(token: str | None) -> tuple[str, int] | None:
    """The nonce and expiry (unix s) of a well-formed token, for spending it in shared state; None
    when it is not one (call `check_stream_token` first: this checks the shape, not the MAC)."""
    parts = (token or "").split(".")
    if (
        len(parts) != 5
        or parts[0] != _TOKEN_VERSION
        or not parts[2].isdigit()
        or not _NONCE_RE.match(parts[3])
    ):
        return None
    return parts[3], int(parts[2])


def resolve_stream_secret(settings: Settings) -> bytes:
    """The stream-token key: `BRIDGE_STREAM_SECRET`, else derived from the auth token (so every
    instance sharing the account agrees without more config), else random for this process
    (development mode; tokens then only work on the instance that issued them)."""
    if settings.stream_secret:
        return settings.stream_secret.encode("utf-8")
    if settings.twilio_auth_token:
        return hmac.new(settings.twilio_auth_token.encode("utf-8"), _DERIVE_LABEL, hashlib.sha256).digest()
    return secrets.token_bytes(32)


# --------------------------------------------------------------------------- the routes' view

WebhookRejection = Literal["missing_signature", "bad_signature"]


class TwilioGuard:
    """Everything the Twilio routes need to admit or refuse a request, built once per app.

    Without `TWILIO_AUTH_TOKEN` it runs in development mode: signatures are not checked and a
    stream without a token is let in (a token that is present must still be valid).
    """

    def __init__(self, settings: Settings, *, stream_secret: bytes | None = None) -> None:
        self.settings = settings
        self.auth_token = settings.twilio_auth_token
        self.signing_secret = settings.twilio_webhook_signing_secret
        self.stream_secret = stream_secret if stream_secret is not None else resolve_stream_secret(settings)
        self.token_ttl_s = settings.stream_token_ttl_s
        self.max_body_bytes = settings.webhook_max_bytes
        self.used_tokens = UsedTokens()

    @property
    def development_mode(self) -> bool:
        return not self.auth_token

    def url_for(self, request_url: str, headers: Mapping[str, str], *, websocket: bool = False) -> str:
        return public_url_for(request_url, headers, self.settings, websocket=websocket)

    def public_url(
        self, request_url: str, headers: Mapping[str, str], path: str, *, websocket: bool = False
    ) -> str:
        """`path` on the bridge's public base, e.g. the stream URL `wss://PUBLIC/twilio/media`."""
        return public_base_url(request_url, headers, self.settings, websocket=websocket) + path

    def check_webhook(
        self, request_url: str, headers: Mapping[str, str], form: FormData
    ) -> WebhookRejection | None:
        """None if the webhook may proceed, else why not (the route answers 403)."""
        if self.auth_token is None:
            return None
        if not _header(headers, SIGNATURE_HEADER):
            return "missing_signature"
        url = self.url_for(request_url, headers)
        secret = self.signing_secret
        ok = verify_webhook(url, form, headers, auth_token=self.auth_token, signing_secret=secret)
        return None if ok else "bad_signature"

    def check_upgrade(self, request_url: str, headers: Mapping[str, str]) -> WebhookRejection | None:
        """None if the media-stream upgrade may proceed, else why not."""
        if self.auth_token is None:
            return None
        if not _header(headers, SIGNATURE_HEADER):
            return "missing_signature"
        url = self.url_for(request_url, headers, websocket=True)
        secret = self.signing_secret
        ok = verify_stream_upgrade(url, headers, auth_token=self.auth_token, signing_secret=secret)
        return None if ok else "bad_signature"

    def issue_token(self, call_sid: str, now_s: float) -> str:
        return issue_stream_token(call_sid, self.stream_secret, now_s, self.token_ttl_s)

    def check_token(self, token: str | None, call_sid: str, now_s: float) -> None:
        """Raise `StreamTokenError` unless the stream of `call_sid` may start with `token`."""
        if not token and self.development_mode:
            return
        check_stream_token(token, call_sid, self.stream_secret, now_s, self.used_tokens)
