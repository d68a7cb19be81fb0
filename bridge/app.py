"""HTTP shell: `create_app(settings)` wires the Twilio routes, the SIP leg, the embedded engine,
the dialplan store (with hot reload) and the health and metrics endpoints (`bridge.ops_routes`).

Start-up order in the lifespan: load the dialplans (a broken dialplan never starts serving),
load the speech models once (timed, logged), start the SIP leg when configured (registration
runs in the background; its state is in /healthz and /metrics), then serve.

Security (docs/security.md has the route inventory and the threat model): one process-wide
`Slots(max_calls)` on `app.state.call_slots` that every leg takes a call slot from; per-source
rate limits on the Twilio webhooks; `GET /metrics` behind `BRIDGE_METRICS_TOKEN` when it is set;
no API schema or docs pages (`/docs`, `/redoc`, `/openapi.json` are off); log records and the
health bodies pass through `bridge.logsafe` so no configured secret is ever printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from bridge import logsafe, metrics
from bridge.call import Call
from bridge.call.agent import dialplan_chat_backends
from bridge.call.observer import CallObserver
from bridge.call.prompts import prewarm_prompts
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
from bridge.web.api import mount_admin_api
from bridge.web.phone import mount_phone

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, preload_models: bool = True) -> FastAPI:
    settings = settings or Settings.from_env()
    if not settings.engine_token:
        # One token per process, made before anything reads the settings: the engine requires it and
        # the bridge's own `local` provider sends it. Outside clients set BRIDGE_ENGINE_TOKEN instead.
        settings = settings.model_copy(update={"engine_token": secrets.token_urlsafe(32)})
    store = DialplanStore(settings.dialplans)  # raises DialplanInvalid: never serve a broken plan
    calls: set[Call] = set()
    runtime = RuntimeState()
    # Admission: one pool of call slots for every leg of this process (Twilio takes a slot at
    # stream start, the SIP leg at INVITE); the Twilio webhooks' per-source token buckets.
    call_slots = Slots(settings.max_calls)
    webhook_rate = RateLimiter(settings.rate_per_source_per_s, settings.rate_burst)

    async def run_call(leg: Leg, observer: CallObserver | None = None) -> None:
        # The call keeps this dialplan snapshot to its end; `observer` (the softphone page) is told
        # what happens in the call as it happens.
        call = Call(leg, store.current(), settings, observer=observer)
        kind = leg.kind
        stats = metrics.METRICS
        calls.add(call)
        stats.active_calls.inc(leg=kind)
        try:
            result = await call.run()
        finally:
            calls.discard(call)
            stats.active_calls.dec(leg=kind)
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
        logsafe.set_pii_redactor(records.redactor if records.redactor.enabled else None)
        background = [asyncio.create_task(store.run_watcher())]
        if preload_models:
            t0 = time.perf_counter()
            runtime.models = await loop.run_in_executor(None, engine.preload)
            log.info("speech models loaded in %.2f s: %s", time.perf_counter() - t0, runtime.models)
            background.append(asyncio.create_task(prewarm_prompts(store)))
        if settings.sip_enabled:
            from bridge.telephony.sip.service import start_sip

            try:
                runtime.sip = await start_sip(
                    settings, run_call, bind_host=settings.host, admission=call_slots
                )
            except BridgeError as exc:
                log.error("SIP leg not started: %s", exc)
                runtime.sip_error = str(exc)
        log.info("ivr-bridge ready on %s:%d (dialplan v%d)", settings.host, settings.port, store.version)
        try:
            yield
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if runtime.sip is not None:
                await runtime.sip.stop()
            for phone_call in list(getattr(app.state, "phone_calls", ())):
                phone_call.cancel()  # its leg closes its peer connection and frees its call slot
            await engine.close_all()
            await records.stop()

    # No /docs, /redoc or /openapi.json: an IVR bridge has no API to publish (docs/security.md).
    app = FastAPI(title="ivr-bridge", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.calls = calls
    app.state.dialplans = store
    app.state.call_slots = call_slots
    app.state.webhook_rate = webhook_rate
    records = app.state.records = Records(settings)  # started and stopped in the lifespan
    mount_admin_api(app, settings, records)  # /api/* only when BRIDGE_ADMIN_TOKEN is set
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

    twilio = TwilioRoutes(
        settings, run_call, flow_for=flow_for, call_slots=call_slots, rate_limiter=webhook_rate
    )
    ops = OpsRoutes(settings, runtime, calls=calls, call_slots=call_slots, dialplans=store)
    app.include_router(twilio.router())
    app.include_router(ops.router())
    return app
