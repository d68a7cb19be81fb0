"""The asyncio shell around the UAS core, on real UDP sockets on 127.0.0.1 (a raw socket plays the
caller): timers run on the loop, RTP is bound per call, legs are started, our BYE goes out."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

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


async def trunk_endpoint(
    on_call: Callable[[SipLeg], Awaitable[None]],
) -> tuple[SipEndpoint, Caller, socket.socket]:
    """A trunk-mode endpoint on 127.0.0.1, the raw-socket caller, and the caller's media socket."""
    loop = asyncio.get_running_loop()
    endpoint = SipEndpoint(
        user="bridge",
        advertised_ip="127.0.0.1",
        on_call=on_call,
        registration=Registration(mode="trunk"),
        rtp_bind="127.0.0.1",
    )
    await loop.create_datagram_endpoint(lambda: endpoint, local_addr=("127.0.0.1", 0))
    media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    media.bind(("127.0.0.1", 0))
    return endpoint, Caller(), media


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

    endpoint, caller, media = await trunk_endpoint(on_call)
    try:
        caller.send(caller.invite(endpoint.port, media.getsockname()[1]), endpoint.port)
        statuses = []
        while not statuses or statuses[-1] < 200:
            statuses.append((ok := await caller.recv()).status)
        assert statuses == [100, 200]
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


async def test_a_phone_that_sends_no_rtp_until_its_user_talks_is_heard_as_silence_meanwhile() -> None:
    """After the answer the phone sends nothing for 0.4 s (silence suppression, or media that starts
    when its user talks), then two packets: the leg delivers silence frames in real time meanwhile
    (the call's detector, echo canceller and the model's VAD need the caller's silence as it
    happens), then the caller's audio."""
    frames: list[tuple[float, AudioIn]] = []
    loop = asyncio.get_running_loop()

    async def on_call(leg: SipLeg) -> None:
        async for event in leg.events():
            if isinstance(event, AudioIn):
                frames.append((loop.time(), event))

    endpoint, caller, media = await trunk_endpoint(on_call)
    try:
        caller.send(caller.invite(endpoint.port, media.getsockname()[1]), endpoint.port)
        while (ok := await caller.recv()).status < 200:
            pass
        answered = loop.time()
        caller.send(caller.ack(endpoint.port, header_param(ok.get("To"), "tag")), endpoint.port)
        rtp = ("127.0.0.1", parse_sdp(ok.body).port)
        await asyncio.sleep(0.4)
        talk = bytes(range(160))
        media.sendto(build_packet(0, 10, 5000, 9, talk, marker=True), rtp)
        media.sendto(build_packet(0, 11, 5160, 9, talk), rtp)
        await asyncio.sleep(0.1)
        payloads = [f.payload for _, f in frames]
        first_talk = payloads.index(talk)
        silent = payloads[:first_talk]
        assert silent
        assert set(silent) == {b"\xff" * 160}
        assert 0.4 - 0.16 <= len(silent) * 0.02 <= 0.4 + 0.04  # as long as the phone was silent
        assert frames[0][0] - answered < 0.16  # from FILL_AFTER_MS on, not when the caller talks
        assert payloads[first_talk : first_talk + 2] == [talk, talk]
    finally:
        await endpoint.close()
        caller.sock.close()
        media.close()
