"""Command line: `ivr-bridge serve`, and the sub-commands later issues add."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Generator, Sequence
from types import FrameType
from typing import TYPE_CHECKING

from bridge.errors import ConfigError
from bridge.settings import Settings

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's listening socket, with TCP_NODELAY (inherited by every accepted connection).

    Without it, Nagle's algorithm holds back the second of two small websocket frames until the
    peer's delayed ACK (40 ms on Linux): Twilio would get our audio frames in 40 ms clumps.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(settings: Settings) -> None:
    """One handler, on the root logger, with the secret filter (bridge.logsafe) on it.

    uvicorn's loggers (errors and the access log, which prints request paths with their query
    strings) get no handlers of their own (`server_config` passes `log_config=None`): they
    propagate here, so every line the process prints passes the filter.
    """
    from bridge import logsafe

    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    logsafe.install(settings.secret_values())


def server_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    """The uvicorn configuration `ivr-bridge serve` runs the app with."""
    import uvicorn

    return uvicorn.Config(
        app,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's records go to the root handler (and its secret filter)
        # Who the client is (rate limits) and which URL was signed is decided by the bridge alone
        # (BRIDGE_TRUST_PROXY): uvicorn must not rewrite the peer from X-Forwarded-For.
        proxy_headers=False,
        # The embedded engine takes appends up to 15 MiB; Twilio streams are held to 64 KiB by
        # TwilioLeg itself (close 1009), per message.
        ws_max_size=16 * 1024 * 1024,
        ws_ping_interval=20,
        ws_ping_timeout=20,
    )


log = logging.getLogger("bridge.cli")


def draining_server(config: uvicorn.Config, app: FastAPI) -> uvicorn.Server:
    """A uvicorn server whose SIGTERM / SIGINT drain the calls (`app.state.drainer`) before it exits.

    uvicorn's own handling would close every websocket at once, calls included. Here the first
    signal starts the drain and the server stops once it is over; a second signal exits now.
    The signals are never re-raised afterwards: a drained process exits 0.
    """
    import uvicorn

    class DrainingServer(uvicorn.Server):
        signals_seen = 0
        loop: asyncio.AbstractEventLoop | None = None

        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            self.loop = asyncio.get_running_loop()
            await super().serve(sockets)

        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in originals.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            self.signals_seen += 1
            if self.signals_seen > 1 or self.loop is None or not self.started:
                log.warning("%s again: exiting now", signal.Signals(sig).name)
                self.should_exit = True
                self.force_exit = True
                return
            log.warning("%s: draining calls before exiting", signal.Signals(sig).name)
            self.loop.call_soon_threadsafe(self._begin_drain)

        def _begin_drain(self) -> None:
            task = app.state.drainer.begin()
            task.add_done_callback(lambda _: setattr(self, "should_exit", True))

    return DrainingServer(config)


def _serve(args: argparse.Namespace) -> int:
    from bridge import logsafe
    from bridge.app import create_app

    try:
        settings = Settings.from_env(host=args.host, port=args.port, dialplans=args.dialplans)
    except ConfigError as exc:
        print(f"ivr-bridge: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    app = create_app(settings)
    config = server_config(app, settings)
    logsafe.install(settings.secret_values())  # idempotent; covers any handler added meanwhile
    draining_server(config, app).run(sockets=[listening_socket(settings.host, settings.port)])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ivr-bridge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the bridge (HTTP, Twilio media streams, embedded engine)")
    serve.add_argument("--host", default=None, help="address to listen on (BRIDGE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (BRIDGE_PORT, default 8080)")
    serve.add_argument("--dialplans", default=None, help="dialplan directory (BRIDGE_DIALPLANS)")
    serve.set_defaults(func=_serve)
    from bridge.telephony.twilio.rest import add_subcommand as add_twilio_subcommand

    add_twilio_subcommand(sub)
    from bridge.dialplan.cli import add_parser as add_dialplan_parser

    dialplan_sub = add_dialplan_parser(sub)
    from bridge.tools.dialplan_test import add_parser as add_dialplan_test_parser

    add_dialplan_test_parser(dialplan_sub)
    from bridge.tools.call_cli import add_parser as add_call_parser

    add_call_parser(sub)
    from bridge.records.cli import add_parser as add_calls_parser

    add_calls_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))
