"""Websocket client for one realtime session: a thin I/O shell around `bridge.realtime.events`.

    client = RealtimeClient()
    await client.connect(resolve_endpoint("openai", settings=settings))
    await client.send(SessionUpdate(session=session_config("pcmu")))
    await client.send_raw(append_audio_json(b64))          # the audio fast path
    async for event in client:                              # parsed ServerEvents
        ...
    await client.close()                                    # bounded: ~50 ms even if the peer is gone

Iteration ends normally when the server closes with 1000 or after our own `close()`; any other
close (1011, 4000 for the dead beta shape, a dropped TCP connection, missed pings) raises
`UpstreamClosed` (an `UpstreamError`) carrying the close code and reason. Connect failures raise
`UpstreamError` naming the URL and the cause; handshake headers (credentials) are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State

from bridge.errors import UpstreamError
from bridge.realtime.events import ClientEvent, ServerEvent, encode_client_event, parse_server_event
from bridge.realtime.providers import Endpoint

MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # a server frame larger than this is a broken peer
OPEN_TIMEOUT_S = 10.0
# The close handshake waits at most this long for the peer before dropping the TCP connection.
CLOSE_TIMEOUT_S = 0.05
# Keepalive: a server that stops reading (a stalled process, a black-holed route) stops answering
# pings; the session is then closed as lost within PING_INTERVAL_S + PING_TIMEOUT_S.
PING_INTERVAL_S = 2.0
PING_TIMEOUT_S = 3.0
NORMAL_CLOSURE = 1000
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class UpstreamClosed(UpstreamError):
    """The realtime server closed the session abnormally (anything but 1000)."""

    def __init__(self, code: int | None, reason: str) -> None:
        what = f"code {code}" if code is not None else "no close frame"
        super().__init__(f"realtime session closed: {what}" + (f" ({reason})" if reason else ""))
        self.code = code
        self.reason = reason


class RealtimeClient:
    """One websocket to a realtime server. Not reusable: one `connect()` per instance."""

    def __init__(
        self,
        *,
        open_timeout_s: float = OPEN_TIMEOUT_S,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        ping_interval_s: float | None = PING_INTERVAL_S,
        ping_timeout_s: float | None = PING_TIMEOUT_S,
    ) -> None:
        self._open_timeout_s = open_timeout_s
        self._ping_interval_s = ping_interval_s
        self._ping_timeout_s = ping_timeout_s
        self._close_timeout_s = close_timeout_s
        self._max_message_bytes = max_message_bytes
        self._ws: ClientConnection | None = None
        self._closing = False
        self.url: str | None = None

    # -- state -------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the connection is over (either side closed it, or `close()` was called)."""
        if self._closing:
            return True
        ws = self._ws
        return ws is not None and ws.state is State.CLOSED

    @property
    def close_code(self) -> int | None:
        """The code the server sent in its close frame, if any."""
        ws = self._ws
        rcvd = ws.protocol.close_rcvd if ws is not None else None
        return rcvd.code if rcvd is not None else None

    # -- connect / send ----------------------------------------------------------------------

    async def connect(self, endpoint: Endpoint) -> None:
        if self._closing:
            raise UpstreamError("realtime client: closed before connect()")
        if self._ws is not None or self.url is not None:
            raise UpstreamError("realtime client: connect() called twice")
        self.url = endpoint.url
        host = urlsplit(endpoint.url).hostname or ""
        try:
            self._ws = await connect(
                endpoint.url,
                additional_headers=endpoint.headers,
                max_size=self._max_message_bytes,
                compression=None,
                open_timeout=self._open_timeout_s,
                close_timeout=self._close_timeout_s,
                ping_interval=self._ping_interval_s,
                ping_timeout=self._ping_timeout_s,
                # A system proxy must not capture the embedded engine or a local stand-in.
                proxy=None if host in _LOOPBACK else True,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise UpstreamError(f"realtime connect to {endpoint.url} refused: HTTP {status}") from exc
        except TimeoutError as exc:
            raise UpstreamError(
                f"realtime connect to {endpoint.url} timed out after {self._open_timeout_s:g} s"
            ) from exc
        except (OSError, InvalidHandshake, InvalidURI, ValueError) as exc:
            raise UpstreamError(f"realtime connect to {endpoint.url} failed: {exc!r}") from exc
        if self._closing:
            # close() ran while the handshake was in flight (the caller hung up): do not leave a
            # session open that nobody will use or close.
            await self.close()
            raise UpstreamError(f"realtime connect to {endpoint.url}: closed by the bridge while connecting")

    def _require(self) -> ClientConnection:
        ws = self._ws
        if ws is None:
            raise UpstreamError("realtime client: not connected")
        return ws

    async def send(self, ev: ClientEvent) -> None:
        await self.send_raw(encode_client_event(ev))

    async def send_raw(self, text: str) -> None:
        """Send one pre-encoded JSON text frame (see `events.append_audio_json`)."""
        ws = self._ws
        if ws is None:
            raise UpstreamError("realtime client: not connected")
        try:
            await ws.send(text)
        except ConnectionClosed as exc:
            raise self._closed_error(exc) from exc

    # -- receive -----------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[ServerEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[ServerEvent]:
        ws = self._require()
        try:
            async for message in ws:
                yield parse_server_event(message)
        except ConnectionClosed as exc:
            if self._closing:
                return
            raise self._closed_error(exc) from exc
        # websockets ended the loop quietly (close 1000 or 1001, or we closed it).
        if self._closing:
            return
        rcvd = ws.protocol.close_rcvd
        if rcvd is not None and rcvd.code == NORMAL_CLOSURE:
            return
        raise UpstreamClosed(rcvd.code if rcvd else None, rcvd.reason if rcvd else "")

    def _closed_error(self, exc: ConnectionClosed) -> UpstreamError:
        if self._closing:
            return UpstreamError("realtime client: session already closed by the bridge")
        rcvd = exc.rcvd
        if rcvd is None:
            return UpstreamClosed(None, "connection lost")
        return UpstreamClosed(rcvd.code, rcvd.reason)

    # -- close -------------------------------------------------------------------------------

    def abort(self) -> None:
        """Drop the TCP connection now, without a close handshake (a peer that stopped reading
        would hold a polite close up for its whole timeout)."""
        self._closing = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.transport.abort()

    async def close(self, code: int = NORMAL_CLOSURE, reason: str = "") -> None:
        """Close the session. Bounded by the close timeout, even if the peer never answers."""
        self._closing = True
        ws = self._ws
        if ws is None or ws.state is State.CLOSED:
            return
        try:
            # websockets drops the TCP connection itself after close_timeout; the outer bound
            # also covers a send buffer that a stalled peer never drains.
            async with asyncio.timeout(self._close_timeout_s * 2 + 0.02):
                await ws.close(code, reason)
        except (TimeoutError, OSError):
            with contextlib.suppress(Exception):
                ws.transport.abort()
