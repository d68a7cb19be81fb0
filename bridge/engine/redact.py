"""Text that may leave the engine (error events, log lines) with every credential taken out.

Exception messages can carry secrets: an httpx error names the URL it called (with `user:pass@` or an
`?api-key=` query), a proxy may echo headers back. `redact()` removes the known secret values, the
credential-looking parts of URLs and the usual header and key shapes; `error_text()` applies it to
an exception. No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[redacted]"
MAX_ERROR_CHARS = 300
_MIN_SECRET_CHARS = 4  # shorter values would blank out ordinary words

_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/@\s]*@")
_URL_QUERY = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s?#'\"]*)\?[^\s#'\"]*")
_AUTH_HEADER = re.compile(
    r"(?i)\b(authorization|api-key|x-api-key|proxy-authorization)(['\"]?\s*[:=]\s*['\"]?)"
    r"[^\s,'\"}]+(?:\s+[^\s,'\"}]+)?"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{6,}")
_KEY_SHAPES = re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-]{16,}")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without the given secret values, URL credentials and queries, auth headers or key shapes."""
    for secret in sorted({s for s in secrets if s and len(s) >= _MIN_SECRET_CHARS}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _URL_USERINFO.sub(r"\1", text)
    text = _URL_QUERY.sub(r"\1?" + REDACTED, text)
    text = _AUTH_HEADER.sub(r"\1\2" + REDACTED, text)
    text = _BEARER.sub(r"\1 " + REDACTED, text)
    return _KEY_SHAPES.sub(REDACTED, text)


def error_text(exc: BaseException | str, secrets: Iterable[str] = ()) -> str:
    """A short, safe description of a failure for an error event: `Type: message`, redacted."""
    if isinstance(exc, BaseException):
        message = str(exc)
        text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    else:
        text = exc
    text = redact(text, secrets)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


__all__ = ["REDACTED", "error_text", "redact"]
