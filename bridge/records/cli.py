"""`ivr-bridge calls list|show|recording|delete|purge|audit`: the admin API on the command line.

Direct database access with the same settings as the server (BRIDGE_DATABASE_URL or the SQLite
file in BRIDGE_DATA_DIR, BRIDGE_DATA_KEY); every command is written to the audit log with
who = `cli <user>@<host>`. Exit status: 0 done, 1 not found, 2 bad input or configuration,
3 database unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bridge.errors import BridgeError, ConfigError
from bridge.records import store
from bridge.records.crypto import RecordsCryptoError
from bridge.records.db import RecordsUnavailable
from bridge.records.recording import RecordingError, RecordingMissing
from bridge.records.service import Records
from bridge.records.store import Actor, CallNotFound, FilterError
from bridge.settings import Settings


def cli_actor() -> Actor:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Actor(f"cli {user}@{socket.gethostname()}", "cli")


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


async def _list(records: Records, args: argparse.Namespace) -> int:
    params = {
        name: value
        for name, value in (
            ("from", args.from_number), ("to", args.to_number), ("flow", args.flow), ("since", args.since),
            ("until", args.until), ("text", args.text), ("limit", args.limit), ("cursor", args.cursor),
        )
        if value is not None
    }  # fmt: skip
    page = await records.list_calls(store.parse_filters(params), cli_actor())
    if args.json:
        _print(page)
        return 0
    for call in page["calls"]:
        print(
            f"{call['call_id']}\t{call['started_at']}\t{call['leg']}"
            f"\t{call['from'] or '-'} -> {call['to'] or '-'}"
            f"\t{call['flow'] or '-'}\t{call['end_reason'] or 'in progress'}\t{call['duration_ms'] or 0} ms"
            f"\t{'rec' if call['recording'] else '-'}"
        )
    if page["next_cursor"]:
        print(f"# more: --cursor {page['next_cursor']}", file=sys.stderr)
    return 0


async def _show(records: Records, args: argparse.Namespace) -> int:
    _print(await records.get_call(args.call_id, cli_actor()))
    return 0


async def _recording(records: Records, args: argparse.Namespace) -> int:
    opened = await records.open_recording(args.call_id, cli_actor())
    out = Path(args.output)

    def write() -> None:
        with out.open("wb") as f:
            for chunk in opened.chunks:
                f.write(chunk)

    await asyncio.get_running_loop().run_in_executor(None, write)
    print(f"{out}: {opened.wav_bytes} bytes (2 channels: caller, bot; 8 kHz)")
    return 0


async def _delete(records: Records, args: argparse.Namespace) -> int:
    if (args.call_id is None) == (args.caller is None):
        raise FilterError("give a call id or --caller +E164 (one of them)")
    actor = cli_actor()
    if args.call_id is not None:
        erased = await records.delete_call(args.call_id, actor)
    else:
        erased = await records.erase_caller(args.caller, actor)
    _print({"deleted": erased.counts()})
    return 0


async def _purge(records: Records, args: argparse.Namespace) -> int:
    erased = await records.purge(cli_actor(), older_than_days=args.older_than_days)
    _print({"deleted": erased.counts()})
    return 0


async def _audit(records: Records, args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("limit", args.limit), ("cursor", args.cursor)) if v is not None}
    page = store.parse_filters(params)
    _print(await records.list_audit(cli_actor(), limit=page.limit, cursor=page.cursor))
    return 0


Command = Callable[[Records, argparse.Namespace], Awaitable[int]]


def _runner(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            settings = Settings.from_env()
            return asyncio.run(_with_records(settings, command, args))
        except (CallNotFound, RecordingMissing) as exc:
            print(f"ivr-bridge calls: {exc}", file=sys.stderr)
            return 1
        except RecordsUnavailable as exc:
            print(f"ivr-bridge calls: {exc}", file=sys.stderr)
            return 3
        except (FilterError, ConfigError, RecordingError, RecordsCryptoError, BridgeError) as exc:
            print(f"ivr-bridge calls: {exc}", file=sys.stderr)
            return 2

    return run


async def _with_records(settings: Settings, command: Command, args: argparse.Namespace) -> int:
    records = Records(settings)
    try:
        return await command(records, args)
    finally:
        await records.close()


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    calls = sub.add_parser("calls", help="call records: list, show, recording, delete, purge, audit")
    verbs = calls.add_subparsers(dest="calls_command", required=True)

    listing = verbs.add_parser("list", help="calls, newest first")
    listing.add_argument("--from", dest="from_number", help="caller number")
    listing.add_argument("--to", dest="to_number", help="called number")
    listing.add_argument("--flow")
    listing.add_argument("--since", help="ISO 8601 time (inclusive)")
    listing.add_argument("--until", help="ISO 8601 time (exclusive)")
    listing.add_argument("--text", help="words in the transcript")
    listing.add_argument("--limit")
    listing.add_argument("--cursor", help="next_cursor of the previous page")
    listing.add_argument("--json", action="store_true", help="the API's JSON instead of lines")
    listing.set_defaults(func=_runner(_list))

    show = verbs.add_parser("show", help="the whole record of a call (JSON)")
    show.add_argument("call_id")
    show.set_defaults(func=_runner(_show))

    rec = verbs.add_parser("recording", help="write a call's recording as a WAV file (decrypted)")
    rec.add_argument("call_id")
    rec.add_argument("-o", "--output", required=True, help="WAV file to write")
    rec.set_defaults(func=_runner(_recording))

    delete = verbs.add_parser("delete", help="erase a call, or every call of a caller (--caller +E164)")
    delete.add_argument("call_id", nargs="?")
    delete.add_argument("--caller", help="erase every call from this E.164 number")
    delete.set_defaults(func=_runner(_delete))

    purge = verbs.add_parser(
        "purge", help="erase calls older than BRIDGE_RETENTION_DAYS (or --older-than-days)"
    )
    purge.add_argument("--older-than-days", type=int, default=None)
    purge.set_defaults(func=_runner(_purge))

    audit = verbs.add_parser("audit", help="the audit log, newest first")
    audit.add_argument("--limit")
    audit.add_argument("--cursor")
    audit.set_defaults(func=_runner(_audit))
