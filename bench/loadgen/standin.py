"""A light stand-in realtime server (GA protocol) for load runs: it answers every caller turn with audio.

Unlike tests/helpers/realtime_standin.py (which keeps every event and all audio for assertions) it
keeps counters only: appends are recognised by their text (no JSON parse), their audio's RMS
(audioop, C) drives a small end-of-turn detector (>= 200 ms of speech, then 500 ms of silence),
and each turn is answered with a pre-encoded reply streamed in 100 ms deltas at `speed` x real
time (the real API streams faster than real time; 1.0 leaves the bridge's pacer no margin at all).
The arrival time of each append gives the caller -> upstream delay variation (relative to the
session's fastest append, after the first second).
"""

from __future__ import annotations

import asyncio
import audioop
import base64
import itertools
import json
import time
from dataclasses import dataclass, field

from bench.loadgen.ws import WsServerConn

SPEECH_RMS = 300
TURN_SPEECH_MS = 200
TURN_SILENCE_MS = 500
CHUNK_MS = 100
_ids = itertools.count(1)


@dataclass
class Reply:
    """One reply's audio, pre-encoded per upstream format (base64 chunks of CHUNK_MS)."""

    chunks: dict[str, list[str]]  # "audio/pcm" | "audio/pcmu" | "audio/pcma" -> chunks
    ms: int


def make_reply(pcm8k: bytes, pcm24k: bytes) -> Reply:
    def chunks(data: bytes, bytes_per_ms: int) -> list[str]:
        step = CHUNK_MS * bytes_per_ms
        return [base64.b64encode(data[i : i + step]).decode() for i in range(0, len(data), step)]

    return Reply(
        {
            "audio/pcm": chunks(pcm24k, 48),
            "audio/pcmu": chunks(audioop.lin2ulaw(pcm8k, 2), 8),
            "audio/pcma": chunks(audioop.lin2alaw(pcm8k, 2), 8),
        },
        len(pcm8k) // 16,
    )


@dataclass
class StandinStats:
    sessions: int = 0
    appends: int = 0
    turns_detected: int = 0
    replies: int = 0
    cancels: int = 0
    truncates: int = 0
    inbound_ms: list[float] = field(default_factory=list)  # append arrival - fastest path, ms

    def reset_window(self) -> None:
        self.inbound_ms.clear()


class StandinConn(WsServerConn):
    server: Standin

    def on_open(self) -> None:
        self.fmt = "audio/pcm"
        self.opened = time.monotonic()
        self.n = 0
        self.audio_s = 0.0  # caller audio received so far
        self.base: float | None = None
        self.speech_ms = 0
        self.silence_ms = 0
        self.replying = False
        self.server.stats.sessions += 1
        self.server.live.add(self)
        self._send({"type": "session.created", "session": {"id": f"sess_{next(_ids)}", "type": "realtime"}})

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.live.discard(self)
        super().connection_lost(exc)

    def _send(self, event: dict[str, object]) -> None:
        event["event_id"] = f"ev_{next(_ids)}"
        self.send_text(json.dumps(event))

    def on_text(self, text: str) -> None:
        if text.startswith('{"type":"input_audio_buffer.append"') or text.startswith(
            '{"type": "input_audio_buffer.append"'
        ):
            self._append(text)
            return
        event = json.loads(text)
        kind = event.get("type")
        if kind == "input_audio_buffer.append":
            self._append(text)
        elif kind == "session.update":
            session = event.get("session", {})
            fmt = session.get("audio", {}).get("output", {}).get("format", {}).get("type")
            if fmt:
                self.fmt = fmt
            self._send({"type": "session.updated", "session": session})
        elif kind == "response.cancel":
            self.server.stats.cancels += 1
        elif kind == "conversation.item.truncate":
            self.server.stats.truncates += 1

    def _append(self, text: str) -> None:
        now = time.monotonic()
        stats = self.server.stats
        stats.appends += 1
        i = text.find('"audio"')
        j = text.find('"', text.find(":", i) + 1) + 1
        raw = base64.b64decode(text[j : text.find('"', j)])
        if self.fmt == "audio/pcm":
            rms = audioop.rms(raw, 2)
            ms = len(raw) // 48
        else:
            lin = audioop.ulaw2lin(raw, 2) if self.fmt == "audio/pcmu" else audioop.alaw2lin(raw, 2)
            rms = audioop.rms(lin, 2)
            ms = len(raw) // 8
        # Delay variation caller -> upstream: each append should arrive its audio's length after the
        # one before (the bridge appends 40 ms at a time; the plain peer 20 ms).
        self.n += 1
        self.audio_s += ms / 1000.0
        if now - self.opened > 1.0:
            t = now - self.audio_s
            if self.base is None or t < self.base:
                self.base = t
            if self.server.measuring:
                stats.inbound_ms.append((t - self.base) * 1000.0)
        if rms > SPEECH_RMS:
            self.speech_ms += ms
            self.silence_ms = 0
        elif self.speech_ms >= TURN_SPEECH_MS:
            self.silence_ms += ms
            if self.silence_ms >= TURN_SILENCE_MS:
                self.speech_ms = self.silence_ms = 0
                stats.turns_detected += 1
                if not self.replying:
                    self.replying = True
                    asyncio.get_running_loop().create_task(self._reply())
        else:
            self.speech_ms = 0

    async def _reply(self) -> None:
        try:
            rid, iid = f"resp_{next(_ids)}", f"item_{next(_ids)}"
            item = {"id": iid, "object": "realtime.item", "type": "message", "role": "assistant"}
            self._send({"type": "response.created", "response": {"id": rid, "status": "in_progress"}})
            self._send(
                {"type": "response.output_item.added", "response_id": rid, "output_index": 0, "item": item}
            )
            self._send({"type": "conversation.item.added", "item": item})
            loc = f'"response_id":"{rid}","item_id":"{iid}","output_index":0,"content_index":0'
            chunks = self.server.reply.chunks.get(self.fmt) or self.server.reply.chunks["audio/pcm"]
            step = CHUNK_MS / 1000.0 / self.server.speed
            t0 = time.monotonic()
            for k, chunk in enumerate(chunks):
                if self.transport is None or self.transport.is_closing():
                    return
                self.send_text(
                    f'{{"type":"response.output_audio.delta","event_id":"ev_{next(_ids)}",{loc},"delta":"{chunk}"}}'
                )
                delay = t0 + (k + 1) * step - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            self.send_text(f'{{"type":"response.output_audio.done","event_id":"ev_{next(_ids)}",{loc}}}')
            self._send(
                {"type": "response.done", "response": {"id": rid, "status": "completed", "output": [item]}}
            )
            self.server.stats.replies += 1
        finally:
            self.replying = False


class Standin:
    def __init__(self, reply: Reply, speed: float = 2.0) -> None:
        self.reply = reply
        self.speed = speed
        self.stats = StandinStats()
        self.live: set[StandinConn] = set()
        self.measuring = False
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def factory() -> StandinConn:
            conn = StandinConn()
            conn.server = self
            return conn

        self._server = await loop.create_server(factory, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self.live):
                if conn.transport is not None:
                    conn.transport.abort()
