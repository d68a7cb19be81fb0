"""Scale-out end to end (issue 14): two bridge processes, one Redis, calls placed as Twilio places them.

Each test can fail: without the shared state, B knows nothing of A's calls (a status callback or
a hang-up on B reaches nothing, a replayed token is accepted once A's call is over, B admits
beyond the cluster's limit), and the Redis-restart test checks the state comes back.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest

from bridge.media import g711
from tests.cluster.conftest import ADMIN_TOKEN, Bridge, Pair, plan_yaml
from tests.helpers.e2e import Caller, place_call, post_form
from tests.helpers.twilio_emulator import TwilioEmulator

pytestmark = pytest.mark.slow


def tone_hz(caller: Caller, after: float, before: float = float("inf")) -> float:
    """The dominant frequency of what the caller heard between the two times."""
    frames = [p.payload for p in list(caller.twilio.played) if after <= p.at < before]
    pcm = np.frombuffer(g711.decode(b"".join(frames), "pcmu"), dtype="<i2").astype(np.float64)
    assert pcm.size >= 1600, "less than 200 ms heard"
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(pcm.size)))
    return float(np.argmax(spectrum) * 8000 / pcm.size)


async def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():  # type: ignore[operator]
            return
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.05)


async def held_by(bridge: Bridge, n: int, timeout: float = 10.0) -> None:
    await wait_for(lambda: bridge.cluster()["calls_held"] == n, timeout, f"{bridge.name} holds {n} call(s)")


async def call_on(bridge: Bridge) -> Caller:
    caller = await place_call(bridge.url)
    await caller.wait_speech(caller.started_at, timeout=10)  # the tone plays: the call is up
    await asyncio.sleep(0.4)
    return caller


async def replay(caller: Caller, on: Bridge) -> TwilioEmulator:
    """A second media stream for `caller`'s call, with its token, opened on another instance."""
    url = caller.twilio.url.replace(caller.base_url.replace("http", "ws", 1), on.url.replace("http", "ws", 1))
    assert url != caller.twilio.url
    again = TwilioEmulator(
        url, call_sid=caller.call_sid, custom_parameters=dict(caller.twilio.custom_parameters)
    )
    again.stream_sid = "MZ" + "7" * 32
    await again.open()
    await again.start()
    await again.wait_for(lambda: again.closed_at is not None, timeout=5)
    return again


async def test_status_callback_posted_to_b_closes_the_stream_on_a(pair: Pair) -> None:
    caller = await call_on(pair.a)
    await held_by(pair.a, 1)
    sent = time.monotonic()
    r = await post_form(pair.b.url, "/twilio/status", {"CallSid": caller.call_sid, "CallStatus": "completed"})
    assert r.status_code == 204
    closed = await caller.wait_closed(timeout=5)
    print(f"status callback on B -> stream on A closed in {1000 * (closed - sent):.0f} ms")
    await caller.close()
    await held_by(pair.a, 0)


async def test_stream_token_used_on_a_and_replayed_on_b_is_refused(pair: Pair) -> None:
    before = pair.b.metric(
        "ivr_bridge_webhook_rejections_total", route="/twilio/media", reason="token_replayed"
    )
    caller = await call_on(pair.a)
    live_replay = await replay(caller, pair.b)  # while the call is up on A
    assert not [p for p in live_replay.played if p.payload.strip(b"\xff")], "B played to a replayed stream"
    await caller.hang_up()
    await held_by(pair.a, 0)  # A's call is over: only the spent token can refuse now
    await replay(caller, pair.b)
    after = pair.b.metric(
        "ivr_bridge_webhook_rejections_total", route="/twilio/media", reason="token_replayed"
    )
    assert after - before == 2
    assert pair.b.cluster()["calls_held"] == 0


async def test_admin_hang_up_sent_to_b_ends_the_call_on_a(pair: Pair) -> None:
    caller = await call_on(pair.a)
    await held_by(pair.a, 1)
    sent = time.monotonic()
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{pair.b.url}/console/live/{caller.call_sid}/hangup",
            data={"confirm": "1"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert r.status_code == 303, r.text
        missing = await http.post(
            f"{pair.b.url}/console/live/CA{'0' * 32}/hangup",
            data={"confirm": "1"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert missing.status_code == 404  # nobody holds that call
    closed = await caller.wait_closed(timeout=5)
    print(f"admin hang-up on B -> call on A closed in {1000 * (closed - sent):.0f} ms")
    await caller.close()
    await held_by(pair.a, 0)


async def test_a_dialplan_edit_is_served_by_both_and_calls_finish_on_their_version(pair: Pair) -> None:
    v_a, v_b = pair.a.healthz()["dialplan_version"], pair.b.healthz()["dialplan_version"]
    assert v_a == v_b
    assert isinstance(v_a, int)
    old = await call_on(pair.a)
    assert abs(tone_hz(old, old.started_at) - 440) < 20
    main = pair.plans / "main.yaml"
    main.write_text(plan_yaml(str(pair.plans.parent / "v2.wav")))
    edited = time.monotonic()
    await wait_for(
        lambda: pair.a.healthz()["dialplan_version"] == pair.b.healthz()["dialplan_version"] == v_a + 1,
        15,
        "both instances on the next version",
    )
    print(f"dialplan edit served by both in {time.monotonic() - edited:.1f} s")
    new_b = await call_on(pair.b)
    t = time.monotonic()
    await asyncio.sleep(0.6)
    assert abs(tone_hz(new_b, t) - 880) < 20
    assert abs(tone_hz(old, t) - 440) < 20  # the first call keeps its version
    await old.hang_up()
    await held_by(pair.a, 0)
    new_a = await call_on(pair.a)  # (BRIDGE_CLUSTER_MAX_CALLS is 2)
    assert abs(tone_hz(new_a, new_a.started_at) - 880) < 20
    for caller in (new_a, new_b):
        await caller.hang_up()
    await held_by(pair.a, 0)
    await held_by(pair.b, 0)


async def test_cluster_admission_refuses_beyond_the_cluster_limit_on_b(pair: Pair) -> None:
    first, second = await call_on(pair.a), await call_on(pair.a)
    await held_by(pair.a, 2)
    r = await post_form(
        pair.b.url, "/twilio/voice", {"CallSid": "CA" + "5" * 32, "From": "+1555", "To": "+1556"}
    )
    assert '<Reject reason="busy"' in r.text  # B has no call of its own: the cluster is full
    assert (
        pair.b.metric("ivr_bridge_admission_rejections_total", leg="twilio", reason="cluster_max_calls") >= 1
    )
    await first.hang_up()
    await held_by(pair.a, 1)
    third = await call_on(pair.b)  # a lease came free
    await held_by(pair.b, 1)
    for caller in (second, third):
        await caller.hang_up()
    await held_by(pair.a, 0)
    await held_by(pair.b, 0)


def _redis_get(pair: Pair, key: str) -> bytes:
    return pair.redis.command("GET", key)


async def test_redis_restarted_mid_call_calls_go_on_and_state_recovers(pair: Pair) -> None:
    caller = await call_on(pair.a)
    await held_by(pair.a, 1)
    assert b"bridge-a" in _redis_get(pair, f"ivr:call:{caller.call_sid}")
    hz = tone_hz(caller, caller.started_at)
    errors_before = pair.a.metric("ivr_bridge_cluster_errors_total", op="subscribe")

    pair.redis.kill()
    killed = time.monotonic()
    await wait_for(lambda: pair.a.cluster()["redis"] == "degraded", 10, "A degraded")
    await wait_for(lambda: pair.b.cluster()["redis"] == "degraded", 10, "B degraded")
    assert pair.a.metric("ivr_bridge_cluster_degraded") == 1
    assert pair.a.metric("ivr_bridge_cluster_errors_total", op="subscribe") > errors_before
    # The call goes on: the caller still hears its tone.
    t = time.monotonic()
    await asyncio.sleep(0.5)
    assert abs(tone_hz(caller, t) - hz) < 20
    # New calls are still answered, quickly, on local state.
    sent = time.monotonic()
    during = await call_on(pair.b)
    print(f"call placed on B with Redis dead: webhook to first audio {time.monotonic() - sent:.2f} s")

    pair.redis.start()  # empty: a restarted Redis without persistence
    restarted = time.monotonic()
    await wait_for(
        lambda: pair.a.cluster()["redis"] == "up" and pair.b.cluster()["redis"] == "up", 15, "recovered"
    )
    back = time.monotonic() - restarted
    print(f"Redis down {restarted - killed:.1f} s; both instances shared again {back:.1f} s later")
    # The directory is re-registered: A's call (placed before the outage) and B's (placed during it).
    await wait_for(
        lambda: b"bridge-a" in _redis_get(pair, f"ivr:call:{caller.call_sid}"), 5, "A re-registered"
    )
    await wait_for(
        lambda: b"bridge-b" in _redis_get(pair, f"ivr:call:{during.call_sid}"), 5, "B re-registered"
    )
    # Control messages flow again: a status callback on B closes A's call.
    r = await post_form(pair.b.url, "/twilio/status", {"CallSid": caller.call_sid, "CallStatus": "completed"})
    assert r.status_code == 204
    await caller.wait_closed(timeout=5)
    await caller.close()
    # Tokens are shared again: a new call's token used on B is refused on A.
    fresh = await call_on(pair.b)
    before = pair.a.metric(
        "ivr_bridge_webhook_rejections_total", route="/twilio/media", reason="token_replayed"
    )
    await replay(fresh, pair.a)
    after = pair.a.metric(
        "ivr_bridge_webhook_rejections_total", route="/twilio/media", reason="token_replayed"
    )
    assert after - before == 1
    for c in (during, fresh):
        await c.hang_up()
    await held_by(pair.b, 0)
