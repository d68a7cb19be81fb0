"""RTP packets for the SIP leg (RFC 3550 / 3551) and RFC 2833/4733 telephone-events: no I/O.

Header parse/build, the static payload types, stream statistics, and the
DTMF events in both directions (digits from received events; the payloads that send one).
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field

from bridge.errors import ProtocolError
from bridge.media.g711 import FRAME_MS, FRAME_SAMPLES_8K, Encoding

RTP_VERSION = 2
PT_PCMU = 0
PT_PCMA = 8
STATIC_PT: dict[Encoding, int] = {"pcmu": PT_PCMU, "pcma": PT_PCMA}
DTMF_EVENTS = "0123456789*#ABCD"

_HEADER = struct.Struct("!BBHII")


class RtpError(ProtocolError):
    """A datagram is not a usable RTP packet (too short, wrong version, bad padding)."""


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


def build_packet(
    payload_type: int, sequence: int, timestamp: int, ssrc: int, payload: bytes, marker: bool = False
) -> bytes:
    b1 = (0x80 if marker else 0) | (payload_type & 0x7F)
    return _HEADER.pack(0x80, b1, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + payload


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
    silence_filled: int = 0  # frames of silence handed out while the caller sent none

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.__slots__}


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
        dur = i * FRAME_SAMPLES_8K
        last = i == steps
        flags = (0x80 if last else 0) | volume
        payload = struct.pack("!BBH", event, flags, dur & 0xFFFF)
        out.append((payload, i == 1, last))
        if last:
            out.extend([(payload, False, True), (payload, False, True)])
    return out
