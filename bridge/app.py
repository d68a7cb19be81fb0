"""HTTP shell: `create_app(settings)` wires the Twilio routes, the SIP leg, the embedded engine,
the dialplan store (with hot reload) and the health and metrics endpoints.

Start-up order in the lifespan: load the dialplans (a broken dialplan never starts serving),
load the speech models once (timed, logged), start the SIP leg when configured (registration
runs in the background; its state is in /healthz and /metrics), then serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Response

from bridge import metrics
from bridge.call import Call, prompt_voice
from bridge.dialplan.store import DialplanStore
from bridge.engine.server import mount_engine
from bridge.errors import BridgeError
from bridge.limits import Slots
from bridge.settings import Settings
from bridge.telephony.events import Leg
from bridge.telephony.twilio_routes import twilio_router

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, preload_models: bool = True) -> FastAPI:
    settings = settings or Settings.from_env()
    store = DialplanStore(settings.dialplans)  # raises DialplanInvalid: never serve a broken plan
    calls: set[Call] = set()
    call_slots = Slots(settings.max_calls)  # calls in progress, all legs (the SIP leg takes/gives its own)
    state: dict[str, Any] = {"sip": None, "models": {}}

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
        loop = asyncio.get_running_loop()
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

    app = FastAPI(title="ivr-bridge", lifespan=lifespan)
    app.state.settings = settings
    app.state.calls = calls
    app.state.call_slots = call_slots
    app.state.dialplans = store
    engine = mount_engine(app, settings)

    def flow_for(called: str) -> str | None:
        plan = store.current()
        try:
            return plan.flow_for(called)
        except KeyError:
            return None

    app.include_router(twilio_router(settings, run_call, flow_for=flow_for))

    @app.get("/metrics")
    async def metrics_text() -> Response:
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    def sip_status() -> dict[str, Any]:
        if state["sip"] is not None:
            return dict(state["sip"].status())
        if "sip_error" in state:
            return {"enabled": True, "state": "failed", "error": state["sip_error"]}
        return {"enabled": False}

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {
            "status": "ok",
            "calls": len(calls),
            "dialplan_version": store.version,
            "dialplan_errors": store.last_errors,
            "sip": sip_status(),
        }

    @app.get("/readyz")
    async def readyz(response: Response) -> dict[str, object]:
        sip = sip_status()
        ready = not sip.get("enabled") or sip.get("state") not in ("failed",)
        response.status_code = 200 if ready else 503
        return {"ready": ready, "models": state["models"], "sip": sip}

    return app
