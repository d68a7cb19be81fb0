"""Health, readiness and metrics routes (bridge/ops_routes.py) over real sockets, and the typed
leg `kind` that labels every call's metrics (bridge/app.py)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import httpx
import pytest
from fastapi import FastAPI

from bridge.app import create_app
from bridge.dialplan.store import DialplanStore
from bridge.limits import Slots
from bridge.ops_routes import OpsRoutes, RuntimeState
from bridge.settings import Settings
from bridge.telephony.leg import LegKind
from bridge.telephony.sip.leg import SipLeg
from bridge.telephony.twilio.leg import TwilioLeg
from bridge.telephony.webrtc.leg import WebRtcLeg
from tests.helpers.realtime_standin import AGENT_ONLY, StandinRealtime
from tests.helpers.servers import serve
from tests.helpers.twilio_emulator import TwilioEmulator

REPO = Path(__file__).resolve().parents[1]


def test_each_leg_class_declares_its_kind() -> None:
    assert TwilioLeg.kind == "twilio"
    assert SipLeg.kind == "sip"
    assert WebRtcLeg.kind == "webrtc"
    assert {TwilioLeg.kind, SipLeg.kind, WebRtcLeg.kind} == set(get_args(LegKind))


def sample_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (Prometheus text format)."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
        if match is None or match[1] != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match[2]))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(match[3])
    return total


async def get_metrics(url: str) -> str:
    async with httpx.AsyncClient() as http:
        return (await http.get(url + "/metrics")).text


async def test_a_twilio_call_is_counted_under_leg_twilio(standin: StandinRealtime, tmp_path: Path) -> None:
    (tmp_path / "main.yaml").write_text(AGENT_ONLY)

    def make(port: int) -> FastAPI:
        settings = Settings(port=port, realtime_url=standin.url, dialplans=tmp_path)
        return create_app(settings, preload_models=False)

    with serve(make) as (url, _app):
        before = await get_metrics(url)
        twilio = TwilioEmulator(url.replace("http://", "ws://") + "/twilio/media")
        await twilio.open()
        await twilio.start()
        session = await standin.next_session()
        await asyncio.wait_for(session.updated.wait(), 5)
        during = await get_metrics(url)
        async with httpx.AsyncClient() as http:
            health = (await http.get(url + "/healthz")).json()
        await twilio.stop()
        await twilio.wait_for(lambda: twilio.closed_at is not None, timeout=5)
        after = ""
        for _ in range(100):  # the call's metrics are written once its handler has returned
            after = await get_metrics(url)
            if sample_sum(after, "ivr_bridge_calls_total", leg="twilio") > sample_sum(
                before, "ivr_bridge_calls_total", leg="twilio"
            ):
                break
            await asyncio.sleep(0.02)
        await twilio.close()
    assert health["calls"] == 1
    assert health["call_slots"]["in_use"] == 1
    active = "ivr_bridge_active_calls"
    assert sample_sum(during, active, leg="twilio") == sample_sum(before, active, leg="twilio") + 1
    assert sample_sum(during, active, leg="sip") == sample_sum(before, active, leg="sip")
    assert sample_sum(after, active, leg="twilio") == sample_sum(before, active, leg="twilio")
    calls = "ivr_bridge_calls_total"
    assert sample_sum(after, calls, leg="twilio") == sample_sum(before, calls, leg="twilio") + 1
    assert sample_sum(after, calls, leg="sip") == sample_sum(before, calls, leg="sip")


@pytest.fixture
def ops_app() -> Iterator[tuple[str, RuntimeState, Slots]]:
    runtime = RuntimeState(models={"vad": "silero"})
    slots = Slots(3)
    calls: set[object] = {object(), object()}

    def make(port: int) -> FastAPI:
        settings = Settings(metrics_token="ops-metrics-token")
        app = FastAPI()
        store = DialplanStore(REPO / "dialplans")
        ops = OpsRoutes(settings, runtime, calls=calls, call_slots=slots, dialplans=store)
        app.include_router(ops.router())
        return app

    with serve(make) as (url, _app):
        yield url, runtime, slots


async def test_health_and_readiness_report_the_live_state(ops_app: tuple[str, RuntimeState, Slots]) -> None:
    url, runtime, slots = ops_app
    assert slots.try_acquire()
    async with httpx.AsyncClient() as http:
        health = (await http.get(url + "/healthz")).json()
        ready = await http.get(url + "/readyz")
        assert health["status"] == "ok"
        assert health["calls"] == 2
        assert health["call_slots"] == {"in_use": 1, "limit": 3}
        assert health["dialplan_version"] >= 1
        assert health["sip"] == {"enabled": False}
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "models": {"vad": "silero"}, "sip": {"enabled": False}}
        failure = "SIP_LOCAL_PORT 5070 is in use"
        runtime.sip_error = failure  # what the lifespan records when the SIP leg does not start
        ready = await http.get(url + "/readyz")
        assert ready.status_code == 503
        assert ready.json()["sip"] == {"enabled": True, "state": "failed", "error": failure}
        assert (await http.get(url + "/healthz")).json()["sip"]["state"] == "failed"


async def test_metrics_want_the_bearer_when_a_token_is_set(ops_app: tuple[str, RuntimeState, Slots]) -> None:
    url, _, _ = ops_app
    async with httpx.AsyncClient() as http:
        refused = await http.get(url + "/metrics")
        wrong = await http.get(url + "/metrics", headers={"Authorization": "Bearer ops-metrics-tokeN"})
        ok = await http.get(url + "/metrics", headers={"Authorization": "Bearer ops-metrics-token"})
    assert refused.status_code == wrong.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert ok.status_code == 200
    assert "ivr_bridge_active_calls" in ok.text
