"""SIP messages, SDP and the UAS core fed random and mutated datagrams: defined errors only."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from bridge.telephony.sip.message import SipParseError, parse_message
from bridge.telephony.sip.sdp import NotAcceptable, choose_codec, parse_sdp
from bridge.telephony.sip.uas import Send, SetTimer, UasCore
from tests.fuzz.strategies import mutated_bytes
from tests.sip.test_uas import BRIDGE_IP, CALLER, OFFER, Shell, invite, request

SEEDS = [
    invite(),
    request("OPTIONS"),
    request("BYE", to_tag="t1"),
    request("CANCEL"),
    request("ACK", to_tag="t1"),
    invite(extra="Supported: timer"),
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-1\r\n"
    b"Call-ID: x\r\nCSeq: 1 OPTIONS\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nContent-Length: 0\r\n\r\n",
]
DATAGRAMS = st.binary(max_size=400) | st.sampled_from(SEEDS).flatmap(mutated_bytes)


@given(DATAGRAMS)
def test_parse_message(data: bytes) -> None:
    with contextlib.suppress(SipParseError):
        parse_message(data)


@given(st.binary(max_size=300) | st.sampled_from([OFFER.encode()]).flatmap(mutated_bytes))
def test_parse_sdp(body: bytes) -> None:
    try:
        offer = parse_sdp(body)
    except (SipParseError, NotAcceptable):
        return
    assert offer.port >= 0
    with contextlib.suppress(NotAcceptable):
        choose_codec(offer)


@given(st.lists(DATAGRAMS, min_size=1, max_size=6), st.floats(0, 40))
def test_uas_core_never_crashes(datagrams: list[bytes], advance_s: float) -> None:
    shell = Shell(UasCore(user="bridge", advertised_ip=BRIDGE_IP, port=5070))
    for data in datagrams:
        outputs = shell.feed(data, CALLER)
        for out in outputs:
            if isinstance(out, Send):
                parse_message(out.data)  # whatever the core sends is itself well-formed
            elif isinstance(out, SetTimer):
                assert out.delay_s >= 0
    shell.advance(advance_s)
