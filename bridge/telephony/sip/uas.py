"""The SIP user agent's protocol core (UAS, plus the client transactions of its own requests): no I/O.

`UasCore.receive(datagram, source, now_s)` returns what to do, as typed outputs: datagrams to send
(`Send`), timers to set or cancel (`SetTimer` / `CancelTimer`, fed back through `on_timer(key, now_s)`),
in-dialog requests to route (`ClientRequest`: the shell resolves the next hop and hands it back to
`send_request`), and call events (`CallOffered`, `CallAnswered`, `MediaChanged`, `DtmfReceived`,
`CallEnded`, `RequestDone`, `Refused`). The asyncio shell (`endpoint.SipEndpoint`) owns the socket,
the timers, RTP and the legs. What the core does, per request:

- OPTIONS -> 200 (503 while draining: the answer an INVITE would get, RFC 3261 11.2, so a dispatcher's
  OPTIONS probe takes a draining bridge out of its rotation); unknown methods -> 405/501; malformed
  requests -> 400 (or dropped if unusable);
- INVITE -> 100, `CallOffered` (the shell binds RTP and calls `media_ready`), then 200 with the
  bridge's RTP port (180 first when `answer_delay_ms` holds the answer back), retransmitted T1
  doubling to T2 until the ACK; no ACK for 64*T1 ends the call with a BYE; offers with neither
  PCMU nor PCMA -> 488;
- retransmitted INVITEs get the last response again (never a second call), retransmitted BYEs 200;
- CANCEL before answer -> 200 + 487 and the call is never answered;
- re-INVITE -> 200 with the same SDP (new remote address, hold), never a second sender;
- BYE -> 200 and `CallEnded`; INFO (application/dtmf-relay) -> 200 and `DtmfReceived`;
- our BYE and REFER routed through the dialog's route set to the remote target (`hang_up`,
  `transfer`); a REFER accepted with 2xx ends the call on the final NOTIFY or after 30 s;
- source trust (`policy.SourcePolicy`): requests and responses only from the registrar / trunk server,
  SIP_TRUSTED_PEERS and, for a call, its own next hop; others get 403 or nothing (counted, logged
  without flooding, 403s rate-limited per source);
- admission: beyond the shared `Slots` (max calls), new INVITEs get 503 with Retry-After.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
from dataclasses import dataclass, field

from bridge.errors import ProtocolError
from bridge.limits import RateLimiter, Slots
from bridge.metrics import METRICS
from bridge.telephony.leg import CallStarted
from bridge.telephony.sip.dialog import Dialog, dialog_from_invite
from bridge.telephony.sip.message import (
    SipMessage,
    SipParseError,
    build_response,
    header_param,
    name_addr_uri,
    new_tag,
    parse_message,
    uri_hostport,
    uri_user,
)
from bridge.telephony.sip.policy import RefusalLog, SourcePolicy, Verdict, method_label, parse_ip, peek_method
from bridge.telephony.sip.sdp import (
    ANSWER_DIRECTION,
    CodecChoice,
    NotAcceptable,
    SdpOffer,
    build_sdp,
    choose_codec,
    parse_sdp,
)

log = logging.getLogger(__name__)

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, NOTIFY, INFO, REFER"
RETRY_AFTER_S = 5  # the Retry-After of a 503 at capacity (docs/sip.md)
T1_S = 0.5
T2_S = 4.0
NO_ACK_S = 64 * T1_S  # timer H: a 2xx never ACKed ends the call
FORGET_S = 32.0  # an ended call is kept this long so retransmitted BYE/ACK/INVITEs still match
TRANSFER_WAIT_S = 30.0  # after an accepted REFER: hang up on the final NOTIFY or after this
BYE_TIMEOUT_S = 4.0
REFER_TIMEOUT_S = 8.0

Addr = tuple[str, int]
TimerKey = tuple[str, str]  # (kind, Call-ID or branch): answer | ok | forget | transfer | request


# ---------------------------------------------------------------------------------------------
# Outputs


@dataclass(frozen=True, slots=True)
class Send:
    """Send this datagram to that address."""

    data: bytes
    addr: Addr


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Call `on_timer(key, now_s)` in `delay_s` (replaces a timer with the same key)."""

    key: TimerKey
    delay_s: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    key: TimerKey


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """An in-dialog request of ours: resolve `next_hop` (may be a host name), then `send_request`."""

    call_id: str
    method: str
    data: bytes
    branch: str
    next_hop: Addr
    timeout_s: float


@dataclass(frozen=True, slots=True)
class RequestDone:
    """The client transaction `branch` ended: its final response, or None (timeout)."""

    branch: str
    response: SipMessage | None


@dataclass(frozen=True, slots=True)
class CallOffered:
    """An INVITE was admitted: bind an RTP socket for it, then `media_ready` (or `media_failed`)."""

    call_id: str
    offer: SdpOffer
    choice: CodecChoice

    @property
    def hold(self) -> bool:
        return is_hold(self.offer)


@dataclass(frozen=True, slots=True)
class CallAnswered:
    """The 200 OK went out: start the leg with these events."""

    call_id: str
    started: CallStarted


@dataclass(frozen=True, slots=True)
class MediaChanged:
    """A re-INVITE moved the media (`remote`, None when on hold) or paused it (`sending`)."""

    call_id: str
    remote: Addr | None
    sending: bool


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    call_id: str
    digit: str


@dataclass(frozen=True, slots=True)
class CallEnded:
    call_id: str
    reason: str  # bye | cancel | hangup | transfer | closed | error: ...


@dataclass(frozen=True, slots=True)
class Refused:
    """A request the bridge turned away (`status` 0: dropped without an answer)."""

    source: Addr
    method: str
    status: int
    why: str


Output = (
    Send
    | SetTimer
    | CancelTimer
    | ClientRequest
    | RequestDone
    | CallOffered
    | CallAnswered
    | MediaChanged
    | DtmfReceived
    | CallEnded
    | Refused
)


def is_hold(offer: SdpOffer) -> bool:
    return offer.address == "0.0.0.0" or offer.direction in ("recvonly", "inactive")


# ---------------------------------------------------------------------------------------------
# State


@dataclass(slots=True)
class SipCall:
    """One call the core answered (from `media_ready` until `FORGET_S` after it ended)."""

    invite: SipMessage
    source: Addr
    local_tag: str
    dialog: Dialog
    offer: SdpOffer
    choice: CodecChoice
    rtp_port: int
    state: str = "ringing"  # ringing | answered | ended
    final_response: bytes = b""
    acked: bool = False
    session_id: int = field(default_factory=lambda: secrets.randbelow(10**9))
    sdp_version: int = 1
    admitted: bool = False  # holds one of the admission slots until it ends
    ok_interval: float = T1_S  # 200 OK retransmission (timer G) and its elapsed time (timer H)
    ok_elapsed: float = 0.0
    transfer: str = ""  # "" | requested (REFER sent) | accepted (2xx)
    transfer_notified: bool = False  # the final NOTIFY arrived


@dataclass(slots=True)
class _Starting:
    invite: SipMessage
    source: Addr
    local_tag: str
    offer: SdpOffer
    choice: CodecChoice


@dataclass(slots=True)
class _Pending:
    """One of our non-INVITE client transactions (RFC 3261 17.1.2, timers E/F)."""

    data: bytes
    addr: Addr
    deadline_s: float
    interval_s: float = T1_S
    call_id: str = ""
    method: str = ""


class UasCore:
    """The SIP UA without sockets or clocks. Not thread-safe; one per SIP socket."""

    def __init__(
        self,
        *,
        user: str,
        advertised_ip: str,
        port: int = 0,
        server: Addr | None = None,
        policy: SourcePolicy | None = None,
        admission: Slots | None = None,
        reject_limiter: RateLimiter | None = None,
        answer_delay_ms: int = 0,
    ) -> None:
        self.user = user or "bridge"
        self.advertised_ip = advertised_ip
        self.port = port  # the SIP socket's port (set by the shell once bound)
        self.server = server
        # None: every source is served (only for tests that build a core by hand).
        self.policy = policy or SourcePolicy(open_to_all=True)
        self.admission = admission
        # 403s per untrusted source are bounded too (beyond the bucket: dropped), so the bridge is
        # never a reflector for spoofed floods.
        self.reject_limiter = reject_limiter or RateLimiter(rate_per_s=1.0, burst=10, max_sources=4096)
        self.refusals = RefusalLog()
        self.answer_delay_ms = answer_delay_ms
        self.calls: dict[str, SipCall] = {}
        self._starting: dict[str, _Starting] = {}  # admitted INVITEs whose RTP socket is being bound
        self._pending: dict[str, _Pending] = {}  # branch -> our client transaction
        self.closing = False
        self.counters: dict[str, int] = {
            "calls_total": 0,
            "calls_rejected": 0,
            "bad_messages": 0,
            "options": 0,
            "cancelled": 0,
            "untrusted": 0,
            "busy": 0,
        }

    @property
    def contact(self) -> str:
        return f"<sip:{self.user}@{self.advertised_ip}:{self.port}>"

    # -- input: datagrams ------------------------------------------------------------------------

    def receive(self, data: bytes, addr: Addr, now_s: float) -> list[Output]:
        """One datagram from `addr` at `now_s` (monotonic seconds)."""
        out: list[Output] = []
        if len(data) < 4 or data.strip() == b"":
            return out  # keep-alive CRLFs
        trusted = self.policy.trusts(addr[0])
        if not trusted and not (self._pending or self.calls):
            self._untrusted(out, data, addr, None, now_s)
            return out
        try:
            msg = parse_message(data)
        except SipParseError as exc:
            if not trusted:
                self._untrusted(out, data, addr, None, now_s)
                return out
            self.counters["bad_messages"] += 1
            log.warning("SIP: dropped malformed datagram from %s:%s: %s", addr[0], addr[1], exc)
            self._bad_request(out, data, addr, str(exc))
            return out
        if not trusted and not self._dialog_peer(msg, addr):
            self._untrusted(out, data, addr, msg, now_s)
            return out
        try:
            if msg.is_request:
                self._on_request(out, msg, addr, now_s)
            else:
                self._on_response(out, msg)
        except Exception as exc:  # one bad message must never take the UA down
            self.counters["bad_messages"] += 1
            log.exception("SIP: error handling %s from %s:%s", msg.method or msg.status, addr[0], addr[1])
            if msg.is_request and msg.method != "ACK":
                with contextlib.suppress(Exception):
                    warning = [("Warning", f'399 - "{type(exc).__name__}"')]
                    response = build_response(msg, 500, "Server Internal Error", addr, extra=warning)
                    out.append(Send(response, addr))
        return out

    def _dialog_peer(self, msg: SipMessage, addr: Addr) -> bool:
        """A datagram from an address the bridge itself sends to: a response to one of our pending
        requests (matched by its random branch), or an in-dialog request of an existing call from
        that call's next hop (the caller's Contact when no proxy record-routed: the BYE of an end
        point behind a trusted proxy that stepped out of the dialog). Both need identifiers only
        someone on the signalling path can know (a branch; Call-ID plus our random To tag)."""
        source = parse_ip(addr[0])
        if not msg.is_request:
            pending = self._pending.get(msg.branch)
            return pending is not None and source is not None and parse_ip(pending.addr[0]) == source
        call = self.calls.get(msg.call_id)
        if call is None or header_param(msg.get("To"), "tag") != call.local_tag:
            return False
        return source is not None and parse_ip(call.dialog.next_hop()[0]) == source

    def _untrusted(
        self, out: list[Output], data: bytes, addr: Addr, msg: SipMessage | None, now_s: float
    ) -> None:
        """A datagram from a source the policy does not trust: 403, or nothing; counted, and logged
        at most a few lines a minute however many arrive."""
        method = (msg.method or None) if msg is not None else peek_method(data)
        verdict = self.policy.verdict(addr[0], method)
        response = None
        if verdict is Verdict.REJECT:
            if self.reject_limiter.allow(addr[0], now_s):
                try:
                    msg = msg or parse_message(data)
                    response = build_response(msg, 403, "Forbidden", addr, to_tag=new_tag())
                except SipParseError:
                    response = None
            if response is None:
                verdict = Verdict.DROP
        if response is not None:
            out.append(Send(response, addr))
        label = method_label(method) if method != "" else "other"
        out.append(Refused(addr, label, 403 if response is not None else 0, "untrusted source"))
        self.counters["untrusted"] += 1
        METRICS.sip_untrusted.inc(method=label, action=verdict.value)
        first, summary = self.refusals.record(addr[0], now_s)
        if summary:
            log.warning("SIP: %s", summary)
        if first:
            done = "refused with 403" if verdict is Verdict.REJECT else "dropped"
            log.warning(
                "SIP: %s from untrusted %s:%s %s (trusted: %s); further ones are counted in "
                "sip_untrusted_requests_total and summarised",
                label,
                addr[0],
                addr[1],
                done,
                self.policy.describe(),
            )

    def _bad_request(self, out: list[Output], data: bytes, addr: Addr, why: str) -> None:
        """Answer 400 if enough of the request survives to address a response."""
        try:
            head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
            lines = head.split("\r\n")
            if lines[0].startswith("SIP/") or lines[0].startswith("ACK "):
                return
            wanted = ("Via", "From", "To", "Call-ID")
            keep = [ln for ln in lines[1:] if ln.split(":", 1)[0].strip() in wanted]
            method = lines[0].split(" ", 1)[0]
            cseq = [ln.split(":", 1)[1].strip() for ln in lines[1:] if ln.split(":", 1)[0].strip() == "CSeq"]
            parts = cseq[0].split() if cseq else []
            ok = len(parts) == 2 and parts[0].isdigit()
            keep.append(f"CSeq: {cseq[0]}" if ok else f"CSeq: 0 {method if method.isalpha() else 'INVITE'}")
            stub = parse_message(("INVITE sip:x SIP/2.0\r\n" + "\r\n".join(keep) + "\r\n\r\n").encode())
            reason = why.replace('"', "'")[:80]
            warning = [("Warning", f'399 - "{reason}"')]
            out.append(Send(build_response(stub, 400, "Bad Request", addr, extra=warning), addr))
            out.append(Refused(addr, method_label(method.upper()) if method.isalpha() else "other", 400, why))
        except Exception:  # nothing addressable: dropping it is all we can do
            return

    # -- responses to our requests ---------------------------------------------------------------

    def _on_response(self, out: list[Output], msg: SipMessage) -> None:
        if msg.status < 200:
            return
        if msg.branch in self._pending:
            self._finish_request(out, msg.branch, msg)

    def send_request(
        self, data: bytes, branch: str, addr: Addr, now_s: float, timeout_s: float = 8.0
    ) -> list[Output]:
        """Start a non-INVITE client transaction to a resolved address: sent now and again (T1
        doubling to T2) until a final response or `timeout_s`; ends with `RequestDone`."""
        known = self._pending.get(branch)
        pending = _Pending(data, addr, now_s + timeout_s)
        if known is not None:  # a ClientRequest of ours: keep what it was for
            pending.call_id, pending.method = known.call_id, known.method
        self._pending[branch] = pending
        return [Send(data, addr), SetTimer(("request", branch), min(T1_S, timeout_s))]

    def request_failed(self, branch: str, why: str) -> list[Output]:
        """The shell could not send a `ClientRequest` (its next hop does not resolve)."""
        out: list[Output] = []
        if branch in self._pending:
            pending = self._pending[branch]
            log.warning(
                "SIP: cannot send our %s for %s: %s", pending.method or "request", pending.call_id, why
            )
            self._finish_request(out, branch, None)
        return out

    def _request_timer(self, out: list[Output], branch: str, now_s: float) -> None:
        pending = self._pending.get(branch)
        if pending is None:
            return
        remaining = pending.deadline_s - now_s
        if remaining <= 0.005:
            self._finish_request(out, branch, None)
            return
        pending.interval_s = min(pending.interval_s * 2, T2_S)
        out.append(Send(pending.data, pending.addr))
        out.append(SetTimer(("request", branch), min(pending.interval_s, remaining)))

    def _finish_request(self, out: list[Output], branch: str, response: SipMessage | None) -> None:
        pending = self._pending.pop(branch)
        out.append(CancelTimer(("request", branch)))
        out.append(RequestDone(branch, response))
        call = self.calls.get(pending.call_id)
        if pending.method == "BYE":
            if response is None:
                log.warning("SIP: no answer to our BYE for %s", pending.call_id)
            elif response.status >= 300:
                log.warning(
                    "SIP: our BYE for %s got %s %s", pending.call_id, response.status, response.reason
                )
        elif pending.method == "REFER" and call is not None:
            self._refer_answered(out, call, response)

    def _client_request(
        self,
        out: list[Output],
        call: SipCall,
        method: str,
        timeout_s: float,
        extra: list[tuple[str, str]] | None = None,
    ) -> str:
        data, branch = call.dialog.request(method, self.advertised_ip, self.port, extra=extra)
        # Registered now (so responses match the call even before it is sent); armed by send_request.
        self._pending[branch] = _Pending(
            data, ("", 0), float("inf"), call_id=call.invite.call_id, method=method
        )
        hop = call.dialog.next_hop()
        out.append(ClientRequest(call.invite.call_id, method, data, branch, hop, timeout_s))
        return branch

    # -- input: timers ---------------------------------------------------------------------------

    def on_timer(self, key: TimerKey, now_s: float) -> list[Output]:
        out: list[Output] = []
        kind, ident = key
        if kind == "request":
            self._request_timer(out, ident, now_s)
            return out
        if kind == "forget":
            call = self.calls.get(ident)
            if call is not None and call.state == "ended":
                del self.calls[ident]
            return out
        call = self.calls.get(ident)
        if call is None:
            return out
        if kind == "answer":
            self._answer(out, call)
        elif kind == "ok":
            self._retransmit_ok(out, call)
        elif kind == "transfer" and call.transfer == "accepted":
            self._hang_up(out, call, "transfer")
        return out

    def _retransmit_ok(self, out: list[Output], call: SipCall) -> None:
        """RFC 3261 13.3.1.4: resend the 2xx until the ACK; no ACK in 64*T1 ends the call."""
        if call.acked or call.state != "answered":
            return
        out.append(Send(call.final_response, call.source))
        call.ok_elapsed += call.ok_interval
        call.ok_interval = min(call.ok_interval * 2, T2_S)
        if call.ok_elapsed >= NO_ACK_S:
            log.warning("SIP: call %s got no ACK for its 200 OK; hanging up", call.invite.call_id)
            self._hang_up(out, call, "error: no ACK")
            return
        out.append(SetTimer(("ok", call.invite.call_id), call.ok_interval))

    # -- requests --------------------------------------------------------------------------------

    def _on_request(self, out: list[Output], msg: SipMessage, addr: Addr, now_s: float) -> None:
        method = msg.method
        if method == "INVITE":
            self._on_invite(out, msg, addr)
        elif method == "ACK":
            call = self.calls.get(msg.call_id)
            if call is not None and not call.acked:
                call.acked = True
                out.append(CancelTimer(("ok", msg.call_id)))
        elif method == "BYE":
            call = self.calls.get(msg.call_id)
            if call is None or header_param(msg.get("To"), "tag") != call.local_tag:
                out.append(Send(build_response(msg, 481, "Call/Transaction Does Not Exist", addr), addr))
                return
            out.append(Send(build_response(msg, 200, "OK", addr), addr))
            self._end(out, call, "bye")
        elif method == "CANCEL":
            self._on_cancel(out, msg, addr)
        elif method == "OPTIONS":
            self.counters["options"] += 1
            # RFC 3261 11.2: the code an INVITE would get now (503 while draining).
            code, reason = (503, "Service Unavailable") if self.closing else (200, "OK")
            out.append(
                Send(
                    build_response(
                        msg,
                        code,
                        reason,
                        addr,
                        to_tag=new_tag(),
                        extra=[("Allow", ALLOW), ("Accept", "application/sdp"), ("Contact", self.contact)],
                    ),
                    addr,
                )
            )
        elif method == "NOTIFY":
            out.append(Send(build_response(msg, 200, "OK", addr), addr))
            self._on_notify(out, msg)
        elif method == "INFO":
            out.append(Send(build_response(msg, 200, "OK", addr), addr))
            call = self.calls.get(msg.call_id)
            m = re.search(rb"Signal\s*=\s*([0-9*#A-Da-d])", msg.body)
            if call is not None and call.state == "answered" and m:
                out.append(DtmfReceived(msg.call_id, m.group(1).decode().upper()))
        elif method == "REGISTER":
            out.append(
                Send(build_response(msg, 405, "Method Not Allowed", addr, extra=[("Allow", ALLOW)]), addr)
            )
        else:
            out.append(
                Send(build_response(msg, 501, "Not Implemented", addr, extra=[("Allow", ALLOW)]), addr)
            )

    def _on_invite(self, out: list[Output], msg: SipMessage, addr: Addr) -> None:
        call = self.calls.get(msg.call_id)
        to_tag = header_param(msg.get("To"), "tag")
        if call is not None:
            if to_tag is None:
                # Retransmitted initial INVITE (or a fork duplicate): repeat where we are.
                if call.final_response:
                    out.append(Send(call.final_response, addr))
                elif call.invite.branch == msg.branch:
                    out.append(
                        Send(
                            build_response(
                                msg,
                                180,
                                "Ringing",
                                addr,
                                to_tag=call.local_tag,
                                extra=[("Contact", self.contact)],
                            ),
                            addr,
                        )
                    )
                else:
                    out.append(Send(build_response(msg, 482, "Loop Detected", addr, to_tag=new_tag()), addr))
                return
            if to_tag == call.local_tag:
                self._on_reinvite(out, call, msg, addr)
                return
        if to_tag is not None:
            out.append(Send(build_response(msg, 481, "Call/Transaction Does Not Exist", addr), addr))
            return
        if msg.call_id in self._starting:
            return  # a retransmission while the call is being set up: its 180/200 follow
        if self.closing:  # draining (SIGTERM) or stopping: another bridge may take the call now
            self._refuse_unavailable(out, msg, addr, metric_reason="draining", why="shutting down")
            return
        if self.admission is not None and not self.admission.try_acquire():
            # At capacity: calls in progress are not touched.
            self.counters["busy"] += 1
            self._refuse_unavailable(out, msg, addr, metric_reason="max_calls", why="max_calls")
            return
        out.append(Send(build_response(msg, 100, "Trying", addr), addr))
        try:
            if "application/sdp" not in msg.get("Content-Type").lower() or not msg.body:
                raise NotAcceptable("INVITE without an SDP offer (late offer is not supported)")
            offer = parse_sdp(msg.body)
            choice = choose_codec(offer)
        except ProtocolError as exc:
            self._release_slot()
            self.counters["calls_rejected"] += 1
            log.warning("SIP: call %s refused with 488: %s", msg.call_id, exc)
            out.append(
                Send(
                    build_response(
                        msg,
                        488,
                        "Not Acceptable Here",
                        addr,
                        to_tag=new_tag(),
                        extra=[("Warning", f'304 - "{str(exc)[:80]}"')],
                    ),
                    addr,
                )
            )
            out.append(Refused(addr, "INVITE", 488, str(exc)))
            return
        self._starting[msg.call_id] = _Starting(msg, addr, new_tag(), offer, choice)
        out.append(CallOffered(msg.call_id, offer, choice))

    def _refuse_unavailable(
        self, out: list[Output], msg: SipMessage, addr: Addr, *, metric_reason: str, why: str
    ) -> None:
        """503 + Retry-After (RFC 3261 21.5.4) to an INVITE: a proxy or PBX may try another bridge now
        and avoids this one for that long (draining, or at BRIDGE_MAX_CALLS)."""
        self.counters["calls_rejected"] += 1
        METRICS.admission_rejections.inc(leg="sip", reason=metric_reason)
        extra = [("Retry-After", str(RETRY_AFTER_S))]
        response = build_response(msg, 503, "Service Unavailable", addr, to_tag=new_tag(), extra=extra)
        out.append(Send(response, addr))
        out.append(Refused(addr, "INVITE", 503, why))

    def media_ready(self, call_id: str, rtp_port: int, now_s: float) -> list[Output]:
        """The shell bound the offered call's RTP socket: ring, then answer (now or after the delay)."""
        out: list[Output] = []
        start = self._starting.pop(call_id, None)
        if start is None:
            return out
        msg, addr, local_tag = start.invite, start.source, start.local_tag
        dialog = dialog_from_invite(msg, local_tag, self.contact)
        call = SipCall(
            msg,
            addr,
            local_tag,
            dialog,
            start.offer,
            start.choice,
            rtp_port,
            admitted=self.admission is not None,
        )
        self.calls[call_id] = call
        self.counters["calls_total"] += 1
        if self.answer_delay_ms <= 0:
            # Answered at once: no 180. A 180 sent a moment before the 200 can reach the caller after
            # it through a proxy with several UDP workers (Kamailio), and some user agents (SIPp)
            # fail the call on a provisional response after the final one.
            self._answer(out, call)
            return out
        out.append(
            Send(
                build_response(
                    msg, 180, "Ringing", addr, to_tag=local_tag, extra=[("Contact", self.contact)]
                ),
                addr,
            )
        )
        out.append(SetTimer(("answer", call_id), self.answer_delay_ms / 1000.0))
        return out

    def media_failed(self, call_id: str, why: str) -> list[Output]:
        """No RTP port for the offered call: 503, and its admission slot back."""
        out: list[Output] = []
        start = self._starting.pop(call_id, None)
        if start is None:
            return out
        self._release_slot()
        log.error("SIP: call %s refused: %s", call_id, why)
        out.append(
            Send(
                build_response(
                    start.invite, 503, "Service Unavailable", start.source, to_tag=start.local_tag
                ),
                start.source,
            )
        )
        out.append(Refused(start.source, "INVITE", 503, why))
        return out

    def _answer(self, out: list[Output], call: SipCall) -> None:
        if call.state != "ringing":
            return
        msg, addr = call.invite, call.source
        sdp = build_sdp(
            self.advertised_ip,
            call.rtp_port,
            call.session_id,
            call.sdp_version,
            call.choice,
            ANSWER_DIRECTION.get(call.offer.direction, "sendrecv"),
        )
        call.final_response = build_response(
            msg,
            200,
            "OK",
            addr,
            to_tag=call.local_tag,
            extra=[("Contact", self.contact), ("Allow", ALLOW), ("Supported", "replaces")],
            body=sdp,
            content_type="application/sdp",
        )
        call.state = "answered"
        out.append(Send(call.final_response, addr))
        call.ok_interval, call.ok_elapsed = T1_S, 0.0
        out.append(SetTimer(("ok", msg.call_id), T1_S))
        started = CallStarted(
            call_id=msg.call_id,
            stream_id="sip-" + secrets.token_hex(8),
            caller=uri_user(name_addr_uri(msg.get("From"))),
            called=uri_user(msg.uri) or uri_user(name_addr_uri(msg.get("To"))),
            encoding=call.choice.encoding,
            params=call_params(msg),
        )
        out.append(CallAnswered(msg.call_id, started))

    def _on_reinvite(self, out: list[Output], call: SipCall, msg: SipMessage, addr: Addr) -> None:
        """Session refresh / hold / new media address: same RTP socket, same sender, same SSRC."""
        direction = "sendrecv"
        if msg.body:
            try:
                offer = parse_sdp(msg.body)
                choice = choose_codec(offer)
            except ProtocolError as exc:
                out.append(
                    Send(
                        build_response(
                            msg,
                            488,
                            "Not Acceptable Here",
                            addr,
                            extra=[("Warning", f'304 - "{str(exc)[:80]}"')],
                        ),
                        addr,
                    )
                )
                return
            if choice.encoding != call.choice.encoding:
                out.append(
                    Send(
                        build_response(
                            msg,
                            488,
                            "Not Acceptable Here",
                            addr,
                            extra=[("Warning", '304 - "codec change mid-call"')],
                        ),
                        addr,
                    )
                )
                return
            hold = is_hold(offer)
            out.append(
                MediaChanged(call.invite.call_id, None if hold else (offer.address, offer.port), not hold)
            )
            direction = ANSWER_DIRECTION.get(offer.direction, "sendrecv")
        call.sdp_version += 1
        sdp = build_sdp(
            self.advertised_ip, call.rtp_port, call.session_id, call.sdp_version, call.choice, direction
        )
        resp = build_response(
            msg,
            200,
            "OK",
            addr,
            to_tag=call.local_tag,
            extra=[("Contact", self.contact), ("Allow", ALLOW)],
            body=sdp,
            content_type="application/sdp",
        )
        out.append(Send(resp, addr))

    def _on_cancel(self, out: list[Output], msg: SipMessage, addr: Addr) -> None:
        call = self.calls.get(msg.call_id)
        if call is None or call.invite.branch != msg.branch:
            out.append(Send(build_response(msg, 481, "Call/Transaction Does Not Exist", addr), addr))
            return
        out.append(Send(build_response(msg, 200, "OK", addr, to_tag=call.local_tag), addr))
        if call.state != "ringing":
            return  # already answered: CANCEL has no effect (RFC 3261 9.2); the caller sends BYE
        self.counters["cancelled"] += 1
        call.final_response = build_response(
            call.invite, 487, "Request Terminated", call.source, to_tag=call.local_tag
        )
        out.append(Send(call.final_response, call.source))
        self._end(out, call, "cancel")

    def _on_notify(self, out: list[Output], msg: SipMessage) -> None:
        call = self.calls.get(msg.call_id)
        if call is None or not call.transfer or call.transfer_notified:
            return
        m = re.match(rb"\s*SIP/2\.0\s+(\d{3})", msg.body)
        final = bool(m and int(m.group(1)) >= 200)
        if not final and "terminated" not in msg.get("Subscription-State").lower():
            return
        call.transfer_notified = True
        if call.transfer == "accepted":
            self._hang_up(out, call, "transfer")

    # -- our side: hang up, transfer -------------------------------------------------------------

    def hang_up(self, call_id: str, reason: str = "hangup") -> list[Output]:
        """End the call from our side: BYE when answered, 480 while still ringing."""
        out: list[Output] = []
        call = self.calls.get(call_id)
        if call is not None:
            self._hang_up(out, call, reason)
        return out

    def _hang_up(self, out: list[Output], call: SipCall, reason: str) -> None:
        if call.state == "ended":
            return
        if call.state == "ringing":
            call.final_response = build_response(
                call.invite, 480, "Temporarily Unavailable", call.source, to_tag=call.local_tag
            )
            out.append(Send(call.final_response, call.source))
            self._end(out, call, reason)
            return
        data_out: list[Output] = []
        self._client_request(data_out, call, "BYE", BYE_TIMEOUT_S)
        self._end(out, call, reason)
        out.extend(data_out)

    def transfer(self, call_id: str, target: str) -> list[Output]:
        """Blind transfer: a REFER (`ClientRequest`). Its 2xx arms the wait for the final NOTIFY
        (or `TRANSFER_WAIT_S`), after which the call is hung up. Nothing unless the call is answered."""
        out: list[Output] = []
        call = self.calls.get(call_id)
        if call is None or call.state != "answered":
            return out
        uri = self._target_uri(call, target)
        call.transfer, call.transfer_notified = "requested", False
        self._client_request(
            out,
            call,
            "REFER",
            REFER_TIMEOUT_S,
            extra=[("Refer-To", f"<{uri}>"), ("Referred-By", self.contact)],
        )
        return out

    def _refer_answered(self, out: list[Output], call: SipCall, response: SipMessage | None) -> None:
        if response is None or not 200 <= response.status < 300:
            log.warning(
                "SIP: REFER for %s failed: %s",
                call.invite.call_id,
                "no answer" if response is None else f"{response.status} {response.reason}",
            )
            call.transfer = ""
            return
        if call.state != "answered":
            return
        call.transfer = "accepted"
        if call.transfer_notified:
            self._hang_up(out, call, "transfer")
        else:
            out.append(SetTimer(("transfer", call.invite.call_id), TRANSFER_WAIT_S))

    def _target_uri(self, call: SipCall, target: str) -> str:
        target = target.strip()
        if target.lower().startswith(("sip:", "sips:")):
            return target
        if target.lower().startswith("tel:"):
            target = target[4:]
        host = self.server[0] if self.server else uri_hostport(call.dialog.remote_target)[0]
        return f"sip:{target}@{host}"

    # -- ending calls ----------------------------------------------------------------------------

    def _end(self, out: list[Output], call: SipCall, reason: str) -> None:
        if call.state == "ended":
            return
        call.state = "ended"
        call_id = call.invite.call_id
        if call.admitted:
            call.admitted = False
            self._release_slot()
        out.extend(CancelTimer((kind, call_id)) for kind in ("answer", "ok", "transfer"))
        out.append(CallEnded(call_id, reason))
        # Keep the call a while so retransmitted BYE/ACK/INVITEs still match, then forget it.
        out.append(SetTimer(("forget", call_id), FORGET_S))

    def _release_slot(self) -> None:
        if self.admission is not None:
            self.admission.release()

    def active_calls(self) -> list[SipCall]:
        return [c for c in self.calls.values() if c.state != "ended"]


def call_params(msg: SipMessage) -> dict[str, str]:
    """What the dialplan may see of the INVITE: request URI, From, To, X- and a few other headers."""
    params = {
        "request_uri": msg.uri,
        "from": msg.get("From"),
        "to": msg.get("To"),
        "to_user": uri_user(name_addr_uri(msg.get("To"))),
    }
    for name, value in msg.headers:
        if name.lower().startswith("x-") or name in ("User-Agent", "Diversion", "P-Asserted-Identity"):
            params[name] = value
    return params
