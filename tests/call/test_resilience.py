"""Calls that survive their model: drops, failover, rollover, a blocked server (end to end).

The real bridge app under uvicorn, Twilio's side played by the emulator (a caller line sending 20 ms
frames on deadlines), the model by the stand-in realtime server, which tests take down (TCP reset),
bring back, stall, and question about what was replayed into each new session.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from bridge.app import create_app
from bridge.call.prompts import prompt_voice
from bridge.settings import Settings
from tests.helpers.e2e import EngineTap, live_call, place_call, wait_until
from tests.helpers.realtime_schema import validate_client_event
from tests.helpers.realtime_standin import AGENT_ONLY, StandinRealtime, StandinSession
from tests.helpers.servers import serve
from tests.helpers.signals import pcm, tone

pytestmark = pytest.mark.slow

QUESTION = "what are your opening hours"
ANSWER = "We are open from nine to five on weekdays."


@pytest.fixture(scope="module", autouse=True)
def _hold_line_ready() -> None:
    # The app prepares these at start-up when it preloads models; these tests start it without.
    voice = prompt_voice()
    voice.render(Settings().hold_line, True)
    voice.render(Settings().drain_line, True)


def make_bridge(tmp_path: Path, plan: str, **settings: Any) -> Any:
    (tmp_path / "main.yaml").write_text(plan)

    def make(port: int) -> object:
        return create_app(
            Settings(port=port, dialplans=tmp_path, data_dir=tmp_path / "data", **settings),
            preload_models=False,
        )

    return serve(make)


@pytest.fixture
def bridge(standin: StandinRealtime, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    with make_bridge(tmp_path, AGENT_ONLY, realtime_url=standin.url) as served:
        yield served


async def configured(standin: StandinRealtime, timeout: float = 5.0) -> StandinSession:
    session = await standin.next_session(timeout)
    await asyncio.wait_for(session.updated.wait(), 5)
    return session


async def first_exchange(session: StandinSession, caller: Any) -> None:
    """The caller asks, the model answers (with a transcript), the caller hears all of it."""
    await session.user_turn(QUESTION)
    t = time.monotonic()
    await session.reply_audio(pcm(tone(440, 0.6, 24000)), transcript=ANSWER, realtime=2.0)
    await caller.wait_quiet(t, quiet_s=0.3)


def assert_valid(session: StandinSession) -> None:
    for _, event in session.received:
        validate_client_event(event)


def events_of(app: Any, call_sid: str) -> list[str]:
    call = live_call(app, call_sid)
    return [kind for _, kind, _ in call.stats.events] if call is not None else []


@pytest.mark.parametrize("outage_s", [0.3, 3.0])
async def test_drop_mid_call_reconnects_and_the_next_turn_has_the_context(
    bridge: tuple[str, Any], standin: StandinRealtime, outage_s: float
) -> None:
    url, app = bridge
    caller = await place_call(url)
    s1 = await configured(standin)
    await first_exchange(s1, caller)

    down_at = await standin.go_down(outage_s)  # TCP reset of the live session, port closed
    s2 = await configured(standin, timeout=outage_s + 10)
    resumed_at = time.monotonic()
    # Same configuration, then the conversation so far.
    assert s2.session["instructions"] == s1.session["instructions"]
    assert s2.session["audio"] == s1.session["audio"]
    await wait_until(lambda: len(s2.replayed()) >= 2, 3, "replayed items")
    assert s2.replayed_texts()[:2] == [("user", QUESTION), ("assistant", ANSWER)]
    assert not s2.client_events("response.create")  # nothing was interrupted: the caller speaks next
    # The caller's audio flows into the new session, and the next turn is answered.
    await wait_until(lambda: len(s2.appended) > 48 * 400, 5, "caller audio upstream")
    await s2.user_turn("and on sundays")
    t2 = time.monotonic()
    await s2.reply_audio(pcm(tone(660, 0.5, 24000)), transcript="Closed on sundays.", realtime=2.0)
    heard_at = await caller.wait_speech(t2, timeout=5)
    assert heard_at - t2 < 1.0
    kinds = events_of(app, caller.call_sid)
    assert "upstream_lost" in kinds
    assert "upstream_resumed" in kinds
    if outage_s >= 3.0:  # a long gap: the caller heard the hold line, not silence
        hold = caller.speech_frames(down_at + 0.5, resumed_at + 0.5)
        assert len(hold) * 20 >= 400, "no hold line during a 3 s outage"
    assert_valid(s2)
    print(f"outage {outage_s} s: session back after {(resumed_at - down_at) * 1000:.0f} ms")
    await caller.hang_up()


async def test_drop_mid_reply_asks_for_the_answer_again(
    bridge: tuple[str, Any], standin: StandinRealtime
) -> None:
    url, _app = bridge
    caller = await place_call(url)
    s1 = await configured(standin)
    await s1.user_turn(QUESTION)
    reply = asyncio.create_task(s1.reply_audio(pcm(tone(440, 3.0, 24000)), realtime=1.0))
    await caller.wait_speech(time.monotonic() - 1, timeout=5)
    await asyncio.sleep(0.5)
    await standin.go_down(0.3)
    reply.cancel()
    s2 = await configured(standin, timeout=10)
    await wait_until(lambda: s2.client_events("response.create"), 3, "a new response asked for")
    assert s2.replayed_texts()[0] == ("user", QUESTION)
    await caller.hang_up()


FALLBACK_PLAN = """
numbers: {{default: main}}
flows:
  main:
    - agent:
        provider: url
        url: {url}
        fallback_provider: local
        instructions: "You answer questions about the shop."
        faq:
          - questions: ["what are your opening hours", "when are you open"]
            answer: "We are open from nine to five."
"""


async def test_provider_down_for_good_fails_over_to_the_fallback(
    standin: StandinRealtime, tmp_path: Path
) -> None:
    plan = FALLBACK_PLAN.format(url=standin.url)
    with make_bridge(tmp_path, plan, reconnect_max_s=1.0) as (url, app):
        caller = await place_call(url)
        s1 = await configured(standin)
        await s1.user_turn(QUESTION)
        # The model starts answering, then the provider vanishes for good mid-reply.
        reply = asyncio.create_task(s1.reply_audio(pcm(tone(440, 2.0, 24000)), realtime=1.0))
        await caller.wait_speech(time.monotonic() - 1, timeout=5)
        await standin.go_down(None)
        reply.cancel()
        # The embedded engine (fallback: local) takes the conversation over and answers the question
        # from the step's FAQ (the same dialplan step, replayed transcript, new response).
        tap = EngineTap(app)
        await wait_until(lambda: tap.poll() >= 1, 10, "an engine session (failover)")
        assert "failover" in events_of(app, caller.call_sid)

        def answered() -> bool:
            return any("nine to five" in json.dumps(e) for e in tap.of_type("response.done"))

        await wait_until(answered, 30, "the FAQ answer from the fallback")
        answer_at = time.monotonic()
        first, last = await caller.wait_quiet(answer_at - 0.5, quiet_s=0.6, timeout=30)
        assert last - first > 0.8  # the spoken answer reached the caller
        assert caller.twilio.closed_at is None  # the call goes on
        await caller.hang_up()


async def test_rollover_before_the_cap_keeps_the_caller_audio_and_the_context(
    standin: StandinRealtime, tmp_path: Path
) -> None:
    with make_bridge(tmp_path, AGENT_ONLY, realtime_url=standin.url, max_session_s=5.0) as (url, app):
        caller = await place_call(url)
        s1 = await configured(standin)
        await first_exchange(s1, caller)
        s2 = await configured(standin, timeout=8)  # opened in the background before the cap
        await wait_until(lambda: s2.appended, 3, "the switch")
        assert s2.opened_at - s1.opened_at < 5.0
        await wait_until(lambda: s1.closed_at is not None, 2, "the old session closed")
        # The second session has the context.
        assert s2.replayed_texts()[:2] == [("user", QUESTION), ("assistant", ANSWER)]
        assert not s2.client_events("response.create")  # no greeting again, no unasked answer
        # No gap in the caller's audio upstream: the new session got audio from the moment the old
        # one stopped getting it (and a short pre-roll of what came just before).
        last_old = max(t for t, _ in s1.append_times)
        first_new = s2.append_times[0][0]
        gap_ms = (first_new - last_old) * 1000.0
        assert gap_ms <= 40.0, f"caller audio gap of {gap_ms:.0f} ms at the rollover"
        await asyncio.sleep(0.5)
        sent_ms = caller.twilio._chunk * 20
        received_ms = (len(s1.appended) + len(s2.appended)) / 48
        assert received_ms >= sent_ms - 200, (received_ms, sent_ms)  # nothing lost (200 ms in flight)
        # The new session answers the next turn.
        await s2.user_turn("and on sundays")
        t2 = time.monotonic()
        await s2.reply_audio(pcm(tone(660, 0.5, 24000)), realtime=2.0)
        await caller.wait_speech(t2, timeout=5)
        assert "rollover" in events_of(app, caller.call_sid)
        assert_valid(s2)
        print(f"rollover: caller audio gap {gap_ms:.1f} ms")
        await caller.hang_up()


def _bridge_holds_connection_to(port: int) -> bool:
    for conn in psutil.Process().net_connections(kind="tcp"):
        if conn.raddr and conn.raddr.port == port and conn.laddr.port != port:
            return True
    return False


async def test_blocked_upstream_never_stalls_the_leg_and_stop_closes_it_fast(
    bridge: tuple[str, Any], standin: StandinRealtime
) -> None:
    url, app = bridge
    caller = await place_call(url)
    s1 = await configured(standin)
    await first_exchange(s1, caller)
    s1.stall()  # the server stops reading: the bridge's sends back up
    await asyncio.sleep(1.5)
    # The leg is still served at once: a DTMF digit goes through the control loop, marks come back.
    call = live_call(app, caller.call_sid)
    assert call is not None
    marks_before = len(caller.twilio.marks_echoed)
    await caller.press("5")
    await asyncio.sleep(0.3)
    assert "5" in [a for a in call.stats.actions] or len(caller.twilio.marks_echoed) >= marks_before
    assert _bridge_holds_connection_to(standin.port)
    await caller.twilio.stop()
    stop_at = time.monotonic()
    while _bridge_holds_connection_to(standin.port):
        assert time.monotonic() - stop_at < 1.0, "the upstream was not closed"
        await asyncio.sleep(0.002)
    closed_ms = (time.monotonic() - stop_at) * 1000.0
    print(f"blocked upstream closed {closed_ms:.0f} ms after stop")
    assert closed_ms <= 100.0
    s1.unstall()
    await caller.close()


async def test_stalled_upstream_is_declared_lost_and_replaced(
    bridge: tuple[str, Any], standin: StandinRealtime
) -> None:
    url, _app = bridge
    caller = await place_call(url)
    s1 = await configured(standin)
    await first_exchange(s1, caller)
    s1.stall()  # 5 s without reading (no pongs either)
    stalled_at = time.monotonic()
    s2 = await configured(standin, timeout=8)
    detected_s = time.monotonic() - stalled_at
    assert detected_s < 6.0
    await wait_until(lambda: len(s2.replayed()) >= 2, 3, "replayed items")
    assert s2.replayed_texts()[:2] == [("user", QUESTION), ("assistant", ANSWER)]
    await s2.user_turn("and on sundays")
    t2 = time.monotonic()
    await s2.reply_audio(pcm(tone(660, 0.5, 24000)), realtime=2.0)
    await caller.wait_speech(t2, timeout=5)
    remaining = 5.0 - (time.monotonic() - stalled_at)
    if remaining > 0:
        await asyncio.sleep(remaining)
    s1.unstall()
    print(f"stalled upstream replaced after {detected_s:.1f} s")
    await caller.hang_up()
