"""The asyncio shell around the UAS core, on real UDP sockets on 127.0.0.1 (a raw socket plays the
caller): timers run on the loop, RTP is bound per call, legs are started, our BYE goes out."""

from __future__ import annotations

import asyncio
import socket

from bridge.telephony.leg import AudioIn, CallEnded, CallStarted
from bridge.telephony.rtp.packet import build_packet
from bridge.telephony.sip.endpoint import SipEndpoint
from bridge.telephony.sip.leg import SipLeg
from bridge.telephony.sip.message import SipMessage, header_param, parse_message
from bridge.telephony.sip.registration import Registration
from bridge.telephony.sip.sdp import parse_sdp

OFFER = (
    "v=0\r\no=c 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


class Caller:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def send(self, text: str, port: int) -> None:
        self.sock.sendto(text.encode(), ("127.0.0.1", port))

    async def recv(self, timeout_s: float = 3.0) -> SipMessage:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), timeout_s)
        return parse_message(data)

    def ack(self, bridge_port: int, tag: str | None) -> str:
        return (
            f"ACK sip:bridge@127.0.0.1:{bridge_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK-e2;rport\r\n"
            f"From: <sip:caller@127.0.0.1>;tag=ct1\r\nTo: <sip:bridge@127.0.0.1>;tag={tag}\r\n"
            "Call-ID: ep-1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        )

    def invite(self, bridge_port: int, rtp_port: int) -> str:
        body = OFFER.format(port=rtp_port)
        return (
            f"INVITE sip:bridge@127.0.0.1:{bridge_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK-e1;rport\r\n"
            f"From: <sip:caller@127.0.0.1>;tag=ct1\r\nTo: <sip:bridge@127.0.0.1>\r\n"
            f"Call-ID: ep-1\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@127.0.0.1:{self.port}>\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        )


async def test_a_hang_up_cancelled_at_once_still_sends_the_bye() -> None:
    """The call script hangs up and is cancelled by its owner as soon as the leg ends (what call
    handlers do); the BYE must be on the wire anyway, and retransmitted until answered."""
    seen: list[object] = []

    async def on_call(leg: SipLeg) -> None:
        events = leg.events()
        seen.append(await anext(events))
        hang = asyncio.create_task(leg.hang_up())
        seen.append(await anext(events))  # CallEnded, delivered before the BYE is answered
        hang.cancel()

    loop = asyncio.get_running_loop()
    endpoint = SipEndpoint(
        user="bridge",
        advertised_ip="127.0.0.1",
        on_call=on_call,
        registration=Registration(mode="trunk"),
        rtp_bind="127.0.0.1",
    )
    await loop.create_datagram_endpoint(lambda: endpoint, local_addr=("127.0.0.1", 0))
    caller = Caller()
    media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    media.bind(("127.0.0.1", 0))
    try:
        caller.send(caller.invite(endpoint.port, media.getsockname()[1]), endpoint.port)
        statuses = []
        while not statuses or statuses[-1] < 200:
            statuses.append((ok := await caller.recv()).status)
        assert statuses == [100, 180, 200]
        assert parse_sdp(ok.body).port != 0
        tag = header_param(ok.get("To"), "tag")
        caller.send(caller.ack(endpoint.port, tag), endpoint.port)
        bye = await caller.recv()
        assert (bye.method, bye.call_id, header_param(bye.get("From"), "tag")) == ("BYE", "ep-1", tag)
        again = await caller.recv(2.0)  # unanswered: retransmitted (T1) by the core's timer
        assert again.method == "BYE"
        assert again.branch == bye.branch
        via = bye.get("Via")
        caller.send(
            f"SIP/2.0 200 OK\r\nVia: {via}\r\nFrom: {bye.get('From')}\r\nTo: {bye.get('To')}\r\n"
            f"Call-ID: ep-1\r\nCSeq: {bye.get('CSeq')}\r\nContent-Length: 0\r\n\r\n",
            endpoint.port,
        )
        await asyncio.sleep(0.1)
        assert isinstance(seen[0], CallStarted)
        assert seen[1] == CallEnded("hangup")
        assert endpoint.status()["calls_active"] == 0
        assert endpoint.media == {}
    finally:
        await endpoint.close()
        caller.sock.close()
        media.close()


async def test_the_callers_stream_clock_counts_what_its_rtp_left_out() -> None:
    """A phone that sends no RTP until its user talks (0.3 s after the answer), then leaves out 1 s
    between two talkspurts (silence suppression): the leg's `AudioIn` timestamps say so (the call
    takes such gaps as silence for its echo canceller)."""
    frames: list[AudioIn] = []
    got = asyncio.Event()

    async def on_call(leg: SipLeg) -> None:
        async for event in leg.events():
            if isinstance(event, AudioIn):
                frames.append(event)
                if len(frames) == 3:
                    got.set()

    loop = asyncio.get_running_loop()
    endpoint = SipEndpoint(
        user="bridge",
        advertised_ip="127.0.0.1",
        on_call=on_call,
        registration=Registration(mode="trunk"),
        rtp_bind="127.0.0.1",
    )
    await loop.create_datagram_endpoint(lambda: endpoint, local_addr=("127.0.0.1", 0))
    caller = Caller()
    media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    media.bind(("127.0.0.1", 0))
    try:
        caller.send(caller.invite(endpoint.port, media.getsockname()[1]), endpoint.port)
        while (ok := await caller.recv()).status < 200:
            pass
        answered = loop.time()
        caller.send(caller.ack(endpoint.port, header_param(ok.get("To"), "tag")), endpoint.port)
        rtp = ("127.0.0.1", parse_sdp(ok.body).port)
        payload = bytes([0xFF]) * 160
        await asyncio.sleep(0.3)
        sent_first = loop.time()
        media.sendto(build_packet(0, 10, 5000, 9, payload, marker=True), rtp)
        media.sendto(build_packet(0, 11, 5160, 9, payload), rtp)
        media.sendto(build_packet(0, 12, 5320 + 8000, 9, payload, marker=True), rtp)
        await asyncio.wait_for(got.wait(), 3.0)
        first = frames[0].timestamp_ms
        assert first % 20 == 0
        assert (sent_first - answered) * 1000 - 40 <= first <= (loop.time() - answered) * 1000
        assert [f.timestamp_ms - first for f in frames] == [0, 20, 1040]
    finally:
        await endpoint.close()
        caller.sock.close()
        media.close()
