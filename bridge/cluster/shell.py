"""The Redis shell of the shared state (docs/cluster.md): redis-py's asyncio client, nothing home-made.

`Cluster` gives the rest of the bridge a handful of operations, each one Redis round trip with a
short timeout (`OP_TIMEOUT_S`). Every operation answers `None` (or False for sends) when Redis is
not usable: the caller then uses its local state (local `Slots`, `RateLimiter`, used-token set),
so a dead or hung Redis never drops a call in progress and never stalls a webhook. The first
failure flips `Link` to DOWN (logged once, counted, `ivr_bridge_cluster_degraded` = 1); a
background task probes with backoff and, once Redis answers, re-registers this instance's calls
and leases and turns the link UP again. No Redis work happens per audio frame: only per webhook,
per stream start and end, and in the heartbeat (every `HEARTBEAT_S`, one pipeline for every call).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from bridge.cluster.core import (
    ACQUIRE_LEASE,
    CALL_INFO_TTL_S,
    CONTINUATION_TTL_S,
    DIRECTORY_TTL_S,
    HEARTBEAT_S,
    OP_TIMEOUT_S,
    PUBLISH_DIALPLAN,
    TOKEN_BUCKET,
    ControlMessage,
    ControlMessageError,
    Keys,
    Link,
    decode,
    encode,
    lease_member,
)
from bridge.metrics import METRICS, BridgeMetrics
from bridge.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
Client = aioredis.Redis
ControlHandler = Callable[[ControlMessage], Awaitable[None]]
DialplanHandler = Callable[[int, str], Awaitable[None]]
RecoveryHook = Callable[[], Awaitable[None]]
_FAILURES = (RedisError, OSError, TimeoutError)


class Cluster:
    """This instance's view of the shared state. `start()` / `stop()` in the app's lifespan."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: BridgeMetrics | None = None,
        clock: Callable[[], float] = time.time,
        op_timeout_s: float = OP_TIMEOUT_S,
        heartbeat_s: float = HEARTBEAT_S,
        directory_ttl_s: float = DIRECTORY_TTL_S,
    ) -> None:
        if not settings.redis_url:
            raise ValueError("Cluster needs BRIDGE_REDIS_URL")
        self.url = settings.redis_url
        self.instance = settings.instance_name
        self.settings = settings
        self.keys = Keys()
        self.link = Link()
        self.stats = metrics if metrics is not None else METRICS
        self.clock = clock
        self.op_timeout_s = op_timeout_s
        self.heartbeat_s = heartbeat_s
        self.ttl_ms = int(directory_ttl_s * 1000)
        self.on_control: ControlHandler | None = None
        self.on_dialplan: DialplanHandler | None = None
        self.on_recovered: list[RecoveryHook] = []
        self._calls: set[str] = set()  # call ids this instance holds in the directory
        self._leases: set[str] = set()  # call ids holding a cluster admission lease
        self._client: Client = self._make_client(op_timeout_s)
        self._tasks: list[asyncio.Task[None]] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._reconnecting: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self._lease_script = self._client.register_script(ACQUIRE_LEASE)
        self._bucket_script = self._client.register_script(TOKEN_BUCKET)
        self._dialplan_script = self._client.register_script(PUBLISH_DIALPLAN)
        self.stats.cluster_degraded.set(1)

    def _make_client(self, timeout_s: float | None) -> Client:
        # No retries inside the client: one attempt, bounded by the timeout; the link decides the rest.
        return aioredis.Redis.from_url(
            self.url,
            socket_timeout=timeout_s,
            socket_connect_timeout=self.op_timeout_s,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )

    # -- life ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (a Redis that is down now is retried in the background) and start the heartbeat
        and the control-channel listener."""
        if await self._probe():
            self._mark_up()
        else:
            log.warning("cluster: Redis unreachable at start-up; using local state until it answers")
            self._schedule_reconnect()
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="cluster-heartbeat"),
            asyncio.create_task(self._listen_loop(), name="cluster-listen"),
        ]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._handlers]
        if self._reconnecting is not None:
            tasks.append(self._reconnecting)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.link.up:  # leave the directory tidy (a dead instance's entries expire anyway)
            with contextlib.suppress(*_FAILURES):
                async with asyncio.timeout(self.op_timeout_s * 4):
                    pipe = self._client.pipeline(transaction=False)
                    for call_id in self._calls:
                        pipe.delete(self.keys.call(call_id))
                    for call_id in self._leases:
                        pipe.zrem(self.keys.leases, lease_member(self.instance, call_id))
                    await pipe.execute()
        with contextlib.suppress(*_FAILURES):
            await self._client.aclose()

    @property
    def available(self) -> bool:
        return self.link.up

    # -- the link --------------------------------------------------------------------------------

    async def _run(self, what: str, op: Callable[[Client], Awaitable[T]]) -> T | None:
        """One Redis operation under the timeout, or None (local state) when Redis is not usable."""
        if not self.link.up:
            return None
        try:
            async with asyncio.timeout(self.op_timeout_s):
                return await op(self._client)
        except _FAILURES as exc:
            self._failed(what, exc)
            return None

    def _failed(self, what: str, exc: BaseException) -> None:
        self.stats.cluster_errors.inc(op=what)
        if self.link.failed(self.clock()):
            self._up.clear()
            self.stats.cluster_degraded.set(1)
            self.stats.cluster_transitions.inc(to="degraded")
            log.error(
                "cluster: Redis failed (%s: %s); DEGRADED to local state (calls go on; tokens, limits "
                "and admission are per instance until it answers)",
                what,
                type(exc).__name__ if isinstance(exc, TimeoutError) else exc,
            )
            self._schedule_reconnect()

    def _mark_up(self) -> None:
        if self.link.recovered(self.clock()):
            self.stats.cluster_degraded.set(0)
            self._up.set()

    def _schedule_reconnect(self) -> None:
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.create_task(self._reconnect_loop(), name="cluster-reconnect")

    async def _probe(self) -> bool:
        try:
            async with asyncio.timeout(self.op_timeout_s * 2):
                return bool(await self._client.ping())
        except _FAILURES:
            return False

    async def _reconnect_loop(self) -> None:
        while not self.link.up:
            await asyncio.sleep(self.link.retry_delay_s())
            if not await self._probe():
                self.link.probe_failed()
                continue
            down_for = self.clock() - self.link.since_s
            self._mark_up()
            self.stats.cluster_transitions.inc(to="shared")
            log.warning("cluster: Redis answers again after %.1f s; re-registering %d call(s)", down_for,
                        len(self._calls))  # fmt: skip
            await self._refresh()
            for hook in list(self.on_recovered):
                try:
                    await hook()
                except Exception:
                    log.exception("cluster: recovery hook failed")

    # -- heartbeat: the directory entries and leases of this instance's calls ---------------------

    async def _refresh(self) -> None:
        if not (self._calls or self._leases):
            return
        now_ms = int(self.clock() * 1000)

        async def beat(client: Client) -> None:
            pipe = client.pipeline(transaction=False)
            for call_id in self._calls:
                pipe.set(self.keys.call(call_id), self.instance, px=self.ttl_ms)
            if self._leases:
                members = {lease_member(self.instance, c): now_ms + self.ttl_ms for c in self._leases}
                pipe.zadd(self.keys.leases, members)
            await pipe.execute()

        await self._run("heartbeat", beat)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await self._refresh()

    # -- control channel -------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        channels = (self.keys.control(self.instance), self.keys.dialplan_channel)
        while True:
            await self._up.wait()
            listener = self._make_client(None)
            pubsub = listener.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self.op_timeout_s * 4):
                    await pubsub.subscribe(*channels)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._dispatch(str(message["channel"]), message["data"])
            except _FAILURES as exc:
                self._failed("subscribe", exc)
            finally:
                with contextlib.suppress(*_FAILURES):
                    await pubsub.aclose()
                    await listener.aclose()

    def _dispatch(self, channel: str, data: Any) -> None:
        if channel == self.keys.dialplan_channel:
            version, _, content_hash = str(data).partition(":")
            if self.on_dialplan is not None and version.isdigit():
                self._spawn(self.on_dialplan(int(version), content_hash))
            return
        try:
            message = decode(data)
        except ControlMessageError as exc:
            log.warning("cluster: control message refused: %s", exc)
            self.stats.cluster_control.inc(direction="in", type="invalid")
            return
        self.stats.cluster_control.inc(direction="in", type=message.type)
        if self.on_control is not None:
            self._spawn(self.on_control(message))

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("cluster: handling a message failed")

        task = asyncio.create_task(run())
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def send(self, instance: str, message: ControlMessage) -> bool:
        """Publish `message` to `instance`'s control channel. True if that instance is listening."""
        body = encode(message)
        receivers = await self._run("publish", lambda c: c.publish(self.keys.control(instance), body))
        self.stats.cluster_control.inc(direction="out", type=message.type)
        return bool(receivers)

    # -- stream tokens ---------------------------------------------------------------------------

    async def spend_token(self, nonce: str, expires_s: int) -> bool | None:
        """Spend a stream token's nonce cluster-wide: True the first time, False if any instance spent
        it before, None when Redis is not usable (the local used-token set decides alone)."""
        key = self.keys.token(nonce)

        async def spend(client: Client) -> bool:
            return bool(await client.set(key, self.instance, nx=True, exat=expires_s))

        return await self._run("token", spend)

    # -- call directory ----------------------------------------------------------------------------

    async def claim_call(self, call_id: str) -> bool | None:
        """Enter `call_id -> this instance` in the directory. False if another instance holds it."""
        key = self.keys.call(call_id)

        async def claim(client: Client) -> bool:
            if await client.set(key, self.instance, nx=True, px=self.ttl_ms):
                return True
            return bool(await client.get(key) == self.instance)

        self._calls.add(call_id)  # re-registered by the heartbeat even if Redis is down now
        claimed = await self._run("directory", claim)
        if claimed is False:
            self._calls.discard(call_id)
        return claimed

    async def forget_call(self, call_id: str) -> None:
        if call_id in self._calls:
            self._calls.discard(call_id)
            key = self.keys.call(call_id)
            await self._run("directory", lambda c: c.delete(key))

    async def owner_of(self, call_id: str) -> str | None:
        """The instance holding `call_id`, None when nobody (or Redis is not usable)."""
        if call_id in self._calls:
            return self.instance
        owner = await self._run("directory", lambda c: c.get(self.keys.call(call_id)))
        return str(owner) if owner else None

    @property
    def held_calls(self) -> frozenset[str]:
        return frozenset(self._calls)

    def holds(self, call_id: str) -> bool:
        return call_id in self._calls

    # -- cluster-wide admission ----------------------------------------------------------------------

    async def cluster_full(self, limit: int) -> bool | None:
        now_ms = int(self.clock() * 1000)
        count = await self._run("admission", lambda c: c.zcount(self.keys.leases, now_ms, "+inf"))
        return None if count is None else int(count) >= limit

    async def acquire_lease(self, call_id: str, limit: int) -> bool | None:
        member = lease_member(self.instance, call_id)
        now_ms = int(self.clock() * 1000)
        args: list[str | int | float] = [member, limit, now_ms, self.ttl_ms]
        taken = await self._run("admission", lambda c: self._lease_script(keys=[self.keys.leases], args=args))
        if taken is None:
            return None
        if taken:
            self._leases.add(call_id)
        return bool(taken)

    async def release_lease(self, call_id: str) -> None:
        if call_id in self._leases:
            self._leases.discard(call_id)
            member = lease_member(self.instance, call_id)
            await self._run("admission", lambda c: c.zrem(self.keys.leases, member))

    # -- cluster-wide rate limits ----------------------------------------------------------------------

    async def allow(self, source: str, rate_per_s: float, burst: int) -> bool | None:
        args: list[str | int | float] = [rate_per_s, burst, int(self.clock() * 1000)]
        key = self.keys.rate(source)
        allowed = await self._run("rate", lambda c: self._bucket_script(keys=[key], args=args))
        return None if allowed is None else bool(allowed)

    # -- call records shared between the webhook's and the stream's instance -----------------------

    async def put_call_info(self, call_id: str, info: dict[str, Any]) -> None:
        body = json.dumps(info, separators=(",", ":"))
        await self._run("call_info", lambda c: c.set(self.keys.call_info(call_id), body, ex=CALL_INFO_TTL_S))

    async def get_call_info(self, call_id: str) -> dict[str, Any] | None:
        raw = await self._run("call_info", lambda c: c.get(self.keys.call_info(call_id)))
        if not raw:
            return None
        with contextlib.suppress(ValueError):
            info = json.loads(raw)
            if isinstance(info, dict):
                return info
        return None

    async def put_continuation(self, call_id: str, value: dict[str, Any]) -> None:
        body = json.dumps(value, separators=(",", ":"))
        key = self.keys.continuation(call_id)
        await self._run("continuation", lambda c: c.set(key, body, ex=CONTINUATION_TTL_S))

    async def take_continuation(self, call_id: str) -> dict[str, Any] | None:
        raw = await self._run("continuation", lambda c: c.getdel(self.keys.continuation(call_id)))
        if not raw:
            return None
        with contextlib.suppress(ValueError):
            value = json.loads(raw)
            if isinstance(value, dict):
                return value
        return None

    # -- dialplan versions -------------------------------------------------------------------------------

    async def publish_dialplan(self, content_hash: str, version_floor: int) -> int | None:
        """The cluster's version number for this dialplan content (a new number for new content,
        announced to every instance), or None when Redis is not usable."""
        args: list[str | int | float] = [content_hash, self.instance, version_floor]

        async def publish(client: Client) -> int:
            version, _ = await self._dialplan_script(keys=[self.keys.dialplan], args=args)
            await client.publish(self.keys.dialplan_channel, f"{int(version)}:{content_hash}")
            return int(version)

        return await self._run("dialplan", publish)

    async def dialplan_head(self) -> tuple[int, str] | None:
        """The cluster's current (version, content hash), None when unknown."""
        head = await self._run("dialplan", lambda c: c.hmget(self.keys.dialplan, "version", "hash"))
        if not head or head[0] is None or head[1] is None:
            return None
        return int(head[0]), str(head[1])
