"""The sans-I/O UAS core (`bridge.telephony.sip.uas.UasCore`): SIP message strings in, typed outputs
out, time from a fake clock. No sockets: the `Shell` below plays the endpoint's part (runs timers on
the fake clock, binds no RTP but reports a port, sends our requests to a resolved address)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from bridge.limits import Slots
from bridge.telephony.sip.message import SipMessage, header_param, parse_message
from bridge.telephony.sip.policy import SourcePolicy, parse_trusted_peers
from bridge.telephony.sip.sdp import parse_sdp
from bridge.telephony.sip.uas import (
    NO_ACK_S,
    RETRY_AFTER_S,
    T1_S,
    TRANSFER_WAIT_S,
    CallAnswered,
    CallEnded,
    CallOffered,
    CancelTimer,
    ClientRequest,
    DtmfReceived,
    MediaChanged,
    Output,
    Refused,
    RequestDone,
    Send,
    SetTimer,
    TimerKey,
    UasCore,
)

CALLER = ("192.0.2.20", 5062)
BRIDGE_IP = "192.0.2.10"
RTP_PORT = 40000

OFFER = (
    "v=0\r\no=caller 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n"
    "m=audio 30000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n"
)


def sdp(
    address: str = "192.0.2.20", port: int = 30000, direction: str = "sendrecv", pts: str = "0 101"
) -> str:
    return (
        f"v=0\r\no=caller 1 2 IN IP4 {address}\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP {pts}\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
        f"a=rtpmap:101 telephone-event/8000\r\na=rtpmap:18 G729/8000\r\na={direction}\r\n"
    )


def request(
    method: str,
    *,
    call_id: str = "call-1@192.0.2.20",
    branch: str = "z9hG4bK-inv-1",
    cseq: int = 1,
    cseq_method: str | None = None,
    to_tag: str | None = None,
    body: str = "",
    extra: str = "",
    source: tuple[str, int] = CALLER,
) -> bytes:
    to = "<sip:5551000@192.0.2.10>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} sip:5551000@192.0.2.10:5070 SIP/2.0",
        f"Via: SIP/2.0/UDP {source[0]}:{source[1]};branch={branch};rport",
        "Max-Forwards: 70",
        'From: "Alice" <sip:+15550001@192.0.2.20>;tag=caller-tag-1',
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
        f"Contact: <sip:alice@{source[0]}:{source[1]}>",
    ]
    if extra:
        lines.append(extra)
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def invite(**kw: Any) -> bytes:
    kw.setdefault("body", OFFER)
    return request("INVITE", **kw)


class Shell:
    """What the asyncio endpoint does with the core's outputs, on a fake clock."""

    def __init__(self, core: UasCore | None = None, *, bind_rtp: bool = True, **kw: Any) -> None:
        self.core = core or UasCore(user="bridge", advertised_ip=BRIDGE_IP, port=5070, **kw)
        self.now = 100.0
        self.bind_rtp = bind_rtp  # answer CallOffered with media_ready, as the endpoint does
        self.timers: dict[TimerKey, float] = {}
        self.sent: list[tuple[SipMessage, tuple[str, int], float]] = []
        self.raw: list[bytes] = []
        self.events: list[Output] = []

    def feed(self, data: bytes, source: tuple[str, int] = CALLER) -> list[Output]:
        return self.apply(self.core.receive(data, source, self.now))

    def apply(self, outputs: list[Output]) -> list[Output]:
        for out in outputs:
            if isinstance(out, Send):
                self.sent.append((parse_message(out.data), out.addr, self.now))
                self.raw.append(out.data)
            elif isinstance(out, SetTimer):
                self.timers[out.key] = self.now + out.delay_s
            elif isinstance(out, CancelTimer):
                self.timers.pop(out.key, None)
            else:
                self.events.append(out)
                if isinstance(out, CallOffered) and self.bind_rtp:
                    self.apply(self.core.media_ready(out.call_id, RTP_PORT, self.now))
        return outputs

    def advance(self, seconds: float) -> None:
        """Run every timer due in the next `seconds`, in order, at its own time."""
        end = self.now + seconds
        while self.timers:
            key, due = min(self.timers.items(), key=lambda kv: kv[1])
            if due > end:
                break
            del self.timers[key]
            self.now = max(self.now, due)
            self.apply(self.core.on_timer(key, self.now))
        self.now = end

    def send_ours(self, req: ClientRequest, addr: tuple[str, int] = CALLER) -> SipMessage:
        """Route one of our requests (the endpoint resolves `next_hop` first)."""
        self.apply(self.core.send_request(req.data, req.branch, addr, self.now, req.timeout_s))
        return parse_message(req.data)

    # -- views -----------------------------------------------------------------------------------

    def responses(self, method: str | None = None) -> list[SipMessage]:
        return [m for m, _, _ in self.sent if not m.is_request and (method is None or m.cseq[1] == method)]

    def statuses(self, method: str | None = None) -> list[int]:
        return [m.status for m in self.responses(method)]

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def answer_to(req: SipMessage, status: int, reason: str = "OK") -> bytes:
    """The peer's response to one of our requests."""
    lines = [
        f"SIP/2.0 {status} {reason}",
        *(f"Via: {v}" for v in req.get_all("Via")),
        f"From: {req.get('From')}",
        f"To: {req.get('To')}",
        f"Call-ID: {req.call_id}",
        f"CSeq: {req.get('CSeq')}",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answered_call(shell: Shell, **kw: Any) -> SipMessage:
    """INVITE + ACK; returns the 200 OK."""
    shell.feed(invite(**kw))
    [ok] = shell.responses("INVITE")[-1:]
    assert ok.status == 200
    shell.feed(
        request(
            "ACK",
            to_tag=header_param(ok.get("To"), "tag"),
            cseq_method="ACK",
            branch="z9hG4bK-ack-1",
            **{k: v for k, v in kw.items() if k == "call_id"},
        )
    )
    return ok


def tag_of(msg: SipMessage) -> str:
    tag = header_param(msg.get("To"), "tag")
    assert tag
    return tag


# ---------------------------------------------------------------------------------------------
# INVITE, 200 OK, ACK


def test_invite_gets_100_and_200_with_an_sdp_answer() -> None:
    shell = Shell()
    shell.feed(invite(extra="X-Account: 42"))
    # Answered at once: no 180 (through a proxy with several workers it can overtake... or trail the
    # 200, and a user agent may fail the call on a provisional after the final response).
    assert shell.statuses("INVITE") == [100, 200]
    trying, ok = shell.responses("INVITE")
    assert header_param(trying.get("To"), "tag") is None
    assert tag_of(ok)
    assert "rport=5062" in ok.get("Via")
    assert "received=192.0.2.20" in ok.get("Via")
    assert ok.get("Contact") == f"<sip:bridge@{BRIDGE_IP}:5070>"
    answer = parse_sdp(ok.body)
    assert (answer.address, answer.port) == (BRIDGE_IP, RTP_PORT)
    assert answer.payload_types == [0, 101]  # the caller's first codec, and its telephone-event
    assert answer.rtpmap == {0: "pcmu/8000", 101: "telephone-event/8000"}
    assert all(addr == CALLER for _, addr, _ in shell.sent)
    [offered] = shell.of(CallOffered)
    assert (offered.offer.address, offered.offer.port) == ("192.0.2.20", 30000)
    assert offered.choice.encoding == "pcmu"
    [answered] = shell.of(CallAnswered)
    started = answered.started
    assert (started.call_id, started.caller, started.called, started.encoding) == (
        "call-1@192.0.2.20",
        "+15550001",
        "5551000",
        "pcmu",
    )
    assert started.params["X-Account"] == "42"
    assert shell.core.counters["calls_total"] == 1


def test_a_delayed_answer_rings_first() -> None:
    shell = Shell(answer_delay_ms=1000)
    shell.feed(invite())
    assert shell.statuses("INVITE") == [100, 180]
    shell.advance(1.0)
    assert shell.statuses("INVITE") == [100, 180, 200]
    _, ringing, ok = shell.responses("INVITE")
    assert tag_of(ringing) == tag_of(ok)
    assert ringing.get("Contact") == ok.get("Contact")


def test_offer_without_pcmu_or_pcma_gets_488() -> None:
    shell = Shell(admission=Slots(1))
    shell.feed(invite(body=sdp(pts="18")))
    assert shell.statuses("INVITE") == [100, 488]
    assert "neither PCMU nor PCMA" in shell.responses()[-1].get("Warning")
    assert not shell.of(CallOffered)
    assert shell.core.admission is not None
    assert shell.core.admission.in_use == 0


def test_200_is_retransmitted_until_the_ack_and_the_ack_stops_it() -> None:
    shell = Shell()
    shell.feed(invite())
    ok_bytes = shell.raw[-1]
    shell.advance(0.5)
    shell.advance(1.0)
    shell.advance(2.0)
    times = [t - 100.0 for m, _, t in shell.sent if m.status == 200]
    assert times == [0.0, 0.5, 1.5, 3.5]  # T1, doubling
    assert shell.raw[-1] == ok_bytes  # the same 200, byte for byte
    shell.feed(request("ACK", to_tag=tag_of(shell.responses()[-1]), cseq_method="ACK", branch="z9hG4bK-ack"))
    assert ("ok", "call-1@192.0.2.20") not in shell.timers
    shell.advance(60.0)
    assert [m.status for m, _, _ in shell.sent].count(200) == 4
    assert not shell.of(CallEnded)


def test_no_ack_ends_the_call_with_a_bye_after_64_t1() -> None:
    slots = Slots(5)
    shell = Shell(admission=slots)
    shell.feed(invite())
    ok_msg = shell.responses("INVITE")[-1]
    shell.advance(NO_ACK_S - 1)
    assert not shell.of(CallEnded)
    shell.advance(10.0)
    times = [round(t - 100.0, 3) for m, _, t in shell.sent if m.status == 200]
    # T1 doubling to T2 = 4 s; the retransmission at or past 64*T1 is the last.
    assert times == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5, 35.5]
    [ended] = shell.of(CallEnded)
    assert ended.reason == "error: no ACK"
    [bye] = shell.of(ClientRequest)
    assert bye.method == "BYE"
    assert bye.next_hop == CALLER
    msg = shell.send_ours(bye)
    assert msg.uri == "sip:alice@192.0.2.20:5062"  # the caller's Contact
    assert header_param(msg.get("From"), "tag") == tag_of(ok_msg)
    assert slots.in_use == 0
    shell.feed(answer_to(msg, 200))
    [done] = shell.of(RequestDone)
    assert done.response is not None
    assert done.response.status == 200


# ---------------------------------------------------------------------------------------------
# CANCEL, re-INVITE, BYE, OPTIONS, INFO


def test_cancel_before_answer_gets_200_and_the_invite_487() -> None:
    slots = Slots(2)
    shell = Shell(admission=slots, answer_delay_ms=2000)
    shell.feed(invite())
    assert shell.statuses("INVITE") == [100, 180]
    shell.advance(0.3)
    shell.feed(request("CANCEL", cseq=1))  # same branch and CSeq number as the INVITE
    assert shell.statuses("CANCEL") == [200]
    assert shell.statuses("INVITE") == [100, 180, 487]
    assert tag_of(shell.responses("INVITE")[-1]) == tag_of(shell.responses("INVITE")[1])
    [ended] = shell.of(CallEnded)
    assert ended.reason == "cancel"
    assert slots.in_use == 0
    assert shell.core.counters["cancelled"] == 1
    shell.advance(5.0)  # the answer timer was cancelled: never a 200, never a leg
    assert 200 not in shell.statuses("INVITE")
    assert not shell.of(CallAnswered)
    # The INVITE retransmitted after that gets the 487 again.
    shell.feed(invite())
    assert shell.statuses("INVITE")[-1] == 487


def test_cancel_for_an_unknown_transaction_gets_481() -> None:
    shell = Shell()
    shell.feed(request("CANCEL", call_id="nobody@x"))
    assert shell.statuses("CANCEL") == [481]


def test_reinvite_for_hold_and_for_a_new_address_is_answered_with_the_same_media() -> None:
    shell = Shell()
    ok = answered_call(shell)
    tag = tag_of(ok)
    first = parse_sdp(ok.body)
    shell.feed(invite(to_tag=tag, cseq=2, branch="z9hG4bK-re-1", body=sdp(direction="inactive")))
    hold = shell.responses("INVITE")[-1]
    assert hold.status == 200
    assert tag_of(hold) == tag
    answer = parse_sdp(hold.body)
    assert (answer.port, answer.direction) == (first.port, "inactive")
    assert b"o=ivr-bridge" in hold.body
    assert re.search(rb"o=ivr-bridge \d+ 2 ", hold.body)
    assert shell.of(MediaChanged)[-1] == MediaChanged("call-1@192.0.2.20", None, False)
    shell.feed(invite(to_tag=tag, cseq=3, branch="z9hG4bK-re-2", body=sdp("198.51.100.7", 31000)))
    moved = shell.responses("INVITE")[-1]
    assert parse_sdp(moved.body).direction == "sendrecv"
    assert re.search(rb"o=ivr-bridge \d+ 3 ", moved.body)
    assert shell.of(MediaChanged)[-1] == MediaChanged("call-1@192.0.2.20", ("198.51.100.7", 31000), True)
    # A codec change mid-call is refused; the call goes on.
    shell.feed(invite(to_tag=tag, cseq=4, branch="z9hG4bK-re-3", body=sdp(pts="8")))
    assert shell.statuses("INVITE")[-1] == 488
    assert len(shell.of(CallAnswered)) == 1
    assert not shell.of(CallEnded)


def test_bye_gets_200_and_ends_the_call_once() -> None:
    slots = Slots(1)
    shell = Shell(admission=slots)
    tag = tag_of(answered_call(shell))
    bye = request("BYE", to_tag=tag, cseq=2, branch="z9hG4bK-bye-1")
    shell.feed(bye)
    assert shell.statuses("BYE") == [200]
    [ended] = shell.of(CallEnded)
    assert ended.reason == "bye"
    assert slots.in_use == 0
    shell.feed(bye)  # retransmitted: answered again, not a second end
    assert shell.statuses("BYE") == [200, 200]
    assert len(shell.of(CallEnded)) == 1
    assert slots.in_use == 0
    shell.feed(request("BYE", to_tag="not-ours", cseq=3, branch="z9hG4bK-bye-2"))
    assert shell.statuses("BYE")[-1] == 481
    shell.advance(40.0)  # forgotten after a while
    assert shell.core.calls == {}


def test_options_info_and_unknown_methods() -> None:
    shell = Shell()
    shell.feed(request("OPTIONS", call_id="opt-1", branch="z9hG4bK-o1"))
    [ok] = shell.responses("OPTIONS")
    assert ok.status == 200
    assert "INVITE" in ok.get("Allow")
    assert ok.get("Accept") == "application/sdp"
    assert shell.core.counters["options"] == 1
    tag = tag_of(answered_call(shell))
    shell.feed(
        request(
            "INFO",
            to_tag=tag,
            cseq=5,
            branch="z9hG4bK-i1",
            extra="Content-Type: application/dtmf-relay",
            body="Signal=5\r\nDuration=160\r\n",
        )
    )
    assert shell.statuses("INFO") == [200]
    assert shell.of(DtmfReceived) == [DtmfReceived("call-1@192.0.2.20", "5")]
    shell.feed(request("REGISTER", call_id="r", branch="z9hG4bK-r1"))
    shell.feed(request("SUBSCRIBE", call_id="s", branch="z9hG4bK-s1"))
    assert shell.statuses("REGISTER") == [405]
    assert shell.statuses("SUBSCRIBE") == [501]


# ---------------------------------------------------------------------------------------------
# Our requests: hang-up, transfer (REFER / NOTIFY)


def test_hang_up_while_ringing_is_480_and_when_answered_a_routed_bye() -> None:
    shell = Shell(answer_delay_ms=1000)
    shell.feed(invite())
    shell.apply(shell.core.hang_up("call-1@192.0.2.20"))
    assert shell.statuses("INVITE") == [100, 180, 480]
    assert shell.of(CallEnded)[0].reason == "hangup"
    assert not shell.of(ClientRequest)

    shell = Shell()
    route = "<sip:192.0.2.99;lr>"
    shell.feed(invite(extra=f"Record-Route: {route}"))
    assert shell.responses("INVITE")[-1].get("Record-Route") == route
    shell.apply(shell.core.hang_up("call-1@192.0.2.20"))
    [bye] = shell.of(ClientRequest)
    assert bye.method == "BYE"
    assert bye.next_hop == ("192.0.2.99", 5060)
    msg = parse_message(bye.data)
    assert msg.get("Route") == route
    assert msg.uri == "sip:alice@192.0.2.20:5062"
    # The proxy's answer is accepted only from where the BYE went (it is not a trusted source here).
    shell.core.policy = SourcePolicy(peers=parse_trusted_peers("192.0.2.20"))
    shell.send_ours(bye, ("192.0.2.99", 5060))
    shell.feed(answer_to(msg, 200), ("203.0.113.66", 5060))
    assert not shell.of(RequestDone)
    shell.feed(answer_to(msg, 200), ("192.0.2.99", 5060))
    assert [d.response.status for d in shell.of(RequestDone) if d.response] == [200]


def test_transfer_refer_accepted_then_final_notify_hangs_up() -> None:
    shell = Shell(server=("pbx.example", 5060))
    tag = tag_of(answered_call(shell))
    shell.apply(shell.core.transfer("call-1@192.0.2.20", "tel:+15550100"))
    [refer] = shell.of(ClientRequest)
    assert refer.method == "REFER"
    msg = shell.send_ours(refer)
    assert msg.get("Refer-To") == "<sip:+15550100@pbx.example>"
    assert msg.get("Referred-By") == f"<sip:bridge@{BRIDGE_IP}:5070>"
    shell.advance(0.6)  # not answered yet: retransmitted
    assert sum(1 for r in shell.raw if r == refer.data) == 2
    shell.feed(answer_to(msg, 202, "Accepted"))
    [done] = shell.of(RequestDone)
    assert done.branch == refer.branch
    assert done.response is not None
    assert done.response.status == 202
    assert ("transfer", "call-1@192.0.2.20") in shell.timers

    def notify(frag: str, state: str, cseq: int) -> bytes:
        return request(
            "NOTIFY",
            to_tag=tag,
            cseq=cseq,
            branch=f"z9hG4bK-n{cseq}",
            extra=f"Event: refer\r\nSubscription-State: {state}\r\nContent-Type: message/sipfrag",
            body=frag,
        )

    shell.feed(notify("SIP/2.0 100 Trying\r\n", "active;expires=60", 10))
    assert shell.statuses("NOTIFY") == [200]
    assert not shell.of(CallEnded)
    shell.feed(notify("SIP/2.0 200 OK\r\n", "terminated;reason=noresource", 11))
    assert shell.statuses("NOTIFY") == [200, 200]
    [ended] = shell.of(CallEnded)
    assert ended.reason == "transfer"
    assert [r.method for r in shell.of(ClientRequest)] == ["REFER", "BYE"]
    assert ("transfer", "call-1@192.0.2.20") not in shell.timers


def test_transfer_without_notify_hangs_up_after_the_wait() -> None:
    shell = Shell()
    answered_call(shell)
    shell.apply(shell.core.transfer("call-1@192.0.2.20", "sip:desk@192.0.2.30"))
    [refer] = shell.of(ClientRequest)
    msg = shell.send_ours(refer)
    assert msg.get("Refer-To") == "<sip:desk@192.0.2.30>"
    shell.feed(answer_to(msg, 202, "Accepted"))
    shell.advance(TRANSFER_WAIT_S - 1)
    assert not shell.of(CallEnded)
    shell.advance(2)
    assert [e.reason for e in shell.of(CallEnded)] == ["transfer"]


def test_refused_or_unanswered_refer_leaves_the_call_up() -> None:
    shell = Shell()
    answered_call(shell)
    shell.apply(shell.core.transfer("call-1@192.0.2.20", "100"))
    msg = shell.send_ours(shell.of(ClientRequest)[0])
    shell.feed(answer_to(msg, 603, "Decline"))
    assert shell.of(RequestDone)[-1].response.status == 603  # type: ignore[union-attr]
    shell.apply(shell.core.transfer("call-1@192.0.2.20", "100"))
    shell.send_ours(shell.of(ClientRequest)[-1])
    shell.advance(8.5)
    assert shell.of(RequestDone)[-1].response is None
    sends = [t - 100.0 for m, _, t in shell.sent if m.is_request and m.method == "REFER"]
    assert len(sends) == 6  # 0, 0.5, 1.5, 3.5, 7.5 after the first REFER's single send
    assert not shell.of(CallEnded)
    assert ("transfer", "call-1@192.0.2.20") not in shell.timers
    assert shell.core.transfer("nobody", "100") == []


# ---------------------------------------------------------------------------------------------
# Retransmissions answered from the transaction state


def test_retransmitted_invite_gets_the_same_answer_and_never_a_second_call() -> None:
    shell = Shell(bind_rtp=False)
    shell.feed(invite())
    [offered] = shell.of(CallOffered)
    shell.feed(invite())  # while the RTP socket is being bound: nothing (its 180/200 follow)
    assert shell.statuses("INVITE") == [100]
    shell.apply(shell.core.media_ready(offered.call_id, RTP_PORT, shell.now))
    final = shell.raw[-1]
    shell.feed(invite())
    assert shell.raw[-1] == final  # the cached 200
    assert len(shell.of(CallOffered)) == 1
    assert len(shell.of(CallAnswered)) == 1
    assert shell.core.counters["calls_total"] == 1

    ringing = Shell(answer_delay_ms=1000)
    ringing.feed(invite())
    ringing.feed(invite())  # before the answer: 180 again
    # Same Call-ID, another branch and no To tag while ringing: a fork loop.
    ringing.feed(invite(branch="z9hG4bK-other"))
    assert ringing.statuses("INVITE") == [100, 180, 180, 482]


def test_rtp_port_failure_is_503_and_frees_the_slot() -> None:
    slots = Slots(1)
    shell = Shell(admission=slots, bind_rtp=False)
    shell.feed(invite())
    shell.apply(shell.core.media_failed("call-1@192.0.2.20", "no free RTP port"))
    assert shell.statuses("INVITE") == [100, 503]
    assert slots.in_use == 0


# ---------------------------------------------------------------------------------------------
# Trust policy and admission


@pytest.mark.parametrize("action", ["reject", "drop"])
def test_untrusted_source_gets_403_or_nothing_and_no_call(action: str) -> None:
    policy = SourcePolicy(peers=parse_trusted_peers("10.0.0.0/8"), action=action)  # type: ignore[arg-type]
    shell = Shell(policy=policy)
    outsider = ("203.0.113.5", 5060)
    shell.feed(invite(source=outsider), outsider)
    shell.feed(request("OPTIONS", call_id="o", source=outsider), outsider)
    shell.feed(b"NONSENSE\r\n\r\n", outsider)
    if action == "reject":
        assert shell.statuses() == [403, 403]
        assert all(addr == outsider for _, addr, _ in shell.sent)
    else:
        assert shell.sent == []
    assert [r.status for r in shell.of(Refused)] == ([403, 403, 0] if action == "reject" else [0, 0, 0])
    assert not shell.of(CallOffered)
    assert shell.core.counters["untrusted"] == 3
    # A trusted peer is served.
    shell.feed(invite(call_id="c2", source=("10.1.2.3", 5060)), ("10.1.2.3", 5060))
    assert shell.statuses("INVITE")[-2:] == [100, 200]


def test_403s_to_one_source_are_rate_limited() -> None:
    shell = Shell(policy=SourcePolicy(peers=parse_trusted_peers("10.0.0.0/8")))
    outsider = ("203.0.113.5", 5060)
    for i in range(30):
        shell.feed(request("OPTIONS", call_id=f"o{i}", source=outsider), outsider)
    assert shell.statuses() == [403] * 10  # the burst, then dropped (same instant)
    shell.now += 3.0
    shell.feed(request("OPTIONS", call_id="late", source=outsider), outsider)
    assert shell.statuses() == [403] * 11


def test_admission_full_gets_503_with_retry_after_and_the_call_in_progress_is_untouched() -> None:
    slots = Slots(1)
    shell = Shell(admission=slots)
    tag = tag_of(answered_call(shell))
    shell.feed(invite(call_id="call-2", branch="z9hG4bK-2"))
    refused = shell.responses("INVITE")[-1]
    assert (refused.status, refused.call_id) == (503, "call-2")
    assert refused.get("Retry-After") == str(RETRY_AFTER_S)
    assert [r.why for r in shell.of(Refused)] == ["max_calls"]
    assert shell.core.counters["busy"] == 1
    assert not shell.of(CallEnded)
    assert len(shell.of(CallOffered)) == 1
    shell.feed(request("BYE", to_tag=tag, cseq=2, branch="z9hG4bK-bye"))
    shell.feed(invite(call_id="call-3", branch="z9hG4bK-3"))
    assert shell.responses("INVITE")[-1].status == 200
    assert slots.in_use == 1


def test_closing_refuses_new_invites() -> None:
    shell = Shell()
    shell.core.closing = True
    shell.feed(invite())
    assert shell.statuses("INVITE") == [503]
    assert shell.core.counters["calls_rejected"] == 1


def test_closing_answers_options_503_so_a_dispatcher_probe_takes_the_bridge_out() -> None:
    shell = Shell()
    shell.feed(request("OPTIONS", call_id="opt-open", branch="z9hG4bK-oo"))
    shell.core.closing = True
    shell.feed(request("OPTIONS", call_id="opt-draining", branch="z9hG4bK-od"))
    assert shell.statuses("OPTIONS") == [200, 503]


# ---------------------------------------------------------------------------------------------
# Malformed datagrams


def test_malformed_requests_get_400_when_addressable_and_nothing_otherwise() -> None:
    shell = Shell()
    bad_cseq = invite().replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE")
    shell.feed(bad_cseq)
    [resp] = shell.responses()
    assert resp.status == 400
    assert resp.get("CSeq") == "0 INVITE"
    assert "bad CSeq" in resp.get("Warning")
    assert resp.call_id == "call-1@192.0.2.20"
    shell.feed(b"\r\n\r\n")  # keep-alive
    shell.feed(b"\x00\x01\x02garbage that is not SIP at all")
    shell.feed(b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n")  # a malformed response: never answered
    shell.feed(request("ACK", cseq_method="ACK").replace(b"Call-ID", b"Call-Id-Broken"))
    assert len(shell.sent) == 1
    assert shell.core.counters["bad_messages"] == 4
    assert not shell.of(CallOffered)


def test_responses_to_unknown_transactions_are_ignored() -> None:
    shell = Shell()
    msg = parse_message(request("OPTIONS"))
    assert shell.feed(answer_to(msg, 200)) == []
    assert shell.sent == []
    assert not shell.of(RequestDone)


def test_timers_use_t1() -> None:
    shell = Shell()
    shell.feed(invite())
    assert shell.timers[("ok", "call-1@192.0.2.20")] == pytest.approx(shell.now + T1_S)
