"""HTTP shell: `create_app(settings)` wires the Twilio routes, the SIP leg, the embedded engine,
the dialplan store (with hot reload) and the health and metrics endpoints.

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
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response

from bridge import logsafe, metrics
from bridge.agent import dialplan_chat_backends
from bridge.call import Call, prompt_voice
from bridge.dialplan.store import DialplanStore
from bridge.engine.backends import ChatBackend
from bridge.engine.server import mount_engine
from bridge.errors import BridgeError
from bridge.limits import RateLimiter, Slots
from bridge.records import Records
from bridge.settings import Settings
from bridge.telephony.events import Leg
from bridge.telephony.twilio_routes import twilio_router
from bridge.web.api import mount_admin_api

log = logging.getLogger(__name__)


def bearer_matches(authorization: str | None, token: str) -> bool:
    """True if `authorization` is `Bearer <token>` (constant-time comparison of the token)."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8"))


def create_app(settings: Settings | None = None, *, preload_models: bool = True) -> FastAPI:
    settings = settings or Settings.from_env()
    if not settings.engine_token:
        # One token per process, made before anything reads the settings: the engine requires it and
        # the bridge's own `local` provider sends it. Outside clients set BRIDGE_ENGINE_TOKEN instead.
        settings = settings.model_copy(update={"engine_token": secrets.token_urlsafe(32)})
    store = DialplanStore(settings.dialplans)  # raises DialplanInvalid: never serve a broken plan
    calls: set[Call] = set()
    state: dict[str, Any] = {"sip": None, "models": {}}
    # Admission: one pool of call slots for every leg of this process (Twilio takes a slot at
    # stream start, the SIP leg at INVITE); the Twilio webhooks' per-source token buckets.
    call_slots = Slots(settings.max_calls)
    webhook_rate = RateLimiter(settings.rate_per_source_per_s, settings.rate_burst)

    async def run_call(leg: Leg) -> None:
        call = Call(leg, store.current(), settings)  # the call keeps this snapshot to its end
        kind = "twilio" if type(leg).__name__ == "TwilioLeg" else "sip"
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

    async def prewarm_prompts() -> None:
        """Synthesize every fixed prompt of the current dialplan (again after each reload), so
        callers never wait for speech synthesis of a greeting or a menu."""
        loop = asyncio.get_running_loop()
        done_version = 0
        while True:
            if store.version != done_version:
                done_version = store.version
                texts = store.current().fixed_prompts()
                t0 = time.perf_counter()
                for text in texts:
                    try:
                        await loop.run_in_executor(None, prompt_voice().render, text, True)
                    except BridgeError as exc:
                        log.warning("prompt %r not prepared: %s", text, exc)
                log.info("dialplan v%d: %d prompts prepared in %.2f s", done_version, len(texts),
                         time.perf_counter() - t0)
            await asyncio.sleep(1.0)

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
            state["models"] = await loop.run_in_executor(None, engine.preload)
            log.info("speech models loaded in %.2f s: %s", time.perf_counter() - t0, state["models"])
            background.append(asyncio.create_task(prewarm_prompts()))
        if settings.sip_enabled:
            from bridge.telephony.sip.service import start_sip

            try:
                state["sip"] = await start_sip(settings, run_call, bind_host=settings.host,
                                               admission=call_slots)
            except BridgeError as exc:
                log.error("SIP leg not started: %s", exc)
                state["sip_error"] = str(exc)
        log.info("ivr-bridge ready on %s:%d (dialplan v%d)", settings.host, settings.port, store.version)
        try:
            yield
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if state["sip"] is not None:
                await state["sip"].stop()
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

    app.include_router(
        twilio_router(settings, run_call, flow_for=flow_for, call_slots=call_slots, rate_limiter=webhook_rate)
    )

    @app.get("/metrics")
    async def metrics_text(request: Request) -> Response:
        # Open when BRIDGE_METRICS_TOKEN is unset (a Prometheus scrape on a private network);
        # set it whenever the bridge's port is reachable from outside.
        token = settings.metrics_token
        if token is not None and not bearer_matches(request.headers.get("authorization"), token):
            return Response(status_code=401, headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    def sip_status() -> dict[str, Any]:
        if state["sip"] is not None:
            return dict(state["sip"].status())
        if "sip_error" in state:
            return {"enabled": True, "state": "failed", "error": state["sip_error"]}
        return {"enabled": False}

    # Health bodies carry error texts (dialplan, SIP): redacted like log lines.
    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        body = {
            "status": "ok",
            "calls": len(calls),
            "call_slots": {"in_use": call_slots.in_use, "limit": call_slots.limit},
            "dialplan_version": store.version,
            "dialplan_errors": store.last_errors,
            "sip": sip_status(),
        }
        return dict(logsafe.log_filter().redactor.data(body))

    @app.get("/readyz")
    async def readyz(response: Response) -> dict[str, object]:
        sip = sip_status()
        ready = not sip.get("enabled") or sip.get("state") not in ("failed",)
        response.status_code = 200 if ready else 503
        body = {"ready": ready, "models": state["models"], "sip": sip}
        return dict(logsafe.log_filter().redactor.data(body))

    return app
