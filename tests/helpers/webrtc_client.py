"""A softphone client in Python (aiortc), for tests and benchmarks that need no browser.

It does what bridge/web/static/phone/phone.js does: offers audio and the `phone` data channel,
waits for its candidates, POSTs the offer to /phone/offer with the admin bearer, then plays 8 kHz
PCM as its microphone (in real time), sends keys and hang-ups on the data channel, collects the
bridge's events and records what it hears (as 8 kHz PCM16).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, AudioResampler

from bridge.media.g711 import FRAME_BYTES_PCM8K, FRAME_MS, FRAME_SAMPLES_8K, RATE_8K


class MicTrack(MediaStreamTrack):
    """The client's microphone: queued 8 kHz PCM16 in 20 ms frames, silence when nothing is queued."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pending = bytearray()
        self._start: float | None = None
        self._sent = 0
        self.speaking_until: float = 0.0  # loop time when the queued speech runs out

    def say(self, pcm8k: bytes) -> float:
        """Queue speech; returns the loop time its last sample will be sent."""
        self._pending += pcm8k
        now = asyncio.get_running_loop().time()
        self.speaking_until = now + len(self._pending) / (2 * RATE_8K)
        return self.speaking_until

    async def recv(self) -> AudioFrame:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        delay = self._start + self._sent * FRAME_MS / 1000 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = bytes(self._pending[:FRAME_BYTES_PCM8K])
        del self._pending[:FRAME_BYTES_PCM8K]
        chunk = chunk.ljust(FRAME_BYTES_PCM8K, b"\0")
        frame = AudioFrame.from_ndarray(
            np.frombuffer(chunk, dtype="<i2").reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE_8K
        frame.time_base = Fraction(1, RATE_8K)
        frame.pts = self._sent * FRAME_SAMPLES_8K
        self._sent += 1
        return frame


class SoftphoneClient:
    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self.token = token
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = MicTrack()
        self.pc.addTrack(self.mic)
        self.channel = self.pc.createDataChannel("phone")
        self.events: list[dict[str, Any]] = []
        self.heard = bytearray()  # 8 kHz PCM16 of everything received
        self.heard_t0: float | None = None  # loop time of the first received sample
        self.call_id: str | None = None
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)

    def _on_message(self, message: str | bytes) -> None:
        self.events.append(json.loads(message))
        self._changed.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._record(track)))

    async def _record(self, track: MediaStreamTrack) -> None:
        resampler = AudioResampler(format="s16", layout="mono", rate=RATE_8K)
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if self.heard_t0 is None:
                self.heard_t0 = loop.time()
            for out in resampler.resample(frame):
                self.heard += bytes(out.planes[0])[: out.samples * 2]
            self._changed.set()

    async def call(self, *, number: str | None = None, flow: str | None = None) -> httpx.Response:
        await self.pc.setLocalDescription(await self.pc.createOffer())  # aiortc gathers first
        body = {"type": "offer", "sdp": self.pc.localDescription.sdp, "number": number, "flow": flow}
        async with httpx.AsyncClient() as http:
            r = await http.post(
                self.base_url + "/phone/offer", json=body, headers={"Authorization": f"Bearer {self.token}"}
            )
        if r.status_code == 200:
            answer = r.json()
            self.call_id = answer["call_id"]
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        return r

    def press(self, digit: str) -> None:
        self.channel.send(json.dumps({"type": "dtmf", "digit": digit}))

    async def hang_up(self) -> None:
        if self.channel.readyState == "open":
            self.channel.send(json.dumps({"type": "hangup"}))
            await asyncio.sleep(0.1)
        await self.close()

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0, what: str = "event"
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if predicate(event):
                    return event
            seen = len(self.events)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {what} within {timeout} s; events: {self.events}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
