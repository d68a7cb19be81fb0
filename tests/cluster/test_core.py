"""The cluster's no-I/O core, and its Redis shell against a real redis-server (no bridge process)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from bridge.cluster.core import (
    BACKOFF_MAX_S,
    ControlMessageError,
    ForwardStatus,
    HangUpCall,
    Link,
    TransferCall,
    decode,
    encode,
)
from bridge.cluster.shell import Cluster
from bridge.metrics import BridgeMetrics
from bridge.settings import Settings
from tests.helpers.redis_server import RedisServer


def test_control_messages_round_trip() -> None:
    for message in (
        ForwardStatus("CA1", "call", "completed", 12.5, "486"),
        HangUpCall("CA2", "console@10.0.0.1"),
        TransferCall("CA3", "+15550001111", "console@10.0.0.1"),
    ):
        assert decode(encode(message)) == message


@pytest.mark.parametrize(
    ("raw", "defect"),
    [
        ("not json", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"type": "reboot"}', "'reboot' is not one of"),
        ('{"type": "hang_up", "call_id": "CA1"}', "wrong fields"),
        ('{"type": "hang_up", "call_id": 5, "who": "x"}', "call_id is not a string"),
        ('{"type": "status", "call_id": "CA1", "kind": "call", "status": "x", "at_s": "soon"}', "at_s"),
        ("x" * 5000, "exceeds"),
    ],
)
def test_bad_control_messages_name_their_defect(raw: str, defect: str) -> None:
    with pytest.raises(ControlMessageError, match=defect):
        decode(raw)


def test_link_transitions_once_and_backs_off() -> None:
    link = Link()
    assert not link.up
    assert link.recovered(1.0)
    assert not link.recovered(1.5)
    assert link.failed(2.0)
    assert not link.failed(2.1)
    delays = []
    for _ in range(8):
        delays.append(link.retry_delay_s())
        link.probe_failed()
    assert delays[0] == 0.2
    assert delays[1] == 0.4
    assert delays[-1] == BACKOFF_MAX_S
    assert delays == sorted(delays)
    assert link.recovered(9.0)
    assert link.retry_delay_s() == 0.2
    assert link.transitions == 3


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.kill()


async def _cluster(url: str, name: str) -> Cluster:
    cluster = Cluster(Settings(redis_url=url, instance_id=name), metrics=BridgeMetrics())
    await cluster.start()
    return cluster


@pytest.fixture
async def two(redis: RedisServer) -> AsyncIterator[tuple[Cluster, Cluster]]:
    a, b = await _cluster(redis.url, "a"), await _cluster(redis.url, "b")
    yield a, b
    await a.stop()
    await b.stop()


async def test_tokens_are_spent_once_across_instances(two: tuple[Cluster, Cluster]) -> None:
    a, b = two
    expires = int(time.time()) + 60
    assert await a.spend_token("nonce-0001", expires) is True
    assert await b.spend_token("nonce-0001", expires) is False
    assert await a.spend_token("nonce-0001", expires) is False


async def test_leases_cap_calls_across_instances_and_expire(redis: RedisServer) -> None:
    a = Cluster(Settings(redis_url=redis.url, instance_id="a"), metrics=BridgeMetrics(), directory_ttl_s=0.5)
    b = Cluster(Settings(redis_url=redis.url, instance_id="b"), metrics=BridgeMetrics(), heartbeat_s=0.1)
    await a.start()
    await b.start()
    try:
        assert await a.acquire_lease("CA1", 2) is True
        assert await b.acquire_lease("CA2", 2) is True
        assert await b.acquire_lease("CA3", 2) is False
        assert await b.cluster_full(2) is True
        await a.release_lease("CA1")
        assert await b.acquire_lease("CA3", 2) is True
        # A dies holding a lease: without its heartbeat the lease expires, B's are refreshed.
        assert await a.acquire_lease("CA4", 3) is True
        a._tasks[0].cancel()  # the heartbeat stops, as if the process were gone
        await asyncio.sleep(0.8)
        assert await b.acquire_lease("CA5", 3) is True
    finally:
        await a.stop()
        await b.stop()


async def test_rate_bucket_is_shared(two: tuple[Cluster, Cluster]) -> None:
    a, b = two
    results = [await (a if i % 2 else b).allow("203.0.113.9", 1.0, 4) for i in range(6)]
    assert results == [True, True, True, True, False, False]
    assert await a.allow("203.0.113.10", 1.0, 4) is True  # another source has its own bucket


async def test_control_message_reaches_the_holder(two: tuple[Cluster, Cluster]) -> None:
    a, b = two
    got: asyncio.Queue[object] = asyncio.Queue()

    async def handle(message: object) -> None:
        await got.put(message)

    a.on_control = handle
    assert await a.claim_call("CA9") is True
    assert await b.claim_call("CA9") is False  # one holder per call
    assert await b.owner_of("CA9") == "a"
    await asyncio.sleep(0.2)  # A's listener subscribed
    assert await b.send("a", HangUpCall("CA9", "test")) is True
    assert await asyncio.wait_for(got.get(), 2) == HangUpCall("CA9", "test")
    assert await b.send("nobody", HangUpCall("CA9", "test")) is False


async def test_dialplan_versions_are_numbered_once_and_never_go_back(two: tuple[Cluster, Cluster]) -> None:
    a, b = two
    assert await a.publish_dialplan("h1", 1) == 1
    assert await b.publish_dialplan("h1", 1) == 1  # same content, same number
    assert await b.publish_dialplan("h2", 1) == 2
    assert await a.publish_dialplan("h3", 7) == 7  # a Redis that forgot cannot go below an instance
    assert await a.dialplan_head() == (7, "h3")


async def test_a_dead_redis_answers_none_fast_and_recovery_is_automatic(redis: RedisServer) -> None:
    stats = BridgeMetrics()
    cluster = Cluster(Settings(redis_url=redis.url, instance_id="a"), metrics=stats)
    await cluster.start()
    try:
        assert await cluster.claim_call("CA1") is True
        redis.kill()
        t = time.perf_counter()
        assert await cluster.spend_token("nonce-0002", int(time.time()) + 60) is None
        first_s = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(100):
            assert await cluster.allow("198.51.100.1", 10, 10) is None
        later_s = (time.perf_counter() - t) / 100
        assert first_s < 0.5, first_s
        assert later_s < 0.001, later_s  # degraded: Redis not even tried
        assert stats.cluster_degraded.value() == 1
        assert stats.cluster_transitions.value(to="degraded") == 1
        redis.start()
        deadline = time.monotonic() + 10
        while not cluster.available:
            assert time.monotonic() < deadline, "no recovery"
            await asyncio.sleep(0.05)
        assert redis.command("GET", "ivr:call:CA1").endswith(b"a\r\n")  # re-registered
        assert await cluster.spend_token("nonce-0002", int(time.time()) + 60) is True
    finally:
        await cluster.stop()


def test_the_redis_password_is_a_secret_and_the_instance_has_a_name() -> None:
    settings = Settings(redis_url="redis://:s3cret%2Dpw@10.0.0.5:6379/0")
    assert "s3cret-pw" in settings.secret_values()
    assert "s3cret%2Dpw" in settings.secret_values()
    assert settings.instance_name.endswith(f"-{__import__('os').getpid()}")
    assert Settings(instance_id="pod-7").instance_name == "pod-7"
    assert Settings.from_env({"BRIDGE_CLUSTER_MAX_CALLS": "3"}).cluster_max_calls == 3
