"""The records service against a real database: SQLite and PostgreSQL (each test runs on both)."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError

from bridge.logsafe import OperatorValue
from bridge.metrics import METRICS
from bridge.records import Actor, CallNotFound, Records, TurnStages, parse_filters
from bridge.records.db import create_engine, head_revision, migrate
from bridge.records.store import FilterError
from tests.helpers.postgres import PostgresServer
from tests.helpers.records_fixtures import KEY, files, records_settings

ACTOR = Actor("tester", "127.0.0.1")
TONE = (4000 * np.sin(np.arange(160) * 0.2)).astype("<i2").tobytes()


def place_call(
    records: Records,
    call_id: str,
    caller: str = "+15551230001",
    *,
    started_at: datetime | None = None,
    text_: str = "I want to check my balance",
    seconds: int = 2,
) -> None:
    rec = records.start_call(
        leg="twilio",
        call_id=call_id,
        from_number=caller,
        to_number="+15557650000",
        flow="main",
        dialplan_version=3,
        started_at=started_at,
    )
    rec.answered(40)
    rec.event("prompt_played", 100, prompt="greeting")
    rec.event("tool_call", 900, name="lookup", args={"email": "joe@example.com"}, result={"ok": True})
    rec.transcript("caller", 1200, text_)
    rec.transcript("bot", 1500, "Your balance is ten dollars, call 555-123-4567", heard_ms=800)
    rec.turn(
        TurnStages(
            caller_stopped_ms=1300, upstream_stopped_ms=1400, first_delta_ms=1700, first_played_ms=1750
        )
    )
    assert rec.recording is not None
    for i in range(seconds * 50):
        rec.recording.caller(TONE, i * 20)
        rec.recording.bot(TONE, i * 20 + 10)
    rec.end("hangup", seconds * 1000)


async def test_migrations_are_idempotent(tmp_path: Path, db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        assert await migrate(engine) == head_revision()
        assert await migrate(engine) == head_revision()
    finally:
        await engine.dispose()


async def test_concurrent_migrations_are_safe(tmp_path: Path, postgres_server: PostgresServer) -> None:
    """PostgreSQL only: several instances starting together (SQLite serves one process)."""
    db_url = postgres_server.create_database()
    engines = [create_engine(db_url) for _ in range(3)]
    try:
        revisions = await asyncio.gather(*(migrate(e) for e in engines))
        assert revisions == [head_revision()] * 3
        async with engines[0].connect() as conn:
            count = (await conn.execute(text("SELECT count(*) FROM alembic_version"))).scalar()
        assert count == 1
    finally:
        for e in engines:
            await e.dispose()


async def test_a_call_is_stored_whole(tmp_path: Path, db_url: str) -> None:
    records = Records(records_settings(tmp_path, db_url))
    await records.start()
    try:
        place_call(records, "CA100", text_="my card is 4111 1111 1111 1111")
        await records.flush()
        call = await records.get_call("CA100", ACTOR)
    finally:
        await records.stop()
    assert call["from"] == "+15551230001"
    assert call["flow"] == "main"
    assert call["dialplan_version"] == 3
    assert call["end_reason"] == "hangup"
    assert call["duration_ms"] == 2000
    assert call["answered_at"]
    assert [e["kind"] for e in call["events"]] == ["prompt_played", "tool_call"]
    assert call["events"][1]["data"]["args"] == {"email": "[email]"}  # PII masked in event data too
    assert call["transcript"][0]["text"] == "my card is [card ****1111]"
    assert call["transcript"][1] == {
        "t_ms": 1500,
        "speaker": "bot",
        "heard_ms": 800,
        "encrypted": False,
        "text": "Your balance is ten dollars, call [phone]",
    }
    assert call["turns"][0]["total_ms"] == 450
    assert call["turns"][0]["vad_to_upstream_stop_ms"] == 100
    assert call["recording"]
    assert [p.name for p in files(records.recordings_dir, "CA100*")] == ["CA100.wav"]


async def test_a_transfer_target_is_stored_as_configured_and_caller_numbers_stay_masked(
    tmp_path: Path, db_url: str
) -> None:
    """The transfer target is the operator's configuration (ops need it); the caller's number, said or
    passed in a tool's arguments, is PII."""
    records = Records(records_settings(tmp_path, db_url))
    await records.start()
    try:
        rec = records.start_call(
            leg="sip", call_id="CA150", from_number="+15551230150", to_number="+15557650000", flow="main"
        )
        target = OperatorValue("+15550100")
        rec.event("tool_call", 100, name="transfer", args={"callback": "+15551230150"},
                  result=[OperatorValue(f"transfer {target}")])  # fmt: skip
        rec.event("transfer", 200, target=target, ok=True)
        rec.event("note", 250, text="caller asked for +15551230150")
        rec.transcript("caller", 300, "call me back on 555-123-0150")
        rec.end("transferred to +15550100", 400)
        await records.flush()
        call = await records.get_call("CA150", ACTOR)
    finally:
        await records.stop()
    events = {e["kind"]: e["data"] for e in call["events"]}
    assert events["transfer"] == {"target": "+15550100", "ok": True}
    assert events["tool_call"]["result"] == ["transfer +15550100"]
    assert events["tool_call"]["args"] == {"callback": "[phone]"}
    assert events["note"] == {"text": "caller asked for [phone]"}
    assert call["transcript"][0]["text"] == "call me back on [phone]"
    assert call["end_reason"] == "transferred to +15550100"


async def test_transcripts_are_encrypted_at_rest(tmp_path: Path, db_url: str) -> None:
    settings = records_settings(tmp_path, db_url, data_key=KEY)
    records = Records(settings)
    await records.start()
    try:
        place_call(records, "CA200", text_="please close my savings account")
        place_call(records, "CA201", text_="what are your opening hours")
        await records.flush()
        async with records.engine.connect() as conn:
            stored = [r[0] for r in await conn.execute(text("SELECT text FROM transcripts"))]
        assert stored
        assert all(t.startswith("enc1:") for t in stored)
        assert not any("savings" in t for t in stored)
        found = await records.list_calls(parse_filters({"text": "SAVINGS"}), ACTOR)
        assert [c["call_id"] for c in found["calls"]] == ["CA200"]
        call = await records.get_call("CA200", ACTOR)
        assert call["transcript"][0]["text"] == "please close my savings account"
        assert call["recording_encrypted"]
    finally:
        await records.stop()
    # Without the key: the rows are there, the text is not readable.
    records = Records(records_settings(tmp_path, db_url))
    try:
        call = await records.get_call("CA200", ACTOR)
        assert call["transcript"][0]["text"] is None
        assert "BRIDGE_DATA_KEY" in call["transcript"][0]["error"]
    finally:
        await records.close()


async def test_filters_and_pagination(tmp_path: Path, db_url: str) -> None:
    records = Records(records_settings(tmp_path, db_url))
    await records.start()
    try:
        base = datetime(2025, 3, 1, 12, tzinfo=UTC)
        for i in range(7):
            place_call(
                records,
                f"CA3{i:02d}",
                caller="+15550000001" if i % 2 else "+15550000002",
                started_at=base + timedelta(hours=i),
                text_=f"question number {i}",
                seconds=1,
            )
        await records.flush()
        page = await records.list_calls(parse_filters({"limit": "3"}), ACTOR)
        assert [c["call_id"] for c in page["calls"]] == ["CA306", "CA305", "CA304"]
        page2 = await records.list_calls(parse_filters({"limit": "3", "cursor": page["next_cursor"]}), ACTOR)
        assert [c["call_id"] for c in page2["calls"]] == ["CA303", "CA302", "CA301"]
        page3 = await records.list_calls(parse_filters({"limit": "3", "cursor": page2["next_cursor"]}), ACTOR)
        assert [c["call_id"] for c in page3["calls"]] == ["CA300"]
        assert page3["next_cursor"] is None
        odd = await records.list_calls(parse_filters({"from": "+15550000001"}), ACTOR)
        assert [c["call_id"] for c in odd["calls"]] == ["CA305", "CA303", "CA301"]
        window = await records.list_calls(
            parse_filters({"since": "2025-03-01T14:00:00Z", "until": "2025-03-01T16:00:00+00:00"}), ACTOR
        )
        assert [c["call_id"] for c in window["calls"]] == ["CA303", "CA302"]
        said = await records.list_calls(parse_filters({"text": "NUMBER 4"}), ACTOR)
        assert [c["call_id"] for c in said["calls"]] == ["CA304"]
        none = await records.list_calls(parse_filters({"flow": "other"}), ACTOR)
        assert none == {"calls": [], "next_cursor": None}
    finally:
        await records.stop()
    for bad, message in (
        ({"since": "yesterday"}, "since: 'yesterday' is not an ISO 8601 time"),
        ({"limit": "0"}, "limit: expected a whole number from 1 to 500"),
        ({"cursor": "abc"}, "cursor: expected the next_cursor"),
        ({"color": "red"}, "unknown filter(s) color"),
        ({"since": "2025-02-01", "until": "2025-01-01"}, "since: must not be after until"),
    ):
        with pytest.raises(FilterError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_filters(bad)


async def test_writer_batches_rows_into_few_transactions(tmp_path: Path, db_url: str) -> None:
    records = Records(records_settings(tmp_path, db_url))
    await records.start()
    commits = [0]
    event.listen(records.engine.sync_engine, "commit", lambda _conn: commits.__setitem__(0, commits[0] + 1))
    try:
        rec = records.start_call(
            leg="sip", call_id="CA400", from_number="+15550000400", to_number="100", record_audio=False
        )
        for i in range(300):  # queued without yielding to the loop: the writer sees them together
            rec.event("dtmf", i * 10, digit=str(i % 10))
        rec.end("hangup", 3000)
        await records.flush()
        call = await records.get_call("CA400", ACTOR)
    finally:
        await records.stop()
    assert len(call["events"]) == 300
    assert call["end_reason"] == "hangup"
    assert commits[0] <= 3, commits[0]  # 302 rows; 500 per batch: one transaction (+ the audit entry)


async def test_queue_overflow_is_counted(tmp_path: Path, db_url: str) -> None:
    records = Records(records_settings(tmp_path, db_url), queue_size=50)
    await records.start()
    before = METRICS.records_lost.value(kind="events", reason="queue_full")
    try:
        rec = records.start_call(
            leg="twilio", call_id="CA500", from_number=None, to_number=None, record_audio=False
        )
        for i in range(120):
            rec.event("menu_choice", i, choice="1")
        rec.end("hangup", 200)  # also dropped: the queue is still full
        await records.flush()
        call = await records.get_call("CA500", ACTOR)
    finally:
        await records.stop()
    lost = METRICS.records_lost.value(kind="events", reason="queue_full") - before
    assert len(call["events"]) == 49
    assert lost == 71


async def test_audit_is_append_only_at_the_database_level(tmp_path: Path, db_url: str) -> None:
    records = Records(records_settings(tmp_path, db_url))
    await records.start()
    try:
        await records.list_calls(parse_filters({}), ACTOR)
        for statement in ("UPDATE audit SET who = 'someone else'", "DELETE FROM audit"):
            with pytest.raises(DBAPIError, match="append-only"):
                async with records.engine.begin() as conn:
                    await conn.execute(text(statement))
        if db_url.startswith("postgresql"):
            with pytest.raises(DBAPIError, match="append-only"):
                async with records.engine.begin() as conn:
                    await conn.execute(text("TRUNCATE audit"))
        log = await records.list_audit(ACTOR)
    finally:
        await records.stop()
    assert [e["action"] for e in log["entries"]] == ["audit.list", "calls.list"]
    assert log["entries"][1]["who"] == "tester"
    assert log["entries"][1]["source"] == "127.0.0.1"


async def test_erasure_by_caller_removes_rows_and_files(tmp_path: Path, db_url: str) -> None:
    records = Records(records_settings(tmp_path, db_url, data_key=KEY))
    await records.start()
    try:
        place_call(records, "CA600", caller="+15550000600")
        place_call(records, "CA601", caller="+15550000600")
        place_call(records, "CA602", caller="+15550000999")
        await records.flush()
        names = {p.name for p in files(records.recordings_dir, "*.enc")}
        assert names == {"CA600.wav.enc", "CA601.wav.enc", "CA602.wav.enc"}
        erased = await records.erase_caller("+15550000600", ACTOR)
        assert erased.counts() == {"calls": 2, "events": 4, "transcripts": 4, "turns": 2, "files": 2}
        assert {p.name for p in files(records.recordings_dir, "*.enc")} == {"CA602.wav.enc"}
        async with records.engine.connect() as conn:
            for table in ("calls", "events", "transcripts", "turns"):
                ids = {r[0] for r in await conn.execute(text(f"SELECT call_id FROM {table}"))}
                assert ids == {"CA602"}, table
        with pytest.raises(CallNotFound):
            await records.get_call("CA600", ACTOR)
        one = await records.delete_call("CA602", ACTOR)
        assert one.calls == 1
        assert one.files == 1
        with pytest.raises(CallNotFound):
            await records.delete_call("CA602", ACTOR)
        log = await records.list_audit(ACTOR)
        erase_entry = next(e for e in log["entries"] if e["action"] == "calls.erase_caller")
        assert "+15550000600" not in str(erase_entry)
        assert erase_entry["target"].startswith("caller sha256:")
    finally:
        await records.stop()


async def test_erasing_a_call_in_progress_stops_its_records(tmp_path: Path, db_url: str) -> None:
    records = Records(records_settings(tmp_path, db_url))
    await records.start()
    try:
        rec = records.start_call(leg="twilio", call_id="CA650", from_number="+15550000650", to_number="1")
        assert rec.recording is not None
        for i in range(200):
            rec.recording.caller(TONE, i * 20)
        await records.flush()
        await records.delete_call("CA650", ACTOR)
        rec.transcript("caller", 5000, "still talking")
        for i in range(200, 300):
            rec.recording.caller(TONE, i * 20)
        rec.end("hangup", 6000)
        await records.flush()
        await asyncio.sleep(0.1)
        async with records.engine.connect() as conn:
            left = (await conn.execute(text("SELECT count(*) FROM transcripts"))).scalar()
        assert left == 0
        assert not list(files(records.recordings_dir, "CA650*"))
    finally:
        await records.stop()


async def test_retention_purges_old_rows_and_files(tmp_path: Path, db_url: str) -> None:
    records = Records(records_settings(tmp_path, db_url, retention_days=30))
    await records.start(retention=False)
    try:
        now = datetime.now(UTC)
        place_call(records, "CA700", started_at=now - timedelta(days=45))
        place_call(records, "CA701", started_at=now - timedelta(days=2))
        await records.flush()
        old = files(records.recordings_dir, "CA700.wav")[0]
        orphan = records.recordings_dir / "2020" / "01" / "01" / "lost.wav"
        orphan.parent.mkdir(parents=True)
        orphan.write_bytes(b"RIFF")
        stamp = (now - timedelta(days=40)).timestamp()
        os.utime(orphan, (stamp, stamp))
        erased = await records.purge(Actor("retention", "bridge"))
        assert erased.calls == 1
        assert erased.files == 2
        assert not old.exists()
        assert not orphan.exists()
        assert not orphan.parent.exists()
        assert files(records.recordings_dir, "CA701.wav")
        page = await records.list_calls(parse_filters({}), ACTOR)
        assert [c["call_id"] for c in page["calls"]] == ["CA701"]
        log = await records.list_audit(ACTOR)
        assert any(e["action"] == "calls.purge" and e["who"] == "retention" for e in log["entries"])
    finally:
        await records.stop()


async def test_retention_runs_on_a_schedule_at_start(tmp_path: Path, db_url: str) -> None:
    settings = records_settings(tmp_path, db_url, retention_days=10)
    first = Records(settings)
    await first.start(retention=False)
    place_call(first, "CA800", started_at=datetime.now(UTC) - timedelta(days=11))
    await first.stop()
    records = Records(settings)
    await records.start()  # the retention task purges right away, then hourly
    try:
        for _ in range(100):
            page = await records.list_calls(parse_filters({}), ACTOR)
            if not page["calls"]:
                break
            await asyncio.sleep(0.05)
        assert page["calls"] == []
    finally:
        await records.stop()
