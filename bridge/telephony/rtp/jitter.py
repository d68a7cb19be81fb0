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

from bridge.media.g711 import (
    FRAME_BYTES_G711,
    FRAME_MS,
    RATE_8K,
    SILENCE_BYTE,
    Encoding,
    decode,
    encode,
    silence,
)
from bridge.telephony.rtp.packet import (
    DtmfReceiver,
    RtpError,
    RtpPacket,
    RtpStats,
    parse_packet,
)

# No caller frame for this long: the caller's phone sends nothing (silence suppression), not a late
# packet; `RtpReceiver.silence_due` fills the stream with silence from then on.
FILL_AFTER_MS = 100.0


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
        self.silence_frame = silence(codec)  # what `silence_due` frames are
        self._heard_ms: float | None = None  # when the last frame was handed out (None: not listening)
        self._filled = 0  # silence frames handed out since then

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
            frames = self.jitter.push(packet)
            if frames and self._heard_ms is not None:
                self._heard_ms = arrival_ms
                self._filled = 0
            return frames, None
        if pt == self.dtmf_pt:
            digit = self.dtmf.push(packet)
            if digit is not None:
                self.stats.dtmf += 1
            return [], digit
        if pt == 13:  # comfort noise: nothing to play, not an error
            return [], None
        self.stats.wrong_payload_type += 1
        return [], None

    def listen(self, now_ms: float) -> None:
        """Start `silence_due` (the call is answered: its caller's stream starts now)."""
        self._heard_ms = now_ms
        self._filled = 0

    def silence_due(self, now_ms: float) -> int:
        """Silence frames to hand out now in place of audio the caller did not send. A phone with
        silence suppression sends no RTP while its user is quiet (RFC 3551; comfort noise, if any,
        is a packet now and then), and some start their media only when the user talks; the call
        needs the caller's silence as it happens, as on Twilio (the detector and the model's VAD
        end an utterance on it, the echo canceller learns the line from it). None until
        `FILL_AFTER_MS` without a frame (network jitter is not silence), then as many 20 ms frames
        as cover the time since the last frame."""
        heard = self._heard_ms
        if heard is None or now_ms - heard < FILL_AFTER_MS:
            return 0
        due = int((now_ms - heard) // FRAME_MS) - self._filled
        if due <= 0:
            return 0
        self._filled += due
        self.stats.silence_filled += due
        return due

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
