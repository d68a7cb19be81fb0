"""A minimal RFC 6455 websocket over asyncio protocols, for the load generator only.

The load generator must not be the bottleneck: the `websockets` library costs ~20-30 µs per
message in Python, which at 200 calls (10 000 caller frames a second, as many appends at the
stand-in, plus the bot's media and marks) would take a core of its own. This is the least a
websocket needs: the HTTP upgrade, unfragmented text frames out, text/close/ping frames in (with
continuation frames joined), pongs. Client frames are masked with a zero key (legal framing; a
real client picks a random key, which only matters for proxies and costs an XOR per frame), and
the server side unmasks with one big-integer XOR (C speed).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ZERO_MASK = b"\x00\x00\x00\x00"


def _header(opcode: int, n: int, masked: bool) -> bytes:
    m = 0x80 if masked else 0
    if n < 126:
        head = bytes((0x80 | opcode, m | n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, m | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, m | 127, n)
    return head + ZERO_MASK if masked else head


def _unmask(mask: bytes, data: bytes) -> bytes:
    n = len(data)
    if not n:
        return data
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class _Frames(asyncio.Protocol):
    """Frame parsing and sending shared by both ends (`masked_out`: we are the client)."""

    masked_out = True

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._open = False
        self._parts: list[bytes] = []
        self.closed = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None

    # -- sending -----------------------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        t = self.transport
        if t is None or not self._open:
            return
        data = text.encode()
        t.write(_header(1, len(data), self.masked_out) + data)

    def _control(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None:
            self.transport.write(_header(opcode, len(payload), self.masked_out) + payload)

    def close(self, code: int = 1000) -> None:
        if self._open:
            self._open = False
            self._control(8, struct.pack("!H", code))
        if self.transport is not None:
            self.transport.close()

    # -- receiving ----------------------------------------------------------------------------------

    def on_text(self, text: str) -> None:
        raise NotImplementedError

    def on_open(self) -> None:
        pass

    def _frames(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        i, n = 0, len(buf)
        while n - i >= 2:
            b0, b1 = buf[i], buf[i + 1]
            length = b1 & 0x7F
            j = i + 2
            if length == 126:
                if n - j < 2:
                    break
                length = int.from_bytes(buf[j : j + 2], "big")
                j += 2
            elif length == 127:
                if n - j < 8:
                    break
                length = int.from_bytes(buf[j : j + 8], "big")
                j += 8
            mask = None
            if b1 & 0x80:
                if n - j < 4:
                    break
                mask = buf[j : j + 4]
                j += 4
            if n - j < length:
                break
            payload = buf[j : j + length]
            if mask is not None:
                payload = _unmask(mask, payload)
            i = j + length
            opcode = b0 & 0x0F
            if opcode in (0, 1, 2):
                if not b0 & 0x80:
                    self._parts.append(payload)
                    continue
                if self._parts:
                    self._parts.append(payload)
                    payload = b"".join(self._parts)
                    self._parts = []
                self.on_text(payload.decode())
            elif opcode == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.close(self.close_code if self.close_code != 1005 else 1000)
                break
            elif opcode == 9:
                self._control(10, payload)
        self._buf = buf[i:]

    def connection_lost(self, exc: Exception | None) -> None:
        self._open = False
        if not self.closed.done():
            self.closed.set_result(self.close_code if self.close_code is not None else 1006)


class WsClient(_Frames):
    """Client end: `await connect(url, factory)` returns the protocol once the upgrade is done."""

    masked_out = True

    def __init__(self) -> None:
        super().__init__()
        self._upgraded = asyncio.get_running_loop().create_future()
        self._request = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self._open:
            self._frames(data)
            return
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head, rest = self._buf[:end], self._buf[end + 4 :]
        self._buf = b""
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            if not self._upgraded.done():
                self._upgraded.set_exception(ConnectionError(status.decode(errors="replace")))
            if self.transport is not None:
                self.transport.close()
            return
        self._open = True
        if not self._upgraded.done():
            self._upgraded.set_result(None)
        self.on_open()
        if rest:
            self._frames(rest)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._upgraded.done():
            self._upgraded.set_exception(ConnectionError(f"closed before the upgrade: {exc}"))
        super().connection_lost(exc)


T = TypeVar("T", bound=WsClient)


async def connect(url: str, factory: Callable[[], T], open_timeout_s: float = 20.0) -> T:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    key = base64.b64encode(os.urandom(16)).decode()
    proto = factory()
    proto._request = (
        f"GET {path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(open_timeout_s):
        await loop.create_connection(lambda: proto, host, port)
        await proto._upgraded
    return proto


class WsServerConn(_Frames):
    """Server end: subclass, implement `on_text` (and `on_open` / `on_request(path, headers)`)."""

    masked_out = False

    def __init__(self) -> None:
        super().__init__()
        self.path = ""
        self.headers: dict[str, str] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._open:
            self._frames(data)
            return
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head, rest = self._buf[:end].decode(errors="replace"), self._buf[end + 4 :]
        self._buf = b""
        lines = head.split("\r\n")
        self.path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "/"
        for line in lines[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        key = self.headers.get("sec-websocket-key", "")
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        assert self.transport is not None
        self.transport.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        self._open = True
        self.on_open()
        if rest:
            self._frames(rest)
