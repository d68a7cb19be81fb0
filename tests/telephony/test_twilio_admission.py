"""Admission and rate limits on the Twilio leg, through the real app over real sockets.

The bridge (create_app under uvicorn) takes `max_calls=2`; calls are placed as Twilio places them
(signed webhook, TwiML, signed stream upgrade with the TwiML's token) by the Twilio emulator, and
agent steps talk to the stand-in realtime server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bridge.app import create_app
from bridge.cli import server_config
from bridge.settings import Settings
from bridge.telephony.twilio_auth import client_source
from tests.helpers.realtime_standin import AGENT_ONLY, StandinRealtime, StandinSession
from tests.helpers.servers import serve
from tests.helpers.signals import pcm, tone, ulaw
from tests.helpers.twilio_emulator import FRAME_BYTES, TwilioEmulator

pytestmark = pytest.mark.slow

AUTH = "admission-auth-token"


def sign(url: str, form: dict[str, str]) -> str:
    payload = url + "".join(k + v for k, v in sorted(form.items()))
    return base64.b64encode(hmac.new(AUTH.encode(), payload.encode(), hashlib.sha1).digest()).decode()


def call_sid(n: int) -> str:
    return f"CA{n:032d}"


@dataclass
class Bridge:
    url: str
    app: FastAPI

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/twilio/media"

    async def post(
        self, path: str, form: dict[str, str], headers: dict[str, str] | None = None
    ) -> httpx.Response:
        all_headers = {"X-Twilio-Signature": sign(self.url + path, form), **(headers or {})}
        async with httpx.AsyncClient() as http:
            return await http.post(self.url + path, data=form, headers=all_headers)

    async def voice(self, n: int) -> httpx.Response:
        return await self.post(
            "/twilio/voice", {"CallSid": call_sid(n), "From": "+15551230000", "To": "+15550100"}
        )

    async def stream(self, n: int, twiml: str) -> TwilioEmulator:
        stream = ET.fromstring(twiml).find("Connect/Stream")
        assert stream is not None, twiml
        params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
        emulator = TwilioEmulator(
            self.ws_url, call_sid=call_sid(n), stream_sid=f"MZ{n:032d}", custom_parameters=params
        )
        emulator.ws = await connect(
            self.ws_url,
            additional_headers={"X-Twilio-Signature": sign(self.ws_url, {})},
            max_size=None,
            compression=None,
        )
        emulator._tasks = [asyncio.create_task(emulator._reader()), asyncio.create_task(emulator._player())]
        with contextlib.suppress(ConnectionClosed):
            await emulator.start()
        return emulator

    async def metric(self, name: str, **labels: str) -> float:
        async with httpx.AsyncClient() as http:
            text = (await http.get(self.url + "/metrics")).text
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            match = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
            if match and match[1] == name and ",".join(sorted(match[2].split(","))) == wanted:
                return float(match[3])
        return 0.0

    async def health(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as http:
            body: dict[str, Any] = (await http.get(self.url + "/healthz")).json()
            return body


def _bridge(standin: StandinRealtime, tmp_path: Path, **overrides: Any) -> Iterator[Bridge]:
    """The app as `ivr-bridge serve` runs it (its uvicorn configuration, at WARNING)."""
    (tmp_path / "main.yaml").write_text(AGENT_ONLY)
    settings: list[Settings] = []

    def make(port: int) -> FastAPI:
        values: dict[str, Any] = {
            "port": port,
            "public_url": f"http://127.0.0.1:{port}",
            "twilio_auth_token": AUTH,
            "realtime_url": standin.url,
            "dialplans": tmp_path,
            "max_calls": 2,
            "log_level": "WARNING",
        }
        values.update(overrides)
        settings.append(Settings(**values))
        return create_app(settings[0], preload_models=False)

    with serve(make, lambda app: server_config(app, settings[0])) as (url, app):
        yield Bridge(url, app)


@pytest.fixture
def bridge(standin: StandinRealtime, tmp_path: Path) -> Iterator[Bridge]:
    yield from _bridge(standin, tmp_path)


def heard(twilio: TwilioEmulator) -> int:
    return sum(1 for p in twilio.played if p.payload != b"\xff" * FRAME_BYTES)


async def open_admitted(
    bridge: Bridge, standin: StandinRealtime, n: int
) -> tuple[TwilioEmulator, StandinSession]:
    r = await bridge.voice(n)
    assert r.status_code == 200
    assert "<Connect" in r.text, r.text
    twilio = await bridge.stream(n, r.text)
    session = await standin.next_session()
    await asyncio.wait_for(session.updated.wait(), 5)
    return twilio, session


async def test_calls_over_max_calls_are_refused_while_admitted_calls_go_on(
    bridge: Bridge, standin: StandinRealtime
) -> None:
    rejected_before = await bridge.metric(
        "ivr_bridge_admission_rejections_total", leg="twilio", reason="max_calls"
    )
    # A third webhook answered while there was room (the race the stream start settles).
    early = await bridge.voice(3)
    assert "<Connect" in early.text
    a, session_a = await open_admitted(bridge, standin, 1)
    b, session_b = await open_admitted(bridge, standin, 2)
    assert (await bridge.health())["call_slots"] == {"in_use": 2, "limit": 2}

    # Both admitted calls are talking while the refusals happen.
    replies = [
        asyncio.create_task(s.reply_audio(pcm(tone(440, 2.0, 24000)), realtime=1.0))
        for s in (session_a, session_b)
    ]
    talk = [asyncio.create_task(t.stream_audio(ulaw(tone(1000, 2.0, 8000)))) for t in (a, b)]
    await asyncio.sleep(0.3)

    # Over the limit at webhook time: busy, and no stream is offered.
    busy = await bridge.voice(4)
    assert busy.status_code == 200
    root = ET.fromstring(busy.text)
    reject = root.find("Reject")
    assert reject is not None, busy.text
    assert reject.attrib["reason"] == "busy"
    assert root.find("Connect") is None
    # Over the limit at stream start (admitted by the webhook earlier): closed 1013, no session.
    late = await bridge.stream(3, early.text)
    await late.wait_for(lambda: late.closed_at is not None, timeout=5)
    assert late.close_code == 1013
    assert not late.received
    cont = await bridge.post("/twilio/continue", {"CallSid": call_sid(3), "CallStatus": "in-progress"})
    assert "<Hangup" in cont.text
    await asyncio.sleep(0.2)
    assert len(standin.sessions) == 2, "a refused call opened a realtime session"

    # The admitted calls were not disturbed: all their audio got through, both ways.
    await asyncio.gather(*replies, *talk)
    for twilio, session in ((a, session_a), (b, session_b)):
        await twilio.wait_for(lambda t=twilio: heard(t) >= 98, timeout=5)  # 2 s of reply
        await twilio.wait_for(lambda s=session: len(s.appended) >= 48 * 2000 - 48 * 40, timeout=5)
        assert twilio.closed_at is None
        assert not twilio.clears
    # They end normally, and their slots come back.
    for twilio, session in ((a, session_a), (b, session_b)):
        await twilio.stop()
        await twilio.wait_for(lambda s=session: s.closed_at is not None, timeout=3)
        await twilio.wait_for(lambda t=twilio: t.closed_at is not None, timeout=3)
        assert twilio.close_code == 1000
        await twilio.close()
    await late.close()

    async def slots_free() -> bool:
        return bool((await bridge.health())["call_slots"]["in_use"] == 0)

    for _ in range(100):
        if await slots_free():
            break
        await asyncio.sleep(0.02)
    assert await slots_free()
    # Room again: a new call is admitted end to end.
    c, session_c = await open_admitted(bridge, standin, 5)
    assert (await bridge.health())["call_slots"]["in_use"] == 1
    await c.stop()
    await c.wait_for(lambda: session_c.closed_at is not None, timeout=3)
    await c.close()

    rejected = await bridge.metric("ivr_bridge_admission_rejections_total", leg="twilio", reason="max_calls")
    assert rejected - rejected_before == 2  # the busy webhook and the late stream


async def test_a_refused_stream_token_takes_no_slot(bridge: Bridge, standin: StandinRealtime) -> None:
    r = await bridge.voice(7)
    forged = r.text.replace('bridge_token" value="v1.', 'bridge_token" value="v1.x')
    twilio = await bridge.stream(7, forged)
    await twilio.wait_for(lambda: twilio.closed_at is not None, timeout=5)
    assert twilio.close_code == 1008
    await twilio.close()
    assert (await bridge.health())["call_slots"]["in_use"] == 0


async def test_webhooks_and_upgrades_over_the_source_rate_get_429(
    standin: StandinRealtime, tmp_path: Path
) -> None:
    with contextlib.contextmanager(_bridge)(
        standin, tmp_path, rate_per_source_per_s=0.01, rate_burst=3
    ) as bridge:
        before = await bridge.metric("ivr_bridge_admission_rejections_total", leg="twilio", reason="rate")
        form = {"CallSid": call_sid(9), "CallStatus": "ringing"}
        statuses = [(await bridge.post("/twilio/status", form)).status_code for _ in range(5)]
        assert statuses == [204, 204, 204, 429, 429]
        r = await bridge.post("/twilio/status", form)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        assert r.content == b""
        # The stream upgrade from the same source is refused with an HTTP 429 too.
        with pytest.raises(InvalidStatus) as refused:
            await connect(bridge.ws_url, additional_headers={"X-Twilio-Signature": sign(bridge.ws_url, {})})
        assert refused.value.response.status_code == 429
        after = await bridge.metric("ivr_bridge_admission_rejections_total", leg="twilio", reason="rate")
        assert after - before == 4
        # Another source (only through a trusted proxy here, so not this one) has its own bucket.
        spoofed = await bridge.post("/twilio/status", form, headers={"X-Forwarded-For": "203.0.113.9"})
        assert spoofed.status_code == 429  # X-Forwarded-For is ignored without BRIDGE_TRUST_PROXY


def test_rate_source_is_the_peer_or_the_proxy_appended_hop() -> None:
    headers = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9"}
    assert client_source("10.0.0.2", headers, trust_proxy=False) == "10.0.0.2"
    # Behind a trusted proxy: the hop it appended, not the client-chosen first value.
    assert client_source("10.0.0.2", headers, trust_proxy=True) == "203.0.113.9"
    assert client_source("10.0.0.2", {}, trust_proxy=True) == "10.0.0.2"
    assert client_source(None, {}, trust_proxy=False) == "?"
