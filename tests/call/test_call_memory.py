"""A call's memory goes when the call ends (issue 13: the soak's RSS slope).

The real bridge app under uvicorn, a call placed the way Twilio places it, its agent step on the
stand-in realtime server, one model turn heard by the caller. Weak references are taken to the live
`Call` and to what it holds per call (the echo canceller's rings, the playout, the agent link and its
upstream session); after the caller hangs up and the garbage collector runs, every one of them must
be dead: the app keeps only a light `EndedCall` summary of recent calls (the ops console, `dialplan
test`), never the `Call` with its buffers.
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.app import create_app
from bridge.call.call import EndedCall
from bridge.settings import Settings
from bridge.web.console import live_row
from tests.helpers.e2e import live_call, place_call, wait_until
from tests.helpers.realtime_standin import AGENT_ONLY, StandinRealtime
from tests.helpers.servers import serve
from tests.helpers.signals import pcm, tone


@pytest.fixture
def bridge(standin: StandinRealtime, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "main.yaml").write_text(AGENT_ONLY)

    def make(port: int) -> Any:
        settings = Settings(
            port=port, dialplans=tmp_path / "plans", data_dir=tmp_path / "data", realtime_url=standin.url
        )
        return create_app(settings, preload_models=False)

    with serve(make) as served:
        yield served


async def per_call_objects(app: Any, call_sid: str) -> dict[str, weakref.ReferenceType[Any]]:
    """Weak references to the live call and what it holds per call (taken in its agent step)."""

    def in_agent_step() -> Any:
        call = live_call(app, call_sid)
        return call if call is not None and call.agent is not None and call._front is not None else None

    call = await wait_until(in_agent_step, 10, "the call in its agent step")
    held = {
        "Call": call,
        "echo canceller": call._front.echo,
        "playout": call._playout,
        "agent link": call.agent,
        "upstream": call.agent.upstream,
    }
    assert all(obj is not None for obj in held.values()), held
    return {name: weakref.ref(obj) for name, obj in held.items()}


async def all_dead(refs: dict[str, weakref.ReferenceType[Any]], timeout: float = 5.0) -> list[str]:
    """The names still alive after `timeout` (collecting garbage meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        alive = [name for name, ref in refs.items() if ref() is not None]
        if not alive or time.monotonic() > deadline:
            return alive
        await asyncio.sleep(0.1)


async def test_an_ended_call_keeps_no_per_call_memory(
    bridge: tuple[str, Any], standin: StandinRealtime
) -> None:
    url, app = bridge
    caller = await place_call(url)
    try:
        session = await standin.next_session(10)
        await asyncio.wait_for(session.updated.wait(), 10)
        await session.user_turn("what are your opening hours")
        t = time.monotonic()
        await session.reply_audio(pcm(tone(440, 0.6, 24000)), transcript="Nine to five.", realtime=2.0)
        await caller.wait_quiet(t, quiet_s=0.3)
        refs = await per_call_objects(app, caller.call_sid)  # no strong reference kept here
    finally:
        await caller.hang_up()
    await wait_until(lambda: not app.state.calls, 10, "the call ended")

    alive = await all_dead(refs)
    assert not alive, f"still alive after the call ended: {alive}"
    # What the console and `dialplan test` see of it: a summary with the call's outcome.
    recent = list(app.state.recent_calls)
    assert [type(r) for r in recent] == [EndedCall]
    assert recent[0].call_id == caller.call_sid
    assert recent[0].ended_reason
    assert recent[0].ended_wall_s is not None
    row = live_row(recent[0], time.time())
    assert (row["call_id"], row["leg"], row["step"]) == (caller.call_sid, "twilio", "main[0] agent")
