"""The bridge's own RTP for the SIP leg (RFC 3550 / 3551 / 4733).

Sans-I/O core first: packet parse/build, a small reordering jitter buffer with loss
concealment, RFC 2833/4733 telephone-event receive and send, stream statistics, and the
sender state that stamps 20 ms frames. Then the thin asyncio shell: one datagram endpoint per
call, and one shared ticker per event loop that transmits every call's next frame on absolute
deadlines (so 60 s of audio takes 60 s, whatever the loop's sleep precision).

Audio stays G.711 (PCMU/PCMA, 160 bytes per 20 ms) end to end; only concealment decodes to
16-bit linear (through `audioop`, the same G.711 tables the Twilio path uses) to fade a repeated
frame. Nothing here logs, formats or allocates more than one packet per frame on the audio path.
"""

from __future__ import annotations

import asyncio
import audioop
import contextlib
import ipaddress
import logging
import random
import struct
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from bridge.errors import ProtocolError

log = logging.getLogger(__name__)

Codec = Literal["pcmu", "pcma"]

RTP_VERSION = 2
SAMPLE_RATE_HZ = 8000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE_HZ * FRAME_MS // 1000  # 160
FRAME_BYTES = FRAME_SAMPLES  # G.711: one byte per sample
PT_PCMU = 0
PT_PCMA = 8
STATIC_PT: dict[Codec, int] = {"pcmu": PT_PCMU, "pcma": PT_PCMA}
SILENCE_BYTE: dict[Codec, int] = {"pcmu": 0xFF, "pcma": 0xD5}
DTMF_EVENTS = "0123456789*#ABCD"

_HEADER = struct.Struct("!BBHII")


class RtpError(ProtocolError):
    """A datagram is not a usable RTP packet (too short, wrong version, bad padding)."""


# ---------------------------------------------------------------------------------------------
# Packets


@dataclass(frozen=True, slots=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False


def parse_packet(data: bytes) -> RtpPacket:
    """Parse one RTP datagram (CSRCs, header extension and padding are skipped)."""
    if len(data) < 12:
        raise RtpError(f"RTP datagram of {len(data)} bytes is shorter than the 12-byte header")
    b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data)
    if b0 >> 6 != RTP_VERSION:
        raise RtpError(f"RTP version {b0 >> 6}, expected 2")
    offset = 12 + 4 * (b0 & 0x0F)
    end = len(data)
    if b0 & 0x10:  # header extension
        if end < offset + 4:
            raise RtpError("RTP header extension runs past the end of the datagram")
        (words,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * words
    if b0 & 0x20:  # padding
        pad = data[-1]
        if pad == 0 or pad > end - offset:
            raise RtpError(f"RTP padding of {pad} bytes does not fit the datagram")
        end -= pad
    if offset > end:
        raise RtpError("RTP header (CSRC list / extension) runs past the end of the datagram")
    return RtpPacket(b1 & 0x7F, seq, ts, ssrc, data[offset:end], bool(b1 & 0x80))


def build_packet(payload_type: int, sequence: int, timestamp: int, ssrc: int, payload: bytes,
                 marker: bool = False) -> bytes:
    b1 = (0x80 if marker else 0) | (payload_type & 0x7F)
    return _HEADER.pack(0x80, b1, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + payload


# ---------------------------------------------------------------------------------------------
# Concealment


def _decode(codec: Codec, frame: bytes) -> bytes:
    return audioop.ulaw2lin(frame, 2) if codec == "pcmu" else audioop.alaw2lin(frame, 2)


def _encode(codec: Codec, pcm: bytes) -> bytes:
    return audioop.lin2ulaw(pcm, 2) if codec == "pcmu" else audioop.lin2alaw(pcm, 2)


class Concealer:
    """Packet-loss concealment for G.711: repeat the last good frame, fading by half per lost frame,
    and fall to silence after `max_repeats`. A lost packet never becomes a full-scale click."""

    def __init__(self, codec: Codec, max_repeats: int = 3) -> None:
        self.codec = codec
        self.max_repeats = max_repeats
        self._silence = bytes([SILENCE_BYTE[codec]]) * FRAME_BYTES
        self._last: bytes | None = None
        self._last_pcm: bytes | None = None
        self._run = 0

    def good(self, frame: bytes) -> None:
        """Remember a frame that arrived (only its PCM is kept when a loss needs it)."""
        self._last = frame
        self._run = 0
        self._last_pcm = None

    def conceal(self) -> bytes:
        self._run += 1
        last = self._last
        if last is None or self._run > self.max_repeats or len(last) != FRAME_BYTES:
            return self._silence
        if self._last_pcm is None:
            self._last_pcm = _decode(self.codec, last)
        factor = 0.5**self._run
        return _encode(self.codec, audioop.mul(self._last_pcm, 2, factor))


# ---------------------------------------------------------------------------------------------
# Receive side: jitter buffer, DTMF, stats


def _seq_diff(a: int, b: int) -> int:
    """a - b in 16-bit sequence space, in [-32768, 32767]."""
    d = (a - b) & 0xFFFF
    return d - 0x10000 if d >= 0x8000 else d


@dataclass(slots=True)
class RtpStats:
    received: int = 0  # audio packets accepted
    lost: int = 0  # frames concealed
    late: int = 0  # duplicates or arrived after their slot was played
    bad: int = 0  # malformed datagrams
    wrong_source: int = 0
    wrong_payload_type: int = 0
    resyncs: int = 0  # SSRC changes or sequence jumps
    dtmf: int = 0
    sent: int = 0
    jitter_ms: float = 0.0  # RFC 3550 interarrival jitter estimate

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]


class JitterBuffer:
    """Reorders audio packets by sequence number and conceals losses.

    Arrival-driven, so an in-order stream passes through with no added delay; a missing packet is
    waited for until `depth` newer packets have arrived (depth x 20 ms), then concealed. Gaps larger
    than `max_gap` frames (a sender that paused, restarted or jumped) resync instead of inventing
    seconds of audio. `push` returns the frames now ready, in order.
    """

    def __init__(self, codec: Codec, stats: RtpStats, depth: int = 3, max_gap: int = 25) -> None:
        self.depth = depth
        self.max_gap = max_gap
        self.stats = stats
        self.concealer = Concealer(codec)
        self._pending: dict[int, bytes] = {}
        self._expected: int | None = None
        self._ssrc: int | None = None

    def push(self, packet: RtpPacket) -> list[bytes]:
        if packet.ssrc != self._ssrc:
            if self._ssrc is not None:
                self.stats.resyncs += 1
            out = self._drain()
            self._ssrc = packet.ssrc
            self._expected = packet.sequence
        else:
            out = []
        assert self._expected is not None
        diff = _seq_diff(packet.sequence, self._expected)
        if diff < 0 or packet.sequence in self._pending:
            self.stats.late += 1
            return out
        if diff > self.max_gap + self.depth:
            # The sender jumped: flush what we hold and start again from this packet.
            self.stats.resyncs += 1
            out.extend(self._drain())
            self._expected = packet.sequence
        self._pending[packet.sequence] = packet.payload
        self.stats.received += 1
        self._release(out)
        return out

    def _release(self, out: list[bytes]) -> None:
        pending = self._pending
        expected = self._expected
        assert expected is not None
        while pending:
            frame = pending.pop(expected, None)
            if frame is not None:
                self.concealer.good(frame)
                out.append(frame)
            else:
                newest = max(_seq_diff(s, expected) for s in pending)
                if newest < self.depth:
                    break
                out.append(self.concealer.conceal())
                self.stats.lost += 1
            expected = (expected + 1) & 0xFFFF
        self._expected = expected

    def _drain(self) -> list[bytes]:
        """Release everything held (concealing holes between held packets)."""
        out: list[bytes] = []
        if self._pending and self._expected is not None:
            keep = self.depth
            self.depth = 0
            self._release(out)
            self.depth = keep
        self._pending.clear()
        return out


@dataclass(slots=True)
class DtmfReceiver:
    """RFC 4733 telephone-events to digits. One digit per event (keyed by its RTP timestamp), on the
    first packet seen, so a lost start packet or a missing marker bit never loses the digit and the
    three retransmitted end packets never repeat it."""

    _seen: deque[int] = field(default_factory=lambda: deque(maxlen=8))

    def push(self, packet: RtpPacket) -> str | None:
        payload = packet.payload
        if len(payload) < 4:
            return None
        event = payload[0]
        if event >= len(DTMF_EVENTS):
            return None  # flash-hook and tones are not digits
        key = (packet.ssrc << 32) | packet.timestamp
        if key in self._seen:
            return None
        self._seen.append(key)
        return DTMF_EVENTS[event]


class RtpReceiver:
    """Everything the bridge does with inbound datagrams of one call, without sockets.

    `feed(data, addr, arrival_ms)` returns the audio frames now ready (in order, losses concealed)
    and the digits received. Datagrams from another source, with an unexpected payload type, or
    malformed, are counted and dropped. Any port of the expected address is accepted.
    """

    def __init__(self, codec: Codec, audio_pt: int, dtmf_pt: int | None,
                 remote: tuple[str, int] | None, stats: RtpStats | None = None,
                 latch: bool = False) -> None:
        self.codec = codec
        self.audio_pt = audio_pt
        self.dtmf_pt = dtmf_pt
        self.remote = remote
        self.latch = latch
        self.stats = stats or RtpStats()
        self.jitter = JitterBuffer(codec, self.stats)
        self.dtmf = DtmfReceiver()
        self._latched = False
        self._transit: int | None = None
        self._jitter_ts = 0.0

    def feed(self, data: bytes, addr: tuple[str, int], arrival_ms: float) -> tuple[list[bytes], str | None]:
        # Per-call sockets keep calls apart; the source check keeps strangers out. Any port of the
        # SDP's address is accepted (some UAs, SIPp among them, send from another port than the one
        # they advertise); another address only when latching (NAT) and nothing was accepted yet.
        if self.remote is not None and addr[0] != self.remote[0] and not _same_ip(addr[0], self.remote[0]):
            if self.latch and not self._latched:
                self.remote = (addr[0], addr[1])
            else:
                self.stats.wrong_source += 1
                return [], None
        try:
            packet = parse_packet(data)
        except RtpError:
            self.stats.bad += 1
            return [], None
        self._latched = True
        pt = packet.payload_type
        if pt == self.audio_pt:
            if len(packet.payload) == 0:
                self.stats.bad += 1
                return [], None
            self._update_jitter(packet.timestamp, arrival_ms)
            return self.jitter.push(packet), None
        if pt == self.dtmf_pt:
            digit = self.dtmf.push(packet)
            if digit is not None:
                self.stats.dtmf += 1
            return [], digit
        if pt == 13:  # comfort noise: nothing to play, not an error
            return [], None
        self.stats.wrong_payload_type += 1
        return [], None

    def _update_jitter(self, timestamp: int, arrival_ms: float) -> None:
        transit = int(arrival_ms * 8) - timestamp  # both in 8 kHz ticks
        if self._transit is not None:
            d = abs(transit - self._transit)
            if d < SAMPLE_RATE_HZ * 10:  # ignore resync jumps
                self._jitter_ts += (d - self._jitter_ts) / 16.0
                self.stats.jitter_ms = self._jitter_ts / 8.0
        self._transit = transit


def _same_ip(a: str, b: str) -> bool:
    """Two spellings of one address (IPv6 case and zeros, IPv4-mapped IPv6). Only reached when the
    strings differ, so the common path stays one string comparison."""
    try:
        ia, ib = ipaddress.ip_address(a.split("%", 1)[0]), ipaddress.ip_address(b.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ia, ipaddress.IPv6Address) and ia.ipv4_mapped is not None:
        ia = ia.ipv4_mapped
    if isinstance(ib, ipaddress.IPv6Address) and ib.ipv4_mapped is not None:
        ib = ib.ipv4_mapped
    return ia == ib


# ---------------------------------------------------------------------------------------------
# Send side


def dtmf_packets(digit: str, duration_ms: int = 100) -> list[tuple[bytes, bool, bool]]:
    """The RFC 4733 payloads for one digit, one per 20 ms: (payload, marker, end).
    The end packet is sent three times, as the RFC recommends."""
    try:
        event = DTMF_EVENTS.index(digit.upper())
    except ValueError as exc:
        raise ProtocolError(f"cannot send DTMF {digit!r}: not one of {DTMF_EVENTS}") from exc
    volume = 10
    steps = max(1, duration_ms // FRAME_MS)
    out: list[tuple[bytes, bool, bool]] = []
    for i in range(1, steps + 1):
        dur = i * FRAME_SAMPLES
        last = i == steps
        flags = (0x80 if last else 0) | volume
        payload = struct.pack("!BBH", event, flags, dur & 0xFFFF)
        out.append((payload, i == 1, last))
        if last:
            out.extend([(payload, False, True), (payload, False, True)])
    return out


class RtpSender:
    """Sender state of one call: a flushable queue of 20 ms frames, marks and DTMF, stamped onto
    RTP packets one per `tick()`.

    `tick()` is called once per 20 ms by the pacer and returns the datagram to send now, plus the
    names of marks whose preceding frames have all been transmitted. With nothing queued it sends
    comfort silence so timestamps stay continuous and NAT bindings stay open.
    """

    def __init__(self, codec: Codec, payload_type: int, dtmf_pt: int | None = None,
                 ssrc: int | None = None, stats: RtpStats | None = None) -> None:
        self.codec = codec
        self.payload_type = payload_type
        self.dtmf_pt = dtmf_pt
        self.ssrc = ssrc if ssrc is not None else random.getrandbits(32)
        self.sequence = random.getrandbits(16)
        self.timestamp = random.getrandbits(32)
        self.stats = stats or RtpStats()
        self.silence = bytes([SILENCE_BYTE[codec]]) * FRAME_BYTES
        self._queue: deque[bytes | str] = deque()  # bytes = frame, str = mark name
        self._dtmf: deque[tuple[bytes, bool, bool]] = deque()
        self._dtmf_ts = 0
        self._marker_next = True  # first packet of a talkspurt
        self.frames_sent = 0  # real (queued) frames transmitted
        self.queued_frames = 0

    def queue_frame(self, frame: bytes) -> None:
        if len(frame) != FRAME_BYTES:
            frame = (frame + self.silence)[:FRAME_BYTES]
        self._queue.append(frame)
        self.queued_frames += 1

    def queue_mark(self, name: str) -> None:
        self._queue.append(name)

    def queue_dtmf(self, digit: str, duration_ms: int = 100) -> None:
        if self.dtmf_pt is None:
            raise ProtocolError("the peer did not offer telephone-event: cannot send DTMF")
        self._dtmf.extend(dtmf_packets(digit, duration_ms))

    def clear(self) -> list[str]:
        """Drop every queued frame at once (barge-in). Returns the marks that were pending: their
        audio will never play, so the caller learns about them now, as Twilio does on `clear`."""
        marks = [item for item in self._queue if isinstance(item, str)]
        self._queue.clear()
        self.queued_frames = 0
        return marks

    def tick(self) -> tuple[bytes, list[str] | None]:
        queue = self._queue
        marks: list[str] | None = None
        while queue and isinstance(queue[0], str):
            marks = marks or []
            marks.append(queue.popleft())  # type: ignore[arg-type]
        if self._dtmf:
            payload, marker, _end = self._dtmf.popleft()
            if marker:
                self._dtmf_ts = self.timestamp
            packet = build_packet(self.dtmf_pt or 0, self.sequence, self._dtmf_ts, self.ssrc, payload, marker)
            # audio waits while a digit is being sent
        else:
            if queue:
                frame = queue.popleft()
                self.queued_frames -= 1
                self.frames_sent += 1
                marker = self._marker_next
                self._marker_next = False
            else:
                frame = self.silence
                marker = False
                self._marker_next = True
            packet = build_packet(self.payload_type, self.sequence, self.timestamp, self.ssrc,
                                  frame, marker)  # type: ignore[arg-type]
            while queue and isinstance(queue[0], str):
                marks = marks or []
                marks.append(queue.popleft())  # type: ignore[arg-type]
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + FRAME_SAMPLES) & 0xFFFFFFFF
        self.stats.sent += 1
        return packet, marks

    def skip(self, frames: int) -> None:
        """Advance the media clock without sending (the loop stalled too long to catch up)."""
        self.timestamp = (self.timestamp + FRAME_SAMPLES * frames) & 0xFFFFFFFF
        self._marker_next = True


# ---------------------------------------------------------------------------------------------
# asyncio shell


class RtpEndpoint(asyncio.DatagramProtocol):
    """One call's RTP socket. Inbound datagrams go through `RtpReceiver`; ready frames and digits
    are handed to `on_audio(frame)` / `on_dtmf(digit)` on the loop. Outbound packets are sent by the
    shared `RtpTicker`, which calls `tick()`."""

    def __init__(self, receiver: RtpReceiver, sender: RtpSender,
                 on_audio: Callable[[bytes], None], on_dtmf: Callable[[str], None],
                 on_marks: Callable[[list[str]], None], clock: Callable[[], float]) -> None:
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

    def tick(self) -> None:
        packet, marks = self.sender.tick()
        transport = self.transport
        if transport is not None and self.sending and self.remote is not None:
            transport.sendto(packet, self.remote)
        if marks:
            self.on_marks(marks)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


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


async def open_rtp(bind_host: str, port_range: tuple[int, int] | None, endpoint: RtpEndpoint,
                   attempts: int = 50) -> int:
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
