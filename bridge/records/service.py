"""`Records`: what happened on every call, kept safely, deleted on request.

The call's side (`Records.start_call(...) -> CallRecorder`) does no I/O: every method queues a row
for the writer task (bridge/records/writer.py) or appends audio to the recording's buffers
(bridge/records/recording.py). Call them on the event loop's thread.

The admin side (the API in bridge/web/api.py and `ivr-bridge calls ...`) reads, erases and purges,
and writes an audit entry for every action, in the same transaction as an erasure; an action whose
audit entry cannot be written is refused (RecordsUnavailable).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from sqlalchemy.exc import DBAPIError

from bridge.call.record import TurnStages  # the call measures turns; records keeps them
from bridge.errors import ConfigError
from bridge.metrics import METRICS
from bridge.records import schema, store
from bridge.records.crypto import encrypt_field
from bridge.records.db import (
    RecordsUnavailable,
    create_engine,
    describe_url,
    migrate,
    prepare_sqlite_dir,
    reason,
)
from bridge.records.recording import (
    OpenedRecording,
    RecordingMissing,
    RecordingWriter,
    open_recording,
    safe_name,
)
from bridge.records.redaction import PiiRedactor, mask_digits, parse_patterns, parse_rules
from bridge.records.store import Actor, CallFilters, CallNotFound, Erased
from bridge.records.writer import Insert, Item, RecordWriter, Update
from bridge.settings import Settings

log = logging.getLogger(__name__)

LegKind = Literal["twilio", "sip", "webrtc"]
Speaker = Literal["caller", "bot"]
RETENTION_EVERY_S = 3600.0


def pii_redactor_from_settings(settings: Settings) -> PiiRedactor:
    """The PII rules of BRIDGE_PII_RULES plus the patterns of the BRIDGE_PII_PATTERNS file."""
    extra: dict[str, str] = {}
    if settings.pii_patterns is not None:
        try:
            doc = yaml.safe_load(settings.pii_patterns.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(
                f"BRIDGE_PII_PATTERNS: cannot read {settings.pii_patterns}: {exc.strerror}"
            ) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"BRIDGE_PII_PATTERNS: {settings.pii_patterns} is not valid YAML: {exc}"
            ) from exc
        extra = parse_patterns(doc, f"BRIDGE_PII_PATTERNS ({settings.pii_patterns})")
    return PiiRedactor(parse_rules(settings.pii_rules), extra)


class CallRecorder:
    """One call's record. Every method returns at once (no I/O); `t_ms` is the call clock (ms
    since `Records.start_call`)."""

    __slots__ = ("_closing", "_ended", "_live", "_put", "call_id", "recording", "started_at")

    def __init__(
        self, records: Records, call_id: str, started_at: datetime, recording: RecordingWriter | None
    ) -> None:
        self.call_id = call_id
        self.started_at = started_at
        self.recording = recording
        self._put = records._writer_put
        self._closing = records._closing
        self._live = records._live
        self._ended = False

    def answered(self, t_ms: int) -> None:
        self._put(Update(self.call_id, {"answered_at": self.started_at + timedelta(milliseconds=t_ms)}))

    def event(self, kind: str, t_ms: int, **data: Any) -> None:
        """A timeline event: prompt_played, menu_matched, agent_started, barge_in (heard_ms,
        truncated_ms), upstream_error, reconnect, transfer, tool_call (name, args, result), dtmf,
        menu_choice, ... `data` must be JSON-serializable; its strings are PII-masked when stored."""
        self._put(
            Insert(
                schema.events,
                self.call_id,
                {"call_id": self.call_id, "t_ms": t_ms, "kind": kind, "data": data or None},
            )
        )

    def dtmf(self, t_ms: int, digits: str, *, sensitive: bool = False) -> None:
        """Digits the caller keyed (a `sensitive: true` collect step stores them masked)."""
        self.event("dtmf", t_ms, digits=mask_digits(digits) if sensitive else digits, sensitive=sensitive)

    def transcript(self, speaker: Speaker, t_ms: int, text: str, heard_ms: int | None = None) -> None:
        """A line said by the caller or the bot; `heard_ms` for a bot line cut by barge-in (how much
        of it the caller heard). Masked for PII and encrypted (BRIDGE_DATA_KEY) when stored."""
        self._put(
            Insert(
                schema.transcripts,
                self.call_id,
                {
                    "call_id": self.call_id,
                    "t_ms": t_ms,
                    "speaker": speaker,
                    "text": text,
                    "heard_ms": heard_ms,
                },
            )
        )

    def turn(self, stages: TurnStages, t_ms: int | None = None) -> None:
        """An agent turn's latency milestones; feeds `ivr_bridge_turn_stage_seconds{stage}` too."""
        latencies = stages.latencies_ms()
        for stage, ms in latencies.items():
            if ms is not None and ms >= 0:
                METRICS.turn_stage_seconds.observe(ms / 1000.0, stage=stage)
        when = t_ms if t_ms is not None else (stages.caller_stopped_ms or stages.upstream_stopped_ms or 0)
        self._put(Insert(schema.turns, self.call_id, {
            "call_id": self.call_id, "t_ms": when,
            "caller_stopped_ms": stages.caller_stopped_ms, "upstream_stopped_ms": stages.upstream_stopped_ms,
            "first_delta_ms": stages.first_delta_ms, "first_played_ms": stages.first_played_ms,
            **{f"{stage}_ms": ms for stage, ms in latencies.items()},
        }))  # fmt: skip

    def end(self, reason: str, t_ms: int) -> None:
        """The call ended (`reason`: hangup, transfer, error: ..., as the call reports it). The
        recording is finalized in the background; `Records.stop()` waits for it."""
        if self._ended:
            return
        self._ended = True
        self._live.pop(self.call_id, None)
        self._put(
            Update(
                self.call_id,
                {
                    "ended_at": self.started_at + timedelta(milliseconds=t_ms),
                    "end_reason": reason[:256],
                    "duration_ms": t_ms,
                },
            )
        )
        if self.recording is not None:
            closing = asyncio.ensure_future(self._close_recording(self.recording))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def _close_recording(self, recording: RecordingWriter) -> None:
        result = await recording.close()
        if result.error is not None:
            self._put(Update(self.call_id, {"recording_error": result.error[:512]}))


class Records:
    """The records service of one process (created and started in the app's lifespan)."""

    def __init__(self, settings: Settings, *, queue_size: int | None = None) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir
        self.recordings_dir = settings.data_dir / "recordings"
        self.key = settings.data_key_bytes
        self.redactor = pii_redactor_from_settings(settings)
        self.url = settings.database_url_resolved
        self.engine = create_engine(self.url)
        self.erased: set[str] = set()
        self._live: dict[str, CallRecorder] = {}
        self._closing: set[asyncio.Future[None]] = set()
        self._schema_ready = False
        self._schema_lock = asyncio.Lock()
        self._io = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="recordings")
        kwargs = {} if queue_size is None else {"queue_size": queue_size}
        self.writer = RecordWriter(
            self.engine, prepare=self._prepare, ensure_schema=self.ensure_schema, erased=self.erased, **kwargs
        )
        self._writer_put = self.writer.put
        self._retention: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- life cycle

    async def start(self, *, retention: bool = True) -> None:
        """Create the data directory, migrate the database (a database that is down is logged and
        retried by the writer: calls go on), start the writer and the retention schedule."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.recordings_dir.mkdir(parents=True, exist_ok=True)
        prepare_sqlite_dir(self.url)
        try:
            await self.ensure_schema()
        except RecordsUnavailable as exc:
            log.error("%s; calls go on, their records are queued and retried", exc)
        self.writer.start()
        if retention and self.settings.retention_days:
            self._retention = asyncio.create_task(self._retention_loop(), name="records-retention")

    async def ensure_schema(self) -> None:
        if self._schema_ready:
            return
        async with self._schema_lock:
            if not self._schema_ready:
                prepare_sqlite_dir(self.url)
                revision = await migrate(self.engine)
                self._schema_ready = True
                log.info("records database %s at schema %s", describe_url(self.url), revision)

    async def stop(self, timeout_s: float = 5.0) -> None:
        if self._retention is not None:
            self._retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention
        # Calls still open (the bridge stops under them): their recordings are finalized, not left unfinished.
        open_recordings = [r.recording.close() for r in self._live.values() if r.recording is not None]
        await asyncio.gather(*open_recordings, *self._closing, return_exceptions=True)
        await self.writer.stop(timeout_s)
        await asyncio.get_running_loop().run_in_executor(None, self._io.shutdown)
        await self.engine.dispose()

    async def close(self) -> None:
        """Release the database and the recordings thread without starting anything (the CLI)."""
        await asyncio.get_running_loop().run_in_executor(None, self._io.shutdown)
        await self.engine.dispose()

    async def flush(self) -> None:
        """Wait until every recording closed so far is final and every queued row is stored."""
        while self._closing:
            done = list(self._closing)
            await asyncio.gather(*done, return_exceptions=True)
            self._closing.difference_update(done)
        await self.writer.drain()

    # ---------------------------------------------------------------- the call's side

    def start_call(
        self,
        *,
        leg: LegKind,
        call_id: str,
        from_number: str | None,
        to_number: str | None,
        flow: str | None = None,
        dialplan_version: int | None = None,
        record_audio: bool = True,
        started_at: datetime | None = None,
    ) -> CallRecorder:
        """Open the record of a call (no I/O: the row is queued, the recording file is opened on
        the recordings thread). `t_ms` of every later call is relative to `started_at` (now)."""
        started = started_at or datetime.now(UTC)
        recording = None
        if record_audio:
            suffix = ".wav.enc" if self.key is not None else ".wav"
            path = self.recordings_dir / started.strftime("%Y/%m/%d") / (safe_name(call_id) + suffix)
            recording = RecordingWriter(path, key=self.key, io=self._io)
        self._writer_put(Insert(schema.calls, call_id, {
            "call_id": call_id, "leg": leg, "from_number": from_number, "to_number": to_number, "flow": flow,
            "dialplan_version": dialplan_version, "started_at": started,
            "recording_path": str(recording.path) if recording else None,
            "recording_encrypted": bool(recording and recording.encrypted),
        }))  # fmt: skip
        recorder = CallRecorder(self, call_id, started, recording)
        self._live[call_id] = recorder
        return recorder

    def _prepare(self, item: Item) -> Item:
        """Mask PII and encrypt, in the writer task just before the rows are written."""
        if isinstance(item, Insert):
            if item.table is schema.transcripts:
                text = self.redactor(item.values["text"])
                if self.key is not None:
                    text = encrypt_field(self.key, text, "transcript:" + item.call_id)
                return Insert(item.table, item.call_id, {**item.values, "text": text})
            if item.table is schema.events and item.values.get("data"):
                return Insert(
                    item.table, item.call_id, {**item.values, "data": self.redactor.data(item.values["data"])}
                )
        return item

    # ---------------------------------------------------------------- the admin side (audited)

    async def _audit(
        self, actor: Actor, action: str, target: str | None, detail: Mapping[str, Any] | None = None
    ) -> None:
        async with self._admin() as engine, engine.begin() as conn:
            await store.audit_append(conn, actor, action, target, detail)

    async def audit(
        self, actor: Actor, action: str, target: str | None, detail: Mapping[str, Any] | None = None
    ) -> None:
        """Write one audit entry for an action taken elsewhere (the console's hang-up, transfer);
        RecordsUnavailable when it cannot be written (the caller then refuses the action)."""
        await self._audit(actor, action, target, detail)

    @contextlib.asynccontextmanager
    async def _admin(self) -> Any:
        """The engine, with the schema in place; database errors become RecordsUnavailable."""
        try:
            await self.ensure_schema()
            yield self.engine
        except (OSError, DBAPIError) as exc:
            raise RecordsUnavailable(
                f"records database {describe_url(self.url)} unavailable: {reason(exc)}"
            ) from exc

    def _filter_detail(self, filters: CallFilters) -> dict[str, Any]:
        detail: dict[str, Any] = {}
        for name in ("from_number", "to_number"):
            value = getattr(filters, name)
            if value:
                detail[name] = store.pii_ref(value, self.key)
        for name in ("flow", "limit", "cursor"):
            if getattr(filters, name) is not None:
                detail[name] = getattr(filters, name)
        for name in ("since", "until"):
            if getattr(filters, name) is not None:
                detail[name] = getattr(filters, name).isoformat()
        if filters.text:
            detail["text"] = True  # searched words can be PII: only that there was a search
        return detail

    async def list_calls(self, filters: CallFilters, actor: Actor) -> dict[str, Any]:
        await self._audit(actor, "calls.list", None, self._filter_detail(filters))
        async with self._admin() as engine:
            return await store.list_calls(engine, filters, self.key)

    async def get_call(self, call_id: str, actor: Actor) -> dict[str, Any]:
        await self._audit(actor, "calls.show", call_id)
        async with self._admin() as engine:
            return await store.get_call(engine, call_id, self.key)

    async def open_recording(self, call_id: str, actor: Actor) -> OpenedRecording:
        """The call's recording checked and ready to stream (decrypted on the fly). Raises
        CallNotFound, RecordingMissing, RecordingCorrupt or a RecordsCryptoError."""
        await self._audit(actor, "calls.recording", call_id)
        async with self._admin() as engine:
            path, encrypted = await store.recording_of(engine, call_id)
        if not path:
            raise RecordingMissing(f"call {call_id!r} has no recording")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, lambda: open_recording(Path(path), encrypted=encrypted, key=self.key)
        )

    async def delete_call(self, call_id: str, actor: Actor) -> Erased:
        self.erased.add(call_id)
        self._stop_recording(call_id)
        async with self._admin() as engine:
            erased = await store.erase(
                engine,
                call_ids=[call_id],
                recordings_root=self.recordings_dir,
                audit=(actor, "calls.delete", call_id),
            )
        if not any(erased.counts().values()):
            raise CallNotFound(f"no record of call {call_id!r}")
        log.info("call %s erased by %s: %s", call_id, actor.who, erased.counts())
        return erased

    async def erase_caller(self, number: str, actor: Actor) -> Erased:
        store.check_e164(number)
        ref = store.pii_ref(number, self.key)
        async with self._admin() as engine:
            erased = await store.erase(
                engine,
                caller=number,
                recordings_root=self.recordings_dir,
                audit=(actor, "calls.erase_caller", "caller " + ref),
            )
        self.erased.update(erased.call_ids)
        for call_id in erased.call_ids:
            self._stop_recording(call_id)
        log.info("calls of caller %s erased by %s: %s", ref, actor.who, erased.counts())
        return erased

    async def purge(
        self, actor: Actor, *, older_than_days: int | None = None, now: datetime | None = None
    ) -> Erased:
        """Remove calls started more than `older_than_days` (BRIDGE_RETENTION_DAYS) ago, their rows
        and files, and recording files older than that which no row names."""
        days = older_than_days or self.settings.retention_days
        if not days:
            raise ConfigError("purge: no age given and BRIDGE_RETENTION_DAYS is not set")
        cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
        loop = asyncio.get_running_loop()
        async with self._admin() as engine:
            erased = await store.erase(
                engine,
                started_before=cutoff,
                recordings_root=self.recordings_dir,
                audit=(actor, "calls.purge", f"started before {cutoff.isoformat()}"),
                audit_detail={"days": days},
            )
        erased.files += await loop.run_in_executor(None, store.sweep_files, self.recordings_dir, cutoff)
        if erased.calls or erased.files:
            log.info(
                "retention: %d call(s) older than %d days purged (%d file(s))",
                erased.calls,
                days,
                erased.files,
            )
        return erased

    async def list_audit(
        self, actor: Actor, *, limit: int = store.DEFAULT_LIMIT, cursor: int | None = None
    ) -> dict[str, Any]:
        await self._audit(actor, "audit.list", None, {"limit": limit, "cursor": cursor})
        async with self._admin() as engine:
            return await store.list_audit(engine, limit=limit, cursor=cursor)

    def _stop_recording(self, call_id: str) -> None:
        """An erased call still in progress records nothing more: its recording is discarded (the
        file removed once closed); the writer task drops its later rows (`self.erased`)."""
        recorder = self._live.pop(call_id, None)
        if recorder is not None and recorder.recording is not None:
            recorder.recording.discard()

    async def _retention_loop(self) -> None:
        actor = Actor("retention", "bridge")
        while True:
            try:
                await self.purge(actor)
            except RecordsUnavailable as exc:
                log.error("retention purge skipped: %s", exc)
            except Exception:  # the schedule must survive anything; the next run tries again
                log.exception("retention purge failed")
            await asyncio.sleep(RETENTION_EVERY_S)
