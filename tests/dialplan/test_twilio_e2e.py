"""Dialplans end to end over the Twilio path: the real bridge app on a real socket, the Twilio
emulator as the caller. A pressed digit and a spoken menu word reach the right step; a dialplan
edited during a live call leaves that call on its version while new calls get the new one."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.app import create_app
from bridge.media import g711
from bridge.settings import Settings
from tests.helpers import speech
from tests.helpers.servers import serve
from tests.helpers.twilio_emulator import TwilioEmulator

pytestmark = pytest.mark.slow

PLAN = """\
numbers: {default: main}
flows:
  main:
    - menu:
        prompt: "Version one. For billing, press 1 or say billing. For sales, press 2 or say sales."
        options:
          "1": {goto: billing, words: [billing]}
          "2": {goto: sales, words: [sales]}
        timeout: 20s
  billing:
    - menu: {prompt: "Billing.", options: {"*": main}, timeout: 30s}
  sales:
    - menu: {prompt: "Sales.", options: {"*": main}, timeout: 30s}
"""

# Version two swaps the digits.
PLAN_V2 = (
    PLAN.replace("Version one", "Version two")
    .replace('"1": {goto: billing', '"1": {goto: sales_tmp')
    .replace('"2": {goto: sales', '"2": {goto: billing')
    .replace("sales_tmp", "sales")
)

_seq = 0


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[tuple[str, Any, Path]]:
    plan = tmp_path / "main.yaml"
    plan.write_text(PLAN)

    def make(port: int) -> object:
        return create_app(Settings(port=port, dialplans=tmp_path), preload_models=False)

    with serve(make) as (url, app):
        yield url, app, plan


async def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.02)


def live_call(app: Any, call_sid: str) -> Any:
    for call in list(app.state.calls):
        if call.started is not None and call.started.call_id == call_sid and call.runner is not None:
            return call
    return None


async def dial(url: str, app: Any) -> tuple[TwilioEmulator, Any]:
    global _seq
    _seq += 1
    sid = f"CA{_seq:032d}"
    twilio = TwilioEmulator(
        url.replace("http://", "ws://") + "/twilio/media",
        call_sid=sid,
        stream_sid=f"MZ{_seq:032d}",
        custom_parameters={"caller": "+15551230000", "called": "+15557650000"},
    )
    await twilio.open()
    await twilio.start()
    call = await wait_until(lambda: live_call(app, sid), "call started")
    await wait_until(lambda: call.runner.position == ("main", 0), "in the main menu")
    return twilio, call


async def test_pressed_digit_reaches_its_step(bridge: tuple[str, Any, Path]) -> None:
    url, app, _ = bridge
    twilio, call = await dial(url, app)
    await twilio.dtmf("2")
    await wait_until(lambda: call.runner.position == ("sales", 0), "in sales")
    await twilio.dtmf("*")
    await wait_until(lambda: call.runner.position == ("main", 0), "back in the main menu")
    await twilio.dtmf("1")
    await wait_until(lambda: call.runner.position == ("billing", 0), "in billing")
    await twilio.stop()
    await twilio.close()


async def test_spoken_menu_word_reaches_its_step(bridge: tuple[str, Any, Path]) -> None:
    url, app, _ = bridge
    words = await asyncio.to_thread(speech.phone_speech, "sales")
    twilio, call = await dial(url, app)
    # The caller answers over the menu prompt once they hear it (this app starts its recognizer workers
    # with the first menu, as a test app without preloading does: words sent before could be lost).
    await twilio.wait_for(lambda: len(twilio.played) >= 10, timeout=15)
    audio = speech.silence(400) + words + speech.silence(1500)
    await twilio.stream_audio(g711.encode(audio, "pcmu"))
    await wait_until(lambda: call.runner.position == ("sales", 0), "in sales by voice", timeout=30)
    assert call.runner.variables["choice"] == "2"
    await twilio.stop()
    await twilio.close()


async def test_hot_reload_under_a_live_call(bridge: tuple[str, Any, Path]) -> None:
    url, app, plan = bridge
    store = app.state.dialplans
    assert store.version == 1
    old, old_call = await dial(url, app)
    before = plan.stat().st_mtime_ns
    plan.write_text(PLAN_V2)
    os.utime(plan, ns=(before + 10_000_000, before + 10_000_000))
    await wait_until(lambda: store.version == 2, "version two loaded", timeout=15)
    new, new_call = await dial(url, app)
    assert (old_call.plan.version, new_call.plan.version) == (1, 2)
    await old.dtmf("1")
    await new.dtmf("1")
    await wait_until(lambda: old_call.runner.position == ("billing", 0), "live call: v1 target")
    await wait_until(lambda: new_call.runner.position == ("sales", 0), "new call: v2 target")
    # a broken edit is rejected; the bridge keeps serving version two
    plan.write_text(PLAN_V2.replace("goto: billing", "goto: nowhere"))
    os.utime(plan, ns=(before + 20_000_000, before + 20_000_000))
    await wait_until(lambda: store.last_errors, "broken edit rejected", timeout=15)
    assert store.version == 2
    assert "unknown target 'nowhere'" in store.last_errors[0]
    third, third_call = await dial(url, app)
    assert third_call.plan.version == 2
    for twilio in (old, new, third):
        await twilio.stop()
        await twilio.close()
