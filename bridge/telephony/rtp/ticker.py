"""The shared RTP pacer: one task per event loop sends every call's next packet on absolute
20 ms deadlines (so 60 s of audio takes 60 s, whatever the loop's sleep precision)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref

from bridge.media.g711 import FRAME_MS
from bridge.telephony.rtp.endpoint import RtpEndpoint

log = logging.getLogger(__name__)


class RtpTicker:
    """One task per event loop that sends every call's next packet on absolute 20 ms deadlines.

    Deadlines are `start + n * 20 ms` on the loop clock, never `now + 20 ms`, so sleep overshoot
    does not accumulate: the stream keeps real-time rate (no drift) and only the loop's wake-up
    latency shows as jitter. After a stall of up to `max_catch_up` frames the missed packets are
    sent at once; after a longer stall the media clock skips ahead instead of bursting.
    """

    def __init__(self, max_catch_up: int = 3) -> None:
        self.max_catch_up = max_catch_up
        self._endpoints: dict[int, RtpEndpoint] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self.stalls = 0

    def add(self, endpoint: RtpEndpoint) -> None:
        self._endpoints[id(endpoint)] = endpoint
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="rtp-ticker")

    def remove(self, endpoint: RtpEndpoint) -> None:
        self._endpoints.pop(id(endpoint), None)

    @property
    def active(self) -> int:
        return len(self._endpoints)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        period = FRAME_MS / 1000.0
        start = loop.time()
        n = 0
        while self._endpoints:
            n += 1
            deadline = start + n * period
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                behind = int(-delay / period)
                if behind > self.max_catch_up:
                    self.stalls += 1
                    for ep in list(self._endpoints.values()):
                        ep.sender.skip(behind)
                    n += behind
            for ep in list(self._endpoints.values()):
                try:
                    ep.tick()
                except Exception:  # one broken call must not silence the others
                    log.exception("RTP tick failed; dropping that call's sender")
                    self.remove(ep)
        self._task = None

    async def stop(self) -> None:
        self._endpoints.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


_TICKERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RtpTicker] = weakref.WeakKeyDictionary()


def ticker_for_loop() -> RtpTicker:
    """The shared ticker of the running loop (one per loop; tests run several loops)."""
    loop = asyncio.get_running_loop()
    ticker = _TICKERS.get(loop)
    if ticker is None:
        ticker = _TICKERS[loop] = RtpTicker()
    return ticker
