"""The WebRTC leg as the call sees it: a `Leg` over one aiortc `RTCPeerConnection`.

- Audio from the browser: the remote track's decoded frames -> `BrowserToPhone` -> `AudioIn` (8 kHz
  G.711, 20 ms), like the other legs.
- Audio to the browser: `PhoneTrack`, an outbound track that aiortc pulls; it hands over one 20 ms
  frame per absolute 20 ms deadline from the leg's flushable `Outbox`, and reports marks as played
  once their frames are out (the SIP leg's model: the leg paces audio itself).
- The data channel (`"phone"`, opened by the page): the page sends `{"type": "dtmf", "digit": "1"}`
  and `{"type": "hangup"}`; the bridge sends call events (`send_event`) and `{"type": "hangup"}`.

The call starts (`CallStarted`) when the peer connection is connected, and ends (`CallEnded`) when
the page hangs up, the connection fails or closes, or the bridge hangs up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from bridge.media import g711
from bridge.media.g711 import FRAME_MS, Encoding
from bridge.telephony.leg import AudioIn, CallEnded, CallStarted, Dtmf, LegEvent, LegKind, MarkPlayed
from bridge.telephony.webrtc.audio import BrowserToPhone, PhoneToBrowser
from bridge.telephony.webrtc.outbox import Outbox

log = logging.getLogger(__name__)

DTMF_DIGITS = frozenset("0123456789*#ABCD")
MAX_PENDING_EVENTS = 500  # events kept for the page until its data channel opens
MAX_CATCH_UP_FRAMES = 3  # after a longer stall the track skips ahead instead of bursting
HANGUP_FLUSH_S = 0.5  # how long a hang-up waits for the data channel to send its last events
HANGUP_GRACE_S = 0.1
CONNECT_TIMEOUT_S = 30.0  # an answered offer whose browser never connects is closed after this


class PhoneTrack(MediaStreamTrack):
    """The bridge's voice toward the browser: one 20 ms frame per absolute 20 ms deadline."""

    kind = "audio"

    def __init__(self, leg: WebRtcLeg) -> None:
        super().__init__()
        self._leg = leg
        self._convert = PhoneToBrowser(leg.encoding)
        self._start: float | None = None
        self._sent = 0
        self.stalls = 0

    async def recv(self) -> AudioFrame:  # aiortc: Frame | Packet
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        period = FRAME_MS / 1000.0
        if self._start is None:
            self._start = loop.time()
        delay = self._start + self._sent * period - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif -delay > MAX_CATCH_UP_FRAMES * period:
            behind = int(-delay / period)
            self.stalls += 1
            self._sent += behind
            self._convert.skip(behind)
        self._sent += 1
        frame, marks = self._leg.outbox.pop()
        if marks:
            self._leg.push_marks(marks)
        return self._convert.frame(frame if frame is not None else self._leg.outbox.silence)

    def reset(self) -> None:
        self._convert.reset()


class WebRtcLeg:
    """One browser softphone call as a `Leg` (see `bridge.telephony.leg`)."""

    kind: LegKind = "webrtc"
    lead_ms = 40  # as the SIP leg: a small flushable queue in front of the track's own clock

    def __init__(self, pc: RTCPeerConnection, started: CallStarted) -> None:
        self.pc = pc
        self.started = started
        self.encoding: Encoding = started.encoding
        self.outbox = Outbox(g711.silence(started.encoding))
        self.track = PhoneTrack(self)
        self.ended: str | None = None
        self.connected = False
        self.inbound_frames = 0
        self._queue: asyncio.Queue[LegEvent] = asyncio.Queue()
        self._channel: RTCDataChannel | None = None
        self._pending: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        pc.addTrack(self.track)
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_connection_state)

    # -- the peer connection's events (on the event loop) ----------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._read_audio(track))

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        convert = BrowserToPhone(self.encoding)
        while self.ended is None:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            if not self.connected or not isinstance(frame, AudioFrame):
                continue
            for payload in convert.feed(frame):
                self.push_audio(payload)
        self.end("hangup")

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if self._channel is not None:
            return  # one channel per call; any other is ignored
        self._channel = channel
        channel.on("message", self._on_message)
        channel.on("close", lambda: self.end("hangup"))
        if channel.readyState == "open":
            self._flush_pending()
        else:
            channel.on("open", self._flush_pending)

    def _flush_pending(self) -> None:
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            for text in self._pending:
                channel.send(text)
            self._pending.clear()

    def _on_message(self, message: str | bytes) -> None:
        try:
            data = json.loads(message)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        kind = data.get("type")
        if kind == "dtmf":
            digit = str(data.get("digit", ""))
            if digit in DTMF_DIGITS:
                self.push_dtmf(digit)
        elif kind == "hangup":
            self.end("hangup")  # the call's owner closes the connection (`close`)

    async def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and not self.connected and self.ended is None:
            self.connected = True
            self._queue.put_nowait(self.started)
        elif state == "failed":
            self.end("error: the WebRTC connection failed")
        elif state == "closed":
            self.end("hangup")

    async def watch_connect(self, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        """Close the connection if the browser has not connected within `timeout_s`."""
        await asyncio.sleep(timeout_s)
        if not self.connected and self.ended is None:
            self.end("error: the browser did not connect")

    # -- fed by the tasks above ------------------------------------------------------------------

    def push_audio(self, frame: bytes) -> None:
        if self.ended is None:
            self._queue.put_nowait(AudioIn(frame, self.inbound_frames * FRAME_MS))
            self.inbound_frames += 1

    def push_dtmf(self, digit: str) -> None:
        if self.ended is None and self.connected:
            self._queue.put_nowait(Dtmf(digit))

    def push_marks(self, names: list[str]) -> None:
        if self.ended is None:
            for name in names:
                self._queue.put_nowait(MarkPlayed(name))

    def end(self, reason: str) -> None:
        """The call is over (either side). Idempotent; later sends are no-ops."""
        if self.ended is None:
            self.ended = reason
            self.outbox.clear()
            self._queue.put_nowait(CallEnded(reason))

    def send_event(self, event: dict[str, Any]) -> None:
        """One JSON event for the page (kept until the data channel opens)."""
        text = json.dumps(event, separators=(",", ":"))
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            channel.send(text)
        elif len(self._pending) < MAX_PENDING_EVENTS:
            self._pending.append(text)

    # -- Leg -------------------------------------------------------------------------------------

    async def events(self) -> Any:  # AsyncIterator[LegEvent]
        while True:
            event = await self._queue.get()
            yield event
            if isinstance(event, CallEnded):
                return

    async def send_audio(self, frame: bytes) -> None:
        if self.ended is None:
            self.outbox.queue_frame(frame)

    async def send_mark(self, name: str) -> None:
        if self.ended is None:
            self.outbox.queue_mark(name)

    async def clear(self) -> None:
        if self.ended is None:
            self.push_marks(self.outbox.clear())
            self.track.reset()

    async def hang_up(self) -> None:
        if self.ended is not None:
            return
        self.end("bye")
        self.send_event({"type": "hangup"})
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            drained = asyncio.Event()
            if channel.bufferedAmount:
                channel.bufferedAmountLowThreshold = 0
                channel.on("bufferedamountlow", drained.set)
            else:
                drained.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HANGUP_FLUSH_S):
                    await drained.wait()
            await asyncio.sleep(HANGUP_GRACE_S)  # the SCTP layer sends what it was handed
        await self.close()

    async def transfer(self, target: str) -> bool:
        """A browser cannot be handed to a phone number: the page is told where the call would go,
        and the call ends as a transfer ends it (then hangs the leg up)."""
        if self.ended is not None:
            return False
        self.send_event({"type": "transfer", "target": target})
        return True  # the call ends as "transferred" and hangs the leg up

    async def close(self) -> None:
        """Close the peer connection and stop the leg's tasks (idempotent)."""
        self.end("closed")
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.pc.close()

    @property
    def played_ms(self) -> int:
        """Audio handed to the browser so far (the track's count, for truncation)."""
        return self.outbox.played_ms

    @property
    def queued_ms(self) -> int:
        return self.outbox.queued_ms
