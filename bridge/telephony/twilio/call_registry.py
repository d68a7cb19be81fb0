"""What the bridge knows about each Twilio call, shared by the webhook, status callbacks and the stream.

One `CallRecord` per CallSid: caller, called number and flow (from the voice webhook), the call's
and the stream's status history (from status callbacks), the open stream and how to close it
(from the media route), and the pending continuation: what Twilio should do once the stream ends
(transfer to a target, or hang up).

`CallRegistry` is a small async Protocol; `InProcessCallRegistry` keeps everything in this
process. With several bridge instances behind one number, the webhook, the status callback, the
stream and the `<Connect action>` request of one call may each reach a different instance, so:

- a shared implementation (e.g. Redis: a hash per CallSid, a pub/sub channel per instance for
  "close this stream") sets `shared = True`; then the continuation travels through it and
  `<Connect action>` works from any instance;
- with the in-process registry, `choose_continuation_path` prefers the REST call update (the
  instance holding the stream tells Twilio directly, no shared state needed) whenever REST
  credentials exist; the `<Connect action>` path is then used only without credentials, which is
  correct for a single instance.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

logger = logging.getLogger(__name__)

CALL_STATUSES = frozenset(
    {"queued", "initiated", "ringing", "in-progress", "completed", "busy", "failed", "no-answer", "canceled"}
)
TERMINAL_CALL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
STREAM_EVENTS = frozenset({"stream-started", "stream-stopped", "stream-error"})
_RANK = {"queued": 0, "initiated": 0, "ringing": 1, "in-progress": 2}

StreamCloser = Callable[[str], Awaitable[None]]
StatusKind = Literal["call", "stream"]
ContinuationMode = Literal["auto", "action", "rest"]
ContinuationPath = Literal["action", "rest", "none"]


@dataclass(frozen=True, slots=True)
class Transfer:
    """Continue the call with `<Dial>` to `target` (E.164 or SIP URI)."""

    target: str
    caller_id: str | None = None


@dataclass(frozen=True, slots=True)
class HangUp:
    """End the call."""


Continuation = Transfer | HangUp


@dataclass(frozen=True, slots=True)
class StatusEvent:
    kind: StatusKind  # "call" (CallStatus) or "stream" (StreamEvent)
    status: str  # e.g. "ringing", "completed", "stream-started"
    at_s: float
    detail: str = ""  # StreamError text, SIP response code, ...


@dataclass(slots=True)
class CallRecord:
    call_sid: str
    created_s: float
    caller: str = ""
    called: str = ""
    flow: str | None = None
    status: str = ""  # latest call status (never goes back from a terminal one)
    history: list[StatusEvent] = field(default_factory=list)
    stream_sid: str | None = None
    stream_status: str | None = None  # "open", "stopped", "error"
    continuation: Continuation | None = None
    # The TwiML answering this call had `<Connect action=...>`: a continuation can go that way.
    has_action_url: bool = False
    updated_s: float = 0.0

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_CALL_STATUSES

    def snapshot(self) -> CallRecord:
        return replace(self, history=list(self.history))


class CallRegistry(Protocol):
    """Call records by CallSid. Every method is safe to call for an unknown CallSid."""

    @property
    def shared(self) -> bool:
        """True when every instance serving the number sees the same records (right now)."""

    async def open_call(
        self, call_sid: str, *, caller: str, called: str, flow: str | None, has_action_url: bool, now_s: float
    ) -> CallRecord: ...

    async def get(self, call_sid: str) -> CallRecord | None:
        """A snapshot of the record (changing it changes nothing)."""

    async def record_status(self, call_sid: str, event: StatusEvent) -> CallRecord:
        """Append a status event; a terminal call status closes the call's open stream."""

    async def attach_stream(self, call_sid: str, stream_sid: str, closer: StreamCloser, now_s: float) -> bool:
        """Register the call's media stream. False if another stream is already open for the call
        or the call has ended (the caller should refuse the stream)."""

    async def detach_stream(self, call_sid: str, stream_sid: str, now_s: float) -> None: ...

    async def set_continuation(self, call_sid: str, continuation: Continuation, now_s: float) -> None: ...

    async def take_continuation(self, call_sid: str) -> Continuation | None:
        """The pending continuation, removed (the `<Connect action>` request uses it once)."""

    async def prune(self, now_s: float) -> int:
        """Forget old records; returns how many."""


class InProcessCallRegistry:
    """`CallRegistry` in this process's memory (one instance, or REST continuations; see module doc).

    Records of ended calls (or of calls whose stream stopped) are kept `ended_keep_s` for late
    callbacks and continuations, any record at most `max_age_s`; pruning happens as calls open.
    """

    shared = False

    def __init__(self, *, ended_keep_s: float = 300.0, max_age_s: float = 6 * 3600.0) -> None:
        self._records: dict[str, CallRecord] = {}
        self._closers: dict[str, tuple[str, StreamCloser]] = {}
        self._ended_keep_s = ended_keep_s
        self._max_age_s = max_age_s
        self._next_prune_s = 0.0

    def __len__(self) -> int:
        return len(self._records)

    def _record(self, call_sid: str, now_s: float) -> CallRecord:
        record = self._records.get(call_sid)
        if record is None:
            record = self._records[call_sid] = CallRecord(call_sid=call_sid, created_s=now_s, updated_s=now_s)
        return record

    async def open_call(
        self, call_sid: str, *, caller: str, called: str, flow: str | None, has_action_url: bool, now_s: float
    ) -> CallRecord:
        if now_s >= self._next_prune_s:  # a full scan at most every 10 s, not on every call
            self._next_prune_s = now_s + 10.0
            await self.prune(now_s)
        record = self._record(call_sid, now_s)
        record.caller, record.called, record.flow = caller, called, flow
        record.has_action_url = has_action_url
        record.updated_s = now_s
        return record.snapshot()

    async def get(self, call_sid: str) -> CallRecord | None:
        record = self._records.get(call_sid)
        return None if record is None else record.snapshot()

    async def record_status(self, call_sid: str, event: StatusEvent) -> CallRecord:
        record = self._record(call_sid, event.at_s)
        record.history.append(event)
        record.updated_s = event.at_s
        if event.kind == "call":
            if not record.ended and _RANK.get(event.status, 3) >= _RANK.get(record.status, -1):
                record.status = event.status
            if record.ended:
                await self._close_stream(call_sid, f"call {event.status}")
        elif event.status == "stream-started" and record.stream_status is None:
            record.stream_status = "open"
        elif event.status == "stream-stopped":
            record.stream_status = "stopped"
        elif event.status == "stream-error":
            record.stream_status = "error"
        return record.snapshot()

    async def _close_stream(self, call_sid: str, reason: str) -> None:
        entry = self._closers.pop(call_sid, None)
        if entry is None:
            return
        stream_sid, closer = entry
        logger.info("closing stream %s of %s: %s", stream_sid, call_sid, reason)
        try:
            await closer(reason)
        except Exception:  # a closer failing must not break the status callback
            logger.exception("closing stream %s of %s failed", stream_sid, call_sid)

    async def attach_stream(self, call_sid: str, stream_sid: str, closer: StreamCloser, now_s: float) -> bool:
        record = self._record(call_sid, now_s)
        if record.ended or call_sid in self._closers:
            return False
        self._closers[call_sid] = (stream_sid, closer)
        record.stream_sid = stream_sid
        record.stream_status = "open"
        record.updated_s = now_s
        return True

    async def detach_stream(self, call_sid: str, stream_sid: str, now_s: float) -> None:
        entry = self._closers.get(call_sid)
        if entry is not None and entry[0] == stream_sid:
            del self._closers[call_sid]
        record = self._records.get(call_sid)
        if record is not None and record.stream_sid == stream_sid and record.stream_status == "open":
            record.stream_status = "stopped"
            record.updated_s = now_s

    async def set_continuation(self, call_sid: str, continuation: Continuation, now_s: float) -> None:
        record = self._record(call_sid, now_s)
        record.continuation = continuation
        record.updated_s = now_s

    async def take_continuation(self, call_sid: str) -> Continuation | None:
        record = self._records.get(call_sid)
        if record is None:
            return None
        continuation, record.continuation = record.continuation, None
        return continuation

    async def prune(self, now_s: float) -> int:
        doomed = [
            sid
            for sid, record in self._records.items()
            if sid not in self._closers
            and (
                now_s - record.created_s > self._max_age_s
                or (_finished(record) and now_s - record.updated_s > self._ended_keep_s)
            )
        ]
        for sid in doomed:
            del self._records[sid]
        return len(doomed)


def _finished(record: CallRecord) -> bool:
    """Ended, or its media stream stopped: a call whose status callbacks never come (none configured,
    or lost) is forgotten `ended_keep_s` after its stream stopped, not after `max_age_s` (6 h of every
    call's record kept in memory). A late callback or a new stream for it starts a fresh record."""
    return record.ended or record.stream_status in ("stopped", "error")


def choose_continuation_path(
    mode: ContinuationMode, *, has_action_url: bool, registry_shared: bool, has_rest_credentials: bool
) -> ContinuationPath:
    """How a transfer or hang-up decided on the instance holding the stream reaches Twilio.

    - "action": store it in the registry and close the stream; Twilio POSTs the `<Connect action>`
      URL and whichever instance answers reads it from the registry. Needs the action URL in the
      TwiML, and (with several instances) a shared registry.
    - "rest": update the live call through the REST API with the new TwiML (needs
      `TWILIO_ACCOUNT_SID` + `TWILIO_AUTH_TOKEN`); works from any instance, nothing shared.
    - "none": neither is possible; the bridge can only close the stream (the call then ends).

    `auto` takes "action" when the registry is shared, else "rest" when credentials exist, else
    "action" (correct for a single instance).
    """
    if mode == "rest":
        return "rest" if has_rest_credentials else ("action" if has_action_url else "none")
    if mode == "action":
        return "action" if has_action_url else ("rest" if has_rest_credentials else "none")
    if has_action_url and registry_shared:
        return "action"
    if has_rest_credentials:
        return "rest"
    return "action" if has_action_url else "none"
