"""Hand a Twilio call back to Twilio after its stream: transfer (`<Dial>`) or hang up.

The instance holding the media stream decides; `choose_continuation_path` (call_registry) picks
how the decision reaches Twilio: through the registry and the `<Connect action>` request, or a
REST call update. Either way the decision is also stored in the registry, so an action request
that reaches this instance answers the same TwiML.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from bridge.metrics import METRICS, BridgeMetrics
from bridge.settings import Settings
from bridge.telephony.twilio.call_registry import (
    CallRegistry,
    Continuation,
    ContinuationPath,
    Transfer,
    choose_continuation_path,
)
from bridge.telephony.twilio.rest import TwilioRestError, has_rest_credentials, make_client, update_call_twiml
from bridge.telephony.twilio.twiml import dial, hangup

if TYPE_CHECKING:
    from twilio.rest import Client

log = logging.getLogger(__name__)


def continuation_twiml(continuation: Continuation | None) -> str:
    """TwiML that carries out `continuation`; no decision means hang up."""
    if isinstance(continuation, Transfer):
        return dial(continuation.target, continuation.caller_id)
    return hangup()


class TwilioContinuer:
    def __init__(
        self,
        settings: Settings,
        registry: CallRegistry,
        metrics: BridgeMetrics = METRICS,
        rest_client: Callable[[], Client] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self._rest_client = rest_client
        self._client: Client | None = None

    def _client_now(self) -> Client:
        if self._client is None:
            self._client = self._rest_client() if self._rest_client else make_client(self.settings)
        return self._client

    async def continue_call(
        self, call_sid: str, continuation: Continuation, now_s: float
    ) -> ContinuationPath:
        """Record and deliver `continuation`; the caller then closes the stream. Returns the path used."""
        twiml = continuation_twiml(continuation)  # raises TwimlError for an undialable target
        record = await self.registry.get(call_sid)
        path = choose_continuation_path(
            self.settings.twilio_continuation,
            has_action_url=bool(record and record.has_action_url),
            registry_shared=self.registry.shared,
            has_rest_credentials=has_rest_credentials(self.settings),
        )
        await self.registry.set_continuation(call_sid, continuation, now_s)
        if path == "rest":
            try:
                await update_call_twiml(self._client_now(), call_sid, twiml)
            except TwilioRestError as exc:
                fallback: ContinuationPath = "action" if record and record.has_action_url else "none"
                log.error("REST update of %s failed (%s); continuing via %s", call_sid, exc, fallback)
                path = fallback
        kind = "transfer" if isinstance(continuation, Transfer) else "hang_up"
        self.metrics.continuations.inc(action=kind, path=path)
        log.info("call %s: %s via %s", call_sid, kind, path)
        return path
