"""Twilio in production, over real sockets: signed webhook -> TwiML -> signed stream upgrade with a
token -> call; every refusal; status callbacks; transfer and hang-up through the continuation."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bridge.app import create_app
from bridge.metrics import METRICS, BridgeMetrics
from bridge.settings import Settings
from bridge.telephony.leg import CallEnded, CallStarted, Dtmf
from bridge.telephony.twilio.call_registry import InProcessCallRegistry
from bridge.telephony.twilio.leg import TwilioLeg
from bridge.telephony.twilio.routes import TwilioRoutes
from tests.helpers.realtime_standin import AGENT_ONLY, StandinRealtime
from tests.helpers.servers import serve
from tests.helpers.twilio_emulator import TwilioEmulator
from tests.telephony.twilio.test_rest import ACCOUNT, CALL_SID, TOKEN, FakeTwilio, fake_twilio  # noqa: F401

AUTH = "test-auth-token"
NUMBER = "+15550100"
CALLER = "+15551234567"


def sign(url: str, form: dict[str, str], token: str = AUTH) -> str:
    payload = url + "".join(k + v for k, v in sorted(form.items()))
    return base64.b64encode(hmac.new(token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


@dataclass
class Scripted:
    """A stand-in for the call: records leg events; `0` transfers, `9` hangs up (from another task)."""

    events: list[object] = field(default_factory=list)
    transfer_result: list[bool] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def __call__(self, leg: TwilioLeg) -> None:
        async for event in leg.events():
            self.events.append(event)
            if isinstance(event, Dtmf) and event.digit == "0":
                self.tasks.append(asyncio.create_task(self._transfer(leg)))
            elif isinstance(event, Dtmf) and event.digit == "9":
                await leg.hang_up()
            if isinstance(event, CallEnded):
                break

    async def _transfer(self, leg: TwilioLeg) -> None:
        await leg.send_audio(b"\x7f" * 160)  # "Connecting you now", played out before the stream ends
        self.transfer_result.append(await leg.transfer("+15550199"))

    @property
    def started(self) -> list[CallStarted]:
        return [e for e in self.events if isinstance(e, CallStarted)]


@dataclass
class Bridge:
    url: str
    settings: Settings
    script: Scripted
    registry: InProcessCallRegistry
    metrics: BridgeMetrics
    now: list[float]

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/twilio/media"

    async def webhook(
        self, path: str, form: dict[str, str], *, signed: bool = True, **kw: Any
    ) -> httpx.Response:
        headers = {"X-Twilio-Signature": sign(self.url + path, form)} if signed else {}
        headers.update(kw.pop("headers", {}))
        async with httpx.AsyncClient() as http:
            return await http.post(self.url + path, data=form, headers=headers, **kw)

    async def answer(
        self, call_sid: str = CALL_SID, to: str = NUMBER
    ) -> tuple[str, dict[str, str], ET.Element]:
        r = await self.webhook(
            "/twilio/voice", {"CallSid": call_sid, "From": CALLER, "To": to, "CallerName": ""}
        )
        assert r.status_code == 200, r.text
        root = ET.fromstring(r.text)
        stream = root.find("Connect/Stream")
        assert stream is not None, r.text
        params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
        return stream.attrib["url"], params, root

    async def stream(
        self, url: str, params: dict[str, str], call_sid: str = CALL_SID, *, signature: str | None = None
    ) -> TwilioEmulator:
        emulator = TwilioEmulator(url, call_sid=call_sid, custom_parameters=params)
        sig = sign(url, {}) if signature is None else signature
        headers = {"X-Twilio-Signature": sig} if sig else {}
        emulator.ws = await connect(url, additional_headers=headers, max_size=None, compression=None)
        emulator._tasks = [asyncio.create_task(emulator._reader()), asyncio.create_task(emulator._player())]
        with contextlib.suppress(ConnectionClosed):  # a refused upgrade may close before `start`
            await emulator.start()
        return emulator

    def rejections(self, route: str, reason: str) -> float:
        return self.metrics.webhook_rejections.value(route=route, reason=reason)


def _bridge(**overrides: Any) -> Iterator[Bridge]:
    script = Scripted()
    registry = InProcessCallRegistry()
    metrics = BridgeMetrics()
    now = [1_000_000.0]
    holder: dict[str, Settings] = {}

    def make(port: int) -> FastAPI:
        values: dict[str, Any] = {"public_url": f"http://127.0.0.1:{port}", "twilio_auth_token": AUTH}
        values.update(overrides)
        settings = holder["settings"] = Settings(**values)
        app = FastAPI()
        flows = {NUMBER: "main"}
        routes = TwilioRoutes(
            settings, script, registry=registry, metrics=metrics, flow_for=flows.get, clock=lambda: now[0]
        )
        app.include_router(routes.router())
        return app

    with serve(make) as (url, _app):
        yield Bridge(url, holder["settings"], script, registry, metrics, now)


bridge_with = contextlib.contextmanager(_bridge)


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    yield from _bridge()


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- the whole path


async def test_signed_webhook_twiml_signed_stream_and_continuation(bridge: Bridge) -> None:
    url, params, root = await bridge.answer()
    connect_el = root.find("Connect")
    assert connect_el is not None
    assert connect_el.attrib["action"] == bridge.url + "/twilio/continue"
    stream_el = root.find("Connect/Stream")
    assert stream_el is not None
    assert stream_el.attrib["statusCallback"] == bridge.url + "/twilio/status"
    assert url == bridge.ws_url  # no query string
    assert params["caller"] == CALLER
    assert params["called"] == NUMBER
    assert params["flow"] == "main"
    assert params["bridge_token"].startswith("v1." + CALL_SID + ".")
    record = await bridge.registry.get(CALL_SID)
    assert record is not None
    assert (record.flow, record.caller) == ("main", CALLER)

    twilio = await bridge.stream(url, params)
    await wait_until(lambda: bridge.script.started)
    started = bridge.script.started[0]
    assert (started.call_id, started.caller, started.called, started.params["flow"]) == (
        CALL_SID,
        CALLER,
        NUMBER,
        "main",
    )
    # DTMF reaches the call; "0" asks for a transfer.
    await twilio.dtmf("5")
    await wait_until(lambda: Dtmf("5") in bridge.script.events)
    await twilio.dtmf("0")
    await wait_until(lambda: twilio.closed_at is not None)
    assert twilio.close_code == 1000
    assert bridge.script.transfer_result == [True]
    # The spoken words were played before the stream ended.
    assert any(p.payload == b"\x7f" * 160 for p in twilio.played)
    # Twilio now asks the action URL what to do: dial the target.
    r = await bridge.webhook("/twilio/continue", {"CallSid": CALL_SID, "CallStatus": "in-progress"})
    assert r.status_code == 200
    dial_el = ET.fromstring(r.text).find("Dial")
    assert dial_el is not None
    assert dial_el.text == "+15550199"
    assert bridge.metrics.continuations.value(action="transfer", path="action") == 1
    # Asked again (a retry), the decision is spent: hang up.
    r = await bridge.webhook("/twilio/continue", {"CallSid": CALL_SID})
    assert [el.tag for el in ET.fromstring(r.text)] == ["Hangup"]
    await twilio.close()


async def test_hang_up_from_the_call_ends_with_hangup_twiml(bridge: Bridge) -> None:
    url, params, _ = await bridge.answer()
    twilio = await bridge.stream(url, params)
    await twilio.dtmf("9")
    await wait_until(lambda: twilio.closed_at is not None)
    r = await bridge.webhook("/twilio/continue", {"CallSid": CALL_SID})
    assert [el.tag for el in ET.fromstring(r.text)] == ["Hangup"]
    await twilio.close()


async def test_status_callback_closes_a_lingering_stream(bridge: Bridge) -> None:
    url, params, _ = await bridge.answer()
    twilio = await bridge.stream(url, params)
    await wait_until(lambda: bridge.script.started)
    for status in ("ringing", "in-progress"):
        r = await bridge.webhook("/twilio/status", {"CallSid": CALL_SID, "CallStatus": status})
        assert r.status_code == 204
    r = await bridge.webhook(
        "/twilio/status",
        {"CallSid": CALL_SID, "StreamSid": twilio.stream_sid, "StreamEvent": "stream-started"},
    )
    assert r.status_code == 204
    assert twilio.closed_at is None
    r = await bridge.webhook(
        "/twilio/status", {"CallSid": CALL_SID, "CallStatus": "completed", "CallDuration": "4"}
    )
    assert r.status_code == 204
    await wait_until(lambda: twilio.closed_at is not None)
    record = await bridge.registry.get(CALL_SID)
    assert record is not None
    assert [e.status for e in record.history] == ["ringing", "in-progress", "stream-started", "completed"]
    assert record.ended
    assert bridge.metrics.status_events.value(kind="call", status="completed") == 1
    assert bridge.metrics.status_events.value(kind="stream", status="stream-started") == 1
    await twilio.close()


async def test_status_callback_bad_input(bridge: Bridge) -> None:
    r = await bridge.webhook("/twilio/status", {"CallSid": CALL_SID, "CallStatus": "exploded"})
    assert r.status_code == 400
    r = await bridge.webhook("/twilio/status", {"CallStatus": "completed"})
    assert r.status_code == 400
    r = await bridge.webhook("/twilio/status", {"CallSid": CALL_SID, "CallStatus": "completed"}, signed=False)
    assert r.status_code == 403


# --------------------------------------------------------------------------- refusals


async def test_forged_missing_and_replayed_webhook_signatures(bridge: Bridge) -> None:
    form = {"CallSid": CALL_SID, "From": CALLER, "To": NUMBER}
    r = await bridge.webhook("/twilio/voice", form, signed=False)
    assert r.status_code == 403
    assert r.text == ""
    r = await bridge.webhook(
        "/twilio/voice", form, headers={"X-Twilio-Signature": sign(bridge.url + "/x", form)}
    )
    assert r.status_code == 403
    other = {**form, "To": "+15550101"}  # a valid signature of another request
    r = await bridge.webhook(
        "/twilio/voice", form, headers={"X-Twilio-Signature": sign(bridge.url + "/twilio/voice", other)}
    )
    assert r.status_code == 403
    assert bridge.rejections("/twilio/voice", "missing_signature") == 1
    assert bridge.rejections("/twilio/voice", "bad_signature") == 2
    assert await bridge.registry.get(CALL_SID) is None  # nothing else happened


async def test_oversized_and_non_form_bodies(bridge: Bridge) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(
            bridge.url + "/twilio/voice",
            content=b"CallSid=" + b"x" * 70_000,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 413
        r = await http.post(bridge.url + "/twilio/voice", json={"CallSid": CALL_SID})
        assert r.status_code == 415

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(20):
                yield b"x" * 8192  # no Content-Length: the cap holds while streaming

        r = await http.post(
            bridge.url + "/twilio/status",
            content=chunks(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 413
    assert bridge.rejections("/twilio/voice", "too_large") == 1
    assert bridge.rejections("/twilio/voice", "not_form") == 1
    assert bridge.rejections("/twilio/status", "too_large") == 1


async def test_unknown_number_gets_polite_twiml(bridge: Bridge) -> None:
    r = await bridge.webhook("/twilio/voice", {"CallSid": CALL_SID, "From": CALLER, "To": "+15559999"})
    assert r.status_code == 200
    root = ET.fromstring(r.text)
    assert [el.tag for el in root] == ["Say", "Hangup"]
    assert bridge.rejections("/twilio/voice", "unknown_number") == 1


async def _refused(bridge: Bridge, twilio: TwilioEmulator) -> None:
    await wait_until(lambda: twilio.closed_at is not None)
    assert twilio.close_code == 1008
    assert not bridge.script.started  # no call started, no upstream session, nothing billed
    await twilio.close()


async def test_stream_without_upgrade_signature_is_refused(bridge: Bridge) -> None:
    url, params, _ = await bridge.answer()
    await _refused(bridge, await bridge.stream(url, params, signature=""))
    assert bridge.rejections("/twilio/media", "missing_signature") == 1
    forged = sign(url.replace("ws://", "http://"), {})  # signed for another URL
    await _refused(bridge, await bridge.stream(url, params, signature=forged))
    assert bridge.rejections("/twilio/media", "bad_signature") == 1


async def test_stream_without_token_is_refused(bridge: Bridge) -> None:
    url, params, _ = await bridge.answer()
    params.pop("bridge_token")
    await _refused(bridge, await bridge.stream(url, params))
    assert bridge.rejections("/twilio/media", "token_missing") == 1


async def test_expired_token_is_refused(bridge: Bridge) -> None:
    url, params, _ = await bridge.answer()
    bridge.now[0] += bridge.settings.stream_token_ttl_s + 1
    await _refused(bridge, await bridge.stream(url, params))
    assert bridge.rejections("/twilio/media", "token_expired") == 1


async def test_token_for_another_call_is_refused(bridge: Bridge) -> None:
    url, params, _ = await bridge.answer()
    await _refused(bridge, await bridge.stream(url, params, call_sid="CA" + "e" * 32))
    assert bridge.rejections("/twilio/media", "token_wrong_call") == 1


async def test_replayed_token_is_refused(bridge: Bridge) -> None:
    url, params, _ = await bridge.answer()
    first = await bridge.stream(url, params)
    await wait_until(lambda: len(bridge.script.started) == 1)
    await first.stop()
    await wait_until(lambda: first.closed_at is not None)
    await first.close()
    bridge.script.events.clear()
    await _refused(bridge, await bridge.stream(url, params))
    assert bridge.rejections("/twilio/media", "token_replayed") == 1


# --------------------------------------------------------------------------- proxies and REST


def test_webhook_behind_a_trusted_proxy() -> None:
    with bridge_with(public_url=None, trust_proxy=True) as bridge:
        public = "https://bridge.example.com/twilio/voice"
        form = {"CallSid": CALL_SID, "From": CALLER, "To": NUMBER}
        headers = {
            "X-Twilio-Signature": sign(public, form),
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "bridge.example.com",
        }
        r = httpx.post(bridge.url + "/twilio/voice", data=form, headers=headers)
        assert r.status_code == 200, r.text
        stream = ET.fromstring(r.text).find("Connect/Stream")
        assert stream is not None
        assert stream.attrib["url"] == "wss://bridge.example.com/twilio/media"
        # The same request without the proxy's headers is what Twilio did not sign.
        r = httpx.post(
            bridge.url + "/twilio/voice",
            data=form,
            headers={"X-Twilio-Signature": headers["X-Twilio-Signature"]},
        )
        assert r.status_code == 403


async def test_transfer_through_rest_update(fake_twilio: tuple[FakeTwilio, str]) -> None:  # noqa: F811
    state, api = fake_twilio
    with bridge_with(twilio_account_sid=ACCOUNT, twilio_auth_token=TOKEN, twilio_api_base_url=api) as bridge:
        url, params, _ = await _answer_with(bridge, TOKEN)
        twilio = await bridge.stream(url, params, signature=sign(url, {}, TOKEN))
        await wait_until(lambda: bridge.script.started)
        await twilio.dtmf("0")
        await wait_until(lambda: twilio.closed_at is not None)
        assert bridge.script.transfer_result == [True]
        assert "+15550199" in state.calls[CALL_SID]["twiml"]
        assert bridge.metrics.continuations.value(action="transfer", path="rest") == 1
        await twilio.close()


async def _answer_with(bridge: Bridge, token: str) -> tuple[str, dict[str, str], ET.Element]:
    form = {"CallSid": CALL_SID, "From": CALLER, "To": NUMBER}
    async with httpx.AsyncClient() as http:
        r = await http.post(
            bridge.url + "/twilio/voice",
            data=form,
            headers={"X-Twilio-Signature": sign(bridge.url + "/twilio/voice", form, token)},
        )
    assert r.status_code == 200, r.text
    root = ET.fromstring(r.text)
    stream = root.find("Connect/Stream")
    assert stream is not None
    return stream.attrib["url"], {p.attrib["name"]: p.attrib["value"] for p in stream}, root


# --------------------------------------------------------------------------- the real app and call


@pytest.mark.slow
async def test_real_app_signed_path_opens_the_upstream_session_only_when_admitted(
    standin: StandinRealtime, tmp_path: Path
) -> None:
    (tmp_path / "main.yaml").write_text(AGENT_ONLY)

    def make(port: int) -> object:
        settings = Settings(
            dialplans=tmp_path,
            port=port,
            realtime_url=standin.url,
            twilio_auth_token=AUTH,
            public_url=f"http://127.0.0.1:{port}",
        )
        return create_app(settings)

    before = METRICS.webhook_rejections.value(route="/twilio/media", reason="token_missing")
    with serve(make) as (url, _app):
        bridge = Bridge(url, Settings(), Scripted(), InProcessCallRegistry(), METRICS, [0.0])
        stream_url, params, _ = await bridge.answer()
        # Refused stream first: no upstream session.
        no_token = {k: v for k, v in params.items() if k != "bridge_token"}
        bad = await bridge.stream(stream_url, no_token)
        await wait_until(lambda: bad.closed_at is not None)
        assert bad.close_code == 1008
        await bad.close()
        assert not standin.sessions
        # Then the real one: the call opens its realtime session.
        twilio = await bridge.stream(stream_url, params)
        session = await standin.next_session()
        await asyncio.wait_for(session.updated.wait(), 5)
        await twilio.stop()
        await wait_until(lambda: session.closed_at is not None)
        await twilio.close()
    assert METRICS.webhook_rejections.value(route="/twilio/media", reason="token_missing") == before + 1
