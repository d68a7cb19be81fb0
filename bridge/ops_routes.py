"""Operations routes: `GET /healthz` and `GET /readyz` (probes) and `GET /metrics` (Prometheus).

Health bodies carry error texts (dialplan, SIP): they pass through the same redaction as log lines
(`bridge.logsafe`). `/metrics` is open when `BRIDGE_METRICS_TOKEN` is unset (a Prometheus scrape on
a private network) and wants `Authorization: Bearer <token>` when it is set (docs/security.md).
"""

from __future__ import annotations

import asyncio
import hmac
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Response

from bridge import logsafe, metrics
from bridge.dialplan.store import DialplanStore
from bridge.limits import Slots
from bridge.settings import Settings

if TYPE_CHECKING:
    from bridge.cluster import Cluster
    from bridge.telephony.sip.service import SipService


def bearer_matches(authorization: str | None, token: str) -> bool:
    """True if `authorization` is `Bearer <token>` (constant-time comparison of the token)."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8"))


@dataclass
class RuntimeState:
    """What the app's lifespan learns at start-up, as the health routes report it."""

    models: dict[str, Any] = field(default_factory=dict)  # the speech models loaded, with timings
    sip: SipService | None = None
    sip_error: str | None = None  # why the SIP leg did not start
    draining: bool = False  # SIGTERM: /readyz answers 503 from then on

    def sip_status(self) -> dict[str, Any]:
        if self.sip is not None:
            return dict(self.sip.status())
        if self.sip_error is not None:
            return {"enabled": True, "state": "failed", "error": self.sip_error}
        return {"enabled": False}


class OpsRoutes:
    """`/healthz`, `/readyz` and `/metrics` over the app's live state; `router()` mounts them."""

    def __init__(
        self,
        settings: Settings,
        runtime: RuntimeState,
        *,
        calls: Collection[object],
        call_slots: Slots,
        dialplans: DialplanStore,
        cluster: Cluster | None = None,
    ) -> None:
        self.settings = settings
        self.cluster = cluster
        self.runtime = runtime
        self.calls = calls
        self.call_slots = call_slots
        self.dialplans = dialplans

    def router(self) -> APIRouter:
        router = APIRouter()
        router.add_api_route("/metrics", self.metrics_text, methods=["GET"])
        router.add_api_route("/healthz", self.healthz, methods=["GET"])
        router.add_api_route("/readyz", self.readyz, methods=["GET"])
        return router

    async def metrics_text(self, request: Request) -> Response:
        # Open when BRIDGE_METRICS_TOKEN is unset (a Prometheus scrape on a private network);
        # set it whenever the bridge's port is reachable from outside.
        token = self.settings.metrics_token
        if token is not None and not bearer_matches(request.headers.get("authorization"), token):
            return Response(status_code=401, headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    async def healthz(self) -> dict[str, object]:
        body: dict[str, object] = {
            "status": "ok",
            "calls": len(self.calls),
            "call_slots": {"in_use": self.call_slots.in_use, "limit": self.call_slots.limit},
            "dialplan_version": self.dialplans.version,
            "dialplan_errors": self.dialplans.last_errors,
            "sip": self.runtime.sip_status(),
            # Process vitals the soak run watches for leaks (bench/soak.py).
            "runtime": {"tasks": len(asyncio.all_tasks()), "threads": threading.active_count()},
        }
        if self.cluster is not None:  # scale-out (docs/cluster.md): shared state, or degraded to local
            body["cluster"] = {
                "instance": self.cluster.instance,
                "redis": "up" if self.cluster.available else "degraded",
                "calls_held": len(self.cluster.held_calls),
            }
        if self.runtime.draining:
            body["draining"] = True
        return dict(logsafe.log_filter().redactor.data(body))

    async def readyz(self, response: Response) -> dict[str, object]:
        sip = self.runtime.sip_status()
        ready = not sip.get("enabled") or sip.get("state") not in ("failed",)
        ready = ready and not self.runtime.draining
        response.status_code = 200 if ready else 503
        body: dict[str, object] = {"ready": ready, "models": self.runtime.models, "sip": sip}
        if self.cluster is not None:  # scale-out (docs/cluster.md): shared state, or degraded to local
            body["cluster"] = {
                "instance": self.cluster.instance,
                "redis": "up" if self.cluster.available else "degraded",
                "calls_held": len(self.cluster.held_calls),
            }
        if self.runtime.draining:
            body["draining"] = True
        return dict(logsafe.log_filter().redactor.data(body))
