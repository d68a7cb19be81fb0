"""RTP packets and RFC 4733 events: `RtpError` for malformed datagrams; the receiver never raises."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.telephony.rtp.jitter import RtpReceiver
from bridge.telephony.rtp.packet import DtmfReceiver, RtpError, build_packet, dtmf_packets, parse_packet
from tests.fuzz.strategies import mutated_bytes

PEER = ("192.0.2.20", 40000)
VALID = build_packet(0, 1, 160, 0x1234, b"\xff" * 160)


@given(st.binary(max_size=200) | st.sampled_from([VALID]).flatmap(mutated_bytes))
def test_parse_packet(data: bytes) -> None:
    try:
        packet = parse_packet(data)
    except RtpError:
        return
    assert 0 <= packet.payload_type < 128
    assert len(packet.payload) <= len(data) - 12


@given(
    st.integers(0, 127), st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
    st.binary(max_size=200), st.booleans(),
)  # fmt: skip
def test_build_parse_round_trip(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool) -> None:
    packet = parse_packet(build_packet(pt, seq, ts, ssrc, payload, marker))
    got = (packet.payload_type, packet.sequence, packet.timestamp, packet.ssrc, packet.payload, packet.marker)
    assert got == (pt, seq, ts, ssrc, payload, marker)


@given(
    st.lists(st.binary(max_size=200) | st.sampled_from([VALID]).flatmap(mutated_bytes), max_size=20),
    st.floats(0, 1e6),
)
def test_receiver_never_raises(datagrams: list[bytes], t0: float) -> None:
    rx = RtpReceiver("pcmu", 0, 101, PEER)
    for i, data in enumerate(datagrams):
        frames, digit = rx.feed(data, PEER, t0 + 20 * i)
        assert all(isinstance(f, bytes) and len(f) <= 200 for f in frames)
        assert digit is None or digit in "0123456789*#ABCD"


@given(st.sampled_from("0123456789*#ABCD"), st.integers(20, 400), st.binary(min_size=0, max_size=8))
def test_dtmf_events(digit: str, duration_ms: int, junk: bytes) -> None:
    rx = DtmfReceiver()
    seen = []
    for i, (payload, marker, _end) in enumerate(dtmf_packets(digit, duration_ms)):
        got = rx.push(parse_packet(build_packet(101, i, 8000, 7, payload, marker)))
        if got is not None:
            seen.append(got)
    assert seen == [digit]  # once, however many packets (end packets repeated)
    assert rx.push(parse_packet(build_packet(101, 99, 16000, 7, junk))) in (None, *"0123456789*#ABCD")
