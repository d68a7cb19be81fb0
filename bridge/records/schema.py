"""The call-record tables (SQLAlchemy Core). Migrations in `migrations/versions/` create them;
this module is what the code queries with. Times are stored in UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out (SQLite keeps naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Id = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only

metadata = MetaData()

calls = Table(
    "calls",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("call_id", String(128), nullable=False, unique=True),
    Column("leg", String(16), nullable=False),
    Column("from_number", String(64), nullable=True),
    Column("to_number", String(64), nullable=True),
    Column("flow", String(128), nullable=True),
    Column("dialplan_version", Integer, nullable=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("answered_at", UTCDateTime, nullable=True),
    Column("ended_at", UTCDateTime, nullable=True),
    Column("end_reason", String(256), nullable=True),
    Column("duration_ms", Integer, nullable=True),
    Column("recording_path", String(1024), nullable=True),
    Column("recording_encrypted", Boolean, nullable=False, default=False),
    Column("recording_error", String(512), nullable=True),
    Index("ix_calls_started_at", "started_at"),
    Index("ix_calls_from_number", "from_number"),
    Index("ix_calls_to_number", "to_number"),
)

events = Table(
    "events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("call_id", String(128), nullable=False),
    Column("t_ms", Integer, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("data", JSON, nullable=True),
    Index("ix_events_call_id", "call_id"),
)

transcripts = Table(
    "transcripts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("call_id", String(128), nullable=False),
    Column("t_ms", Integer, nullable=False),
    Column("speaker", String(16), nullable=False),
    Column("text", Text, nullable=False),
    Column("heard_ms", Integer, nullable=True),
    Index("ix_transcripts_call_id", "call_id"),
)

turns = Table(
    "turns",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("call_id", String(128), nullable=False),
    Column("t_ms", Integer, nullable=False),
    Column("caller_stopped_ms", Integer, nullable=True),
    Column("upstream_stopped_ms", Integer, nullable=True),
    Column("first_delta_ms", Integer, nullable=True),
    Column("first_played_ms", Integer, nullable=True),
    Column("vad_to_upstream_stop_ms", Integer, nullable=True),
    Column("upstream_stop_to_first_delta_ms", Integer, nullable=True),
    Column("first_delta_to_played_ms", Integer, nullable=True),
    Column("total_ms", Integer, nullable=True),
    Index("ix_turns_call_id", "call_id"),
)

audit = Table(
    "audit",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("who", String(256), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(512), nullable=True),
    Column("source", String(256), nullable=True),
    Column("detail", JSON, nullable=True),
    Index("ix_audit_at", "at"),
)

CALL_TABLES = (events, transcripts, turns)
