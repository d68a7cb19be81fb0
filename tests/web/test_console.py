"""The ops console over real HTTP: the real app under uvicorn on 127.0.0.1, records on SQLite, real
calls placed with the package's Twilio-protocol softphone, and a real headless Chromium for the
screenshots (written to $IVR_SCREENSHOTS when set; docs/images/ holds the committed ones)."""

from __future__ import annotations

import asyncio
import html
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from bridge.app import create_app
from bridge.records import Records, TurnStages
from bridge.settings import Settings
from bridge.tools.softphone import Softphone
from bridge.web.auth import COOKIE, issue_session
from tests.helpers.records_fixtures import records_settings
from tests.helpers.servers import serve

REPO = Path(__file__).resolve().parents[2]
TOKEN = "console-test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PAGES = [
    ("GET", "/console"),
    ("GET", "/console/calls"),
    ("GET", "/console/calls/CA1"),
    ("GET", "/console/calls/CA1/recording"),
    ("GET", "/console/dialplans"),
    ("GET", "/console/static/console.css"),
    ("POST", "/console/live/CA1/hangup"),
    ("POST", "/console/live/CA1/transfer"),
]


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"dialplans": REPO / "dialplans", "admin_token": TOKEN}
    values.update(overrides)
    return records_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'records.db'}", **values)


def make_app(settings: Settings) -> FastAPI:
    return create_app(settings, preload_models=False)


def speechlike(seconds: float, seed: int, level: float = 6000.0) -> bytes:
    """Syllable-like bursts of shaped noise (PCM16 8 kHz): something a waveform can show."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 8000)
    t = np.arange(n) / 8000
    envelope = np.clip(np.sin(2 * np.pi * 3.1 * t) * np.sin(2 * np.pi * 0.45 * t + seed), 0, None)
    x = rng.standard_normal(n) * envelope * level
    return np.clip(x, -32768, 32767).astype("<i2").tobytes()


async def populate(settings: Settings) -> None:
    """One finished call with a timeline, both sides' transcript (a barge-in), turns, a recording."""
    records = Records(settings)
    await records.start(retention=False)
    rec = records.start_call(
        leg="twilio",
        call_id="CA1",
        from_number="+15550000001",
        to_number="+15550100",
        flow="main",
        dialplan_version=1,
    )
    rec.answered(40)
    rec.event("prompt_played", 100, prompt="greeting")
    rec.event("dtmf", 3000, digits="1")
    rec.event("agent_started", 3200, provider="local")
    rec.transcript("bot", 200, "Thanks for calling Acme.")
    rec.transcript("caller", 4200, "I have a question about my invoice")
    rec.transcript("bot", 5600, "We're open Monday to Friday, nine to five, and Saturday", heard_ms=1400)
    rec.event("barge_in", 7000, heard_ms=1400, truncated_ms=1400)
    rec.transcript("caller", 7100, "operator please")
    rec.transcript("bot", 8400, "Connecting you to an operator.")
    rec.event("transfer", 9800, target="+15550100")
    for at, total in ((4800, 620), (7600, 540)):
        rec.turn(
            TurnStages(
                caller_stopped_ms=at, upstream_stopped_ms=at + 90, first_delta_ms=at + total - 80,
                first_played_ms=at + total,
            )
        )  # fmt: skip
    assert rec.recording is not None
    bot, caller = speechlike(10.0, 1), speechlike(10.0, 2, 4500)
    for i in range(500):
        t = i * 20
        quiet = b"\x00\x00" * 160
        frame_c = caller[i * 320 : (i + 1) * 320] if 4000 <= t < 5400 or 6900 <= t < 8000 else quiet
        frame_b = bot[i * 320 : (i + 1) * 320] if t < 2600 or 5600 <= t < 7000 or 8400 <= t < 9800 else quiet
        rec.recording.caller(frame_c, t)
        rec.recording.bot(frame_b, t)
    rec.end("transferred to +15550100", 10000)
    other = records.start_call(leg="sip", call_id="CA2", from_number="+15550000002", to_number="support")
    other.transcript("caller", 900, "opening hours please")
    other.end("hangup: dialplan", 4000)
    await records.stop()


# -- authentication ----------------------------------------------------------------------------------


def test_console_is_absent_without_an_admin_token(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, admin_token=None)
    with serve(lambda _port: make_app(settings)) as (url, _app):
        for method, path in [*PAGES, ("GET", "/console?token=" + TOKEN)]:
            r = httpx.request(method, url + path, headers=AUTH)
            assert r.status_code == 404, (method, path, r.status_code)


async def test_token_link_cookie_and_bearer(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    await populate(settings)
    with serve(lambda _port: make_app(settings)) as (url, _app):
        async with httpx.AsyncClient(base_url=url) as http:
            for method, path in PAGES:
                r = await http.request(method, path)
                assert r.status_code == 401, (method, path, r.status_code)
                r = await http.request(method, path, headers={"Authorization": f"Bearer {TOKEN}x"})
                assert r.status_code == 401, (method, path, r.status_code)
            r = await http.get("/console/calls?token=wrong&text=invoice")
            assert r.status_code == 401
            assert COOKIE not in r.headers.get("set-cookie", "")
            # The link: 303 to the same page without the token, the session cookie set.
            r = await http.get(f"/console/calls?token={TOKEN}&text=invoice")
            assert r.status_code == 303
            assert r.headers["location"] == "/console/calls?text=invoice"
            cookie = r.headers["set-cookie"]
            assert cookie.startswith(f"{COOKIE}=v1.")
            for attribute in ("HttpOnly", "SameSite=strict", "Max-Age=28800", "Path=/"):
                assert attribute.lower() in cookie.lower(), (attribute, cookie)
            assert TOKEN not in cookie
            value = r.cookies[COOKIE]
        async with httpx.AsyncClient(base_url=url, cookies={COOKIE: value}) as http:
            r = await http.get("/console/calls", params={"text": "invoice"})
            assert r.status_code == 200
            assert "CA1" in r.text
            assert "CA2" not in r.text
            assert "default-src 'none'" in r.headers["content-security-policy"]
            assert r.headers["x-frame-options"] == "DENY"
        tampered = value[:-2] + ("AA" if not value.endswith("AA") else "BB")
        expired = issue_session(TOKEN, time.time() - 10 * 3600)
        other_key = issue_session(TOKEN + "old", time.time())
        for bad in (tampered, expired, other_key, "v1.99999999999.x"):
            r = await asyncio.to_thread(httpx.get, url + "/console", cookies={COOKIE: bad})
            assert r.status_code == 401, bad
        r = await asyncio.to_thread(httpx.get, url + "/console", headers=AUTH)
        assert r.status_code == 200
        assert "Live calls" in r.text


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field on the page"
    return m.group(1)


async def login(http: httpx.AsyncClient) -> None:
    r = await http.get(f"/console?token={TOKEN}")
    assert r.status_code == 303
    http.cookies.set(COOKIE, r.cookies[COOKIE])


# -- live calls: hang-up and transfer reach the call; CSRF ---------------------------------------------


async def wait_live_row(http: httpx.AsyncClient, call_sid: str, text: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        page = (await http.get("/console")).text
        row = re.search(rf"<tr>\s*<td class=\"mono\">{call_sid}</td>.*?</tr>", page, re.DOTALL)
        if row and text in row.group(0):
            return page
        if time.monotonic() > deadline:
            raise TimeoutError(f"{call_sid} never showed {text!r} on /console")
        await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_live_calls_hang_up_and_transfer(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    with serve(lambda _port: make_app(settings)) as (url, _app):
        origin = {"Origin": url}
        async with httpx.AsyncClient(base_url=url) as http:
            await login(http)
            phone = Softphone(url, caller="+15550000007", called="+15550100")
            await phone.dial()
            try:
                page = await wait_live_row(http, phone.call_sid, "main[1] menu")
                assert "+15550000007" in page
                assert "twilio" in page
                csrf = csrf_of(page)
                hangup = f"/console/live/{phone.call_sid}/hangup"
                # CSRF: no Origin, a foreign Origin, no token, a wrong token: refused, the call goes on.
                for headers, form in (
                    ({}, {"csrf": csrf}),
                    ({"Origin": "http://evil.example"}, {"csrf": csrf}),
                    (origin, {}),
                    (origin, {"csrf": csrf[:-1] + "x"}),
                ):
                    r = await http.post(hangup, data=form, headers=headers)
                    assert r.status_code == 403, (headers, form, r.status_code)
                await asyncio.sleep(0.3)
                assert not phone.closed
                r = await http.post(hangup, data={"csrf": csrf}, headers={"Referer": url + "/console"})
                assert r.status_code == 303
                assert await phone.wait_closed(5.0), "the console's hang-up did not end the call"
                assert (await phone.outcome()).kind == "hangup"
            finally:
                await phone.close()

            phone = Softphone(url, caller="+15550000008", called="+15550100")
            await phone.dial()
            try:
                await wait_live_row(http, phone.call_sid, "main[1] menu")
                transfer = f"/console/live/{phone.call_sid}/transfer"
                r = await http.post(transfer, data={"csrf": csrf, "target": "+19005550000"}, headers=origin)
                assert r.status_code == 422  # not a target of the dialplan
                r = await http.post(transfer, data={"csrf": csrf, "target": "+15550100"}, headers=origin)
                assert r.status_code == 303
                assert await phone.wait_closed(8.0), "the console's transfer did not end the stream"
                outcome = await phone.outcome()
                assert (outcome.kind, outcome.target) == ("transfer", "+15550100")
            finally:
                await phone.close()
            page = (await http.get("/console")).text
            assert "transferred to +15550100 (operator console@127.0.0.1)" in page
            assert "hangup: operator (console@127.0.0.1)" in page
        r = await asyncio.to_thread(httpx.get, url + "/api/audit", headers=AUTH)
        actions = [(e["action"], e["target"]) for e in r.json()["entries"]]
        assert ("console.hangup", phone.call_sid) not in actions
        assert ("console.transfer", phone.call_sid) in actions
        assert sum(a == "console.hangup" for a, _ in actions) == 1
        # A bearer POST (no browser, no ambient credential) needs no Origin or form token.
        r = await asyncio.to_thread(httpx.post, url + "/console/live/CA404/hangup", headers=AUTH)
        assert r.status_code == 404


# -- history, a call's page, dialplans ------------------------------------------------------------------


async def test_history_and_call_page(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    await populate(settings)
    with serve(lambda _port: make_app(settings)) as (url, _app):
        async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
            r = await http.get("/console/calls")
            assert r.status_code == 200
            assert "CA1" in r.text
            assert "CA2" in r.text
            r = await http.get("/console/calls", params={"from": "+15550000002"})
            assert "CA2" in r.text
            assert ">CA1<" not in r.text
            r = await http.get("/console/calls", params={"since": "last tuesday"})
            assert r.status_code == 422
            assert "since" in r.text
            r = await http.get("/console/calls/CA1")
            assert r.status_code == 200
            page = r.text
            # Transcript of both sides, the barge-in mark on the cut bot line, events in order.
            assert "I have a question about my invoice" in page
            assert "✂ barge-in: the caller heard 1.4 s of it" in page
            events = re.findall(r'<span class="ev">([^<]+)</span>', page)
            assert events == ["prompt_played", "dtmf", "agent_started", "barge_in", "transfer"]
            # The waveform: two lanes of peaks, marks; the player; the latency chart.
            wave = re.search(r'<svg id="waveform".*?</svg>', page, re.DOTALL)
            assert wave is not None
            paths = re.findall(r'<path d="([^"]+)"', wave.group(0))
            assert len(paths) == 2
            assert all(p.count("M") == 900 for p in paths)
            assert wave.group(0).count('class="mark"') == 3  # dtmf, barge_in, transfer
            assert 'src="/console/calls/CA1/recording"' in page
            chart = re.search(r'<svg id="latency".*?</svg>', page, re.DOTALL)
            assert chart is not None
            assert chart.group(0).count("<rect") == 6
            assert "620 ms" in page
            r = await http.get("/console/calls/CA1/recording")
            assert r.status_code == 200
            assert r.headers["content-type"] == "audio/wav"
            assert r.content[:4] == b"RIFF"
            assert len(r.content) == 44 + 10 * 8000 * 2 * 2
            r = await http.get("/console/calls/CA404")
            assert r.status_code == 404
            r = await http.get("/api/audit")
            actions = [e["action"] for e in r.json()["entries"]]
            assert "calls.show" in actions
            assert "calls.list" in actions
            assert "calls.recording" in actions
            assert all(e["who"] == "console" for e in r.json()["entries"] if e["action"] == "calls.show")


async def test_dialplans_page_shows_problems_at_their_lines_and_the_flows(tmp_path: Path) -> None:
    plans = tmp_path / "plans"
    shutil.copytree(REPO / "dialplans", plans, ignore=shutil.ignore_patterns("examples", "tests"))
    settings = settings_for(tmp_path, dialplans=plans)
    with serve(lambda _port: make_app(settings)) as (url, app):
        (plans / "extra.yaml").write_text(
            "flows:\n  extra:\n    - say: hello\n    - goto: nowhere\n    - menu:\n        prompt: hi\n"
            "        options:\n          1: main\n"
        )
        async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
            r = await http.get("/console/dialplans")
            assert r.status_code == 200
            page = html.unescape(r.text)
        assert "default.yaml" in page
        assert "ok: 3 flows" in page
        line4 = re.search(r'id="extra.yaml-L4">.*?</span>\s*<span class="problem">([^<]+)', page, re.DOTALL)
        assert line4 is not None
        assert "unknown target 'nowhere'" in line4.group(1)
        line8 = re.search(r'id="extra.yaml-L8">.*?</span>\s*<span class="problem">([^<]+)', page, re.DOTALL)
        assert line8 is not None
        assert "quote it" in line8.group(1)
        # The diagram of the served plan: flows, menu branches, the transfer, the softphone button.
        for flow in ("main", "assistant", "operator"):
            assert f'id="flow-{flow}"' in page
            assert f'href="/phone?flow={flow}"' in page
        assert "0 / operator, person, human, representative" in page
        assert '<a href="#flow-operator">operator</a>' in page
        assert "☎ +15550100" in page
        assert app.state.dialplans.version == 1


# -- screenshots in a real browser -------------------------------------------------------------------------


@pytest.mark.slow
async def test_screenshots_in_headless_chromium(tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from tests.helpers.sysdeps import require_binary

    chromium = require_binary("chromium")
    driver_path = require_binary("chromedriver")
    settings = settings_for(tmp_path)
    await populate(settings)
    shots = Path(os.environ.get("IVR_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (set-up, before any server runs)
    with serve(lambda _port: make_app(settings)) as (url, _app):
        phone = Softphone(url, caller="+15550000009", called="+15550100")
        await phone.dial()
        try:
            async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
                await wait_live_row(http, phone.call_sid, "main[1] menu")
            options = webdriver.ChromeOptions()
            options.binary_location = chromium
            for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1360,900"):
                options.add_argument(arg)
            options.add_argument("--disable-dev-shm-usage")
            driver = await asyncio.to_thread(webdriver.Chrome, options=options, service=Service(driver_path))
            try:

                def shoot() -> list[str]:
                    driver.get(f"{url}/console?token={TOKEN}")  # the link: 303, cookie, clean URL
                    assert driver.current_url == f"{url}/console", driver.current_url
                    assert phone.call_sid in driver.page_source
                    driver.save_screenshot(str(shots / "console-live.png"))
                    driver.get(f"{url}/console/calls/CA1")
                    time.sleep(0.5)
                    driver.set_window_size(1360, 1500)
                    driver.save_screenshot(str(shots / "console-call.png"))
                    driver.get(f"{url}/console/dialplans")
                    driver.set_window_size(1360, 1400)
                    driver.save_screenshot(str(shots / "console-dialplans.png"))
                    logs = driver.get_log("browser")
                    return [str(e) for e in logs if e.get("level") == "SEVERE"]

                errors = await asyncio.to_thread(shoot)
            finally:
                await asyncio.to_thread(driver.quit)
        finally:
            await phone.close()
    assert errors == [], errors  # no CSP violations, no script errors
    for name in ("console-live.png", "console-call.png", "console-dialplans.png"):
        data = (shots / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert len(data) > 20_000, name
