"""Command line: `ivr-bridge serve`, and the sub-commands later issues add."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from bridge.errors import ConfigError
from bridge.settings import Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from bridge.app import create_app

    try:
        settings = Settings.from_env(host=args.host, port=args.port, dialplans=args.dialplans)
    except ConfigError as exc:
        print(f"ivr-bridge: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        ws_max_size=64 * 1024,
        ws_ping_interval=20,
        ws_ping_timeout=20,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ivr-bridge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the bridge (HTTP, Twilio media streams, embedded engine)")
    serve.add_argument("--host", default=None, help="address to listen on (BRIDGE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (BRIDGE_PORT, default 8080)")
    serve.add_argument("--dialplans", default=None, help="dialplan directory (BRIDGE_DIALPLANS)")
    serve.set_defaults(func=_serve)
    from bridge.telephony.twilio_rest import add_subcommand as add_twilio_subcommand

    add_twilio_subcommand(sub)
    from bridge.dialplan.cli import add_parser as add_dialplan_parser

    add_dialplan_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))
