"""Webhook and stream-upgrade signatures, the signed URL behind proxies, stream tokens, form bodies."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from twilio.request_validator import RequestValidator

from bridge.settings import Settings
from bridge.telephony.twilio.auth import (
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    StreamTokenError,
    TwilioGuard,
    UsedTokens,
    WebhookBodyError,
    check_stream_token,
    issue_stream_token,
    parse_form,
    public_base_url,
    public_url_for,
    request_target,
    resolve_stream_secret,
    verify_stream_upgrade,
    verify_webhook,
)

# The library's own known test vector (reference 10.4).
VECTOR_TOKEN = "12345"
VECTOR_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
VECTOR_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}
VECTOR_SIGNATURE = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
CALL_SID = "CA" + "0123456789abcdef" * 2
SECRET = b"stream-secret-for-tests"


def _sign(
    token: str, url: str, form: list[tuple[str, str]] | dict[str, str], algorithm: str = "HMAC_SHA1"
) -> str:
    """Sign the way Twilio does, written out by hand (independent of the code under test)."""
    items = sorted(form.items()) if isinstance(form, dict) else sorted(set(form))
    payload = url + "".join(name + value for name, value in items)
    digest = hashlib.sha1 if algorithm == "HMAC_SHA1" else hashlib.sha256
    return base64.b64encode(hmac.new(token.encode(), payload.encode(), digest).digest()).decode()


# --------------------------------------------------------------------------- webhook signatures


def test_known_test_vector_validates() -> None:
    assert _sign(VECTOR_TOKEN, VECTOR_URL, VECTOR_PARAMS) == VECTOR_SIGNATURE
    headers = {SIGNATURE_HEADER: VECTOR_SIGNATURE}
    assert verify_webhook(VECTOR_URL, VECTOR_PARAMS, headers, auth_token=VECTOR_TOKEN)
    # The same form as ordered pairs (what parse_form returns), header name in lower case.
    pairs = list(VECTOR_PARAMS.items())[::-1]
    assert verify_webhook(
        VECTOR_URL, pairs, {"x-twilio-signature": VECTOR_SIGNATURE}, auth_token=VECTOR_TOKEN
    )


@pytest.mark.parametrize(
    ("url", "params", "token"),
    [
        ("https://mycompany.com/myapp.php?foo=1&bar=3", VECTOR_PARAMS, VECTOR_TOKEN),  # query changed
        ("http://mycompany.com/myapp.php?foo=1&bar=2", VECTOR_PARAMS, VECTOR_TOKEN),  # scheme changed
        ("https://mycompany.com/myapp.php/?foo=1&bar=2", VECTOR_PARAMS, VECTOR_TOKEN),  # trailing slash
        ("https://internal:8000/myapp.php?foo=1&bar=2", VECTOR_PARAMS, VECTOR_TOKEN),  # host changed
        (VECTOR_URL, {**VECTOR_PARAMS, "Digits": "1235"}, VECTOR_TOKEN),  # form tampered
        (VECTOR_URL, {**VECTOR_PARAMS, "Extra": ""}, VECTOR_TOKEN),  # an added empty field counts
        (VECTOR_URL, VECTOR_PARAMS, "54321"),  # other account
    ],
)
def test_forged_or_altered_requests_fail(url: str, params: dict[str, str], token: str) -> None:
    assert not verify_webhook(url, params, {SIGNATURE_HEADER: VECTOR_SIGNATURE}, auth_token=token)


def test_missing_or_empty_signature_fails() -> None:
    assert not verify_webhook(VECTOR_URL, VECTOR_PARAMS, {}, auth_token=VECTOR_TOKEN)
    assert not verify_webhook(VECTOR_URL, VECTOR_PARAMS, {SIGNATURE_HEADER: ""}, auth_token=VECTOR_TOKEN)


def test_empty_form_values_are_signed() -> None:
    form = [("CallSid", CALL_SID), ("ForwardedFrom", ""), ("CallerName", ""), ("To", "+15550100")]
    signature = _sign("tok", "https://b.example.com/twilio/voice", form)
    headers = {SIGNATURE_HEADER: signature}
    assert verify_webhook("https://b.example.com/twilio/voice", form, headers, auth_token="tok")
    without_empty = [(k, v) for k, v in form if v]
    assert not verify_webhook("https://b.example.com/twilio/voice", without_empty, headers, auth_token="tok")


def test_port_differences_are_tolerated_like_the_library() -> None:
    headers = {SIGNATURE_HEADER: VECTOR_SIGNATURE}
    url = "https://mycompany.com:443/myapp.php?foo=1&bar=2"
    assert verify_webhook(url, VECTOR_PARAMS, headers, auth_token=VECTOR_TOKEN)


def test_hmac_sha256_shared_key_mode() -> None:
    url = "https://b.example.com/twilio/status"
    form = {"CallSid": CALL_SID, "CallStatus": "completed"}
    shared_secret = "shared-key-secret"
    signature = _sign(shared_secret, url, form, "HMAC_SHA256")
    assert signature == RequestValidator(shared_secret).compute_signature(url, form, "HMAC_SHA256")
    headers = {
        SIGNATURE_HEADER: signature,
        SIGNATURE_SETTINGS_HEADER: "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256",
    }
    assert verify_webhook(url, form, headers, auth_token="auth-token", signing_secret=shared_secret)
    # Without the settings header the signature is read as SHA1 and fails.
    assert not verify_webhook(
        url, form, {SIGNATURE_HEADER: signature}, auth_token="auth-token", signing_secret=shared_secret
    )
    # No separate secret configured: the auth token is the key.
    signed_with_token = _sign("auth-token", url, form, "HMAC_SHA256")
    headers_token = {**headers, SIGNATURE_HEADER: signed_with_token}
    assert verify_webhook(url, form, headers_token, auth_token="auth-token")
    # An algorithm the library does not know fails closed.
    odd = {**headers, SIGNATURE_SETTINGS_HEADER: "key=k,algorithm=HMAC_MD5"}
    assert not verify_webhook(url, form, odd, auth_token="auth-token", signing_secret=shared_secret)


def test_stream_upgrade_signature_uses_wss_url_and_empty_params() -> None:
    url = "wss://bridge.example.com/twilio/media"
    signature = _sign("tok", url, {})
    assert verify_stream_upgrade(url, {SIGNATURE_HEADER: signature}, auth_token="tok")
    assert not verify_stream_upgrade(
        "https://bridge.example.com/twilio/media", {SIGNATURE_HEADER: signature}, auth_token="tok"
    )
    assert not verify_stream_upgrade(url, {}, auth_token="tok")


# --------------------------------------------------------------------------- the URL Twilio signed


def test_public_url_from_settings_keeps_path_and_query_bytes() -> None:
    settings = Settings(public_url="https://bridge.example.com/")
    headers = {"host": "127.0.0.1:8080"}
    got = public_url_for("http://127.0.0.1:8080/twilio/voice?tenant=a%20b&x=+1", headers, settings)
    assert got == "https://bridge.example.com/twilio/voice?tenant=a%20b&x=+1"
    assert (
        public_url_for("/twilio/media", headers, settings, websocket=True)
        == "wss://bridge.example.com/twilio/media"
    )


def test_public_url_with_prefix_in_public_base() -> None:
    settings = Settings(public_url="https://example.com/ivr")
    assert public_url_for("/twilio/voice", {}, settings) == "https://example.com/ivr/twilio/voice"


def test_forwarded_headers_only_when_trusted() -> None:
    headers = {
        "Host": "10.0.0.5:8080",
        "X-Forwarded-Proto": "https, http",
        "X-Forwarded-Host": "bridge.example.com, lb.internal",
    }
    settings = Settings()
    assert public_url_for("http://10.0.0.5:8080/twilio/voice?a=1", headers, settings, True) == (
        "https://bridge.example.com/twilio/voice?a=1"
    )
    assert public_url_for("http://10.0.0.5:8080/twilio/voice?a=1", headers, settings, False) == (
        "http://10.0.0.5:8080/twilio/voice?a=1"
    )
    # trust_proxy defaults to the setting; forwarded headers win over BRIDGE_PUBLIC_URL when trusted.
    trusting = Settings(trust_proxy=True, public_url="https://other.example.com")
    assert public_url_for("/twilio/voice", headers, trusting) == "https://bridge.example.com/twilio/voice"
    assert (
        public_url_for("/twilio/media", headers, trusting, websocket=True)
        == "wss://bridge.example.com/twilio/media"
    )
    prefixed = {**headers, "X-Forwarded-Prefix": "/ivr/"}
    assert (
        public_url_for("/twilio/voice", prefixed, trusting) == "https://bridge.example.com/ivr/twilio/voice"
    )
    # Trusted mode without forwarded headers falls back to the public URL.
    assert (
        public_url_for("/twilio/voice", {"host": "x"}, trusting) == "https://other.example.com/twilio/voice"
    )


def test_request_behind_proxy_validates_only_against_the_rebuilt_url() -> None:
    """Twilio signed the public https URL; the app sees plain http on an internal address."""
    public = "https://bridge.example.com/twilio/voice"
    form = [("CallSid", CALL_SID), ("From", "+15551234567"), ("To", "+15550100"), ("CallerName", "")]
    headers = {
        "host": "127.0.0.1:8080",
        "x-forwarded-proto": "https",
        "x-forwarded-host": "bridge.example.com",
        SIGNATURE_HEADER: _sign("tok", public, form),
    }
    seen = "http://127.0.0.1:8080/twilio/voice"
    assert not verify_webhook(seen, form, headers, auth_token="tok")  # naive validation fails
    trusted = TwilioGuard(Settings(twilio_auth_token="tok", trust_proxy=True))
    assert trusted.check_webhook(seen, headers, form) is None
    untrusted = TwilioGuard(Settings(twilio_auth_token="tok"))
    assert untrusted.check_webhook(seen, headers, form) == "bad_signature"
    configured = TwilioGuard(Settings(twilio_auth_token="tok", public_url="https://bridge.example.com"))
    assert configured.check_webhook(seen, headers, form) is None
    # An attacker-chosen forwarded host does not help without the token.
    spoofed = {**headers, "x-forwarded-host": "evil.example.com:abc"}
    assert trusted.check_webhook(seen, spoofed, form) == "bad_signature"


def test_request_target_uses_raw_path() -> None:
    scope = {"path": "/twilio/voice x", "raw_path": b"/twilio/voice%20x", "query_string": b"a=%2B1"}
    assert request_target(scope) == "/twilio/voice%20x?a=%2B1"
    assert request_target({"path": "/p", "query_string": b""}) == "/p"


def test_public_base_url() -> None:
    assert public_base_url("http://127.0.0.1:9/x", {"host": "127.0.0.1:9"}, Settings(), websocket=True) == (
        "ws://127.0.0.1:9"
    )
    settings = Settings(public_url="https://b.example.com/ivr/")
    assert public_base_url("http://127.0.0.1:9/x", {}, settings) == "https://b.example.com/ivr"
    guard = TwilioGuard(settings)
    assert guard.public_url("/twilio/voice", {}, "/twilio/media", websocket=True) == (
        "wss://b.example.com/ivr/twilio/media"
    )


def test_guard_development_mode_and_upgrade() -> None:
    dev = TwilioGuard(Settings())
    assert dev.development_mode
    assert dev.check_webhook("/twilio/voice", {}, []) is None
    assert dev.check_upgrade("/twilio/media", {}) is None
    guard = TwilioGuard(Settings(twilio_auth_token="tok", public_url="https://b.example.com"))
    assert not guard.development_mode
    assert guard.check_webhook("/twilio/voice", {}, []) == "missing_signature"
    assert guard.check_upgrade("/twilio/media", {}) == "missing_signature"
    good = {SIGNATURE_HEADER: _sign("tok", "wss://b.example.com/twilio/media", {})}
    assert guard.check_upgrade("/twilio/media", good) is None
    replayed_http = {SIGNATURE_HEADER: _sign("tok", "https://b.example.com/twilio/media", {})}
    assert guard.check_upgrade("/twilio/media", replayed_http) == "bad_signature"


# --------------------------------------------------------------------------- stream tokens


def test_token_round_trip_and_single_use() -> None:
    token = issue_stream_token(CALL_SID, SECRET, now_s=1000.0, ttl_s=120)
    check_stream_token(token, CALL_SID, SECRET, now_s=1100.0)  # without a ledger: stateless check
    used = UsedTokens()
    check_stream_token(token, CALL_SID, SECRET, now_s=1100.0, used=used)
    with pytest.raises(StreamTokenError) as err:
        check_stream_token(token, CALL_SID, SECRET, now_s=1101.0, used=used)
    assert err.value.reason == "replayed"


def test_expired_token() -> None:
    token = issue_stream_token(CALL_SID, SECRET, now_s=1000.0, ttl_s=120)
    with pytest.raises(StreamTokenError) as err:
        check_stream_token(token, CALL_SID, SECRET, now_s=1120.0)
    assert err.value.reason == "expired"


def test_token_for_another_call() -> None:
    token = issue_stream_token(CALL_SID, SECRET, now_s=1000.0)
    with pytest.raises(StreamTokenError) as err:
        check_stream_token(token, "CA" + "f" * 32, SECRET, now_s=1001.0)
    assert err.value.reason == "wrong_call"
    assert CALL_SID in str(err.value)


def test_forged_tokens() -> None:
    token = issue_stream_token(CALL_SID, SECRET, now_s=1000.0)
    with pytest.raises(StreamTokenError) as err:
        check_stream_token(token, CALL_SID, b"another-secret", now_s=1001.0)
    assert err.value.reason == "bad_mac"
    version, sid, expiry, nonce, mac = token.split(".")
    extended = ".".join([version, sid, str(int(expiry) + 3600), nonce, mac])  # push the expiry out
    with pytest.raises(StreamTokenError) as err:
        check_stream_token(extended, CALL_SID, SECRET, now_s=1001.0)
    assert err.value.reason == "bad_mac"
    other_call = ".".join([version, "CA" + "f" * 32, expiry, nonce, mac])  # rebind to another call
    with pytest.raises(StreamTokenError) as err:
        check_stream_token(other_call, "CA" + "f" * 32, SECRET, now_s=1001.0)
    assert err.value.reason == "bad_mac"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("garbage", "malformed"),
        ("v2.CA1.2000.abcdefgh.mac", "malformed"),
        ("v1.CA1.20x0.abcdefgh.mac", "malformed"),
        ("v1.CA1.2000.short.mac", "malformed"),
        ("v1.CA1.2000.abcdefgh.mac.extra", "malformed"),
        ("v1." + "A" * 300, "malformed"),
    ],
)
def test_malformed_tokens(token: str | None, reason: str) -> None:
    with pytest.raises(StreamTokenError) as err:
        check_stream_token(token, CALL_SID, SECRET, now_s=1000.0)
    assert err.value.reason == reason


def test_issue_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="SID"):
        issue_stream_token("CA.1", SECRET, now_s=0.0)
    with pytest.raises(ValueError, match="ttl"):
        issue_stream_token(CALL_SID, SECRET, now_s=0.0, ttl_s=0)


def test_used_tokens_forget_expired_nonces() -> None:
    used = UsedTokens()
    assert used.consume("nonce-aaa", expires_s=100, now_s=10.0)
    assert used.consume("nonce-bbb", expires_s=200, now_s=10.0)
    assert not used.consume("nonce-aaa", expires_s=100, now_s=50.0)
    assert len(used) == 2
    used.prune(150.0)
    assert len(used) == 1
    used.prune(200.0)
    assert len(used) == 0


def test_guard_tokens_and_development_mode() -> None:
    guard = TwilioGuard(Settings(twilio_auth_token="tok", stream_token_ttl_s=60))
    token = guard.issue_token(CALL_SID, now_s=500.0)
    guard.check_token(token, CALL_SID, now_s=520.0)
    with pytest.raises(StreamTokenError, match="already used"):
        guard.check_token(token, CALL_SID, now_s=521.0)
    with pytest.raises(StreamTokenError) as err:
        guard.check_token(None, CALL_SID, now_s=521.0)
    assert err.value.reason == "missing"
    dev = TwilioGuard(Settings())
    dev.check_token(None, CALL_SID, now_s=0.0)  # development mode: no token needed ...
    with pytest.raises(StreamTokenError):  # ... but a token that is there must be right
        dev.check_token("v1.x", CALL_SID, now_s=0.0)


def test_stream_secret_resolution() -> None:
    assert resolve_stream_secret(Settings(stream_secret="s3cret")) == b"s3cret"
    derived_a = resolve_stream_secret(Settings(twilio_auth_token="tok"))
    assert derived_a == resolve_stream_secret(Settings(twilio_auth_token="tok"))  # instances agree
    assert derived_a not in (b"tok", resolve_stream_secret(Settings(twilio_auth_token="other")))
    assert resolve_stream_secret(Settings()) != resolve_stream_secret(Settings())  # random per process


# --------------------------------------------------------------------------- bodies


def test_parse_form_keeps_empty_values_and_order() -> None:
    body = b"CallSid=CA1&CallerName=&To=%2B15550100&Note=caf%C3%A9+au+lait"
    form = parse_form(body, "application/x-www-form-urlencoded; charset=utf-8", 1024)
    assert form == [("CallSid", "CA1"), ("CallerName", ""), ("To", "+15550100"), ("Note", "café au lait")]
    assert parse_form(b"", "application/x-www-form-urlencoded", 10) == []


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"a=" + b"x" * 5000, "application/x-www-form-urlencoded", "too_large"),
        (b'{"CallSid": "CA1"}', "application/json", "not_form"),
        (b"CallSid=CA1", None, "not_form"),
        (b"CallSid=CA1", "text/plain", "not_form"),
        (b"CallSid=%FF%FE", "application/x-www-form-urlencoded", "bad_encoding"),
        (b"CallSid=\xff", "application/x-www-form-urlencoded", "bad_encoding"),
        (b"CallSid=CA1", "application/x-www-form-urlencoded; charset=latin-1", "bad_encoding"),
        (b"&".join(b"f%d=1" % i for i in range(300)), "application/x-www-form-urlencoded", "not_form"),
    ],
)
def test_parse_form_rejections(body: bytes, content_type: str | None, reason: str) -> None:
    with pytest.raises(WebhookBodyError) as err:
        parse_form(body, content_type, 4096)
    assert err.value.reason == reason
