"""The softphone in a real browser: headless Chromium (Debian's package, driven by selenium), its
microphone a WAV of generated speech, calling the repo's default dialplan through the real app.

The page is opened with a token link (303 to the clean URL, session cookie), calls, waits for the
menu, presses 1 on its keypad, and the WAV asks about opening hours. Then: the page's transcript shows
the FAQ answer, and the audio the page received (recorded in the page with MediaRecorder, handed
back, decoded) is recognised as that answer. Screenshots go to tests/artifacts/phone/.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.web.auth import COOKIE
from tests.helpers.browser import ARTIFACTS, chromium, decode_recording, softphone_bridge, write_mic_wav
from tests.helpers.e2e import overlap, recognise, trim_silence
from tests.helpers.speech import phone_speech, silence

pytestmark = pytest.mark.slow

TOKEN = "browser-test-admin-token"
HOURS_ANSWER = "We're open Monday to Friday, nine to five, and Saturday from ten to two."
QUESTION_AT_MS = 16000  # after the call connects, the menu, the key press and the assistant's greeting
SHOTS = ARTIFACTS / "phone"


def wait(driver: Any, predicate: Callable[[], object], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    state = driver.execute_script("return window.softphone && window.softphone.state") or {}
    levels = state.pop("levels", [])
    loud = [t for t, local, _remote in levels if local > 0.01]
    mic = f"microphone loud from {loud[0]} to {loud[-1]} ms" if loud else "microphone silent"
    raise AssertionError(f"no {what} within {timeout} s; {mic}; page state: {state}")


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[str]:
    yield from softphone_bridge(tmp_path, TOKEN, "41100-41199")


def test_browser_calls_the_default_dialplan_presses_1_and_hears_the_opening_hours(
    bridge: str, tmp_path: Path
) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    question = phone_speech("what are your opening hours")
    mic = write_mic_wav(tmp_path / "mic.wav", silence(QUESTION_AT_MS) + question + silence(20000))
    driver = chromium(mic)
    try:
        driver.get(f"{bridge}/phone?token={TOKEN}")
        assert driver.current_url == f"{bridge}/phone", "the token link redirects to the clean URL"
        cookie = driver.get_cookie(COOKIE)
        assert cookie is not None
        assert cookie["httpOnly"]
        assert cookie["sameSite"] == "Strict"
        wait(driver, lambda: driver.find_elements("css selector", "#number option"), 10, "the numbers")
        driver.save_screenshot(str(SHOTS / "1-ready.png"))

        driver.find_element("id", "call").click()

        def events() -> list[dict[str, Any]]:
            return driver.execute_script("return window.softphone.state.events") or []

        wait(driver, lambda: any(e.get("kind") == "menu" for e in events()), 20, "the menu step")
        time.sleep(1.5)  # into the menu prompt
        driver.find_element("css selector", '#keypad button[data-digit="1"]').click()
        wait(driver, lambda: any(e.get("flow") == "assistant" for e in events()), 10, "the assistant step")
        driver.save_screenshot(str(SHOTS / "2-in-call.png"))

        transcript = driver.find_element("id", "transcript")
        wait(driver, lambda: "Monday to Friday" in transcript.text, 40, "the FAQ answer in the transcript")
        time.sleep(6.0)  # the answer plays to its end
        driver.save_screenshot(str(SHOTS / "3-answer.png"))
        assert HOURS_ANSWER in transcript.text
        lines = driver.execute_script("return window.softphone.state.transcript")
        assert any(line["who"] == "caller" and "hours" in line["text"] for line in lines), lines
        keys = [e["digit"] for e in events() if e.get("type") == "key"]
        assert keys == ["1"]

        recording = driver.execute_async_script(
            "const done = arguments[arguments.length - 1]; window.softphone.recording().then(done);"
        )
        heard = decode_recording(recording["base64"])
        (SHOTS / "heard.pcm").write_bytes(heard)
        assert len(heard) > 2 * 8000 * 10, "at least 10 s of audio reached the page"
        answer_audio = trim_silence(heard[-2 * 8000 * 9 :])  # the last 9 s: the answer
        text = recognise(answer_audio, [HOURS_ANSWER.lower()])
        assert overlap(HOURS_ANSWER, text) >= 0.5, text

        driver.find_element("id", "hangup").click()
        wait(driver, lambda: driver.find_element("id", "status").text == "You hung up.", 5, "the hang-up")
        driver.save_screenshot(str(SHOTS / "4-hung-up.png"))
    finally:
        driver.quit()
