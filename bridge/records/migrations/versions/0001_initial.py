"""Call records: calls, events, transcripts, turns, and the append-only audit log.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)

AUDIT_MESSAGE = "audit is append-only: rows can be added, never changed or removed"


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("call_id", sa.String(128), nullable=False, unique=True),
        sa.Column("leg", sa.String(16), nullable=False),
        sa.Column("from_number", sa.String(64)),
        sa.Column("to_number", sa.String(64)),
        sa.Column("flow", sa.String(128)),
        sa.Column("dialplan_version", sa.Integer),
        sa.Column("started_at", When, nullable=False),
        sa.Column("answered_at", When),
        sa.Column("ended_at", When),
        sa.Column("end_reason", sa.String(256)),
        sa.Column("duration_ms", sa.Integer),
        sa.Column("recording_path", sa.String(1024)),
        sa.Column("recording_encrypted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("recording_error", sa.String(512)),
    )
    op.create_index("ix_calls_started_at", "calls", ["started_at"])
    op.create_index("ix_calls_from_number", "calls", ["from_number"])
    op.create_index("ix_calls_to_number", "calls", ["to_number"])
    op.create_table(
        "events",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("call_id", sa.String(128), nullable=False),
        sa.Column("t_ms", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("data", sa.JSON),
    )
    op.create_index("ix_events_call_id", "events", ["call_id"])
    op.create_table(
        "transcripts",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("call_id", sa.String(128), nullable=False),
        sa.Column("t_ms", sa.Integer, nullable=False),
        sa.Column("speaker", sa.String(16), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("heard_ms", sa.Integer),
    )
    op.create_index("ix_transcripts_call_id", "transcripts", ["call_id"])
    op.create_table(
        "turns",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("call_id", sa.String(128), nullable=False),
        sa.Column("t_ms", sa.Integer, nullable=False),
        sa.Column("caller_stopped_ms", sa.Integer),
        sa.Column("upstream_stopped_ms", sa.Integer),
        sa.Column("first_delta_ms", sa.Integer),
        sa.Column("first_played_ms", sa.Integer),
        sa.Column("vad_to_upstream_stop_ms", sa.Integer),
        sa.Column("upstream_stop_to_first_delta_ms", sa.Integer),
        sa.Column("first_delta_to_played_ms", sa.Integer),
        sa.Column("total_ms", sa.Integer),
    )
    op.create_index("ix_turns_call_id", "turns", ["call_id"])
    op.create_table(
        "audit",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("at", When, nullable=False),
        sa.Column("who", sa.String(256), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(512)),
        sa.Column("source", sa.String(256)),
        sa.Column("detail", sa.JSON),
    )
    op.create_index("ix_audit_at", "audit", ["at"])
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_no_{verb.lower()} BEFORE {verb} ON audit "
                f"BEGIN SELECT RAISE(ABORT, '{AUDIT_MESSAGE}'); END"
            )
    elif dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN RAISE EXCEPTION '{AUDIT_MESSAGE}' USING ERRCODE = 'insufficient_privilege'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_no_update_delete BEFORE UPDATE OR DELETE ON audit "
            "FOR EACH ROW EXECUTE FUNCTION audit_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()"
        )
    else:  # pragma: no cover
        raise RuntimeError(f"records: database {dialect!r} is not supported (SQLite or PostgreSQL)")


def downgrade() -> None:
    raise RuntimeError("the call-records schema is not downgraded (the audit log is append-only)")
