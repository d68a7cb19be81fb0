"""Secrets never reach a log line: `redact(text, secrets)` and the logging filter built on it.

The core (`redact`, `Redactor`) does no I/O: it replaces

- the operator's secret values (`Settings.secret_values()`), verbatim and URL-encoded;
- credentials recognised by shape, whatever their value: `Bearer <x>` / `Basic <x>`, query or form
  parameters named like a credential (`token=`, `api_key=`, `bridge_token=`, `password=`, ...),
  credential headers (`Authorization`, `api-key`, `X-Twilio-Signature`, cookies) in the forms
  they are logged (`name: value`, `'name': 'value'`, `(b'name', b'value')`), the MAC of a bridge
  stream token and OpenAI-style `sk-...` keys.

`SecretFilter` applies it to every record a handler emits: the formatted message (the arguments
are redacted one by one when that is enough, so formatters that read `record.args`, like
uvicorn's access formatter, keep working; otherwise the message is replaced by its redacted
text), the exception text and the stack. `install(secrets)` puts one shared filter on the root
logger's handlers, uvicorn's handlers and logging's last-resort handler; it is idempotent and
adds the new secrets to those already known (several apps in one process: the union).

An optional PII step (`set_pii_redactor(fn)`, installed by `bridge.records` from the same rules
that mask stored transcripts: card numbers, SSNs, emails, phone numbers) runs after the secret
redaction on every record the filter sees; `set_pii_redactor(None)` removes it.

A filter sits on handlers, not loggers, because records that propagate from a child logger pass
only their handlers' filters. A handler added after `install()` is not covered until the next
call (`create_app` calls it again at start-up, after uvicorn configured its logging).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

REDACTED = "[redacted]"
# Shorter "secrets" are not replaced verbatim: they would mangle ordinary words in every line.
MIN_SECRET_CHARS = 4

_CREDENTIAL_PARAMS = (
    r"access_token|refresh_token|id_token|token|bridge_token|api[_-]?key|apikey|key|password|passwd|pwd"
    r"|secret|client_secret|signature|sig|auth|authorization"
)
_CREDENTIAL_HEADERS = (
    r"authorization|proxy-authorization|api-key|x-api-key|openai-api-key|x-twilio-signature"
    r"|cookie|set-cookie"
)

_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    # Header-like: `Authorization: Bearer x`, `'api-key': 'x'`, `(b'x-twilio-signature', b'x')`.
    (
        re.compile(
            r"(?i)(?<![\w-])(" + _CREDENTIAL_HEADERS + r")"
            r"(\s*:\s*(?:b?['\"])?|['\"]\s*[:,]\s*b?['\"])([^'\"\r\n]+)"
        ),
        r"\1\2" + REDACTED,
    ),
    # `Bearer x`, `Basic x` wherever they appear.
    (re.compile(r"(?i)\b(bearer|basic)\s+(?!realm=)[A-Za-z0-9._~+/=-]+"), r"\1 " + REDACTED),
    # Query-string or form parameters named like a credential: `?token=x`, `&api_key=x`.
    (
        re.compile(r"(?i)(?<![\w-])(" + _CREDENTIAL_PARAMS + r")=(?!\[redacted\])([^&\s\"'#,;)\]}]+)"),
        r"\1=" + REDACTED,
    ),
    # A bridge stream token `v1.<CallSid>.<expiry>.<nonce>.<mac>`: the MAC is what makes it valid.
    (
        re.compile(r"\b(v1\.[A-Za-z0-9_-]{1,64}\.\d+\.[A-Za-z0-9_-]{8,64}\.)[A-Za-z0-9_-]{16,}"),
        r"\1" + REDACTED,
    ),
    # OpenAI-style keys (sk-..., sk-proj-...).
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), "sk-" + REDACTED),
)


def _variants(secret: str) -> set[str]:
    """A secret as it may appear in text: verbatim and URL-encoded (query strings, forms)."""
    return {secret, quote(secret, safe=""), quote_plus(secret, safe="")}


class Redactor:
    """Replaces known secret values and credential shapes. Immutable once built; idempotent
    (a line redacted twice, by two handlers, reads the same as once)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values: set[str] = set()
        for secret in secrets:
            if isinstance(secret, str) and len(secret) >= MIN_SECRET_CHARS:
                values |= _variants(secret)
        self.secrets: frozenset[str] = frozenset(values)
        # Longest first, so a secret that contains another is replaced whole.
        ordered = sorted(self.secrets, key=len, reverse=True)
        self._known = re.compile("|".join(re.escape(v) for v in ordered)) if ordered else None

    def __call__(self, text: str) -> str:
        if self._known is not None:
            text = self._known.sub(REDACTED, text)
        for pattern, replacement in _SHAPES:
            text = pattern.sub(replacement, text)
        return text

    def data(self, value: Any) -> Any:
        """`value` (JSON-like: dicts, lists, strings) with every string redacted."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, Mapping):
            return {k: self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with the given secret values and every credential shape replaced by `[redacted]`."""
    return Redactor(secrets)(text)


_FORMATTER = logging.Formatter()


class SecretFilter(logging.Filter):
    """Redacts every record it sees (never drops one). One instance is shared by all handlers."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._known: set[str] = set()
        self.redactor = Redactor()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        with self._lock:
            new = {s for s in secrets if isinstance(s, str) and s} - self._known
            if new:
                self._known |= new
                self.redactor = Redactor(self._known)

    def filter(self, record: logging.LogRecord) -> bool:
        pii = _PII[0]
        if pii is None:
            scrub(record, self.redactor)
        else:
            redactor = self.redactor
            scrub(record, lambda text: pii(redactor(text)))
        return True


class OperatorValue(str):
    """A string from the operator's configuration (a dialplan's transfer target, BRIDGE_DRAIN_TRANSFER_TO),
    not from the caller: the PII step of the call records stores it as it is (`PiiRedactor.data`).

    Ops need the number a call was transferred to; it is not the caller's data. Only code that
    knows a value came from the configuration wraps it; everything else (the caller's number, the
    model's tool arguments, transcripts) is masked as before. A log line is plain text and is
    masked whatever it quotes.
    """

    __slots__ = ()


# The optional PII step of every log record (after the secrets): a `str -> str` function or None.
_PII: list[Callable[[str], str] | None] = [None]


def set_pii_redactor(redactor: Callable[[str], str] | None) -> None:
    """Mask PII in every log line the filter sees with `redactor` (None: no PII step)."""
    _PII[0] = redactor


def pii_redactor() -> Callable[[str], str] | None:
    """The PII step in force, if any."""
    return _PII[0]


def scrub(record: logging.LogRecord, redactor: Callable[[str], str]) -> None:
    """Redact `record` in place: message (and args), exception text, stack."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: the handler reports it itself
        record.msg, record.args = redactor(str(record.msg)), ()
        message = None
    if message is not None:
        clean = redactor(message)
        if clean != message:
            _redact_message(record, clean, redactor)
    if record.exc_info and not record.exc_text:
        record.exc_text = _FORMATTER.formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redactor(record.exc_text)
    if record.stack_info:
        record.stack_info = redactor(record.stack_info)


def _redact_message(record: logging.LogRecord, clean: str, redactor: Callable[[str], str]) -> None:
    args = record.args
    if args:
        if isinstance(args, Mapping):
            record.args = {k: redactor(v) if isinstance(v, str) else v for k, v in args.items()}
        else:
            record.args = tuple(redactor(a) if isinstance(a, str) else a for a in args)
        try:
            again = record.getMessage()
        except Exception:  # the handler reports a bad format itself
            again = None
        if again is not None and redactor(again) == again:
            return  # the arguments were enough; their shape is kept for the formatter
    record.msg, record.args = clean, ()


_FILTER = SecretFilter()
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def log_filter() -> SecretFilter:
    """The process-wide filter `install()` puts on handlers."""
    return _FILTER


def install(secrets: Iterable[str] = (), *, loggers: Iterable[str] = ()) -> SecretFilter:
    """Add `secrets` to the process-wide filter and put it on the handlers of the root logger,
    uvicorn's loggers, `loggers` and logging's last-resort handler (each handler once)."""
    _FILTER.add(secrets)
    handlers: list[logging.Handler] = []
    for name in ("", *_UVICORN_LOGGERS, *loggers):
        handlers.extend(logging.getLogger(name).handlers)
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for handler in handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    return _FILTER


__all__ = [
    "REDACTED",
    "Redactor",
    "SecretFilter",
    "install",
    "log_filter",
    "pii_redactor",
    "redact",
    "scrub",
    "set_pii_redactor",
]
