"""The Twilio call registry of one instance in a cluster: local records, shared where it matters.

`ClusterCallRegistry` wraps the in-process registry (which keeps the stream closers: a closer is a
function of this process) and adds, through `Cluster`:

- the call directory: `attach_stream` claims `call -> this instance` (refused when another instance
  holds the call's stream), `detach_stream` gives it up;
- status callbacks for a call held elsewhere are forwarded to the holder (`ForwardStatus`), whose
  registry then closes its stream on a terminal status;
- the call's webhook facts (caller, called, flow, action URL) and its pending continuation are kept
  in Redis, so the stream and the `<Connect action>` request may reach any instance.

While Redis is down everything works as the in-process registry does (`shared` is False then, so
continuations prefer the REST path when credentials exist).
"""

from __future__ import annotations

import logging

from bridge.cluster.core import ForwardStatus
from bridge.cluster.shell import Cluster
from bridge.telephony.twilio.call_registry import (
    CallRecord,
    Continuation,
    HangUp,
    InProcessCallRegistry,
    StatusEvent,
    StreamCloser,
    Transfer,
)

log = logging.getLogger(__name__)


class ClusterCallRegistry:
    def __init__(self, cluster: Cluster, local: InProcessCallRegistry | None = None) -> None:
        self.cluster = cluster
        self.local = local if local is not None else InProcessCallRegistry()

    @property
    def shared(self) -> bool:
        return self.cluster.available

    async def open_call(
        self, call_sid: str, *, caller: str, called: str, flow: str | None, has_action_url: bool, now_s: float
    ) -> CallRecord:
        record = await self.local.open_call(
            call_sid, caller=caller, called=called, flow=flow, has_action_url=has_action_url, now_s=now_s
        )
        info = {"caller": caller, "called": called, "flow": flow, "has_action_url": has_action_url}
        await self.cluster.put_call_info(call_sid, info)
        return record

    async def get(self, call_sid: str) -> CallRecord | None:
        return await self.local.get(call_sid)

    async def record_status(self, call_sid: str, event: StatusEvent) -> CallRecord:
        record = await self.local.record_status(call_sid, event)
        if not self.cluster.holds(call_sid):
            owner = await self.cluster.owner_of(call_sid)
            if owner is not None and owner != self.cluster.instance:
                message = ForwardStatus(call_sid, event.kind, event.status, event.at_s, event.detail)
                if not await self.cluster.send(owner, message):
                    log.warning("status %s of %s: holder %s did not get it", event.status, call_sid, owner)
        return record

    async def apply_forwarded(self, message: ForwardStatus) -> None:
        """A status callback another instance received for a call this one holds."""
        event = StatusEvent(message.kind, message.status, message.at_s, message.detail)
        await self.local.record_status(message.call_id, event)

    async def attach_stream(self, call_sid: str, stream_sid: str, closer: StreamCloser, now_s: float) -> bool:
        if await self.cluster.claim_call(call_sid) is False:
            log.warning("stream %s of %s refused: another instance holds the call", stream_sid, call_sid)
            return False
        known = await self.local.get(call_sid)
        if known is None or not known.has_action_url:  # the webhook was answered by another instance
            info = await self.cluster.get_call_info(call_sid)
            if info is not None:
                flow = info.get("flow")
                await self.local.open_call(
                    call_sid,
                    caller=str(info.get("caller", "")),
                    called=str(info.get("called", "")),
                    flow=flow if isinstance(flow, str) else None,
                    has_action_url=bool(info.get("has_action_url")),
                    now_s=now_s,
                )
        if not await self.local.attach_stream(call_sid, stream_sid, closer, now_s):
            await self.cluster.forget_call(call_sid)
            return False
        return True

    async def detach_stream(self, call_sid: str, stream_sid: str, now_s: float) -> None:
        await self.local.detach_stream(call_sid, stream_sid, now_s)
        await self.cluster.forget_call(call_sid)

    async def set_continuation(self, call_sid: str, continuation: Continuation, now_s: float) -> None:
        await self.local.set_continuation(call_sid, continuation, now_s)
        if isinstance(continuation, Transfer):
            value: dict[str, object] = {"transfer": continuation.target, "caller_id": continuation.caller_id}
        else:
            value = {"hang_up": True}
        await self.cluster.put_continuation(call_sid, value)

    async def take_continuation(self, call_sid: str) -> Continuation | None:
        mine = await self.local.take_continuation(call_sid)
        shared = await self.cluster.take_continuation(call_sid)  # spent everywhere either way
        if mine is not None:
            return mine
        if shared is None:
            return None
        target = shared.get("transfer")
        if isinstance(target, str) and target:
            caller_id = shared.get("caller_id")
            return Transfer(target, caller_id if isinstance(caller_id, str) else None)
        return HangUp()

    async def prune(self, now_s: float) -> int:
        return await self.local.prune(now_s)
