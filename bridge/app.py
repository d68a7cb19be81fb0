"""HTTP shell: `create_app(settings)` with the Twilio routes, the embedded engine and health."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response

from bridge import metrics
from bridge.call import AgentConfig, Call
from bridge.realtime.providers import resolve_endpoint
from bridge.settings import Settings
from bridge.telephony.events import Leg
from bridge.telephony.twilio_routes import twilio_router

log = logging.getLogger(__name__)


def default_agent(settings: Settings) -> AgentConfig:
    """The agent a call gets when no dialplan says otherwise: the embedded `local` engine."""
    endpoint = resolve_endpoint("local", settings=settings, model=settings.realtime_model)
    return AgentConfig(
        endpoint=endpoint,
        upstream_format=settings.upstream_format,
        voice=settings.voice,
        barge_in_min_speech_ms=settings.barge_in_min_speech_ms,
        barge_in_threshold=settings.barge_in_threshold,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("ivr-bridge listening on %s:%d", settings.host, settings.port)
        yield

    app = FastAPI(title="ivr-bridge", lifespan=lifespan)
    app.state.settings = settings
    app.state.calls = set()

    async def run_call(leg: Leg) -> None:
        call = Call(leg, default_agent(settings))
        app.state.calls.add(call)
        try:
            await call.run()
        finally:
            app.state.calls.discard(call)

    app.include_router(twilio_router(settings, run_call))

    @app.get("/metrics")
    async def metrics_text() -> Response:
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"status": "ok", "calls": len(app.state.calls)}

    return app
