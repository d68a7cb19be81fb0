"""Text that may leave the engine (error events, log lines) with every credential taken out.

Exception messages can carry secrets: an httpx error names the URL it called (with `user:pass@` or an
`?api-key=` query), a proxy may echo headers back. `redact()` is the bridge's one redaction core
(`bridge.logsafe.redact`: known secret values, credential headers, bearer values, key shapes) plus,
for text sent to a session client, the whole user-info and query part of any URL (a client has no
use for them). `error_text()` applies it to an exception. No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from bridge.logsafe import REDACTED
from bridge.logsafe import redact as redact_credentials

MAX_ERROR_CHARS = 300

_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/@\s]*@")
_URL_QUERY = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s?#'\"]*)\?[^\s#'\"]*")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without secret values, credential shapes, URL credentials or URL queries."""
    text = redact_credentials(text, secrets)
    text = _URL_USERINFO.sub(r"\1", text)
    return _URL_QUERY.sub(r"\1?" + REDACTED, text)


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
