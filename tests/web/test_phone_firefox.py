"""The softphone in Firefox: Debian's firefox-esr, headless, driven over Marionette (no geckodriver),
calling the repo's default dialplan through the real app, like tests/web/test_phone_browser.py does
with Chromium.

The page is opened with a token link (303 to the clean URL, HttpOnly session cookie) and calls. Then:
the greeting shows in the live transcript (the data channel); the bot's audio arrives and the
microphone's goes out (the page's RTP counters, window.softphone.audioStats, grow); pressing 1 on the
keypad moves the call to the assistant step (its greeting in the transcript too); what the page heard
(its MediaRecorder) is recognised as the greeting and then the assistant's greeting; the page hangs
up, and the ops console's history lists the call. Firefox's fake microphone is a tone above the phone
band (tests/helpers/firefox.py), so the caller is silent. Screenshots: tests/artifacts/phone/firefox-*.png.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.web.auth import COOKIE
from tests.helpers.browser import ARTIFACTS, decode_recording, softphone_bridge
from tests.helpers.e2e import overlap, recognise, trim_silence
from tests.helpers.firefox import firefox, run, run_async, save_screenshot

pytestmark = pytest.mark.slow

TOKEN = "firefox-test-admin-token"
GREETING = "Thanks for calling Acme."
ASSISTANT_GREETING = "I'm the Acme assistant."
ASSISTANT_LINE = "I'm the Acme assistant. Ask me about our opening hours or our address, or say operator."
MENU_START = "For opening hours and other questions, press 1 or say questions."
ASSISTANT_PLAYS_S = 14.0  # from its transcript line to the end of its audio, with a slow first synthesis
SHOTS = ARTIFACTS / "phone"
# The bridge sends 20 ms packets: 5 s of the greeting and the menu is ~250 of them.
MIN_PACKETS = 150


def wait(client: Any, predicate: Callable[[], object], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    state = run(client, "return window.softphone && window.softphone.state") or {}
    state.pop("levels", None)
    status = run(
        client, "return document.getElementById('status') && document.getElementById('status').textContent"
    )
    raise AssertionError(f"no {what} within {timeout} s; status {status!r}; page state: {state}")


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[str]:
    yield from softphone_bridge(tmp_path, TOKEN, "41200-41299")


def test_firefox_calls_the_default_dialplan_hears_the_greeting_presses_1_and_the_console_lists_it(
    bridge: str,
) -> None:
    with firefox() as ff:
        ff.navigate(f"{bridge}/phone?token={TOKEN}")
        assert ff.get_url() == f"{bridge}/phone", "the token link redirects to the clean URL"
        cookie = next((c for c in ff.get_cookies() if c["name"] == COOKIE), None)
        assert cookie is not None
        assert cookie["httpOnly"]
        assert cookie["sameSite"] == "Strict"
        wait(ff, lambda: ff.find_elements("css selector", "#number option"), 10, "the numbers")
        save_screenshot(ff, SHOTS / "firefox-1-ready.png")

        ff.find_element("id", "call").click()

        def events() -> list[dict[str, Any]]:
            return run(ff, "return window.softphone.state.events") or []

        def transcript() -> str:
            return str(ff.find_element("id", "transcript").text)

        def stats() -> dict[str, Any]:
            return run_async(ff, "const done = arguments[0]; window.softphone.audioStats().then(done);") or {}

        wait(ff, lambda: run(ff, "return window.softphone.state.status") == "connected", 20, "the connection")
        wait(ff, lambda: GREETING in transcript(), 20, "the greeting in the transcript")
        wait(ff, lambda: any(e.get("kind") == "menu" for e in events()), 20, "the menu step")
        call_id = run(ff, "return window.softphone.state.callId")
        assert call_id, "the bridge answered with a call id"
        time.sleep(3.0)  # into the menu prompt
        received = stats()
        assert received.get("packetsReceived", 0) >= MIN_PACKETS, received
        assert received.get("bytesReceived", 0) > 0, received
        assert received.get("packetsSent", 0) >= MIN_PACKETS, f"the microphone's packets go out: {received}"
        save_screenshot(ff, SHOTS / "firefox-2-menu.png")

        ff.find_element("css selector", '#keypad button[data-digit="1"]').click()
        wait(ff, lambda: any(e.get("flow") == "assistant" for e in events()), 10, "the assistant step")
        wait(ff, lambda: ASSISTANT_GREETING in transcript(), 20, "the assistant's greeting in the transcript")
        keys = [e["digit"] for e in events() if e.get("type") == "key"]
        assert keys == ["1"]
        later = stats()
        assert later["packetsReceived"] > received["packetsReceived"], (received, later)
        assert later["packetsSent"] > received["packetsSent"], (received, later)
        bot_lines = [line["text"] for line in run(ff, "return window.softphone.state.transcript")]
        assert not [
            line for line in run(ff, "return window.softphone.state.transcript") if line["who"] == "caller"
        ], "the fake microphone's tone is above the phone band: the caller said nothing"
        save_screenshot(ff, SHOTS / "firefox-3-assistant.png")

        # What the page heard (its MediaRecorder, handed back and decoded): the greeting first, and
        # after the key press the assistant's greeting (the engine may take seconds to voice it).
        time.sleep(ASSISTANT_PLAYS_S)
        recording = run_async(ff, "const done = arguments[0]; window.softphone.recording().then(done);")
        heard = decode_recording(recording["base64"])
        (SHOTS / "firefox-heard.pcm").write_bytes(heard)
        assert len(heard) > 2 * 8000 * 10, f"only {len(heard) / 16000:.1f} s of audio reached the page"
        start = trim_silence(heard[: 2 * 8000 * 3])[: int(2 * 8000 * 1.6)]  # the greeting's 1.3 s
        text = recognise(start, [GREETING.lower(), MENU_START.lower()])
        assert overlap(GREETING, text) >= 0.5, f"heard {text!r} at the start"
        tail = trim_silence(heard[2 * 8000 * 6 :])  # after the key press at ~4.5 s
        text = recognise(tail, [ASSISTANT_LINE.lower()])
        assert overlap(ASSISTANT_LINE, text) >= 0.6, f"heard {text!r} after the key press"

        ff.find_element("id", "hangup").click()
        wait(ff, lambda: ff.find_element("id", "status").text == "You hung up.", 5, "the hang-up")
        save_screenshot(ff, SHOTS / "firefox-4-hung-up.png")

        def history_lists_the_call() -> bool:
            ff.navigate(f"{bridge}/console/calls")
            return call_id in str(ff.find_element("css selector", "body").text)

        wait(ff, history_lists_the_call, 15, f"call {call_id} in the console's history")
        save_screenshot(ff, SHOTS / "firefox-5-console.png")
        assert bot_lines[0] == GREETING, bot_lines
