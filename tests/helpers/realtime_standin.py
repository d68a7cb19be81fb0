"""A stand-in realtime server (GA protocol) that tests script turn by turn.

It records every client event (validated by the caller against the openai SDK models), the
audio appended, and when the socket closed; tests make it answer with audio, pause mid-reply,
emit `speech_started`, and so on. Cancels and truncates are answered as the real API does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

_ids = itertools.count(1)

# The smallest valid dialplan (issue 4): every call straight into a cloud agent. With
# BRIDGE_REALTIME_URL pointing at the stand-in, the stand-in plays the cloud model.
AGENT_ONLY = """
numbers: {default: main}
flows:
  main:
    - agent: {provider: openai, instructions: "You are a helpful phone assistant."}
"""


def _id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):06d}"


@dataclass
class StandinSession:
    ws: ServerConnection
    path: str
    headers: dict[str, str]
    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    appended: bytearray = field(default_factory=bytearray)
    append_times: list[tuple[float, int]] = field(default_factory=list)  # (time, total bytes after)
    session: dict[str, Any] = field(default_factory=dict)
    opened_at: float = field(default_factory=time.monotonic)
    closed_at: float | None = None
    close_code: int | None = None
    cancel_event: asyncio.Event = field(default_factory=asyncio.Event)
    updated: asyncio.Event = field(default_factory=asyncio.Event)
    truncates: list[dict[str, Any]] = field(default_factory=list)
    item_audio_ms: dict[str, int] = field(default_factory=dict)
    active_response: str | None = None
    first_delta_at: float | None = None  # when the latest reply's first audio delta was sent
    stalled: bool = False

    async def send(self, event: dict[str, Any]) -> None:
        event.setdefault("event_id", _id("event"))
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(json.dumps(event))

    @property
    def output_format(self) -> str:
        fmt = self.session.get("audio", {}).get("output", {}).get("format", {"type": "audio/pcm"})
        return str(fmt.get("type"))

    @property
    def bytes_per_ms(self) -> int:
        return 48 if self.output_format == "audio/pcm" else 8

    def client_events(self, type_: str) -> list[dict[str, Any]]:
        return [e for _, e in self.received if e.get("type") == type_]

    async def speech_started(self) -> None:
        await self.send(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": len(self.appended) // self.bytes_per_ms,
                "item_id": _id("item"),
            }
        )

    async def user_turn(self, transcript: str) -> str:
        """The caller's turn as a server with transcription reports it; returns the item id."""
        iid = _id("item")
        ms = len(self.appended) // self.bytes_per_ms
        await self.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": ms, "item_id": iid})
        await self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": ms, "item_id": iid})
        await self.send({"type": "input_audio_buffer.committed", "previous_item_id": None, "item_id": iid})
        item = {
            "id": iid,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        await self.send({"type": "conversation.item.added", "previous_item_id": None, "item": item})
        await self.send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": iid,
                "content_index": 0,
                "transcript": transcript,
            }
        )
        return iid

    def replayed(self) -> list[dict[str, Any]]:
        """The items the bridge created in this session (a resumed conversation's replay)."""
        return [e["item"] for e in self.client_events("conversation.item.create")]

    def replayed_texts(self) -> list[tuple[str, str]]:
        out = []
        for item in self.replayed():
            if item.get("type") == "message":
                out.append((item["role"], " ".join(p.get("text", "") for p in item["content"])))
        return out

    def reset(self) -> None:
        """Abort the TCP connection with a reset (SO_LINGER 0), as a crashed server or a middlebox does."""
        sock = self.ws.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.ws.transport.abort()

    def stall(self) -> None:
        """Stop reading from the socket (a blocked server): the bridge's sends back up."""
        self.stalled = True
        self.ws.transport.pause_reading()

    def unstall(self) -> None:
        self.stalled = False
        with contextlib.suppress(Exception):
            self.ws.transport.resume_reading()

    async def reply_audio(
        self,
        audio: bytes,
        *,
        chunk_ms: int = 100,
        realtime: float = 0.0,
        pause_after_ms: int | None = None,
        pause_s: float = 0.0,
        transcript: str | None = None,
    ) -> tuple[str, str, float]:
        """Answer with `audio` (output format). `realtime` = send speed as a fraction of real
        time (0: as fast as possible). Returns (response_id, item_id, time of first delta)."""
        rid, iid = _id("resp"), _id("item")
        self.active_response = rid
        self.cancel_event.clear()
        await self.send(
            {
                "type": "response.created",
                "response": {"id": rid, "object": "realtime.response", "status": "in_progress", "output": []},
            }
        )
        item = {
            "id": iid,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        await self.send(
            {"type": "response.output_item.added", "response_id": rid, "output_index": 0, "item": item}
        )
        await self.send({"type": "conversation.item.added", "item": item})
        await self.send(
            {
                "type": "response.content_part.added",
                "response_id": rid,
                "item_id": iid,
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "audio", "transcript": ""},
            }
        )
        step = chunk_ms * self.bytes_per_ms
        first = time.monotonic()
        self.first_delta_at = None
        sent_ms = 0
        paused = False
        for i in range(0, len(audio), step):
            if self.cancel_event.is_set():
                break
            if pause_after_ms is not None and not paused and sent_ms >= pause_after_ms:
                paused = True
                await asyncio.sleep(pause_s)
            chunk = audio[i : i + step]
            if self.first_delta_at is None:
                first = self.first_delta_at = time.monotonic()
            await self.send(
                {
                    "type": "response.output_audio.delta",
                    "response_id": rid,
                    "item_id": iid,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": base64.b64encode(chunk).decode(),
                }
            )
            sent_ms += len(chunk) // self.bytes_per_ms
            self.item_audio_ms[iid] = sent_ms
            if realtime > 0:
                await asyncio.sleep(chunk_ms / 1000.0 / realtime)
            else:
                await asyncio.sleep(0)
        cancelled = self.cancel_event.is_set()
        if transcript is not None and not cancelled:
            locator = {"response_id": rid, "item_id": iid, "output_index": 0, "content_index": 0}
            await self.send(
                {"type": "response.output_audio_transcript.delta", **locator, "delta": transcript}
            )
            await self.send(
                {"type": "response.output_audio_transcript.done", **locator, "transcript": transcript}
            )
        if not cancelled:
            await self.send(
                {
                    "type": "response.output_audio.done",
                    "response_id": rid,
                    "item_id": iid,
                    "output_index": 0,
                    "content_index": 0,
                }
            )
        self.active_response = None
        await self.send(
            {
                "type": "response.done",
                "response": {
                    "id": rid,
                    "object": "realtime.response",
                    "status": "cancelled" if cancelled else "completed",
                    "status_details": {"type": "cancelled", "reason": "client_cancelled"}
                    if cancelled
                    else None,
                    "output": [item],
                },
            }
        )
        return rid, iid, first

    async def handle(self) -> None:
        await self.send(
            {
                "type": "session.created",
                "session": {"id": _id("sess"), "type": "realtime", "object": "realtime.session"},
            }
        )
        try:
            async for raw in self.ws:
                now = time.monotonic()
                event = json.loads(raw)
                self.received.append((now, event))
                kind = event.get("type")
                if kind == "input_audio_buffer.append":
                    self.appended += base64.b64decode(event["audio"])
                    self.append_times.append((now, len(self.appended)))
                elif kind == "session.update":
                    self.session.update(event["session"])
                    await self.send({"type": "session.updated", "session": self.session})
                    self.updated.set()
                elif kind == "response.cancel":
                    if self.active_response is None:
                        await self.send(
                            {
                                "type": "error",
                                "error": {
                                    "type": "invalid_request_error",
                                    "code": "response_cancel_not_active",
                                    "message": "no active response",
                                    "event_id": event.get("event_id"),
                                },
                            }
                        )
                    self.cancel_event.set()
                elif kind == "conversation.item.truncate":
                    self.truncates.append(event)
                    have = self.item_audio_ms.get(event["item_id"], 0)
                    if event["audio_end_ms"] > have:
                        past = f"audio_end_ms {event['audio_end_ms']} is past the {have} ms of audio"
                        await self.send(
                            {
                                "type": "error",
                                "error": {
                                    "type": "invalid_request_error",
                                    "code": "invalid_value",
                                    "message": past,
                                    "event_id": event.get("event_id"),
                                },
                            }
                        )
                    else:
                        await self.send(
                            {
                                "type": "conversation.item.truncated",
                                "item_id": event["item_id"],
                                "content_index": 0,
                                "audio_end_ms": event["audio_end_ms"],
                            }
                        )
        except ConnectionClosed:
            pass
        self.closed_at = time.monotonic()
        self.close_code = self.ws.close_code


@dataclass
class StandinRealtime:
    sessions: list[StandinSession] = field(default_factory=list)
    server: Server | None = None
    port: int = 0
    new_session: asyncio.Queue[StandinSession] = field(default_factory=asyncio.Queue)
    back_at: float | None = None
    _revive: asyncio.Task[None] | None = None

    async def start(self) -> str:
        self.server = await serve(
            self._handler, "127.0.0.1", 0, max_size=None, compression=None, close_timeout=0.5
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self.url

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    async def _handler(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        session = StandinSession(ws=ws, path=request.path, headers=dict(request.headers.raw_items()))
        self.sessions.append(session)
        self.new_session.put_nowait(session)
        await session.handle()

    async def next_session(self, timeout: float = 5.0) -> StandinSession:
        return await asyncio.wait_for(self.new_session.get(), timeout)

    async def go_down(self, for_s: float | None) -> float:
        """The server dies: every session reset (TCP RST), nothing listens on the port; back on the
        same port after `for_s` (None: never). Returns when it went down (monotonic)."""
        assert self.server is not None
        self.server.close(close_connections=False)  # stop listening: reconnects are refused from now on
        for session in self.sessions:
            if session.closed_at is None:
                session.reset()
        down_at = time.monotonic()
        if for_s is not None:
            self._revive = asyncio.create_task(self._come_back(for_s))
        return down_at

    async def _come_back(self, after_s: float) -> None:
        await asyncio.sleep(after_s)
        self.server = await serve(
            self._handler, "127.0.0.1", self.port, max_size=None, compression=None, close_timeout=0.5
        )
        self.back_at = time.monotonic()

    async def stop(self) -> None:
        if self.server is None:
            return
        self.server.close()
        try:
            async with asyncio.timeout(2):
                await self.server.wait_closed()
        except TimeoutError:  # a peer that vanished without closing: do not hold the test up
            for session in self.sessions:
                session.ws.transport.abort()
