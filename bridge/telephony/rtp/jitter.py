"""The receive side of the bridge's RTP: no I/O.

A small reordering jitter buffer with G.711 loss concealment, and `RtpReceiver`, which turns one
call's inbound datagrams into ready frames and digits (source and payload-type checks, RFC 3550
interarrival jitter). Audio stays G.711 end to end; only concealment decodes to 16-bit linear
(through `bridge.media.g711`, the same tables the Twilio path uses) to fade a repeated frame.
Nothing here logs, formats or allocates more than one packet per frame on the audio path.
"""

from __future__ import annotations

import audioop
import ipaddress

from bridge.media.g711 import FRAME_BYTES_G711, RATE_8K, SILENCE_BYTE, Encoding, decode, encode
from bridge.telephony.rtp.packet import (
    DtmfReceiver,
    RtpError,
    RtpPacket,
    RtpStats,
    parse_packet,
)

_MAX_SILENCE_SAMPLES = 3600 * RATE_8K  # a timestamp jump beyond an hour is a restart, not silence


class Concealer:
    """Packet-loss concealment for G.711: repeat the last good frame, fading by half per lost frame,
    and fall to silence after `max_repeats`. A lost packet never becomes a full-scale click."""

    def __init__(self, codec: Encoding, max_repeats: int = 3) -> None:
        self.codec = codec
        self.max_repeats = max_repeats
        self._silence = bytes([SILENCE_BYTE[codec]]) * FRAME_BYTES_G711
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
        if last is None or self._run > self.max_repeats or len(last) != FRAME_BYTES_G711:
            return self._silence
        if self._last_pcm is None:
            self._last_pcm = decode(last, self.codec)
        factor = 0.5**self._run
        return encode(audioop.mul(self._last_pcm, 2, factor), self.codec)


def _seq_diff(a: int, b: int) -> int:
    """a - b in 16-bit sequence space, in [-32768, 32767]."""
    d = (a - b) & 0xFFFF
    return d - 0x10000 if d >= 0x8000 else d


class JitterBuffer:
    """Reorders audio packets by sequence number and conceals losses.

    Arrival-driven, so an in-order stream passes through with no added delay; a missing packet is
    waited for until `depth` newer packets have arrived (depth x 20 ms), then concealed. Gaps larger
    than `max_gap` frames (a sender that paused, restarted or jumped) resync instead of inventing
    seconds of audio. `push` returns the frames now ready, in order.
    """

    def __init__(self, codec: Encoding, stats: RtpStats, depth: int = 3, max_gap: int = 25) -> None:
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


class RtpReceiver:
    """Everything the bridge does with inbound datagrams of one call, without sockets.

    `feed(data, addr, arrival_ms)` returns the audio frames now ready (in order, losses concealed)
    and the digits received. Datagrams from another source, with an unexpected payload type, or
    malformed, are counted and dropped. Any port of the expected address is accepted.
    """

    def __init__(
        self,
        codec: Encoding,
        audio_pt: int,
        dtmf_pt: int | None,
        remote: tuple[str, int] | None,
        stats: RtpStats | None = None,
        latch: bool = False,
    ) -> None:
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
        # Silence suppression (RFC 3551 talkspurts): the next packet in sequence whose timestamp
        # jumps past the previous packet's audio. `silence_ms` adds up what was skipped, for the
        # leg to take (the endpoint resets it).
        self.silence_ms = 0
        self._last_seq = -1
        self._last_ts_end = 0  # RTP timestamp one past the last in-sequence packet's audio

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
            seq, ts = packet.sequence, packet.timestamp
            ahead = 1 if self._last_seq < 0 else _seq_diff(seq, self._last_seq)
            if ahead == 1 and self._last_seq >= 0:
                skipped = (ts - self._last_ts_end) & 0xFFFFFFFF
                if 0 < skipped <= _MAX_SILENCE_SAMPLES:
                    self.silence_ms += skipped * 1000 // RATE_8K
            if ahead > 0:  # the newest packet so far (a late one says nothing about silence)
                self._last_seq, self._last_ts_end = seq, ts + len(packet.payload)
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
            if d < RATE_8K * 10:  # ignore resync jumps
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
