"""The far end of `/twilio/media`, the way Twilio behaves (Media Streams, bidirectional).

Used by `ivr-bridge call` and `ivr-bridge dialplan test` (bridge/tools) and by the test suite
(tests/helpers/twilio_emulator.py re-exports it).

It sends `connected`, `start`, 20 ms `media` frames on absolute deadlines, `dtmf` and `stop`,
and it *plays* what the bridge sends in real time: one 20 ms frame per 20 ms from a FIFO, a
`mark` echoed when playback reaches it, and `clear` dropping the unplayed audio and echoing the
pending marks (as Twilio does). So the test knows exactly which bytes the caller heard, and when.

Speakerphone model (`echo_delay_s` set): every caller frame sent carries the bot audio that
started playing `echo_delay_s` earlier, `echo_erl_db` quieter, mixed in (µ-law decoded, summed,
re-encoded), the way a phone on speaker returns the bot's voice to the bridge.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bridge.media import g711 as codec

FRAME_BYTES = 160
FRAME_S = 0.02
ULAW_SILENCE = b"\xff" * FRAME_BYTES


@dataclass
class Played:
    at: float  # monotonic time the frame started playing
    payload: bytes
    mark_after: str | None = None


@dataclass
class MediaStreamClient:
    url: str
    stream_sid: str = "MZ00000000000000000000000000000001"
    call_sid: str = "CA00000000000000000000000000000001"
    account_sid: str = "AC00000000000000000000000000000001"
    custom_parameters: dict[str, str] = field(default_factory=dict)
    encoding: str = "audio/x-mulaw"
    headers: dict[str, str] = field(default_factory=dict)  # e.g. X-Twilio-Signature on the upgrade
    ws: ClientConnection | None = None
    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    played: list[Played] = field(default_factory=list)
    clears: list[float] = field(default_factory=list)
    marks_echoed: list[tuple[float, str]] = field(default_factory=list)
    close_code: int | None = None
    closed_at: float | None = None
    stop_sent_at: float | None = None
    echo_delay_s: float | None = None  # speakerphone: the played audio comes back this much later ...
    echo_erl_db: float = 10.0  # ... this much quieter
    _queue: deque[bytes | str] = field(default_factory=deque)
    _seq: int = 0
    _chunk: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def open(self) -> None:
        self.ws = await connect(
            self.url, max_size=None, compression=None, additional_headers=self.headers or None
        )
        self._tasks = [
            asyncio.create_task(self._reader()),
            asyncio.create_task(self._player()),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.ws is not None:
            await self.ws.close()

    # -- sending, as Twilio ------------------------------------------------------------------

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    async def send_json(self, obj: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(obj))

    async def start(self) -> None:
        await self.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send_json(
            {
                "event": "start",
                "sequenceNumber": self._next_seq(),
                "streamSid": self.stream_sid,
                "start": {
                    "streamSid": self.stream_sid,
                    "accountSid": self.account_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": self.custom_parameters,
                    "mediaFormat": {"encoding": self.encoding, "sampleRate": 8000, "channels": 1},
                },
            }
        )

    async def send_media(self, payload: bytes) -> None:
        self._chunk += 1
        await self.send_json(
            {
                "event": "media",
                "sequenceNumber": self._next_seq(),
                "streamSid": self.stream_sid,
                "media": {
                    "track": "inbound",
                    "chunk": str(self._chunk),
                    "timestamp": str((self._chunk - 1) * 20),
                    "payload": base64.b64encode(payload).decode(),
                },
            }
        )

    async def stream_audio(self, g711: bytes, *, start_at: float | None = None) -> float:
        """Send `g711` as 20 ms frames on absolute deadlines; returns the start time used."""
        t0 = time.monotonic() if start_at is None else start_at
        for i in range(0, len(g711) - FRAME_BYTES + 1, FRAME_BYTES):
            delay = t0 + (i // FRAME_BYTES) * FRAME_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            frame = g711[i : i + FRAME_BYTES]
            if self.echo_delay_s is not None:
                frame = self._with_echo(frame, time.monotonic() - self.echo_delay_s)
            await self.send_media(frame)
        return t0

    def _with_echo(self, frame: bytes, played_at: float) -> bytes:
        """`frame` (µ-law) plus the bot frame that was playing at `played_at`, echo_erl_db quieter.

        A frame plays for 20 ms, or until the next one started when that came less than 40 ms
        after it: the player's own wake-up lateness (a loaded test machine) is not a gap in the
        sound, as a phone's audio device plays on from its buffer; a longer gap is silence."""
        echo = None
        after: Played | None = None
        for p in reversed(self.played):
            if p.at <= played_at:
                held = after is not None and after.at - p.at < 2 * FRAME_S
                if played_at - p.at < FRAME_S or held:
                    echo = p.payload
                break
            after = p
        if echo is None:
            return frame
        gain = 10 ** (-self.echo_erl_db / 20)
        x = np.frombuffer(codec.decode(frame, "pcmu"), dtype="<i2").astype(np.float64)
        x += np.frombuffer(codec.decode(echo, "pcmu"), dtype="<i2").astype(np.float64) * gain
        return codec.encode(np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes(), "pcmu")

    async def send_silence(self, seconds: float) -> None:
        await self.stream_audio(ULAW_SILENCE * int(seconds / FRAME_S))

    async def dtmf(self, digit: str) -> None:
        await self.send_json(
            {
                "event": "dtmf",
                "sequenceNumber": self._next_seq(),
                "streamSid": self.stream_sid,
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    async def stop(self) -> None:
        self.stop_sent_at = time.monotonic()
        await self.send_json(
            {
                "event": "stop",
                "sequenceNumber": self._next_seq(),
                "streamSid": self.stream_sid,
                "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
            }
        )

    # -- receiving and playing, as Twilio ------------------------------------------------------

    async def _reader(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                now = time.monotonic()
                msg = json.loads(raw)
                self.received.append((now, msg))
                event = msg.get("event")
                if event == "media":
                    self._queue.append(base64.b64decode(msg["media"]["payload"]))
                elif event == "mark":
                    self._queue.append(msg["mark"]["name"])
                elif event == "clear":
                    self.clears.append(now)
                    pending = [x for x in self._queue if isinstance(x, str)]
                    self._queue.clear()
                    for name in pending:
                        await self._echo_mark(name)
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd is not None else 1006
        else:
            rcvd = self.ws.close_code
            self.close_code = rcvd
        self.closed_at = time.monotonic()

    async def _echo_mark(self, name: str) -> None:
        self.marks_echoed.append((time.monotonic(), name))
        with contextlib.suppress(ConnectionClosed):
            await self.send_json(
                {
                    "event": "mark",
                    "sequenceNumber": self._next_seq(),
                    "streamSid": self.stream_sid,
                    "mark": {"name": name},
                }
            )

    async def _player(self) -> None:
        t0 = time.monotonic()
        n = 0
        while True:
            while self._queue and isinstance(self._queue[0], str):
                name = self._queue.popleft()
                assert isinstance(name, str)
                if self.played:
                    self.played[-1].mark_after = name
                await self._echo_mark(name)
            if self._queue:
                frame = self._queue.popleft()
                assert isinstance(frame, bytes)
                self.played.append(Played(time.monotonic(), frame))
            n += 1
            delay = t0 + n * FRAME_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:  # fell behind (loaded machine): resynchronise rather than burst
                t0 = time.monotonic()
                n = 0

    # -- what the test reads -----------------------------------------------------------------

    def messages(self, event: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, m) for t, m in self.received if m.get("event") == event]

    def heard_audio(self) -> bytes:
        return b"".join(p.payload for p in self.played)

    async def wait_for(self, predicate: Any, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met in time")
            await asyncio.sleep(0.005)
