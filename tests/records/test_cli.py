"""`ivr-bridge calls ...` end to end: a real subprocess against the same database and files."""

from __future__ import annotations

import asyncio
import getpass
import json
import socket
import subprocess
import sys
import wave
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bridge.records import Records
from bridge.settings import Settings
from tests.helpers.records_fixtures import KEY, env_for, records_settings
from tests.records.test_store import place_call


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "calls", *args],
        env=env_for(settings), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def populate(settings: Settings) -> None:
    async def run() -> None:
        records = Records(settings)
        await records.start(retention=False)
        place_call(records, "CA1", caller="+15550000001", text_="where is my parcel")
        place_call(records, "CA2", caller="+15550000002", started_at=datetime.now(UTC) - timedelta(days=100))
        place_call(records, "CA3", caller="+15550000001")
        await records.stop()

    asyncio.run(run())


def test_cli_end_to_end(tmp_path: Path, db_url: str) -> None:
    settings = records_settings(tmp_path, db_url, data_key=KEY)
    populate(settings)

    listed = cli(settings, "list")
    assert listed.returncode == 0, listed.stderr
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["CA3", "CA2", "CA1"]
    page = json.loads(cli(settings, "list", "--from", "+15550000001", "--text", "parcel", "--json").stdout)
    assert [c["call_id"] for c in page["calls"]] == ["CA1"]
    bad = cli(settings, "list", "--since", "soon")
    assert bad.returncode == 2
    assert "since: 'soon' is not an ISO 8601 time" in bad.stderr

    shown = json.loads(cli(settings, "show", "CA1").stdout)
    assert shown["transcript"][0]["text"] == "where is my parcel"
    missing = cli(settings, "show", "CA404")
    assert missing.returncode == 1
    assert "no record of call 'CA404'" in missing.stderr

    out = tmp_path / "ca1.wav"
    got = cli(settings, "recording", "CA1", "-o", str(out))
    assert got.returncode == 0, got.stderr
    with wave.open(str(out)) as w:
        assert (w.getnchannels(), w.getframerate()) == (2, 8000)

    wrong_key = settings.model_copy(update={"data_key": None})
    refused = cli(wrong_key, "recording", "CA1", "-o", str(tmp_path / "x.wav"))
    assert refused.returncode == 2
    assert "BRIDGE_DATA_KEY is not set" in refused.stderr

    purged = cli(settings, "purge", "--older-than-days", "30")
    assert json.loads(purged.stdout)["deleted"]["calls"] == 1
    deleted = cli(settings, "delete", "--caller", "+15550000001")
    assert json.loads(deleted.stdout)["deleted"] == {
        "calls": 2,
        "events": 4,
        "transcripts": 4,
        "turns": 2,
        "files": 2,
    }
    assert cli(settings, "delete", "--caller", "15550000001").returncode == 2
    assert cli(settings, "delete").returncode == 2
    assert cli(settings, "list").stdout == ""
    assert not list(settings.data_dir.rglob("*.enc"))

    audit = json.loads(cli(settings, "audit", "--limit", "100").stdout)["entries"]
    who = f"cli {getpass.getuser()}@{socket.gethostname()}"
    assert {e["who"] for e in audit} == {who}
    assert {
        "calls.list",
        "calls.show",
        "calls.recording",
        "calls.purge",
        "calls.erase_caller",
        "audit.list",
    } <= {e["action"] for e in audit}


def test_cli_reports_an_unreachable_database(tmp_path: Path) -> None:
    settings = records_settings(tmp_path, "postgresql+asyncpg://u:secretpw@127.0.0.1:1/x")
    done = cli(settings, "list")
    assert done.returncode == 3
    assert "unreachable" in done.stderr
    assert "secretpw" not in done.stderr
