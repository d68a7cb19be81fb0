"""One call's RTP socket: the thin asyncio shell around `RtpReceiver` and `RtpSender`."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from bridge.errors import ProtocolError
from bridge.telephony.rtp.jitter import RtpReceiver
from bridge.telephony.rtp.sender import RtpSender


class RtpEndpoint(asyncio.DatagramProtocol):
    """One call's RTP socket. Inbound datagrams go through `RtpReceiver`; ready frames and digits
    are handed to `on_audio(frame)` / `on_dtmf(digit)` on the loop. Outbound packets are sent by the
    shared `RtpTicker`, which calls `tick()`."""

    def __init__(
        self,
        receiver: RtpReceiver,
        sender: RtpSender,
        on_audio: Callable[[bytes], None],
        on_dtmf: Callable[[str], None],
        on_marks: Callable[[list[str]], None],
        clock: Callable[[], float],
    ) -> None:
        self.receiver = receiver
        self.sender = sender
        self.on_audio = on_audio
        self.on_dtmf = on_dtmf
        self.on_marks = on_marks
        self.clock = clock
        self.transport: asyncio.DatagramTransport | None = None
        self.remote: tuple[str, int] | None = receiver.remote
        self.sending = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        frames, digit = self.receiver.feed(data, addr, self.clock() * 1000.0)
        for frame in frames:
            self.on_audio(frame)
        if digit is not None:
            self.on_dtmf(digit)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that has gone: the call's SIP side ends the call.
        pass

    def tick(self) -> tuple[list[str] | None, int]:
        """Send this call's packet for the current 20 ms. Returns the marks now played and how many
        silence frames the caller's stream is owed (a caller who sends nothing, `silence_due`), for
        the ticker to `deliver` once every call's packet of this tick is out: a silence frame runs
        the call's whole caller path (echo canceller, VAD), which must not delay the next call's
        packet."""
        packet, marks = self.sender.tick()
        transport = self.transport
        if transport is not None and self.sending and self.remote is not None:
            transport.sendto(packet, self.remote)
        return marks, self.receiver.silence_due(self.clock() * 1000.0)

    def deliver(self, marks: list[str] | None, silence_frames: int) -> None:
        if marks:
            self.on_marks(marks)
        frame = self.receiver.silence_frame
        for _ in range(silence_frames):
            self.on_audio(frame)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


async def open_rtp(
    bind_host: str, port_range: tuple[int, int] | None, endpoint: RtpEndpoint, attempts: int = 50
) -> int:
    """Bind the call's RTP socket: an even port from `port_range` (None: any free port).
    Returns the bound port."""
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    for _ in range(attempts if port_range else 1):
        if port_range:
            low, high = port_range
            port = random.randrange(low + (low & 1), high, 2)
        else:
            port = 0
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: endpoint, local_addr=(bind_host, port))
        except OSError as exc:
            last = exc
            continue
        return int(transport.get_extra_info("sockname")[1])
    raise ProtocolError(f"no free RTP port on {bind_host} in {port_range}") from last
