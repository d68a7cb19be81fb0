"""The records database: an async engine (SQLite through aiosqlite, PostgreSQL through asyncpg) and
the migrations, run at start-up.

Several bridge instances may start together against one PostgreSQL database: the upgrade runs
under a session-level advisory lock (`pg_advisory_lock`), so one instance migrates and the others
wait and then find the schema at head. SQLite is for one process (plus the CLI now and then).
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bridge.errors import BridgeError

# Alembic costs ~10 MB RSS for the life of the process once imported: it is imported only when the
# schema is not at head already (a fresh database, a new migration), see `migrate`.
if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# pg_advisory_lock key of the records migrations (any fixed 64-bit number; "ivrbrdg1").
MIGRATION_LOCK_KEY = 0x6976726272646731


class RecordsUnavailable(BridgeError):
    """The records database cannot be reached (down, refused, wrong credentials)."""


def describe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def create_engine(url: str) -> AsyncEngine:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise BridgeError(f"BRIDGE_DATABASE_URL is not a database URL: {exc}") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise BridgeError(
            f"BRIDGE_DATABASE_URL: {backend!r} is not supported (sqlite+aiosqlite or postgresql+asyncpg)"
        )
    if backend == "sqlite":
        engine = create_async_engine(url, connect_args={"timeout": 5})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

        return engine
    return create_async_engine(
        url,
        pool_pre_ping=True,  # a restarted server: stale connections are replaced, not used
        pool_size=5,
        max_overflow=5,
        connect_args={"timeout": 5, "command_timeout": 30},
    )


def prepare_sqlite_dir(url: str) -> None:
    """Create the directory of a SQLite database file (nothing for other databases)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying (server down, connection lost, lock timeout), False for
    errors that will fail again the same way (a constraint, bad data)."""
    if isinstance(exc, IntegrityError):
        return False
    if isinstance(exc, DBAPIError):
        return (
            bool(exc.connection_invalidated)
            or isinstance(exc, OperationalError)
            or _looks_like_connection(exc)
        )
    return isinstance(exc, OSError | ConnectionError | TimeoutError)


def _looks_like_connection(exc: DBAPIError) -> bool:
    name = type(exc.orig).__name__ if exc.orig is not None else ""
    text_ = str(exc).lower()
    return (
        "connection" in name.lower()
        or "interfaceerror" in name.lower()
        or "cannotconnectnow" in name.lower()
        or ("connection" in text_ and ("closed" in text_ or "refused" in text_ or "lost" in text_))
    )


def _alembic_config(connection: Connection) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> str | None:
    if _at_head(connection):
        return _static_head()
    from alembic import command as alembic_command
    from alembic.runtime.migration import MigrationContext

    alembic_command.upgrade(_alembic_config(connection), "head")
    return MigrationContext.configure(connection).get_current_revision()


def _static_head() -> str | None:
    """The head revision read from the migration files' `revision` / `down_revision` assignments
    (no Alembic import); None when that is not one plain chain (Alembic then decides)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if not isinstance(node, ast.Assign) or len(node.targets) != 1:
                continue
            target = node.targets[0]
            if isinstance(target, ast.Name):
                name, value = target.id, node.value
                if name == "revision" and isinstance(value, ast.Constant) and isinstance(value.value, str):
                    revisions.add(value.value)
                elif name == "down_revision":
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        parents.add(value.value)
                    elif not (isinstance(value, ast.Constant) and value.value is None):
                        return None  # a merge or something computed: leave it to Alembic
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _at_head(connection: Connection) -> bool:
    """Is the schema at head already? (Checked without Alembic, which then stays unimported.)"""
    head = _static_head()
    if head is None or not connection.dialect.has_table(connection, "alembic_version"):
        return False
    rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return list(rows) == [head]


def head_revision() -> str | None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


async def migrate(engine: AsyncEngine) -> str | None:
    """Bring the schema to head (idempotent; safe when several instances run it together on
    PostgreSQL). Returns the revision in force. Raises RecordsUnavailable when unreachable."""
    try:
        async with engine.connect() as conn:
            postgres = conn.dialect.name == "postgresql"
            if postgres:
                await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                await conn.commit()
            try:
                revision = await conn.run_sync(_upgrade)
                await conn.commit()
            finally:
                if postgres:
                    await conn.rollback()
                    await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                    await conn.commit()
    except (OSError, DBAPIError) as exc:
        raise RecordsUnavailable(
            f"records database {describe_url(str(engine.url))} unreachable: {_reason(exc)}"
        ) from exc
    return revision


def _reason(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {exc.orig}".strip()
    return f"{type(exc).__name__}: {exc}"


def reason(exc: BaseException) -> str:
    """A one-line description of a database error (no SQL, no parameters)."""
    return _reason(exc).splitlines()[0][:300]
