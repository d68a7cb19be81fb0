"""HTTP shell: `create_app(settings)` wires the Twilio routes, the SIP leg, the embedded engine,
the dialplan store (with hot reload) and the health and metrics endpoints (`bridge.ops_routes`).

Start-up order in the lifespan: load the dialplans (a broken dialplan never starts serving),
start the local speech the dialplan needs and only that (bridge/call/warmup.py: timed, logged; a
reloaded plan's needs start before it is swapped in), start the SIP leg when configured (registration
runs in the background; its state is in /healthz and /metrics), then serve.

Security (docs/security.md has the route inventory and the threat model): one process-wide
`Slots(max_calls)` on `app.state.call_slots` that every leg takes a call slot from; per-source
rate limits on the Twilio webhooks; `GET /metrics` behind `BRIDGE_METRICS_TOKEN` when it is set;
no API schema or docs pages (`/docs`, `/redoc`, `/openapi.json` are off); log records and the
health bodies pass through `bridge.logsafe` so no configured secret is ever printed.

Graceful drain (`Drainer`, started by `ivr-bridge serve` on SIGTERM; docs/resilience.md): /readyz
turns 503 at once, new calls are refused (Twilio busy or a redirect, SIP 503), calls in progress go
on for up to BRIDGE_DRAIN_S, then hear BRIDGE_DRAIN_LINE and are transferred or hung up.

Scale-out (BRIDGE_REDIS_URL; docs/cluster.md): a `Cluster` on `app.state.cluster` shares stream
tokens, the call directory, admission and rate limits through Redis, delivers control messages
(status callbacks, operator hang-ups and transfers) to the instance holding the call, and numbers
dialplan versions cluster-wide. Without it nothing of this exists and nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from bridge import logsafe, metrics
from bridge.call import Call
from bridge.call.agent import dialplan_chat_backends
from bridge.call.call import EndedCall
from bridge.call.prompts import prewarm_prompts
from bridge.call.warmup import SpeechWarmup
from bridge.call.watch import CallWatcher
from bridge.cluster import (
    Cluster,
    ClusterCallRegistry,
    ControlMessage,
    DialplanSync,
    ForwardStatus,
    HangUpCall,
)
from bridge.dialplan.store import DialplanStore
from bridge.engine.server import mount_engine
from bridge.errors import BridgeError
from bridge.limits import RateLimiter, Slots
from bridge.ops_routes import OpsRoutes, RuntimeState
from bridge.realtime.local_engine import ChatBackend
from bridge.records import Records
from bridge.settings import Settings
from bridge.telephony.leg import Leg
from bridge.telephony.twilio.routes import TwilioRoutes
from bridge.web import views
from bridge.web.api import mount_admin_api
from bridge.web.console import mount_console
from bridge.web.phone import mount_phone

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 30.0  # after the drain line: how long the last calls get to finish


class Drainer:
    """The process's graceful drain: refuse new calls, let calls in progress finish, then end them."""

    def __init__(
        self, settings: Settings, calls: set[Call], runtime: RuntimeState, twilio: TwilioRoutes
    ) -> None:
        self.settings = settings
        self.calls = calls
        self.runtime = runtime
        self.twilio = twilio
        self.task: asyncio.Task[None] | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._changed = asyncio.Event()

    @property
    def draining(self) -> bool:
        return self.task is not None

    def begin(self) -> asyncio.Task[None]:
        """Start draining (idempotent): refusals take effect before this returns."""
        if self.task is None:
            self.started_at = time.monotonic()
            self.runtime.draining = True
            self.twilio.draining = True
            if self.runtime.sip is not None:
                self.runtime.sip.refuse_new_calls()
            metrics.METRICS.drain_state.set(1)
            log.warning(
                "draining: new calls refused; %d call(s) in progress get up to %g s",
                len(self.calls),
                self.settings.drain_s,
            )
            self.task = asyncio.create_task(self._run())
        return self.task

    async def _wait_calls(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.calls:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()

    def call_ended(self) -> None:
        self._changed.set()

    async def _run(self) -> None:
        await self._wait_calls(self.settings.drain_s)
        if self.calls:
            log.warning("drain time up: ending %d call(s)", len(self.calls))
            for call in list(self.calls):
                call.timeline("drain_timeout", {"drain_s": self.settings.drain_s})
                call.shut_down(self.settings.drain_line, self.settings.drain_transfer_to)
            await self._wait_calls(SHUTDOWN_GRACE_S)
        self.finished_at = time.monotonic()
        took = self.finished_at - (self.started_at or self.finished_at)
        log.info("drained in %.1f s (%d call(s) left)", took, len(self.calls))


def create_app(settings: Settings | None = None, *, preload_models: bool = True) -> FastAPI:
    settings = settings or Settings.from_env()
    if not settings.engine_token:
        # One token per process, made before anything reads the settings: the engine requires it and
        # the bridge's own `local` provider sends it. Outside clients set BRIDGE_ENGINE_TOKEN instead.
        settings = settings.model_copy(update={"engine_token": secrets.token_urlsafe(32)})
    store = DialplanStore(settings.dialplans)  # raises DialplanInvalid: never serve a broken plan
    calls: set[Call] = set()
    # Ended calls, newest first (console, dialplan tests): light summaries, never the Call itself (its
    # buffers: playout, echo canceller rings, agent link) so that a call's memory goes when it ends.
    recent_calls: deque[EndedCall] = deque(maxlen=50)
    runtime = RuntimeState()
    # Admission: one pool of call slots for every leg of this process (Twilio takes a slot at
    # stream start, the SIP leg at INVITE); the Twilio webhooks' per-source token buckets.
    call_slots = Slots(settings.max_calls)
    webhook_rate = RateLimiter(settings.rate_per_source_per_s, settings.rate_burst)

    async def run_call(leg: Leg, watcher: CallWatcher | None = None) -> None:
        # The call keeps this dialplan snapshot to its end; its record goes through `records`;
        # `watcher` (the softphone page) is told what happens in the call as it happens.
        call = Call(
            leg,
            store.current(),
            settings,
            records=records.start_call if settings.records_enabled else None,
            watcher=watcher,
        )
        kind = leg.kind
        stats = metrics.METRICS
        calls.add(call)
        stats.active_calls.inc(leg=kind)
        try:
            result = await call.run()
        finally:
            calls.discard(call)
            recent_calls.appendleft(call.summary())
            stats.active_calls.dec(leg=kind)
            app.state.drainer.call_ended()
        outcome = result.ended_reason.split(":", 1)[0].split(" ", 1)[0] or "unknown"
        stats.calls.inc(leg=kind, outcome=outcome)
        if result.barge_ins:
            stats.barge_ins.inc(result.barge_ins, leg=kind)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Again now: uvicorn (re)configures its loggers' handlers after the app was built.
        install_redaction()
        loop = asyncio.get_running_loop()
        await records.start()  # call records (docs/records.md); a database that is down is retried
        if cluster is not None and dialplan_sync is not None:  # Redis down: retried in the background
            cluster.on_control = on_control
            await cluster.start()
            await dialplan_sync.start()
        logsafe.set_pii_redactor(records.redactor if records.redactor.enabled else None)
        background = [asyncio.create_task(store.run_watcher())]
        if preload_models:
            # Only what the plan needs (a cloud-only plan: the VAD); a reload starts what its plan needs.
            own_lines = (settings.hold_line, settings.drain_line)
            warmup = SpeechWarmup(engine.preload, own_lines)
            t0 = time.perf_counter()
            await loop.run_in_executor(None, warmup.prepare, store.current())
            runtime.models = warmup.report
            log.info("speech models loaded in %.2f s: %s", time.perf_counter() - t0, runtime.models)
            store.prepare = warmup.prepare
            background.append(asyncio.create_task(prewarm_prompts(store, own_lines)))
        if settings.sip_enabled:
            from bridge.telephony.sip.service import start_sip

            try:
                runtime.sip = await start_sip(
                    settings, run_call, bind_host=settings.host, admission=call_slots
                )
            except BridgeError as exc:
                log.error("SIP leg not started: %s", exc)
                runtime.sip_error = str(exc)
        # What exists now (modules, models, routes, the plan) lives as long as the process: take it out
        # of the collector's reach, so that a full (generation 2) collection walks only what calls
        # allocate. Without it each full pass stalled the event loop, every call's audio with it, for
        # 0.1-0.3 s (measured in tests/call/test_call_twilio.py under load; docs/capacity.md).
        gc.collect()
        gc.freeze()
        log.info("ivr-bridge ready on %s:%d (dialplan v%d)", settings.host, settings.port, store.version)
        try:
            yield
        finally:
            store.prepare = None
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if runtime.sip is not None:
                await runtime.sip.stop()
            for phone_call in list(getattr(app.state, "phone_calls", ())):
                phone_call.cancel()  # its leg closes its peer connection and frees its call slot
            await engine.close_all()
            if cluster is not None:
                await cluster.stop()
            await records.stop()

    # No /docs, /redoc or /openapi.json: an IVR bridge has no API to publish (docs/security.md).
    app = FastAPI(title="ivr-bridge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.calls = calls
    app.state.recent_calls = recent_calls
    app.state.dialplans = store
    app.state.call_slots = call_slots
    app.state.webhook_rate = webhook_rate
    records = app.state.records = Records(settings)  # started and stopped in the lifespan
    mount_admin_api(app, settings, records)  # /api/* only when BRIDGE_ADMIN_TOKEN is set
    mount_console(app, settings, records)  # /console only when BRIDGE_ADMIN_TOKEN is set
    # /phone (the browser softphone) only when BRIDGE_ADMIN_TOKEN is set
    mount_phone(app, settings, run_call=run_call, call_slots=call_slots, dialplans=store)
    engine = mount_engine(app, settings)
    # The operator's chat-completions backends (dialplan agent steps): the only places the engine may
    # send requests. Read again after a reload; earlier entries stay for calls in progress.
    engine.chat_backends.add(dialplan_chat_backends(store.current()))  # ConfigError: never serve it
    backends_seen = [store.version]

    def reloaded_chat_backends() -> list[ChatBackend]:
        if store.version == backends_seen[0]:
            return []
        backends_seen[0] = store.version
        return dialplan_chat_backends(store.current())

    engine.chat_backends.source = reloaded_chat_backends

    def install_redaction() -> None:
        # `settings` already holds the engine token generated above when BRIDGE_ENGINE_TOKEN is unset.
        logsafe.install(settings.secret_values())

    install_redaction()

    def flow_for(called: str) -> str | None:
        plan = store.current()
        try:
            return plan.flow_for(called)
        except KeyError:
            return None

    # Scale-out: shared state in Redis (docs/cluster.md); None keeps everything in this process.
    cluster = app.state.cluster = Cluster(settings) if settings.redis_url else None
    registry = ClusterCallRegistry(cluster) if cluster is not None else None
    dialplan_sync = DialplanSync(cluster, store) if cluster is not None else None

    async def on_control(message: ControlMessage) -> None:
        """A control message another instance sent for a call this instance holds."""
        if isinstance(message, ForwardStatus):
            if registry is not None:
                await registry.apply_forwarded(message)
            return
        call = next((c for c in list(calls) if c.started and c.started.call_id == message.call_id), None)
        if call is None:
            log.info("cluster: %s for %s: no such live call here", message.type, message.call_id)
        elif isinstance(message, HangUpCall):
            call.request_hang_up(who=message.who)
        elif message.target in views.transfer_targets(call.plan):  # checked again on the call's version
            call.request_transfer(message.target, who=message.who)
        else:
            log.warning(
                "cluster: transfer of %s to a target its dialplan does not name: refused", call.call_id
            )

    twilio = TwilioRoutes(
        settings,
        run_call,
        flow_for=flow_for,
        call_slots=call_slots,
        rate_limiter=webhook_rate,
        registry=registry,
        shared=cluster,
    )
    app.state.drainer = Drainer(settings, calls, runtime, twilio)
    ops = OpsRoutes(settings, runtime, calls=calls, call_slots=call_slots, dialplans=store, cluster=cluster)
    app.include_router(twilio.router())
    app.include_router(ops.router())
    return app
