"""The upstream of one agent step: realtime sessions kept alive across drops, stalls and caps.

`Upstream` owns the step's `RealtimeClient`s; the agent link (`bridge.call.agent`) hands it the
caller's audio and its control events and gets every server event back through `on_event`.

- Nothing the call does waits on the network: audio and control events go into a bounded outbox
  that one sender task drains (a slow or blocked server can never stop the call from reading its
  phone leg). Beyond `AUDIO_OUTBOX_MS` of unsent audio the oldest frames are dropped and counted.
- Drop or error (a close other than 1000, a dead TCP connection, missed pings, a broken frame):
  reconnect with `resume.Backoff`, send the same session configuration, replay the conversation
  (`resume.ConversationLog`) and the caller audio held meanwhile (`resume.GapBuffer`); after
  `hold_after_s` without a session the caller hears one short line (`on_hold`), never silence.
  A response the drop interrupted is asked for again.
- The provider stays down: the next `SessionPlan` (the step's `fallback_provider`) is tried the
  same way; when none is left `run()` raises `UpstreamError` and the dialplan's `on_error` applies.
- Session cap (`resume.RolloverPlan`): before it, a second session is opened and configured in
  the background; at the next turn boundary (no response running, the caller not talking) it is
  seeded and takes over; the caller's audio is never lost (the last `PREROLL_MS` go to both).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from bridge import metrics
from bridge.call.resume import Backoff, ConversationLog, GapBuffer, RolloverPlan
from bridge.errors import BridgeError, UpstreamError
from bridge.realtime import events as rt
from bridge.realtime.client import RealtimeClient
from bridge.realtime.providers import Endpoint

log = logging.getLogger(__name__)

AUDIO_OUTBOX_MS = 1000  # unsent caller audio beyond this (a server not reading) is dropped, oldest first
PREROLL_MS = 300  # at a rollover, the last caller audio sent to the old session is sent to the new too
# Caller audio goes upstream in appends of this much (two 20 ms phone frames): half the messages,
# JSON strings, base64 calls and resampler calls of one append per frame, for at most 20 ms more
# before the server's VAD hears a frame (bench/results/load.md, "Optimisations").
APPEND_MS = 40
HOLD_AFTER_S = 1.0  # a gap longer than this gets the hold line
CLOSE_TIMEOUT_S = 0.06  # a polite close; then the TCP connection is aborted
RECONNECT_OPEN_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """One way to hold the conversation: where to connect and what to configure."""

    name: str  # "primary", "fallback:<provider>"
    endpoint: Endpoint
    session: dict[str, Any]
    greeting: str | None = None
    bytes_per_ms: int = 48


@dataclass(slots=True)
class UpstreamStats:
    drops: int = 0
    reconnects: int = 0
    reconnect_ms: list[float] = field(default_factory=list)
    failovers: int = 0
    rollovers: int = 0
    rollover_gap_ms: list[float] = field(default_factory=list)
    audio_dropped_frames: int = 0  # outbox overflow (a server not reading)
    gap_dropped_frames: int = 0  # held during a gap, too old or too many when the session came back
    holds: int = 0


Timeline = Callable[[str, dict[str, object]], None]


def _no_timeline(kind: str, data: dict[str, object]) -> None:
    return None


class Upstream:
    """Realtime sessions for one agent step, as one conversation."""

    def __init__(
        self,
        plans: list[SessionPlan],
        *,
        on_event: Callable[[rt.ServerEvent], Awaitable[None]],
        on_hold: Callable[[], Coroutine[Any, Any, None]] | None = None,
        on_switch: Callable[[str], None] | None = None,
        timeline: Timeline = _no_timeline,
        backoff: Backoff | None = None,
        rollover: RolloverPlan | None = None,
        hold_after_s: float = HOLD_AFTER_S,
        call_id: str = "?",
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not plans:
            raise ValueError("Upstream needs at least one session plan")
        self.plans = plans
        self.log = ConversationLog()
        self.stats = UpstreamStats()
        self._on_event = on_event
        self._on_hold = on_hold
        self._on_switch = on_switch
        self._timeline = timeline
        self._backoff = backoff or Backoff()
        self._rollover = rollover
        self._hold_after_s = hold_after_s
        self._call_id = call_id
        self._rand = rand
        self._plan_index = 0
        self._client: RealtimeClient | None = None
        self._session_started = 0.0
        self._ready = False
        self._closed = False
        self._greeted = False
        self._control: deque[str] = deque()
        self._audio: deque[str] = deque()
        self._audio_max = AUDIO_OUTBOX_MS // APPEND_MS
        self._recent: deque[str] = deque(maxlen=PREROLL_MS // APPEND_MS)
        self._gap = GapBuffer(max_ms=4000, max_age_ms=3000, frame_ms=APPEND_MS)
        self._wake = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.session_items: set[str] = set()  # items the current session knows (truncate only these)
        self.response_active = False
        self.caller_speaking = False
        self.responded_after_user = True  # False: the caller's turn was sent and no response began

    # -- state -----------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def plan(self) -> SessionPlan:
        return self.plans[self._plan_index]

    def _now(self) -> float:
        return time.monotonic()

    # -- life cycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Hold the conversation until the session ends normally (returns) or every plan has
        failed (raises `UpstreamError`)."""
        self._tasks.append(asyncio.create_task(self._sender()))
        if self._rollover is not None:
            self._tasks.append(asyncio.create_task(self._rollover_loop()))
        try:
            try:
                await self._switch_to(await self._open(self.plan), "connect")
            except UpstreamError as exc:
                await self._recover(str(exc))
            while not self._closed:
                client = self._client
                assert client is not None
                try:
                    async for event in client:
                        self._observe(event)
                        await self._on_event(event)
                        if self._client is not client:
                            break
                except (UpstreamError, rt.RealtimeProtocolError) as exc:
                    if self._closed or self._client is not client:
                        continue
                    await self._recover(str(exc))
                    continue
                if self._client is not client:
                    continue  # a rollover switched sessions: read the new one
                return  # closed normally (1000) or by us
        finally:
            for task in self._tasks:
                task.cancel()

    async def close(self) -> None:
        """End the conversation: every session closed within ~CLOSE_TIMEOUT_S, however stuck."""
        if self._closed:
            return
        self._closed = True
        self._ready = False
        for task in self._tasks:
            task.cancel()
        client = self._client
        if client is None:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await client.close()
        except (TimeoutError, BridgeError, OSError):
            client.abort()
        finally:
            client.abort()  # idempotent: the socket is gone now whatever the close did

    # -- sending (never blocks the caller) ------------------------------------------------------------

    def send_audio(self, message: str) -> None:
        """One pre-encoded `input_audio_buffer.append` of `APPEND_MS` of caller audio."""
        if self._closed:
            return
        if not self._ready:
            self._gap.push(message, self._now() * 1000.0)
            return
        audio = self._audio
        audio.append(message)
        if len(audio) > self._audio_max:
            audio.popleft()
            self.stats.audio_dropped_frames += 1
            metrics.METRICS.upstream_audio_dropped.inc()
        self._wake.set()

    def send(self, event: rt.ClientEvent) -> bool:
        """A control event for the current session; False (not sent) while there is none."""
        if not self._ready or self._closed:
            return False
        if isinstance(event, rt.ConversationItemCreate):
            self.responded_after_user = False
        self._control.append(rt.encode_client_event(event))
        self._wake.set()
        return True

    async def _sender(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._ready and (self._control or self._audio):
                async with self._send_lock:
                    if not self._ready:
                        break
                    if self._control:
                        text = self._control.popleft()
                    else:
                        text = self._audio.popleft()
                        self._recent.append(text)
                    client = self._client
                    if client is None:
                        break
                    try:
                        await client.send_raw(text)
                    except UpstreamError:
                        break  # the reader sees the close and recovers

    # -- sessions --------------------------------------------------------------------------------------

    async def _open(self, plan: SessionPlan, *, open_timeout_s: float = 10.0) -> RealtimeClient:
        client = RealtimeClient(open_timeout_s=open_timeout_s)
        try:
            await client.connect(plan.endpoint)
            await client.send(rt.SessionUpdate(session=plan.session))
        except BaseException:
            client.abort()
            raise
        return client

    async def _seed(self, client: RealtimeClient, plan: SessionPlan, *, resume: bool) -> None:
        """Replay the conversation into a fresh session; the greeting (first session only) or, when
        a drop cut a response or left the caller's turn unanswered, a new response."""
        for item in self.log.replay_items():
            await client.send(rt.ConversationItemCreate(item=item))
        if not self._greeted:
            self._greeted = True
            if plan.greeting:  # the agent speaks first; the local engine reads the same instruction
                await client.send(
                    rt.ResponseCreate(response={"instructions": f'Say exactly: "{plan.greeting}"'})
                )
        elif resume:
            await client.send(rt.ResponseCreate())

    async def _switch_to(self, client: RealtimeClient, kind: str, *, resume: bool = False) -> None:
        """Make `client` the session: seed it, send the held audio, let the sender go."""
        async with self._send_lock:
            await self._seed(client, self.plan, resume=resume)
            held = self._gap.take(self._now() * 1000.0)
            if self._gap.dropped:
                self.stats.gap_dropped_frames += self._gap.dropped
                log.info(
                    "call %s: %d ms of caller audio from the gap dropped (too old or too much)",
                    self._call_id,
                    self._gap.dropped * APPEND_MS,
                )
                self._gap.dropped = 0
            for message in held:
                await client.send_raw(message)
            old, self._client = self._client, client
            self._session_started = self._now()
            self.session_items = set()
            self.response_active = False
            self.caller_speaking = False
            self.responded_after_user = True
            self._ready = True
        self._wake.set()
        if old is not None and old is not client:
            task = asyncio.create_task(self._close_quietly(old))
            self._tasks.append(task)
        if kind != "connect" and self._on_switch is not None:
            self._on_switch(kind)

    async def _close_quietly(self, client: RealtimeClient) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await client.close()
        except (TimeoutError, BridgeError, OSError):
            pass
        finally:
            client.abort()

    async def _recover(self, reason: str) -> None:
        """The session is gone: try again (backoff), then the next plan; raise when none is left."""
        t0 = self._now()
        was_ready = self._client is not None
        interrupted = self.response_active or not self.responded_after_user
        self._ready = False
        for text in self._audio:  # unsent audio waits with the audio that comes meanwhile
            self._gap.push(text, t0 * 1000.0)
        self._audio.clear()
        self._control.clear()  # the replay rebuilds the conversation; stale commands are moot
        if self._client is not None:
            self._client.abort()
        self.stats.drops += 1
        metrics.METRICS.upstream_drops.inc()
        log.warning("call %s: realtime session lost (%s); reconnecting", self._call_id, reason)
        self._timeline("upstream_lost", {"reason": reason[:200], "plan": self.plan.name})
        hold = asyncio.get_running_loop().call_later(self._hold_after_s, self._hold)
        last = reason
        try:
            for index in range(self._plan_index, len(self.plans)):
                plan = self.plans[index]
                if index != self._plan_index:
                    self.stats.failovers += 1
                    metrics.METRICS.upstream_failovers.inc()
                    log.warning(
                        "call %s: %s stays down; failing over to %s", self._call_id, self.plan.name, plan.name
                    )
                    self._timeline("failover", {"from": self.plan.name, "to": plan.name})
                    self._plan_index = index
                started = self._now()
                attempt = 0
                while True:
                    attempt += 1
                    delay = self._backoff.delay_s(attempt, self._now() - started, self._rand())
                    if delay is None:
                        break
                    if delay:
                        await asyncio.sleep(delay)
                    if self._closed:
                        return
                    try:
                        client = await self._open(plan, open_timeout_s=RECONNECT_OPEN_TIMEOUT_S)
                    except UpstreamError as exc:
                        last = str(exc)
                        continue
                    if self._closed:
                        client.abort()
                        return
                    try:
                        await self._switch_to(client, "reconnect", resume=was_ready and interrupted)
                    except UpstreamError as exc:
                        client.abort()
                        last = str(exc)
                        continue
                    took_ms = (self._now() - t0) * 1000.0
                    self.stats.reconnects += 1
                    self.stats.reconnect_ms.append(took_ms)
                    metrics.METRICS.upstream_reconnects.inc(plan=plan.name.split(":", 1)[0])
                    log.info(
                        "call %s: realtime session back on %s after %.0f ms (attempt %d, %d items replayed)",
                        self._call_id,
                        plan.name,
                        took_ms,
                        attempt,
                        len(self.log.replay_items()),
                    )
                    self._timeline(
                        "upstream_resumed", {"plan": plan.name, "ms": round(took_ms), "attempt": attempt}
                    )
                    return
        finally:
            hold.cancel()
        raise UpstreamError(f"realtime upstream lost and not recovered ({last})")

    def _hold(self) -> None:
        if self._on_hold is None or self._closed or self._ready:
            return
        self.stats.holds += 1
        self._tasks.append(asyncio.create_task(self._on_hold()))

    # -- rollover ------------------------------------------------------------------------------------

    async def _rollover_loop(self) -> None:
        plan_r = self._rollover
        assert plan_r is not None
        while not self._closed:
            started = self._session_started
            if not self._ready:
                await asyncio.sleep(0.1)
                continue
            wait = started + plan_r.prepare_at_s - self._now()
            if wait > 0:
                await asyncio.sleep(wait)
                continue  # re-read: a reconnect meanwhile restarts the session clock
            try:
                standby = await self._open(self.plan, open_timeout_s=RECONNECT_OPEN_TIMEOUT_S)
            except UpstreamError as exc:
                log.warning("call %s: rollover session not opened (%s); retrying", self._call_id, exc)
                await asyncio.sleep(1.0)
                continue
            try:
                while not self._closed and self._session_started == started:
                    age = self._now() - started
                    boundary = self._ready and not self.response_active and not self.caller_speaking
                    if plan_r.should_switch(age, at_boundary=boundary):
                        break
                    await asyncio.sleep(0.02)
                if self._closed or self._session_started != started:
                    standby.abort()  # the session was replaced meanwhile (a drop): start over
                    continue
                await self._rollover_switch(standby, age)
            except UpstreamError as exc:
                standby.abort()
                log.warning("call %s: rollover failed (%s); the old session goes on", self._call_id, exc)

    async def _rollover_switch(self, standby: RealtimeClient, age_s: float) -> None:
        before = self._now()
        preroll = list(self._recent)
        async with self._send_lock:
            for item in self.log.replay_items():
                await standby.send(rt.ConversationItemCreate(item=item))
            for message in preroll:
                await standby.send_raw(message)
            old, self._client = self._client, standby
            self._session_started = self._now()
            self.session_items = set()
            self.response_active = False
            self.caller_speaking = False
        self._wake.set()
        gap_ms = (self._now() - before) * 1000.0  # how long the caller's audio waited for the switch
        self.stats.rollovers += 1
        self.stats.rollover_gap_ms.append(gap_ms)
        metrics.METRICS.upstream_rollovers.inc()
        log.info(
            "call %s: session rolled over after %.1f s (%d items)", self._call_id, age_s, len(self.log.items)
        )
        self._timeline("rollover", {"after_s": round(age_s, 1), "items": len(self.log.items)})
        if old is not None:
            self._tasks.append(asyncio.create_task(self._close_quietly(old)))
        if self._on_switch is not None:
            self._on_switch("rollover")

    # -- what the server says --------------------------------------------------------------------------

    def _observe(self, event: rt.ServerEvent) -> None:
        """Keep the conversation log and the turn state (for replay and rollover) from the events."""
        conv = self.log
        if isinstance(event, rt.ResponseOutputAudioDelta):
            self.session_items.add(event.item_id)
            conv.assistant_audio(event.item_id, delta_bytes(event.delta) / self.plan.bytes_per_ms)
        elif isinstance(event, rt.ResponseOutputAudioTranscriptDelta):
            conv.assistant_delta(event.item_id, event.delta)
        elif isinstance(event, rt.ResponseOutputAudioTranscriptDone):
            conv.assistant_done(event.item_id, event.transcript)
        elif isinstance(
            event, rt.ConversationItemAdded | rt.ConversationItemCreated | rt.ConversationItemDone
        ):
            item_id = event.item_id
            if item_id is not None:
                self.session_items.add(item_id)
                conv.item_added(item_id, event.item_type, event.role)
        elif isinstance(event, rt.InputAudioTranscriptionCompleted):
            conv.user_said(event.item_id, event.transcript)
        elif isinstance(event, rt.ResponseFunctionCallArgumentsDone):
            conv.tool_call(event.item_id, event.call_id, event.name, event.arguments)
        elif isinstance(event, rt.ResponseCreated):
            self.response_active = True
            self.responded_after_user = True
        elif isinstance(event, rt.ResponseDone):
            self.response_active = False
        elif isinstance(event, rt.InputAudioBufferSpeechStarted):
            self.caller_speaking = True
        elif isinstance(event, rt.InputAudioBufferSpeechStopped):
            self.caller_speaking = False
        elif isinstance(event, rt.InputAudioBufferCommitted):
            self.responded_after_user = False


def delta_bytes(b64: str) -> int:
    """The decoded size of a base64 audio delta, without decoding it."""
    return len(b64) * 3 // 4 - b64[-2:].count("=")
