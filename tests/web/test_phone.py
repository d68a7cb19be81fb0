"""The browser softphone without a browser: its routes' access rules, and real WebRTC calls from an
aiortc client (tests/helpers/webrtc_client.py) through the real app on 127.0.0.1.

The calls run the repo's default dialplan with the embedded engine: the bridge's greeting and menu
reach the client as audio (recognised back), the caller's spoken "questions" barges into the menu
prompt and reaches the assistant, whose FAQ answer comes back both as a transcript event on the data
channel and as audio. The browser itself is driven in tests/web/test_phone_browser.py.
"""

from __future__ import annotations

import asyncio
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge import metrics
from bridge.app import create_app
from bridge.settings import Settings
from bridge.web.auth import COOKIE as SESSION_COOKIE
from bridge.web.auth import check_session
from bridge.web.auth import issue_session as make_session
from tests.helpers.e2e import overlap, recognise, trim_silence
from tests.helpers.servers import serve
from tests.helpers.speech import phone_speech, silence
from tests.helpers.webrtc_client import SoftphoneClient

REPO = Path(__file__).resolve().parents[2]
TOKEN = "phone-test-admin-token"
HOURS_ANSWER = "We're open Monday to Friday, nine to five, and Saturday from ten to two."
SMALL_PLAN = textwrap.dedent(
    """
    numbers:
      default: main
    flows:
      main:
        - say: "Hello from the softphone test."
        - menu:
            prompt: "Press one to leave."
            options:
              "1": leave
            timeout: 20s
      leave:
        - hang_up: "You pressed one. Goodbye."
    """
)


def settings_for(dialplans: Path, data_dir: Path, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "dialplans": dialplans,
        "data_dir": data_dir,
        "admin_token": TOKEN,
        "webrtc_hosts": "127.0.0.1",
        "webrtc_ports": "41000-41099",
    }
    values.update(extra)
    return Settings(**values)


@pytest.fixture
def small_plan(tmp_path: Path) -> Path:
    plans = tmp_path / "dialplans"
    plans.mkdir()
    (plans / "main.yaml").write_text(SMALL_PLAN)
    return plans


@pytest.fixture
def small_bridge(small_plan: Path) -> Iterator[tuple[str, Any]]:
    with serve(
        lambda port: create_app(
            settings_for(small_plan, small_plan.parent / "data", max_calls=1), preload_models=False
        )
    ) as served:
        yield served


# --------------------------------------------------------------------------- access


def test_session_cookie_core() -> None:
    value = make_session(TOKEN, now_s=1000.0, ttl_s=60)
    assert check_session(value, TOKEN, now_s=1059.0)
    assert not check_session(value, TOKEN, now_s=1060.0), "expired"
    assert not check_session(value, "another-token", now_s=1001.0), "the key follows the admin token"
    body, mac = value.rsplit(".", 1)
    forged = body.replace(body.split(".")[1], "99999999") + "." + mac
    assert not check_session(forged, TOKEN, now_s=1001.0), "a changed expiry breaks the MAC"
    assert not check_session("v1.x.y", TOKEN, now_s=0.0)
    assert not check_session("", TOKEN, now_s=0.0)


async def test_routes_are_absent_without_an_admin_token(small_plan: Path) -> None:
    settings = settings_for(small_plan, small_plan.parent / "data", admin_token=None)
    with serve(lambda port: create_app(settings, preload_models=False)) as (url, _app):
        async with httpx.AsyncClient() as http:
            for method, path in (("GET", "/phone"), ("GET", "/phone/phone.js"), ("POST", "/phone/offer")):
                r = await http.request(method, url + path + "?token=anything")
                assert r.status_code == 404, (method, path)


async def test_token_link_sets_a_session_cookie_and_redirects(small_bridge: tuple[str, Any]) -> None:
    url, _app = small_bridge
    async with httpx.AsyncClient() as http:
        r = await http.get(url + "/phone")
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = await http.get(url + "/phone?token=wrong-" + TOKEN)
        assert r.status_code == 401
        assert SESSION_COOKIE not in r.headers.get("set-cookie", "")
        assert TOKEN not in r.text

        r = await http.get(url + "/phone?token=" + TOKEN + "&number=default")
        assert r.status_code == 303
        assert r.headers["location"] == "/phone?number=default", "the token leaves the URL"
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(SESSION_COOKIE + "=")
        for attribute in ("HttpOnly", "SameSite=strict", "Max-Age=28800", "Path=/"):
            assert attribute.lower() in cookie.lower(), (attribute, cookie)
        assert "secure" not in cookie.lower(), "plain http on 127.0.0.1: a Secure cookie would be dropped"
        assert TOKEN not in cookie

        session = {SESSION_COOKIE: http.cookies[SESSION_COOKIE]}
    async with httpx.AsyncClient(cookies=session) as http:
        page = await http.get(url + "/phone")
        assert page.status_code == 200
        assert "ivr-bridge softphone" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        script = await http.get(url + "/phone/phone.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert "getUserMedia" in script.text
        assert "echoCancellation: true" in script.text
        config = (await http.get(url + "/phone/config")).json()
        assert config["numbers"] == ["default"]
        assert config["flows"] == ["leave", "main"]
    async with httpx.AsyncClient(cookies={SESSION_COOKIE: session[SESSION_COOKIE] + "x"}) as http:
        assert (await http.get(url + "/phone")).status_code == 401, "a tampered cookie"


async def test_offer_checks_the_origin_of_cookie_requests(small_bridge: tuple[str, Any]) -> None:
    url, _app = small_bridge
    cookie = {SESSION_COOKIE: make_session(TOKEN, now_s=__import__("time").time())}
    bad_body = {"type": "offer"}  # no sdp: past the checks, the request gets a 400
    async with httpx.AsyncClient(cookies=cookie) as http:
        r = await http.post(url + "/phone/offer", json=bad_body)
        assert r.status_code == 403, "a cookie request without Origin"
        r = await http.post(url + "/phone/offer", json=bad_body, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
        r = await http.post(url + "/phone/offer", json=bad_body, headers={"Origin": url})
        assert r.status_code == 400
    async with httpx.AsyncClient() as http:
        r = await http.post(url + "/phone/offer", json=bad_body)
        assert r.status_code == 401
        r = await http.post(url + "/phone/offer", json=bad_body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 400, "a bearer request (a script) needs no Origin"
        r = await http.post(
            url + "/phone/offer",
            json={"type": "offer", "sdp": "v=0\r\n"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert r.status_code == 400, r.text
    assert _app.state.call_slots.in_use == 0, "a refused offer holds no call slot"


# --------------------------------------------------------------------------- calls


async def wait_slots_free(app: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if app.state.call_slots.in_use == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"call slots still in use: {app.state.call_slots.in_use}")


async def test_a_call_hears_the_prompts_presses_a_key_and_is_hung_up(small_bridge: tuple[str, Any]) -> None:
    url, app = small_bridge
    calls_before = metrics.METRICS.calls.value(leg="webrtc", outcome="hangup")
    client = SoftphoneClient(url, TOKEN)
    try:
        r = await client.call()
        assert r.status_code == 200, r.text
        candidates = re.findall(r"a=candidate:\S+ 1 udp \d+ (\S+) (\d+) typ host", r.json()["sdp"])
        assert candidates, "the answer carries its candidates (no trickle)"
        for host, port in candidates:
            assert host == "127.0.0.1"
            assert 41000 <= int(port) <= 41099

        second = SoftphoneClient(url, TOKEN)
        refused = await second.call()
        assert refused.status_code == 503, "max_calls=1: the softphone call holds the only slot"
        await second.close()

        await client.wait_for(lambda e: e.get("type") == "step" and e["kind"] == "menu", what="the menu step")
        prompt = await client.wait_for(lambda e: e.get("type") == "transcript", what="a transcript line")
        assert prompt["who"] == "bot"
        assert prompt["text"] == "Hello from the softphone test."
        await asyncio.sleep(2.5)  # the greeting and the menu prompt play
        client.press("1")
        await client.wait_for(lambda e: e.get("type") == "key" and e["digit"] == "1", what="the key")
        await client.wait_for(lambda e: e.get("type") == "hangup", timeout=15, what="the bridge's hang-up")
        ended = await client.wait_for(lambda e: e.get("type") == "ended", what="the end")
        assert ended["reason"].startswith("hangup")
        texts = [e["text"] for e in client.events if e.get("type") == "transcript"]
        assert texts == ["Hello from the softphone test.", "Press one to leave.", "You pressed one. Goodbye."]
        heard = recognise(trim_silence(bytes(client.heard)), ["hello from the softphone test"])
        assert overlap("hello from the softphone test", heard) >= 0.6, heard
    finally:
        await client.close()
    await wait_slots_free(app)
    assert metrics.METRICS.calls.value(leg="webrtc", outcome="hangup") == calls_before + 1


async def test_the_caller_hanging_up_ends_the_call_and_frees_its_slot(small_bridge: tuple[str, Any]) -> None:
    url, app = small_bridge
    client = SoftphoneClient(url, TOKEN)
    r = await client.call()
    assert r.status_code == 200
    await client.wait_for(lambda e: e.get("type") == "step", what="the first step")
    assert app.state.call_slots.in_use == 1
    await client.hang_up()
    await wait_slots_free(app)


@pytest.mark.slow
async def test_default_dialplan_speech_barge_in_and_the_faq_answer(tmp_path: Path) -> None:
    """The repo's default dialplan, engine and all: say "questions" over the menu prompt (a barge-in
    into the assistant), ask about opening hours, hear the FAQ answer."""
    plans, data = REPO / "dialplans", tmp_path / "data"
    with serve(lambda port: create_app(settings_for(plans, data, port=port))) as (url, _app):
        client = SoftphoneClient(url, TOKEN)
        try:
            assert (await client.call()).status_code == 200
            await client.wait_for(lambda e: e.get("type") == "step" and e["kind"] == "menu", what="the menu")
            await asyncio.sleep(2.0)  # into the menu prompt
            client.mic.say(phone_speech("questions") + silence(600))
            barge = await client.wait_for(lambda e: e.get("type") == "barge_in", what="a barge-in")
            assert barge["source"] in ("local_vad", "server_vad")
            await client.wait_for(
                lambda e: e.get("type") == "step" and e["flow"] == "assistant", what="the assistant"
            )
            greeting = await client.wait_for(
                lambda e: e.get("type") == "transcript" and e["source"] == "agent",
                what="the agent's greeting",
            )
            assert "Acme assistant" in greeting["text"]
            await asyncio.sleep(6.0)  # the greeting plays
            mark = len(client.heard)
            client.mic.say(phone_speech("what are your opening hours") + silence(800))
            answer = await client.wait_for(
                lambda e: e.get("type") == "transcript" and e["who"] == "bot" and "Monday" in e["text"],
                timeout=30,
                what="the FAQ answer",
            )
            assert answer["text"] == HOURS_ANSWER
            caller_lines = [
                e["text"] for e in client.events if e.get("type") == "transcript" and e["who"] == "caller"
            ]
            assert any("hours" in line for line in caller_lines), caller_lines
            await asyncio.sleep(6.0)  # the answer plays
            heard = recognise(trim_silence(bytes(client.heard[mark:])), [HOURS_ANSWER.lower()])
            assert overlap(HOURS_ANSWER, heard) >= 0.5, heard
        finally:
            await client.hang_up()
