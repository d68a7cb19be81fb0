"""Alembic environment for the call records. Run programmatically by `bridge.records.db.migrate`
on a connection it passes in `config.attributes["connection"]` (never from alembic.ini)."""

from __future__ import annotations

from alembic import context

from bridge.records.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reached by a hand-run `alembic` command
    raise RuntimeError(
        "run the records migrations through bridge.records.db.migrate (or `ivr-bridge calls migrate`)"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
