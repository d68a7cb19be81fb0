"""The admin API over real HTTP: the real app under uvicorn on 127.0.0.1, records on SQLite and on
a real PostgreSQL (each test runs on both)."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import httpx
from fastapi import FastAPI

from bridge.app import create_app
from bridge.records import Records
from bridge.settings import Settings
from tests.helpers.records_fixtures import KEY, cut_file, files, records_settings
from tests.helpers.servers import serve
from tests.records.test_store import place_call

REPO = Path(__file__).resolve().parents[2]
TOKEN = "admin-api-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROUTES = [
    ("GET", "/api/calls"),
    ("DELETE", "/api/calls?caller=%2B15550000001"),
    ("GET", "/api/calls/CA1"),
    ("DELETE", "/api/calls/CA1"),
    ("GET", "/api/calls/CA1/recording"),
    ("GET", "/api/audit"),
]


async def populate(settings: Settings) -> None:
    records = Records(settings)
    await records.start(retention=False)
    place_call(records, "CA1", caller="+15550000001", text_="I need help with my invoice")
    place_call(records, "CA2", caller="+15550000002", text_="opening hours please")
    place_call(records, "CA3", caller="+15550000001", text_="invoice again")
    await records.stop()


def app_settings(tmp_path: Path, db_url: str, **overrides: object) -> Settings:
    return records_settings(tmp_path, db_url, dialplans=REPO / "dialplans", **overrides)


def make_app(settings: Settings) -> FastAPI:
    return create_app(settings, preload_models=False)


def test_routes_are_absent_without_an_admin_token(tmp_path: Path) -> None:
    settings = app_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    with serve(lambda _port: make_app(settings)) as (url, _app):
        for method, path in ROUTES:
            r = httpx.request(method, url + path, headers=AUTH)
            assert r.status_code == 404, (method, path, r.status_code)
    assert (tmp_path / "data").is_dir()  # the data directory is created at start-up


async def test_token_is_required(tmp_path: Path, db_url: str) -> None:
    settings = app_settings(tmp_path, db_url, admin_token=TOKEN)
    await populate(settings)
    with serve(lambda _port: make_app(settings)) as (url, _app):
        async with httpx.AsyncClient(base_url=url) as http:
            for method, path in ROUTES:
                r = await http.request(method, path)
                assert r.status_code == 401, (method, path)
                assert r.headers["www-authenticate"].startswith("Bearer"), (method, path)
                r = await http.request(method, path, headers={"Authorization": f"Bearer {TOKEN}x"})
                assert r.status_code == 401, (method, path)
                r = await http.request(method, path, headers={"Authorization": f"Basic {TOKEN}"})
                assert r.status_code == 401, (method, path)
            r = await http.get("/api/calls", headers=AUTH)
            assert r.status_code == 200
            assert len(r.json()["calls"]) == 3


async def test_reading_records(tmp_path: Path, db_url: str) -> None:
    settings = app_settings(tmp_path, db_url, admin_token=TOKEN, data_key=KEY)
    await populate(settings)
    with serve(lambda _port: make_app(settings)) as (url, _app):
        async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
            r = await http.get("/api/calls", params={"from": "+15550000001"})
            assert [c["call_id"] for c in r.json()["calls"]] == ["CA3", "CA1"]
            r = await http.get("/api/calls", params={"text": "invoice", "limit": "1"})
            body = r.json()
            assert [c["call_id"] for c in body["calls"]] == ["CA3"]
            assert body["next_cursor"]
            r = await http.get(
                "/api/calls", params={"text": "invoice", "limit": "1", "cursor": body["next_cursor"]}
            )
            assert [c["call_id"] for c in r.json()["calls"]] == ["CA1"]
            for params, message in (
                ({"since": "last tuesday"}, "since: 'last tuesday' is not an ISO 8601 time"),
                ({"limit": "9999"}, "limit: expected a whole number from 1 to 500"),
                ({"cursor": "-3"}, "cursor: expected the next_cursor value of a previous page"),
                ({"colour": "blue"}, "unknown filter(s) colour"),
            ):
                r = await http.get("/api/calls", params=params)
                assert r.status_code == 422, r.text
                assert r.json()["detail"].startswith(message), r.text

            r = await http.get("/api/calls/CA1")
            call = r.json()
            assert call["transcript"][0]["text"] == "I need help with my invoice"
            assert [e["kind"] for e in call["events"]] == ["prompt_played", "tool_call"]
            r = await http.get("/api/calls/CA404")
            assert r.status_code == 404
            assert "CA404" in r.json()["detail"]

            r = await http.get("/api/calls/CA1/recording")
            assert r.status_code == 200
            assert r.headers["content-type"] == "audio/wav"
            assert int(r.headers["content-length"]) == len(r.content)
            with wave.open(io.BytesIO(r.content)) as w:
                assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (
                    2,
                    8000,
                    2010 * 8,
                )  # the bot ends 10 ms later
            r = await http.get("/api/calls/CA404/recording")
            assert r.status_code == 404

            cut_file(files(settings.data_dir, "CA2.wav.enc")[0], 100)
            r = await http.get("/api/calls/CA2/recording")
            assert r.status_code == 409
            assert "truncated" in r.json()["detail"]

            r = await http.get("/api/audit", params={"limit": "100"})
            entries = r.json()["entries"]
            assert {e["who"] for e in entries} == {"admin-token"}
            assert {e["source"] for e in entries} == {"127.0.0.1"}
            assert {"calls.list", "calls.show", "calls.recording"} <= {e["action"] for e in entries}
            assert (await http.delete("/api/audit")).status_code == 405


async def test_erasure(tmp_path: Path, db_url: str) -> None:
    settings = app_settings(tmp_path, db_url, admin_token=TOKEN)
    await populate(settings)
    with serve(lambda _port: make_app(settings)) as (url, _app):
        async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
            r = await http.delete("/api/calls/CA2")
            assert r.status_code == 200
            assert r.json()["deleted"]["calls"] == 1
            assert r.json()["deleted"]["files"] == 1
            assert (await http.delete("/api/calls/CA2")).status_code == 404
            for bad in ("/api/calls", "/api/calls?caller=5550000001", "/api/calls?caller=%2B1&x=1"):
                r = await http.delete(bad)
                assert r.status_code == 422, bad
            assert "caller" in (await http.delete("/api/calls")).json()["detail"]
            r = await http.delete("/api/calls?caller=+15550000001")  # an unencoded + reads as a space
            assert r.json()["deleted"] == {"calls": 2, "events": 4, "transcripts": 4, "turns": 2, "files": 2}
            assert (await http.get("/api/calls")).json()["calls"] == []
            assert not files(settings.data_dir, "*.wav")
            actions = [e["action"] for e in (await http.get("/api/audit")).json()["entries"]]
            assert actions.count("calls.delete") == 2
            assert "calls.erase_caller" in actions


def test_database_down_is_a_503(tmp_path: Path) -> None:
    settings = app_settings(tmp_path, "postgresql+asyncpg://nobody:pw@127.0.0.1:1/none", admin_token=TOKEN)
    with serve(lambda _port: make_app(settings)) as (url, _app):
        r = httpx.get(url + "/api/calls", headers=AUTH)
        assert r.status_code == 503
        assert "unreachable" in r.json()["detail"]
        assert ":pw@" not in r.text
        assert r.headers["retry-after"] == "5"
        assert httpx.get(url + "/healthz").status_code == 200  # the bridge itself is up
