"""bridge/logsafe.py: the redaction core and the logging filter (no sockets)."""

from __future__ import annotations

import logging

import pytest

from bridge.logsafe import REDACTED, Redactor, SecretFilter, install, log_filter, redact

SECRET = "s3cr3t/auth+token="


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("auth token is s3cr3t/auth+token= ok", f"auth token is {REDACTED} ok"),
        ("url-encoded s3cr3t%2Fauth%2Btoken%3D here", f"url-encoded {REDACTED} here"),
        (
            "GET /v1/realtime?model=m&token=abc123 HTTP/1.1",
            f"GET /v1/realtime?model=m&token={REDACTED} HTTP/1.1",
        ),
        (
            "?api_key=zz&x=1&bridge_token=v1.CA1.2.abcdefgh.mac",
            f"?api_key={REDACTED}&x=1&bridge_token={REDACTED}",
        ),
        ("> Authorization: Bearer eyJ.abc", f"> Authorization: {REDACTED}"),
        ("sent Bearer eyJ.abc upstream", f"sent Bearer {REDACTED} upstream"),
        ("{'api-key': 'k1', 'host': 'h'}", f"{{'api-key': '{REDACTED}', 'host': 'h'}}"),
        (
            "[(b'x-twilio-signature', b'AbC='), (b'host', b'h')]",
            f"[(b'x-twilio-signature', b'{REDACTED}'), (b'host', b'h')]",
        ),
        ("< X-Twilio-Signature: Zm9v=", f"< X-Twilio-Signature: {REDACTED}"),
        (
            "token v1.CA0001.1700000000.abcdefghijkl.QUJDREVGR0hJSktMTU5PUFFS end",
            f"token v1.CA0001.1700000000.abcdefghijkl.{REDACTED} end",
        ),
        ("key sk-proj-abcdefghijklmnopqrst", f"key sk-{REDACTED}"),
        ('www-authenticate: Bearer realm="metrics"', 'www-authenticate: Bearer realm="metrics"'),
        (
            "twilio /twilio/voice from 127.0.0.1 refused: bad_signature",
            "twilio /twilio/voice from 127.0.0.1 refused: bad_signature",
        ),
        ("stream closed (1008): invalid api key", "stream closed (1008): invalid api key"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text, [SECRET]) == expected
    assert redact(expected, [SECRET]) == expected  # idempotent: two handlers, one result


def test_short_values_are_not_replaced_verbatim() -> None:
    assert redact("a b c", ["b"]) == "a b c"


def test_data_redacts_nested_strings() -> None:
    body = {"sip": {"error": f"login as x:{SECRET} failed"}, "calls": 2, "errors": [SECRET]}
    assert Redactor([SECRET]).data(body) == {
        "sip": {"error": f"login as x:{REDACTED} failed"},
        "calls": 2,
        "errors": [REDACTED],
    }


def record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("t", logging.INFO, __file__, 1, msg, args or None, exc_info)


def test_filter_redacts_args_and_keeps_their_shape() -> None:
    flt = SecretFilter([SECRET])
    rec = record('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", f"/x?token={SECRET}", "1.1", 200)
    assert flt.filter(rec)
    assert isinstance(rec.args, tuple)
    assert len(rec.args) == 5  # uvicorn's access formatter unpacks these five
    assert rec.getMessage() == f'127.0.0.1:1 - "GET /x?token={REDACTED} HTTP/1.1" 200'


def test_filter_falls_back_to_the_message_when_args_are_not_enough() -> None:
    flt = SecretFilter([SECRET])
    rec = record("auth: Bearer %s", "not-a-known-secret")  # the shape spans format and argument
    flt.filter(rec)
    assert rec.getMessage() == f"auth: Bearer {REDACTED}"
    rec = record("value %r", {"key": SECRET})  # a non-string argument
    flt.filter(rec)
    assert SECRET not in rec.getMessage()


def test_filter_redacts_exception_text() -> None:
    flt = SecretFilter([SECRET])
    try:
        raise ValueError(f"could not log in with {SECRET}")
    except ValueError as exc:
        rec = record("failed", exc=exc)
    flt.filter(rec)
    line = logging.Formatter().format(rec)
    assert SECRET not in line
    assert f"could not log in with {REDACTED}" in line


def test_install_is_idempotent_and_accumulates_secrets() -> None:
    handler = logging.StreamHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        install(["first-secret-value"])
        install(["second-secret-value"])
        assert handler.filters.count(log_filter()) == 1
        rec = record("first-secret-value and second-secret-value")
        handler.filter(rec)
        assert rec.getMessage() == f"{REDACTED} and {REDACTED}"
    finally:
        root.removeHandler(handler)
