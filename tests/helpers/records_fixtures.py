"""Fixtures for the call-records tests (imported by tests/records/conftest.py and tests/web/conftest.py).

`db_url` runs each test twice: on SQLite (always) and on a real PostgreSQL server started for the
session (skipped, with the reason, only when the `postgresql` Debian package is not installed).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.settings import Settings
from tests.helpers.postgres import PostgresServer, find_bin_dir

KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.b64encode(bytes(range(1, 33))).decode()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = find_bin_dir()
    server = PostgresServer(bin_dir)
    server.init()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'records.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


def records_settings(tmp_path: Path, db_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {"data_dir": tmp_path / "data", "database_url": db_url}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def env_for(settings: Settings) -> dict[str, str]:
    """The environment a CLI subprocess needs to use the same records."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "OPENAI_", "TWILIO_"))}
    env["BRIDGE_DATA_DIR"] = str(settings.data_dir)
    env["BRIDGE_DATABASE_URL"] = settings.database_url_resolved
    if settings.data_key:
        env["BRIDGE_DATA_KEY"] = settings.data_key
    return env


def files(root: Path, pattern: str) -> list[Path]:
    """Files under `root` matching `pattern` (sync: async tests call it, ruff's ASYNC240)."""
    return sorted(root.rglob(pattern))


def cut_file(path: Path, drop_bytes: int) -> None:
    """Remove the last `drop_bytes` of a file."""
    path.write_bytes(path.read_bytes()[:-drop_bytes])
