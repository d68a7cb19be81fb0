"""The records writer: a bounded queue drained by one task in batches, one transaction a batch.

`put(item)` never blocks and never does I/O: when the queue is full the item is dropped and
counted (`ivr_bridge_records_lost_total{reason="queue_full"}`, logged at most every 10 s). The
task writes whatever is queued in one transaction (calls first, then timeline rows grouped by
table, then call updates, in order). A database that is down or slow is retried with exponential
backoff (0.1 s to 5 s) while calls go on and the queue absorbs the backlog; once it is back the
batch is stored once (a failed transaction stored nothing). A batch the database refuses for its
content (a constraint, bad data) is split and only the offending rows are dropped and counted.

Each row carries the monotonic time `put()` queued it; when its transaction commits, the wait
(queue, batching, retries, the transaction) is observed in `ivr_bridge_records_commit_latency_seconds`
(per row; `ivr_bridge_records_write_seconds` is per batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, insert, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bridge.metrics import METRICS
from bridge.records import schema
from bridge.records.db import RecordsUnavailable, is_transient, reason

log = logging.getLogger(__name__)

QUEUE_SIZE = 20_000
BATCH_SIZE = 500
BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 5.0
LOSS_LOG_EVERY_S = 10.0


@dataclass(slots=True)
class Insert:
    """A new row (`table` is calls, events, transcripts or turns)."""

    table: Table
    call_id: str
    values: dict[str, Any]
    queued_s: float = 0.0  # time.monotonic() when put() queued it (enqueue -> commit latency)


@dataclass(slots=True)
class Update:
    """Columns of an existing calls row."""

    call_id: str
    values: dict[str, Any]
    queued_s: float = 0.0


Item = Insert | Update
Prepare = Callable[[Item], Item]


def _kind(item: Item) -> str:
    return item.table.name if isinstance(item, Insert) else "call_update"


class RecordWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        prepare: Prepare,
        ensure_schema: Callable[[], Awaitable[None]],
        erased: set[str],
        queue_size: int = QUEUE_SIZE,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self._engine = engine
        self._prepare = prepare
        self._ensure_schema = ensure_schema
        self._erased = erased
        self._queue: asyncio.Queue[Item] = asyncio.Queue(queue_size)
        self._batch_size = batch_size
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._give_up_at: float | None = None
        self._lost_since_log = 0
        self._last_loss_log = 0.0
        self.down_since: float | None = None
        self.last_error: str | None = None

    # ---------------------------------------------------------------- the call's side

    def put(self, item: Item) -> None:
        """Queue a record (never blocks). Dropped and counted when the queue is full or stopped."""
        if self._stopping:
            self._lost(item, "stopped")
            return
        item.queued_s = time.monotonic()
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._lost(item, "queue_full")
            return
        self._idle.clear()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _lost(self, item: Item, why: str) -> None:
        METRICS.records_lost.inc(kind=_kind(item), reason=why)
        self._lost_since_log += 1
        now = time.monotonic()
        if now - self._last_loss_log >= LOSS_LOG_EVERY_S:
            log.error(
                "call records lost: %d row(s) dropped (%s) since the last report; %d waiting to be written",
                self._lost_since_log,
                why,
                self._queue.qsize(),
            )
            self._lost_since_log = 0
            self._last_loss_log = now

    # ---------------------------------------------------------------- life cycle

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="records-writer")

    async def drain(self) -> None:
        """Wait until everything queued so far is stored (or given up)."""
        await self._idle.wait()

    async def stop(self, timeout_s: float) -> None:
        """Store what is queued, for at most `timeout_s` (a database that stays down: the rest is
        counted as lost, reason "shutdown")."""
        self._stopping = True
        self._give_up_at = time.monotonic() + timeout_s
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s + 1.0)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        left = 0
        while not self._queue.empty():
            METRICS.records_lost.inc(kind=_kind(self._queue.get_nowait()), reason="shutdown")
            left += 1
        if left:
            log.error(
                "call records lost at shutdown: %d row(s) never reached the database (%s)",
                left,
                self.last_error or "still writing",
            )

    # ---------------------------------------------------------------- the task

    async def _run(self) -> None:
        queue = self._queue
        while True:
            if queue.empty():
                self._idle.set()
                METRICS.records_queue_depth.set(0)
            item = await queue.get()
            batch = [item]
            while len(batch) < self._batch_size and not queue.empty():
                batch.append(queue.get_nowait())
            METRICS.records_queue_depth.set(queue.qsize())
            await self._store(batch)

    async def _store(self, batch: list[Item]) -> None:
        delay = BACKOFF_START_S
        while True:
            try:
                await self._ensure_schema()
                started = time.perf_counter()
                await self._write(batch)
                METRICS.records_write_seconds.observe(time.perf_counter() - started)
                committed = time.monotonic()
                latency = METRICS.records_commit_latency_seconds
                for item in batch:  # each row's own wait: queue, batching, retries, the transaction
                    latency.observe(committed - item.queued_s)
            except Exception as exc:  # classified below; nothing here may kill the writer
                if isinstance(exc, RecordsUnavailable) or is_transient(exc):
                    self._down(exc, len(batch))
                    if self._give_up_at is not None and time.monotonic() >= self._give_up_at:
                        for item in batch:
                            METRICS.records_lost.inc(kind=_kind(item), reason="shutdown")
                        log.error(
                            "call records lost at shutdown: %d row(s) (%s)", len(batch), self.last_error
                        )
                        return
                    METRICS.records_write_retries.inc()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, BACKOFF_MAX_S)
                    continue
                if len(batch) > 1:
                    for item in batch:  # find the rows the database refuses; keep the others
                        await self._store([item])
                    return
                METRICS.records_lost.inc(kind=_kind(batch[0]), reason="rejected")
                log.error(
                    "call record dropped: the database refused a %s row of call %s: %s",
                    _kind(batch[0]),
                    batch[0].call_id,
                    reason(exc),
                )
                return
            if self.down_since is not None:
                log.warning(
                    "records database is back after %.1f s; %d row(s) stored, %d waiting",
                    time.monotonic() - self.down_since,
                    len(batch),
                    self._queue.qsize(),
                )
                self.down_since = None
                self.last_error = None
            return

    def _down(self, exc: BaseException, rows: int) -> None:
        self.last_error = str(exc) if isinstance(exc, RecordsUnavailable) else reason(exc)
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.error(
                "records database unavailable (%s): calls go on; %d row(s) kept and retried",
                self.last_error,
                rows + self._queue.qsize(),
            )

    async def _write(self, batch: list[Item]) -> None:
        items = [self._prepare(item) for item in batch if item.call_id not in self._erased]
        if not items:
            return
        calls = [i.values for i in items if isinstance(i, Insert) and i.table is schema.calls]
        by_table: dict[str, tuple[Table, list[dict[str, Any]]]] = {}
        updates: list[Update] = []
        for item in items:
            if isinstance(item, Update):
                updates.append(item)
            elif item.table is not schema.calls:
                by_table.setdefault(item.table.name, (item.table, []))[1].append(item.values)
        async with self._engine.begin() as conn:
            if calls:
                await conn.execute(_insert_calls(conn), calls)
            for table, rows in by_table.values():
                await conn.execute(insert(table), rows)
            c = schema.calls
            for u in updates:
                await conn.execute(update(c).where(c.c.call_id == u.call_id).values(**u.values))
        for item in items:
            METRICS.records_written.inc(kind=_kind(item))


def _insert_calls(conn: AsyncConnection) -> Any:
    """INSERT into calls that ignores a call id already stored (a retried batch whose commit had
    in fact gone through)."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return pg_insert(schema.calls).on_conflict_do_nothing(index_elements=["call_id"])
    if dialect == "sqlite":
        return sqlite_insert(schema.calls).on_conflict_do_nothing(index_elements=["call_id"])
    return insert(schema.calls)
