"""The database goes down (at start, mid-call): calls go on, rows wait and are retried, and are
stored exactly once when PostgreSQL is back. A real server, stopped and restarted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from bridge.metrics import METRICS
from bridge.records import Actor, Records, RecordsUnavailable, parse_filters
from tests.helpers.postgres import PostgresServer, find_bin_dir
from tests.helpers.records_fixtures import records_settings
from tests.records.test_store import place_call

ACTOR = Actor("tester", "127.0.0.1")


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of this test's own (it is stopped and restarted)."""
    bin_dir = find_bin_dir()
    server = PostgresServer(bin_dir)
    server.init()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


async def counts(records: Records) -> dict[str, int]:
    out = {}
    async with records.engine.connect() as conn:
        for table in ("calls", "events", "transcripts", "turns"):
            out[table] = int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar() or 0)
    return out


async def test_database_down_mid_call_then_back(tmp_path: Path, own_postgres: PostgresServer) -> None:
    records = Records(records_settings(tmp_path, own_postgres.create_database()))
    await records.start()
    try:
        place_call(records, "CA1")
        await records.flush()
        assert await counts(records) == {"calls": 1, "events": 2, "transcripts": 2, "turns": 1}

        own_postgres.stop()
        retries = METRICS.records_write_retries.value()
        t0 = time.perf_counter()
        place_call(records, "CA2")  # the call's side never waits for the database
        assert time.perf_counter() - t0 < 0.5
        for _ in range(100):
            if METRICS.records_write_retries.value() >= retries + 2:
                break
            await asyncio.sleep(0.05)
        assert METRICS.records_write_retries.value() >= retries + 2
        assert records.writer.down_since is not None
        with pytest.raises(RecordsUnavailable, match="unavailable"):
            await records.list_calls(parse_filters({}), ACTOR)

        own_postgres.start()
        await asyncio.wait_for(records.flush(), 30)
        assert records.writer.down_since is None
        assert await counts(records) == {"calls": 2, "events": 4, "transcripts": 4, "turns": 2}
        call = await records.get_call("CA2", ACTOR)
        assert call["end_reason"] == "hangup"
        assert len(call["transcript"]) == 2
    finally:
        if records.writer.down_since is not None:
            own_postgres.start()
        await records.stop()


async def test_database_down_at_start(tmp_path: Path, own_postgres: PostgresServer) -> None:
    url = own_postgres.create_database()
    own_postgres.stop()
    records = Records(records_settings(tmp_path, url))
    await records.start()  # logged, not raised: calls go on
    try:
        place_call(records, "CA9")
        await asyncio.sleep(0.5)
        assert records.writer.pending > 0 or records.writer.down_since is not None
        own_postgres.start()
        await asyncio.wait_for(records.flush(), 30)
        assert await counts(records) == {"calls": 1, "events": 2, "transcripts": 2, "turns": 1}
    finally:
        await records.stop()


async def test_rows_still_waiting_at_shutdown_are_counted(
    tmp_path: Path, own_postgres: PostgresServer
) -> None:
    records = Records(records_settings(tmp_path, own_postgres.create_database()))
    await records.start()
    own_postgres.stop()
    before = METRICS.records_lost.value(kind="events", reason="shutdown")
    place_call(records, "CA5")
    await records.stop(timeout_s=0.5)
    assert METRICS.records_lost.value(kind="events", reason="shutdown") - before == 2
