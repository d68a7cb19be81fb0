"""Reading and erasing call records, and the audit log (the admin API and the CLI share these).

Every function takes the async engine; none keeps state. Filters are parsed once by
`parse_filters` (a malformed one raises `FilterError` naming the parameter and what it expects).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, and_, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bridge.errors import BridgeError
from bridge.records import schema
from bridge.records.crypto import RecordsCryptoError, decrypt_field, is_encrypted_field

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
TEXT_SCAN_CALLS = 5000  # calls scanned per request when transcripts must be decrypted to search
E164 = re.compile(r"^\+[1-9]\d{1,14}$")


class FilterError(BridgeError):
    """A list filter is malformed (the message names the parameter)."""


class CallNotFound(BridgeError):
    """No record of that call id."""


@dataclass(frozen=True)
class Actor:
    """Who does an admin action and from where (the audit log's `who` and `source`)."""

    who: str
    source: str


@dataclass(frozen=True)
class CallFilters:
    from_number: str | None = None
    to_number: str | None = None
    flow: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None
    limit: int = DEFAULT_LIMIT
    cursor: int | None = None


FILTER_NAMES = ("from", "to", "flow", "since", "until", "text", "limit", "cursor")


def parse_time(name: str, value: str) -> datetime:
    raw = value.strip()
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
    except ValueError:
        raise FilterError(
            f"{name}: {value!r} is not an ISO 8601 time (e.g. 2025-01-31 or 2025-01-31T14:00:00Z)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def parse_filters(params: Mapping[str, str]) -> CallFilters:
    """Filters from query parameters / CLI options (names in FILTER_NAMES)."""
    unknown = sorted(set(params) - set(FILTER_NAMES))
    if unknown:
        raise FilterError(f"unknown filter(s) {', '.join(unknown)}; known: {', '.join(FILTER_NAMES)}")
    values: dict[str, Any] = {}
    for name, key in (("from", "from_number"), ("to", "to_number"), ("flow", "flow"), ("text", "text")):
        raw = params.get(name)
        if raw is not None:
            if not raw.strip() or len(raw) > 256:
                raise FilterError(f"{name}: expected 1 to 256 characters")
            values[key] = raw.strip()
    for name in ("since", "until"):
        if params.get(name) is not None:
            values[name] = parse_time(name, params[name])
    if values.get("since") and values.get("until") and values["since"] > values["until"]:
        raise FilterError("since: must not be after until")
    if params.get("limit") is not None:
        raw = params["limit"].strip()
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
            raise FilterError(
                f"limit: expected a whole number from 1 to {MAX_LIMIT}, got {params['limit']!r}"
            )
        values["limit"] = int(raw)
    if params.get("cursor") is not None:
        raw = params["cursor"].strip()
        if not raw.isdigit() or int(raw) < 1:
            raise FilterError("cursor: expected the next_cursor value of a previous page")
        values["cursor"] = int(raw)
    return CallFilters(**values)


def check_e164(number: str, name: str = "caller") -> str:
    if not E164.match(number or ""):
        raise FilterError(f"{name}: expected an E.164 number like +15551234567, got {number!r}")
    return number


def pii_ref(value: str, key: bytes | None) -> str:
    """A stable, non-reversible reference to a phone number for the audit log (which is never
    erased, so it must not hold the number itself)."""
    digest = hmac.new(key or b"ivr-bridge audit", value.encode("utf-8"), hashlib.sha256).hexdigest()
    return "sha256:" + digest[:16]


# --------------------------------------------------------------------------- audit


async def audit_append(
    conn: AsyncConnection,
    actor: Actor,
    action: str,
    target: str | None = None,
    detail: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    await conn.execute(
        insert(schema.audit).values(
            at=now or datetime.now(UTC),
            who=actor.who[:256],
            action=action,
            target=None if target is None else target[:512],
            source=actor.source[:256],
            detail=dict(detail) if detail else None,
        )
    )


async def list_audit(
    engine: AsyncEngine, *, limit: int = DEFAULT_LIMIT, cursor: int | None = None
) -> dict[str, Any]:
    a = schema.audit
    query = select(a).order_by(a.c.id.desc()).limit(limit + 1)
    if cursor is not None:
        query = query.where(a.c.id < cursor)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    page = rows[:limit]
    return {
        "entries": [
            {
                "id": r["id"],
                "at": r["at"].isoformat(),
                "who": r["who"],
                "action": r["action"],
                "target": r["target"],
                "source": r["source"],
                "detail": r["detail"],
            }
            for r in page
        ],
        "next_cursor": str(page[-1]["id"]) if len(rows) > limit else None,
    }


# --------------------------------------------------------------------------- calls


def _summary(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "call_id": row["call_id"],
        "leg": row["leg"],
        "from": row["from_number"],
        "to": row["to_number"],
        "flow": row["flow"],
        "dialplan_version": row["dialplan_version"],
        "started_at": _iso(row["started_at"]),
        "answered_at": _iso(row["answered_at"]),
        "ended_at": _iso(row["ended_at"]),
        "end_reason": row["end_reason"],
        "duration_ms": row["duration_ms"],
        "recording": bool(row["recording_path"]),
        "recording_encrypted": bool(row["recording_encrypted"]),
        "recording_error": row["recording_error"],
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _call_query(filters: CallFilters) -> Select[Any]:
    c = schema.calls
    query = select(c).order_by(c.c.id.desc())
    conditions = []
    if filters.from_number:
        conditions.append(c.c.from_number == filters.from_number)
    if filters.to_number:
        conditions.append(c.c.to_number == filters.to_number)
    if filters.flow:
        conditions.append(c.c.flow == filters.flow)
    if filters.since:
        conditions.append(c.c.started_at >= filters.since)
    if filters.until:
        conditions.append(c.c.started_at < filters.until)
    if filters.cursor is not None:
        conditions.append(c.c.id < filters.cursor)
    return query.where(and_(*conditions)) if conditions else query


async def list_calls(engine: AsyncEngine, filters: CallFilters, key: bytes | None) -> dict[str, Any]:
    """A page of calls, newest first: `{"calls": [...], "next_cursor": str | None}`."""
    query = _call_query(filters)
    t = schema.transcripts
    if filters.text and key is None:
        # Plain-text transcripts: the database searches (encrypted lines cannot match without the key).
        needle = filters.text.lower()
        query = query.where(
            select(t.c.id)
            .where(
                t.c.call_id == schema.calls.c.call_id, func.lower(t.c.text).contains(needle, autoescape=True)
            )
            .exists()
        )
    if not filters.text or key is None:
        async with engine.connect() as conn:
            rows = (await conn.execute(query.limit(filters.limit + 1))).mappings().all()
        page = rows[: filters.limit]
        more = len(rows) > filters.limit
        return {
            "calls": [_summary(r) for r in page],
            "next_cursor": str(page[-1]["id"]) if more and page else None,
        }
    # Encrypted transcripts: scan calls page by page, decrypting their lines, until a page is full.
    needle = filters.text.lower()
    found: list[Mapping[str, Any]] = []
    scanned = 0
    last_id: int | None = None
    exhausted = False
    async with engine.connect() as conn:
        while len(found) < filters.limit and scanned < TEXT_SCAN_CALLS:
            q = query if last_id is None else query.where(schema.calls.c.id < last_id)
            batch = (await conn.execute(q.limit(200))).mappings().all()
            if not batch:
                exhausted = True
                break
            ids = [r["call_id"] for r in batch]
            lines = (await conn.execute(select(t.c.call_id, t.c.text).where(t.c.call_id.in_(ids)))).all()
            matching: set[str] = set()
            for call_id, text_ in lines:
                if call_id in matching:
                    continue
                try:
                    plain = decrypt_field(key, text_, _context(call_id))
                except RecordsCryptoError:
                    continue
                if needle in plain.lower():
                    matching.add(call_id)
            for r in batch:
                scanned += 1
                last_id = r["id"]
                if r["call_id"] in matching:
                    found.append(r)
                    if len(found) == filters.limit:
                        break
            if len(batch) < 200 and len(found) < filters.limit:
                exhausted = True
                break
    next_cursor = None if exhausted else (str(last_id) if last_id is not None else None)
    return {"calls": [_summary(r) for r in found], "next_cursor": next_cursor}


def _context(call_id: str) -> str:
    return "transcript:" + call_id


async def get_call(engine: AsyncEngine, call_id: str, key: bytes | None) -> dict[str, Any]:
    """The whole record of one call (raises CallNotFound)."""
    c, e, t, u = schema.calls, schema.events, schema.transcripts, schema.turns
    async with engine.connect() as conn:
        row = (await conn.execute(select(c).where(c.c.call_id == call_id))).mappings().first()
        if row is None:
            raise CallNotFound(f"no record of call {call_id!r}")
        events = (
            await conn.execute(select(e).where(e.c.call_id == call_id).order_by(e.c.t_ms, e.c.id))
        ).mappings()
        lines = (
            await conn.execute(select(t).where(t.c.call_id == call_id).order_by(t.c.t_ms, t.c.id))
        ).mappings()
        turns = (
            await conn.execute(select(u).where(u.c.call_id == call_id).order_by(u.c.t_ms, u.c.id))
        ).mappings()
        record = _summary(dict(row))
        record["events"] = [{"t_ms": r["t_ms"], "kind": r["kind"], "data": r["data"] or {}} for r in events]
        record["transcript"] = [_line(dict(r), key) for r in lines]
        record["turns"] = [
            {k: r[k] for k in r.keys() if k not in ("id", "call_id")}  # noqa: SIM118 (RowMapping)
            for r in turns
        ]
    return record


def _line(row: Mapping[str, Any], key: bytes | None) -> dict[str, Any]:
    line: dict[str, Any] = {"t_ms": row["t_ms"], "speaker": row["speaker"], "heard_ms": row["heard_ms"]}
    stored = row["text"]
    line["encrypted"] = is_encrypted_field(stored)
    try:
        line["text"] = decrypt_field(key, stored, _context(row["call_id"]))
    except RecordsCryptoError as exc:
        line["text"] = None
        line["error"] = str(exc)
    return line


async def recording_of(engine: AsyncEngine, call_id: str) -> tuple[str | None, bool]:
    """(recording path, encrypted) of a call (raises CallNotFound)."""
    c = schema.calls
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(c.c.recording_path, c.c.recording_encrypted).where(c.c.call_id == call_id)
            )
        ).first()
    if row is None:
        raise CallNotFound(f"no record of call {call_id!r}")
    return row[0], bool(row[1])


# --------------------------------------------------------------------------- erasure


@dataclass
class Erased:
    calls: int = 0
    events: int = 0
    transcripts: int = 0
    turns: int = 0
    files: int = 0
    call_ids: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("calls", "events", "transcripts", "turns", "files")}


async def erase(
    engine: AsyncEngine,
    *,
    call_ids: Sequence[str] = (),
    caller: str | None = None,
    started_before: datetime | None = None,
    recordings_root: Path,
    audit: tuple[Actor, str, str | None] | None = None,
    audit_detail: Mapping[str, Any] | None = None,
) -> Erased:
    """Remove calls (by id, by caller number, or started before a time) with every row and
    recording file that belongs to them, and write the audit entry in the same transaction.

    Files go first (an interrupted erasure leaves rows that a retry finds again, never an orphan
    file holding a caller's voice)."""
    c = schema.calls
    result = Erased()
    async with engine.begin() as conn:
        conditions: list[ColumnElement[bool]] = []
        if call_ids:
            conditions.append(c.c.call_id.in_(list(call_ids)))
        if caller is not None:
            conditions.append(c.c.from_number == caller)
        if started_before is not None:
            conditions.append(c.c.started_at < started_before)
        rows: Sequence[Row[Any, Any]] = ()
        if conditions:
            rows = (await conn.execute(select(c.c.call_id, c.c.recording_path).where(*conditions))).all()
        ids = sorted({r[0] for r in rows} | set(call_ids))
        for _call_id, path in rows:
            if path and _remove_file(Path(path), recordings_root):
                result.files += 1
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for table, name in (
                (schema.events, "events"),
                (schema.transcripts, "transcripts"),
                (schema.turns, "turns"),
            ):
                gone = (await conn.execute(delete(table).where(table.c.call_id.in_(chunk)))).rowcount
                setattr(result, name, getattr(result, name) + max(gone or 0, 0))
            result.calls += max(
                (await conn.execute(delete(c).where(c.c.call_id.in_(chunk)))).rowcount or 0, 0
            )
        result.call_ids = [r[0] for r in rows] if not call_ids else list(call_ids)
        if audit is not None:
            actor, action, target = audit
            await audit_append(conn, actor, action, target, {**(audit_detail or {}), **result.counts()})
    return result


def _remove_file(path: Path, root: Path) -> bool:
    """Delete a recording file (only inside the recordings directory). True if it existed."""
    try:
        resolved = path.resolve()
        if not resolved.is_relative_to(root.resolve()):
            return False
        resolved.unlink()
        return True
    except FileNotFoundError:
        return False


def sweep_files(root: Path, older_than: datetime) -> int:
    """Remove recording files last written before `older_than` (orphans of crashed or lost
    records included); empty day directories go too. Blocking I/O."""
    if not root.is_dir():
        return 0
    cutoff = older_than.timestamp()
    removed = 0
    for path in sorted(root.rglob("*"), reverse=True):
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        except OSError:
            continue
    return removed
