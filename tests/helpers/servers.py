"""Run the real bridge app under uvicorn on 127.0.0.1 (ephemeral port), in its own thread and loop."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from bridge.cli import listening_socket


def bind_ephemeral() -> socket.socket:
    """A listening socket on a free port, set up exactly as `ivr-bridge serve` sets up its own."""
    return listening_socket("127.0.0.1", 0)


@contextmanager
def serve(
    make_app: Callable[[int], Any], make_config: Callable[[Any], uvicorn.Config] | None = None
) -> Iterator[tuple[str, Any]]:
    """Bind a port, build the app for it (`make_app(port)`), serve it; yields (base_url, app).
    `make_config(app)` replaces the test configuration (e.g. `ivr-bridge serve`'s own)."""
    sock = bind_ephemeral()
    port = sock.getsockname()[1]
    app = make_app(port)
    if make_config is not None:
        config = make_config(app)
    else:
        config = uvicorn.Config(
            app, log_level="warning", ws_max_size=16 * 1024 * 1024, ws_ping_interval=None, lifespan="on"
        )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("bridge server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
