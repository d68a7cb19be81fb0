"""The sans-I/O RTP core: packets, jitter buffer + concealment, RFC 4733, sender queue and marks."""

from __future__ import annotations

import asyncio
import audioop
import math
import socket
import struct

import pytest

from bridge.errors import ProtocolError
from bridge.media.g711 import FRAME_BYTES_G711
from bridge.telephony.rtp.endpoint import RtpEndpoint, open_rtp
from bridge.telephony.rtp.jitter import FILL_AFTER_MS, RtpReceiver
from bridge.telephony.rtp.packet import (
    RtpError,
    RtpStats,
    build_packet,
    dtmf_packets,
    parse_packet,
)
from bridge.telephony.rtp.sender import RtpSender
from bridge.telephony.rtp.ticker import ticker_for_loop


def tone_frames(n: int, codec: str = "pcmu", amp: int = 8000) -> list[bytes]:
    out = []
    for i in range(n):
        pcm = b"".join(
            struct.pack("<h", int(amp * math.sin(2 * math.pi * 440 * (i * 160 + k) / 8000)))
            for k in range(160)
        )
        out.append(audioop.lin2ulaw(pcm, 2) if codec == "pcmu" else audioop.lin2alaw(pcm, 2))
    return out


def test_packet_round_trip_and_header_options() -> None:
    data = build_packet(0, 65535, 2**32 - 1, 0x11223344, b"\xff" * 160, marker=True)
    p = parse_packet(data)
    fields = (p.payload_type, p.sequence, p.timestamp, p.ssrc, p.marker)
    assert fields == (0, 65535, 2**32 - 1, 0x11223344, True)
    assert p.payload == b"\xff" * 160
    # CSRC count 1, extension of one word, 3 bytes padding
    raw = bytearray(data)
    raw[0] = 0x80 | 0x10 | 0x20 | 0x01
    body = raw[12:]
    raw = raw[:12] + b"CSRC" + b"\xbe\xde\x00\x01" + b"EXT!" + body + b"\x00\x00\x03"
    p2 = parse_packet(bytes(raw))
    assert p2.payload == b"\xff" * 160


@pytest.mark.parametrize(
    "bad",
    [b"", b"\x80\x00", b"\x40" + b"\x00" * 20, b"\xa0" + b"\x00" * 11 + b"\x00", b"\x8f" + b"\x00" * 20],
)
def test_malformed_packets_raise(bad: bytes) -> None:
    with pytest.raises(RtpError):
        parse_packet(bad)


def feed(rx: RtpReceiver, seqs: list[int], frames: list[bytes], src=("127.0.0.1", 4000), ssrc=7, pt=0):
    out: list[bytes] = []
    for s in seqs:
        got, _ = rx.feed(
            build_packet(pt, s & 0xFFFF, (s * 160) & 0xFFFFFFFF, ssrc, frames[s % len(frames)]), src, 0.0
        )
        out.extend(got)
    return out


def test_in_order_passes_through_and_reordering_is_fixed() -> None:
    frames = tone_frames(10)
    rx = RtpReceiver("pcmu", 0, 101, ("127.0.0.1", 4000))
    assert feed(rx, [0, 1, 2], frames) == frames[:3]
    assert feed(rx, [4, 3, 5], frames) == [frames[3], frames[4], frames[5]]
    assert rx.stats.lost == 0


def test_loss_is_concealed_without_clicks() -> None:
    frames = tone_frames(12)
    rx = RtpReceiver("pcmu", 0, None, ("127.0.0.1", 4000))
    out = feed(rx, [0, 1, 2, 3, 5, 6, 7, 8, 9], frames)  # 4 lost
    assert len(out) == 10
    assert rx.stats.lost == 1
    concealed = audioop.ulaw2lin(out[4], 2)
    previous = audioop.ulaw2lin(frames[3], 2)
    assert audioop.max(concealed, 2) <= audioop.max(previous, 2)  # faded, never full scale
    assert audioop.max(concealed, 2) > 0
    # a burst of losses fades to silence, never -32768 zero-bytes
    rx2 = RtpReceiver("pcmu", 0, None, ("127.0.0.1", 4000))
    out2 = feed(rx2, [0, 1, 8, 9, 10, 11], frames)
    assert len(out2) == 12
    assert rx2.stats.lost == 6
    assert audioop.max(audioop.ulaw2lin(out2[7], 2), 2) < 50
    assert all(max(abs(s) for s in struct.unpack("<160h", audioop.ulaw2lin(f, 2))) < 9000 for f in out2)


def test_wraparound_duplicates_and_jumps() -> None:
    frames = tone_frames(4)
    rx = RtpReceiver("pcmu", 0, None, ("127.0.0.1", 4000))
    assert len(feed(rx, [65534, 65535, 65536, 65537], frames)) == 4
    assert feed(rx, [65537], frames) == []
    assert rx.stats.late == 1
    out = feed(rx, [30000, 30001], frames)  # sender jumped: resync, no invented seconds of audio
    assert len(out) == 2
    assert rx.stats.resyncs == 1
    assert rx.stats.lost == 0


def test_a_caller_who_sends_nothing_is_heard_as_silence_in_real_time() -> None:
    """Silence suppression: no RTP while the caller is quiet. From `listen` (the answer) on, once
    FILL_AFTER_MS pass without a frame, `silence_due` hands out silence frames covering the time
    since the last frame, then one per 20 ms; any frame that arrives starts the count again."""
    frames = tone_frames(2)
    rx = RtpReceiver("pcmu", 0, None, ("127.0.0.1", 4000))
    assert rx.silence_due(1000.0) == 0  # not listening yet (before the answer)
    rx.listen(1000.0)
    assert rx.silence_due(1000.0 + FILL_AFTER_MS - 1) == 0  # a late packet is not silence
    assert rx.silence_due(1000.0 + FILL_AFTER_MS) == FILL_AFTER_MS // 20
    assert rx.silence_due(1000.0 + FILL_AFTER_MS + 10) == 0
    assert rx.silence_due(1000.0 + FILL_AFTER_MS + 20) == 1
    assert rx.silence_frame == b"\xff" * 160
    got, _ = rx.feed(build_packet(0, 1, 160, 7, frames[0]), ("127.0.0.1", 4000), 1200.0)
    assert got == [frames[0]]
    assert rx.silence_due(1260.0) == 0
    assert rx.silence_due(1200.0 + FILL_AFTER_MS + 40) == (FILL_AFTER_MS + 40) // 20
    assert rx.stats.silence_filled == FILL_AFTER_MS // 20 + 1 + (FILL_AFTER_MS + 40) // 20


def test_wrong_source_payload_type_and_garbage_are_dropped() -> None:
    frames = tone_frames(2)
    rx = RtpReceiver("pcmu", 0, 101, ("127.0.0.1", 4000))
    assert feed(rx, [0], frames, src=("127.0.0.2", 4000)) == []
    assert feed(rx, [0], frames, pt=8) == []
    assert rx.feed(b"\x00garbage", ("127.0.0.1", 4000), 0.0) == ([], None)
    assert (rx.stats.wrong_source, rx.stats.wrong_payload_type, rx.stats.bad) == (1, 1, 1)
    assert feed(rx, [5], frames) == [frames[1]]


def test_dtmf_round_trip_once_per_event_even_without_marker_or_start() -> None:
    tx = RtpSender("pcmu", 0, dtmf_pt=101, ssrc=99)
    rx = RtpReceiver("pcmu", 0, 101, None)
    tx.queue_dtmf("5")
    tx.queue_dtmf("#")
    digits = []
    for _ in range(20):
        packet, _marks = tx.tick()
        _, d = rx.feed(packet, ("127.0.0.1", 1), 0.0)
        if d:
            digits.append(d)
    assert digits == ["5", "#"]
    # a sender that never sets the marker and whose first packets were lost
    payloads = dtmf_packets("7")
    rx2 = RtpReceiver("pcmu", 0, 101, None)
    got = [
        rx2.feed(build_packet(101, i, 1000, 5, p), ("h", 1), 0.0)[1]
        for i, (p, _m, _e) in enumerate(payloads)
        if i >= 2
    ]
    assert [d for d in got if d] == ["7"]
    with pytest.raises(ProtocolError):
        RtpSender("pcmu", 0, dtmf_pt=None).queue_dtmf("1")


def test_sender_marks_clear_and_continuous_timestamps() -> None:
    stats = RtpStats()
    tx = RtpSender("pcma", 8, ssrc=1, stats=stats)
    frames = tone_frames(3, "pcma")
    tx.queue_frame(frames[0])
    tx.queue_mark("a")
    tx.queue_frame(frames[1])
    tx.queue_frame(frames[2])
    tx.queue_mark("b")
    p1, m1 = tx.tick()
    assert m1 == ["a"]
    assert parse_packet(p1).payload == frames[0]
    assert parse_packet(p1).marker
    assert tx.clear() == ["b"]  # barge-in: the rest never plays, its mark is reported at once
    p2, m2 = tx.tick()
    assert m2 is None
    assert parse_packet(p2).payload == b"\xd5" * FRAME_BYTES_G711
    a, b = parse_packet(p1), parse_packet(p2)
    assert (b.sequence - a.sequence) & 0xFFFF == 1
    assert (b.timestamp - a.timestamp) == 160
    assert tx.frames_sent == 1
    assert stats.sent == 2


async def test_endpoint_and_ticker_on_real_sockets() -> None:
    """Two endpoints on 127.0.0.1: frames queued on one arrive in order at the other, 50 per second."""
    loop = asyncio.get_running_loop()
    got: list[bytes] = []
    marks: list[str] = []
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    peer_addr = peer.getsockname()
    tx = RtpSender("pcmu", 0, ssrc=3)
    ep = RtpEndpoint(
        RtpReceiver("pcmu", 0, None, peer_addr), tx, got.append, lambda d: None, marks.extend, loop.time
    )
    port = await open_rtp("127.0.0.1", None, ep)
    frames = tone_frames(10)
    for f in frames:
        tx.queue_frame(f)
    tx.queue_mark("end")
    ticker_for_loop().add(ep)
    received: list[bytes] = []
    while len(received) < 12:
        received.append(await loop.sock_recv(peer, 2048))
    ticker_for_loop().remove(ep)
    assert [parse_packet(p).payload for p in received[:10]] == frames
    assert marks == ["end"]
    for i, p in enumerate(received):  # and the way back: peer -> endpoint
        peer.sendto(build_packet(0, i, i * 160, 77, parse_packet(p).payload), ("127.0.0.1", port))
    for _ in range(100):
        if len(got) >= 12:
            break
        await asyncio.sleep(0.01)
    assert got[:10] == frames
    ep.close()
    peer.close()


def test_only_the_sdp_address_is_heard_any_port_and_any_spelling_of_it() -> None:
    """What a call's RTP socket accepts: datagrams from the address the (trusted) SDP named, from any
    port of it; nothing from another address, before or after the first packet; a re-INVITE's new
    address replaces the old one."""
    frames = tone_frames(6)
    rx = RtpReceiver("pcmu", 0, None, ("2001:db8::10", 4000))
    assert feed(rx, [0], frames, src=("2001:db8::11", 4000)) == []  # a stranger first: never latched
    assert feed(rx, [0], frames, src=("2001:DB8:0::10", 4002)) == [frames[0]]  # same host, other port
    assert feed(rx, [1], frames, src=("192.0.2.1", 4000)) == []
    assert feed(rx, [1], frames, src=("2001:db8::10", 4000)) == [frames[1]]
    assert rx.stats.wrong_source == 2
    v4 = RtpReceiver("pcmu", 0, None, ("192.0.2.7", 4000))
    assert feed(v4, [0], frames, src=("::ffff:192.0.2.7", 4000)) == [frames[0]]  # dual-stack socket
    assert feed(v4, [1], frames, src=("192.0.2.8", 4000)) == []
    v4.remote = ("198.51.100.3", 5000)  # what a re-INVITE with a new media address does
    assert feed(v4, [1], frames, src=("192.0.2.7", 4000)) == []
    assert feed(v4, [1], frames, src=("198.51.100.3", 5000)) == [frames[1]]
    assert v4.stats.wrong_source == 2


async def three_calls_on_the_ticker(frames: int, silent_callers: bool) -> tuple[list[list[int]], float]:
    """Three endpoints on the process's ticker, `frames` tone frames queued on each (a mark after
    each), their callers silent since before (`silent_callers`: silence is owed from the start) or
    not. Returns, for every mark or silence frame handed to a call, the packets each endpoint had
    sent at that moment; and how long the 3 x `frames` packets took to arrive."""
    loop = asyncio.get_running_loop()
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    ticker = ticker_for_loop()
    endpoints: list[RtpEndpoint] = []
    seen: list[list[int]] = []

    def note(_: object) -> None:
        seen.append([e.sender.stats.sent for e in endpoints])

    for i in range(3):
        tx = RtpSender("pcmu", 0, ssrc=10 + i)
        rx = RtpReceiver("pcmu", 0, None, peer.getsockname())
        ep = RtpEndpoint(rx, tx, note, lambda d: None, note, loop.time)
        await open_rtp("127.0.0.1", None, ep)
        if silent_callers:
            rx.listen(loop.time() * 1000.0 - FILL_AFTER_MS)  # answered a while ago, nothing since
        for k, f in enumerate(tone_frames(frames)):
            tx.queue_frame(f)
            tx.queue_mark(str(k))
        endpoints.append(ep)
    for ep in endpoints:
        ticker.add(ep)
    t0 = loop.time()
    received = 0
    while received < 3 * frames:
        await loop.sock_recv(peer, 2048)
        received += 1
    elapsed = loop.time() - t0
    for ep in endpoints:
        ticker.remove(ep)
        ep.close()
    peer.close()
    return seen, elapsed


async def test_ticker_sends_every_calls_packet_before_waking_any_call_with_marks() -> None:
    """Marks are handed to the calls only once this tick's packets are all out: a call woken by its
    mark cannot delay the packets of the calls after it. And the ticker keeps 50 packets a second
    on absolute deadlines for all of them."""
    seen, elapsed = await three_calls_on_the_ticker(25, silent_callers=False)
    assert len(seen) >= 3 * 24
    for sent in seen:
        assert len(set(sent)) == 1, sent  # every endpoint had sent this tick's packet already
    assert 0.44 < elapsed < 1.5, elapsed  # 25 packets each at 20 ms (no burst), together


async def test_ticker_sends_every_calls_packet_before_a_silent_callers_silence() -> None:
    """A caller who sends nothing is owed silence frames (`silence_due`), and each runs that call's
    whole caller path (echo canceller, VAD): they are handed over only once every call's packet of
    the tick is out, as marks are."""
    seen, _ = await three_calls_on_the_ticker(10, silent_callers=True)
    assert len(seen) >= 2 * 3 * 9  # marks and silence frames
    for sent in seen:
        assert len(set(sent)) == 1, sent  # every endpoint had sent this tick's packet already
