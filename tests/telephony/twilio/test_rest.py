"""`ivr-bridge twilio configure` and the REST call-update fallback, against a local stand-in of the
Twilio REST API reached through the library's own HTTP layer (requests), on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from bridge.cli import build_parser
from bridge.errors import ConfigError
from bridge.settings import Settings
from bridge.telephony.twilio.rest import (
    RebasedHttpClient,
    TwilioRestError,
    configure_number,
    make_client,
    run_configure,
    update_call_twiml,
    webhook_urls,
)
from bridge.telephony.twilio.twiml import dial

ACCOUNT = "AC" + "a" * 32
TOKEN = "rest-token"
NUMBER_SID = "PN" + "b" * 32
CALL_SID = "CA" + "c" * 32
REPO = Path(__file__).resolve().parents[3]


@dataclass
class FakeTwilio:
    """Just enough of api.twilio.com/2010-04-01 for numbers and call updates."""

    numbers: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, list[str]]]] = field(default_factory=list)


def _handler(state: FakeTwilio) -> type[BaseHTTPRequestHandler]:
    prefix = f"/2010-04-01/Accounts/{ACCOUNT}/"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _authorized(self) -> bool:
            expected = "Basic " + base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
            if self.headers.get("Authorization") != expected:
                self._send(401, {"code": 20003, "message": "Authenticate", "status": 401})
                return False
            return True

        def _not_found(self) -> None:
            self._send(404, {"code": 20404, "message": "The requested resource was not found", "status": 404})

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            state.requests.append(("GET", url.path, query))
            if not self._authorized():
                return
            if url.path != prefix + "IncomingPhoneNumbers.json":
                return self._not_found()
            wanted = query.get("PhoneNumber", [""])[0]
            found = [n for n in state.numbers.values() if wanted in n["phone_number"]]
            self._send(
                200,
                {
                    "incoming_phone_numbers": found,
                    "uri": url.path,
                    "first_page_uri": url.path,
                    "next_page_uri": None,
                    "previous_page_uri": None,
                    "page": 0,
                    "page_size": 20,
                    "start": 0,
                    "end": len(found),
                },
            )

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode(), keep_blank_values=True)
            state.requests.append(("POST", url.path, form))
            if not self._authorized():
                return
            if url.path.startswith(prefix + "IncomingPhoneNumbers/"):
                sid = url.path.rsplit("/", 1)[1].removesuffix(".json")
                number = state.numbers.get(sid)
                if number is None:
                    return self._not_found()
                fields = {
                    "VoiceUrl": "voice_url",
                    "VoiceMethod": "voice_method",
                    "StatusCallback": "status_callback",
                    "StatusCallbackMethod": "status_callback_method",
                }
                for form_name, json_name in fields.items():
                    if form_name in form:
                        number[json_name] = form[form_name][0]
                return self._send(200, number)
            if url.path.startswith(prefix + "Calls/"):
                sid = url.path.rsplit("/", 1)[1].removesuffix(".json")
                call = state.calls.get(sid)
                if call is None:
                    return self._not_found()
                call["twiml"] = form.get("Twiml", [""])[0]
                return self._send(200, call)
            self._not_found()

    return Handler


@pytest.fixture
def fake_twilio() -> Iterator[tuple[FakeTwilio, str]]:
    state = FakeTwilio()
    state.numbers[NUMBER_SID] = {
        "sid": NUMBER_SID,
        "account_sid": ACCOUNT,
        "phone_number": "+15550100",
        "voice_url": "https://demo.twilio.com/welcome/voice/",
        "voice_method": "POST",
        "status_callback": "",
        "status_callback_method": "POST",
    }
    state.numbers["PN" + "d" * 32] = {
        **state.numbers[NUMBER_SID],
        "sid": "PN" + "d" * 32,
        "phone_number": "+155501001",
    }
    state.calls[CALL_SID] = {"sid": CALL_SID, "account_sid": ACCOUNT, "status": "in-progress"}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _settings(base: str, token: str = TOKEN) -> Settings:
    return Settings(twilio_account_sid=ACCOUNT, twilio_auth_token=token, twilio_api_base_url=base)


def test_configure_number_updates_and_reports_changes(fake_twilio: tuple[FakeTwilio, str]) -> None:
    state, base = fake_twilio
    client = make_client(_settings(base))
    changes = configure_number(client, "+15550100", "https://bridge.example.com/")
    assert {c.field: (c.old, c.new) for c in changes} == {
        "voice_url": ("https://demo.twilio.com/welcome/voice/", "https://bridge.example.com/twilio/voice"),
        "voice_method": ("POST", "POST"),
        "status_callback": ("", "https://bridge.example.com/twilio/status"),
        "status_callback_method": ("POST", "POST"),
    }
    number = state.numbers[NUMBER_SID]
    assert number["voice_url"] == "https://bridge.example.com/twilio/voice"
    assert number["status_callback"] == "https://bridge.example.com/twilio/status"
    # The lookup was exact: the longer number sharing a prefix was left alone.
    assert state.numbers["PN" + "d" * 32]["voice_url"] == "https://demo.twilio.com/welcome/voice/"
    gets = [r for r in state.requests if r[0] == "GET"]
    assert gets[0][2]["PhoneNumber"] == ["+15550100"]
    # Second run: nothing changes, nothing is written.
    posts_before = sum(1 for r in state.requests if r[0] == "POST")
    again = configure_number(client, "+15550100", "https://bridge.example.com")
    assert not any(c.changed for c in again)
    assert sum(1 for r in state.requests if r[0] == "POST") == posts_before


def test_dry_run_writes_nothing(fake_twilio: tuple[FakeTwilio, str]) -> None:
    state, base = fake_twilio
    out = io.StringIO()
    assert run_configure(_settings(base), "+15550100", "https://b.example.com", dry_run=True, out=out) == 0
    assert (
        "voice_url: https://demo.twilio.com/welcome/voice/ -> https://b.example.com/twilio/voice (changed)"
        in (out.getvalue())
    )
    assert "dry run, 2 field(s) would change" in out.getvalue()
    assert not [r for r in state.requests if r[0] == "POST"]


def test_unknown_number_and_bad_credentials(fake_twilio: tuple[FakeTwilio, str]) -> None:
    _, base = fake_twilio
    with pytest.raises(ConfigError, match="not a phone number of this Twilio account"):
        configure_number(make_client(_settings(base)), "+15559999", "https://b.example.com")
    with pytest.raises(TwilioRestError, match="looking up"):
        configure_number(make_client(_settings(base, token="wrong")), "+15550100", "https://b.example.com")


def test_url_and_credential_checks() -> None:
    with pytest.raises(ConfigError, match="https"):
        webhook_urls("http://bridge.example.com")
    with pytest.raises(ConfigError, match="query"):
        webhook_urls("https://bridge.example.com/?a=1")
    with pytest.raises(ConfigError, match="TWILIO_ACCOUNT_SID"):
        make_client(Settings())


async def test_call_update_fallback(fake_twilio: tuple[FakeTwilio, str]) -> None:
    state, base = fake_twilio
    client = make_client(_settings(base))
    twiml = dial("+15550199")
    assert await update_call_twiml(client, CALL_SID, twiml) == "in-progress"
    assert state.calls[CALL_SID]["twiml"] == twiml
    with pytest.raises(TwilioRestError, match="updating call"):
        await update_call_twiml(client, "CA" + "0" * 32, twiml)


def test_rebased_client_only_rewrites_the_twilio_origin(fake_twilio: tuple[FakeTwilio, str]) -> None:
    _, base = fake_twilio
    client = RebasedHttpClient(base + "/")
    response = client.request("GET", "https://api.twilio.com/2010-04-01/Accounts/x.json")
    assert response.status_code == 401  # reached the stand-in (no auth sent)


def test_cli_parser_has_the_subcommand() -> None:
    args = build_parser().parse_args(
        ["twilio", "configure", "--number", "+15550100", "--url", "https://b.example"]
    )
    assert (args.command, args.twilio_command, args.number, args.url, args.dry_run) == (
        "twilio",
        "configure",
        "+15550100",
        "https://b.example",
        False,
    )


def test_cli_end_to_end(fake_twilio: tuple[FakeTwilio, str]) -> None:
    state, base = fake_twilio
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "BRIDGE_"))}
    env.update(TWILIO_ACCOUNT_SID=ACCOUNT, TWILIO_AUTH_TOKEN=TOKEN, TWILIO_API_BASE_URL=base)
    argv = [sys.executable, "-m", "bridge", "twilio", "configure", "--number", "+15550100"]
    done = subprocess.run(
        [*argv, "--url", "https://bridge.example.com"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (
        "+15550100 status_callback: (none) -> https://bridge.example.com/twilio/status (changed)"
        in done.stdout
    )
    assert "updated 2 field(s)" in done.stdout
    assert state.numbers[NUMBER_SID]["voice_url"] == "https://bridge.example.com/twilio/voice"
    env.pop("TWILIO_AUTH_TOKEN")
    done = subprocess.run(
        [*argv, "--url", "https://x.example.com"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "TWILIO_AUTH_TOKEN" in done.stderr
