"""SIP signalling for the SIP leg, with pyVoIP 1.6.8 where it is sound and the bridge's own code
where it is not.

pyVoIP (GPL-3.0, optional `sip` extra, imported lazily) builds and digest-authenticates the
REGISTER requests (`SIPClient.gen_first_response` / `gen_register` / `gen_authorization`) and
parses the registrar's challenges (`SIPMessage`). Its call path (`VoIPPhone` / `VoIPCall` /
`RTPClient`) is not used: every gap that real PBXs hit lives there (see docs/sip.md). In its
place this module runs, on the event loop, with no threads:

- a UDP transport (`SipEndpoint`) that answers every request, responses routed by Via/rport;
- OPTIONS -> 200; unknown methods -> 405/501; malformed requests -> 400 (or dropped if unusable);
- INVITE -> 100, 180, then 200 with the bridge's own RTP port as soon as it is bound (no fixed
  one-second delay), 200 retransmitted until the ACK; offers with neither PCMU nor PCMA -> 488;
- CANCEL before answer -> 200 + 487 and the call is never answered;
- re-INVITE -> 200 with the same SDP (new remote address, hold), never a second sender;
- the bridge's own BYE and REFER routed through the dialog's route set to the remote target;
- registration with status, retries with back-off, and failures reported instead of hanging;
- registrar-less operation (behind a PBX trunk or SBC);
- source trust (`sip_policy.SourcePolicy`): requests and responses only from the registrar / trunk
  server and SIP_TRUSTED_PEERS (others get 403 or nothing, counted, logged without flooding);
- admission: beyond the shared `Slots` (max calls), new INVITEs get 503 with Retry-After.

The message helpers at the top are sans-I/O; `SipEndpoint` is the thin asyncio shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import ProtocolError
from bridge.limits import RateLimiter, Slots
from bridge.metrics import METRICS
from bridge.telephony.events import CallStarted, Encoding
from bridge.telephony.rtp import (
    PT_PCMA,
    PT_PCMU,
    RtpEndpoint,
    RtpReceiver,
    RtpSender,
    RtpStats,
    open_rtp,
    ticker_for_loop,
)
from bridge.telephony.sip_leg import SipLeg
from bridge.telephony.sip_policy import RefusalLog, SourcePolicy, Verdict, method_label, parse_ip, peek_method

log = logging.getLogger(__name__)

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, NOTIFY, INFO, REFER"
RETRY_AFTER_S = 5  # the Retry-After of a 503 at capacity (docs/sip.md)
USER_AGENT = "ivr-bridge"
T1_S = 0.5
T2_S = 4.0

_COMPACT = {"v": "Via", "f": "From", "t": "To", "i": "Call-ID", "m": "Contact", "l": "Content-Length",
            "c": "Content-Type", "k": "Supported", "r": "Refer-To", "b": "Referred-By", "o": "Event"}
_CANONICAL = {name.lower(): name for name in (
    "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Content-Length", "Content-Type", "Record-Route",
    "Route", "Max-Forwards", "Expires", "WWW-Authenticate", "Proxy-Authenticate", "Event",
    "Subscription-State", "Refer-To", "Referred-By", "User-Agent", "Allow", "Supported", "Require",
)}


class SipParseError(ProtocolError):
    """A datagram is not a SIP message this bridge can act on."""


class NotAcceptable(ProtocolError):
    """The SDP offer has no codec the bridge speaks (answered 488)."""


# ---------------------------------------------------------------------------------------------
# Messages (sans-I/O)


@dataclass(slots=True)
class SipMessage:
    """A parsed SIP request or response. Headers keep their order and repeats."""

    start: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    method: str = ""  # requests
    uri: str = ""
    status: int = 0  # responses
    reason: str = ""

    @property
    def is_request(self) -> bool:
        return bool(self.method)

    def get(self, name: str, default: str = "") -> str:
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    @property
    def call_id(self) -> str:
        return self.get("Call-ID")

    @property
    def cseq(self) -> tuple[int, str]:
        parts = self.get("CSeq").split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise SipParseError(f"bad CSeq {self.get('CSeq')!r}")
        return int(parts[0]), parts[1].upper()

    @property
    def branch(self) -> str:
        return header_param(self.get("Via"), "branch") or ""


def parse_message(data: bytes) -> SipMessage:
    """Parse one UDP datagram. Raises `SipParseError` naming the defect."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipParseError("SIP header is not UTF-8") from exc
    lines = text.replace("\r\n", "\n").split("\n")
    start = lines[0].strip()
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t" and headers:  # folded continuation
            name, value = headers[-1]
            headers[-1] = (name, value + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise SipParseError(f"header line without a colon: {line[:60]!r}")
        key = name.strip()
        key = _COMPACT.get(key, _CANONICAL.get(key.lower(), key))
        headers.append((key, value.strip()))
    msg = SipMessage(start, headers)
    parts = start.split(" ", 2)
    if start.startswith("SIP/2.0 "):
        if len(parts) < 2 or not parts[1].isdigit():
            raise SipParseError(f"bad status line {start[:60]!r}")
        msg.status = int(parts[1])
        msg.reason = parts[2] if len(parts) > 2 else ""
    else:
        if len(parts) != 3 or parts[2] != "SIP/2.0" or not parts[0].isalpha():
            raise SipParseError(f"bad request line {start[:60]!r}")
        msg.method, msg.uri = parts[0].upper(), parts[1]
    length = msg.get("Content-Length")
    if length:
        if not length.isdigit():
            raise SipParseError(f"bad Content-Length {length!r}")
        body = body[: int(length)]
    msg.body = body
    if not all(msg.get(name) for name in ("Via", "From", "To", "Call-ID", "CSeq")):
        raise SipParseError("missing one of Via, From, To, Call-ID, CSeq")
    msg.cseq  # noqa: B018 - validates
    return msg


def header_param(value: str, name: str) -> str | None:
    """A `;name=value` parameter of a header (outside any <...>). '' if present without value."""
    tail = value.rsplit(">", 1)[-1] if ">" in value else value
    for part in tail.split(";")[1:]:
        key, _, val = part.strip().partition("=")
        if key.lower() == name:
            return val.strip()
    return None


def name_addr_uri(value: str) -> str:
    """The URI inside a From/To/Contact/Route value."""
    if "<" in value:
        return value.split("<", 1)[1].split(">", 1)[0].strip()
    return value.split(";", 1)[0].strip()


def uri_user(uri: str) -> str:
    rest = uri.split(":", 1)[1] if ":" in uri else uri
    if "@" not in rest:
        return ""
    return rest.split("@", 1)[0].split(";", 1)[0]


def uri_hostport(uri: str, default_port: int = 5060) -> tuple[str, int]:
    rest = uri.split(":", 1)[1] if uri.lower().startswith(("sip:", "sips:")) else uri
    rest = rest.split("@", 1)[-1].split(";", 1)[0].split("?", 1)[0]
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = rest.partition(":")
    return host, int(port) if port.isdigit() else default_port


def split_header_list(value: str) -> list[str]:
    """Split a comma-separated header value, ignoring commas inside <...> and quotes."""
    out, depth, quoted, cur = [], 0, False, []
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif ch == "<" and not quoted:
            depth += 1
        elif ch == ">" and not quoted:
            depth -= 1
        if ch == "," and depth == 0 and not quoted:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def response_target(request: SipMessage, source: tuple[str, int]) -> tuple[str, int]:
    """Where a response goes (RFC 3261 18.2.2 with RFC 3581 rport): the top Via's sent-by, or the
    source address when the Via asked for rport or its host is not where the request came from."""
    via = request.get("Via")
    if header_param(via, "rport") is not None:
        return source
    sent_by = via.split(";", 1)[0].split()[-1]
    host, port = uri_hostport(sent_by)
    received = header_param(via, "received")
    return (received or host, port)


def build_response(request: SipMessage, status: int, reason: str, source: tuple[str, int], *,
                   to_tag: str | None = None, extra: list[tuple[str, str]] | None = None,
                   body: bytes = b"", content_type: str = "") -> bytes:
    """A response that copies Via (received/rport filled in), From, To (+ our tag), Call-ID and
    CSeq from the request; Record-Route too on dialog-creating responses."""
    vias = request.get_all("Via")
    top = vias[0]
    if header_param(top, "rport") == "":
        top = re.sub(r";rport(?=;|$)", f";rport={source[1]}", top, count=1)
        if header_param(top, "received") is None:
            top += f";received={source[0]}"
    lines = [f"SIP/2.0 {status} {reason}"]
    lines.append(f"Via: {top}")
    lines.extend(f"Via: {v}" for v in vias[1:])
    if request.method == "INVITE" and 100 < status < 300:
        lines.extend(f"Record-Route: {rr}" for rr in request.get_all("Record-Route"))
    lines.append(f"From: {request.get('From')}")
    to = request.get("To")
    if to_tag and header_param(to, "tag") is None and status > 100:
        to += f";tag={to_tag}"
    lines.append(f"To: {to}")
    lines.append(f"Call-ID: {request.call_id}")
    lines.append(f"CSeq: {request.get('CSeq')}")
    for name, value in extra or ():
        lines.append(f"{name}: {value}")
    lines.append(f"User-Agent: {USER_AGENT}")
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(10)


# ---------------------------------------------------------------------------------------------
# SDP (sans-I/O)


@dataclass(slots=True)
class SdpOffer:
    address: str
    port: int
    payload_types: list[int]
    rtpmap: dict[int, str]  # pt -> "name/rate" lower-cased
    direction: str = "sendrecv"
    protocol: str = "RTP/AVP"


def parse_sdp(body: bytes) -> SdpOffer:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipParseError("SDP is not UTF-8") from exc
    session_addr = ""
    media_addr = ""
    audio: SdpOffer | None = None
    in_audio = False
    direction = "sendrecv"
    for raw in text.splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "m":
            parts = value.split()
            in_audio = bool(parts) and parts[0] == "audio" and audio is None
            if in_audio:
                if len(parts) < 4 or not parts[1].split("/")[0].isdigit():
                    raise SipParseError(f"bad SDP media line m={value!r}")
                pts = [int(p) for p in parts[3:] if p.isdigit()]
                audio = SdpOffer("", int(parts[1].split("/")[0]), pts, {}, protocol=parts[2])
        elif kind == "c":
            parts = value.split()
            addr = parts[2].split("/")[0] if len(parts) >= 3 else ""
            if audio is None:
                session_addr = addr
            elif in_audio:
                media_addr = addr
        elif kind == "a":
            name, _, val = value.partition(":")
            if name in ("sendrecv", "sendonly", "recvonly", "inactive"):
                if audio is None or in_audio:
                    direction = name
            elif name == "rtpmap" and in_audio and audio is not None:
                pt_s, _, enc = val.partition(" ")
                if pt_s.isdigit():
                    audio.rtpmap[int(pt_s)] = enc.strip().lower()
    if audio is None:
        raise NotAcceptable("SDP offer has no audio stream")
    audio.address = media_addr or session_addr
    audio.direction = direction
    if not audio.address:
        raise SipParseError("SDP offer has no connection address")
    return audio


@dataclass(frozen=True, slots=True)
class CodecChoice:
    encoding: Encoding
    payload_type: int
    dtmf_pt: int | None


def choose_codec(offer: SdpOffer) -> CodecChoice:
    """The first of PCMU/PCMA in the caller's order, and telephone-event/8000 if offered."""
    if "SAVP" in offer.protocol.upper():
        raise NotAcceptable(f"SDP offer wants {offer.protocol}: SRTP is not supported")
    dtmf_pt = None
    for pt, enc in offer.rtpmap.items():
        if enc.startswith("telephone-event/8000"):
            dtmf_pt = pt
            break
    for pt in offer.payload_types:
        enc = offer.rtpmap.get(pt, "")
        if pt == PT_PCMU or enc.startswith("pcmu/8000"):
            return CodecChoice("pcmu", pt, dtmf_pt)
        if pt == PT_PCMA or enc.startswith("pcma/8000"):
            return CodecChoice("pcma", pt, dtmf_pt)
    names = [offer.rtpmap.get(pt, str(pt)) for pt in offer.payload_types]
    raise NotAcceptable(f"SDP offer has neither PCMU nor PCMA: {names}")


_ANSWER_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly",
                     "inactive": "inactive"}


def build_sdp(ip: str, port: int, session_id: int, version: int, choice: CodecChoice,
              direction: str = "sendrecv") -> bytes:
    name = "PCMU" if choice.encoding == "pcmu" else "PCMA"
    pts = [str(choice.payload_type)]
    lines = ["v=0", f"o=ivr-bridge {session_id} {version} IN IP4 {ip}", "s=ivr-bridge", f"c=IN IP4 {ip}",
             "t=0 0"]
    if choice.dtmf_pt is not None:
        pts.append(str(choice.dtmf_pt))
    lines.append(f"m=audio {port} RTP/AVP {' '.join(pts)}")
    lines.append(f"a=rtpmap:{choice.payload_type} {name}/8000")
    if choice.dtmf_pt is not None:
        lines.append(f"a=rtpmap:{choice.dtmf_pt} telephone-event/8000")
        lines.append(f"a=fmtp:{choice.dtmf_pt} 0-15")
    lines += ["a=ptime:20", f"a={direction}"]
    return ("\r\n".join(lines) + "\r\n").encode()


# ---------------------------------------------------------------------------------------------
# Dialogs (sans-I/O)


@dataclass(slots=True)
class Dialog:
    """UAS side of a dialog: enough to build in-dialog requests (BYE, REFER) that route right."""

    call_id: str
    local_from: str  # the INVITE's To + our tag: our From in requests we send
    remote_to: str  # the INVITE's From (with the caller's tag): our To
    remote_target: str  # the caller's Contact URI
    route_set: list[str]  # Record-Route entries, in order (UAS)
    local_contact: str
    local_cseq: int = field(default_factory=lambda: secrets.randbelow(5000) + 1)

    def next_hop(self) -> tuple[str, int]:
        """Loose routing: the first Route if there is one, else the remote target."""
        if self.route_set:
            return uri_hostport(name_addr_uri(self.route_set[0]))
        return uri_hostport(self.remote_target)

    def request(self, method: str, via_host: str, via_port: int, *,
                extra: list[tuple[str, str]] | None = None, body: bytes = b"",
                content_type: str = "") -> tuple[bytes, str]:
        """A new in-dialog request with a fresh Via branch (never the INVITE's Via stack).
        Returns the datagram and its branch."""
        self.local_cseq += 1
        branch = new_branch()
        lines = [f"{method} {self.remote_target} SIP/2.0",
                 f"Via: SIP/2.0/UDP {via_host}:{via_port};branch={branch};rport",
                 "Max-Forwards: 70"]
        lines.extend(f"Route: {r}" for r in self.route_set)
        lines += [f"From: {self.local_from}", f"To: {self.remote_to}", f"Call-ID: {self.call_id}",
                  f"CSeq: {self.local_cseq} {method}", f"Contact: {self.local_contact}",
                  f"User-Agent: {USER_AGENT}"]
        for name, value in extra or ():
            lines.append(f"{name}: {value}")
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body, branch


def dialog_from_invite(invite: SipMessage, local_tag: str, local_contact: str) -> Dialog:
    routes: list[str] = []
    for value in invite.get_all("Record-Route"):
        routes.extend(split_header_list(value))
    contact = invite.get("Contact")
    target = name_addr_uri(contact) if contact else name_addr_uri(invite.get("From"))
    return Dialog(invite.call_id, f"{invite.get('To')};tag={local_tag}", invite.get("From"), target, routes,
                  local_contact)


# ---------------------------------------------------------------------------------------------
# Registration status


@dataclass(slots=True)
class Registration:
    mode: str  # "register" | "trunk" | "off"
    state: str = "off"  # off | registering | registered | failed
    registrar: str = ""
    last_error: str = ""
    attempts: int = 0
    failures: int = 0
    registered_at: float = 0.0
    expires_s: int = 0


# ---------------------------------------------------------------------------------------------
# Per-call state


@dataclass(slots=True)
class SipCall:
    invite: SipMessage
    source: tuple[str, int]
    local_tag: str
    dialog: Dialog
    choice: CodecChoice
    rtp_port: int
    rtp: RtpEndpoint
    leg: SipLeg | None = None
    state: str = "ringing"  # ringing | answered | ended
    final_response: bytes = b""
    acked: bool = False
    session_id: int = field(default_factory=lambda: secrets.randbelow(10**9))
    sdp_version: int = 1
    handler: asyncio.Task[None] | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    notify_waiter: asyncio.Future[int] | None = None
    admitted: bool = False  # holds one of the endpoint's admission slots until it ends


OnCall = Callable[[SipLeg], Awaitable[None]]


class _CallControl:
    """The leg's handle on its dialog (hang_up / transfer)."""

    def __init__(self, endpoint: SipEndpoint, call: SipCall) -> None:
        self.endpoint = endpoint
        self.call = call

    async def hang_up(self) -> None:
        await self.endpoint.hang_up(self.call)

    async def transfer(self, target: str) -> bool:
        return await self.endpoint.transfer(self.call, target)


class SipEndpoint(asyncio.DatagramProtocol):
    """The SIP user agent: one UDP socket, registration, and the calls it answers."""

    def __init__(self, *, user: str, advertised_ip: str, on_call: OnCall, registration: Registration,
                 server: tuple[str, int] | None = None, password: str | None = None,
                 policy: SourcePolicy | None = None, admission: Slots | None = None,
                 rtp_bind: str = "0.0.0.0", rtp_ports: tuple[int, int] | None = None,
                 answer_delay_ms: int = 0, register_timeout_s: float = 4.0,
                 reject_limiter: RateLimiter | None = None) -> None:
        self.user = user or "bridge"
        self.advertised_ip = advertised_ip
        self.on_call = on_call
        self.registration = registration
        self.server = server
        self.password = password
        # None: every source is served (only for tests that build an endpoint by hand).
        self.policy = policy or SourcePolicy(open_to_all=True)
        self.admission = admission
        # 403s per untrusted source are bounded too (beyond the bucket: dropped), so the bridge is
        # never a reflector for spoofed floods.
        self.reject_limiter = reject_limiter or RateLimiter(rate_per_s=1.0, burst=10, max_sources=4096)
        self.refusals = RefusalLog()
        self.rtp_bind = rtp_bind
        self.rtp_ports = rtp_ports
        self.answer_delay_ms = answer_delay_ms
        self.register_timeout_s = register_timeout_s
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.calls: dict[str, SipCall] = {}
        # branch -> (waiter, the address the request went to: its answer may come from there)
        self._pending: dict[str, tuple[asyncio.Future[SipMessage], str]] = {}
        self._starting: set[str] = set()  # Call-IDs admitted whose RTP socket is being bound
        self._register_task: asyncio.Task[None] | None = None
        self._pyvoip: Any = None
        self.counters: dict[str, int] = {"calls_total": 0, "calls_rejected": 0, "bad_messages": 0,
                                          "options": 0, "cancelled": 0, "untrusted": 0, "busy": 0}
        self._closing = False

    # -- transport -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.port = int(transport.get_extra_info("sockname")[1])

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP socket error: %s", exc)

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    @property
    def contact(self) -> str:
        return f"<sip:{self.user}@{self.advertised_ip}:{self.port}>"

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 4 or data.strip() == b"":
            return  # keep-alive CRLFs
        trusted = self.policy.trusts(addr[0])
        if not trusted and not (self._pending or self.calls):
            self._untrusted(data, addr, None)
            return
        try:
            msg = parse_message(data)
        except SipParseError as exc:
            if not trusted:
                self._untrusted(data, addr, None)
                return
            self.counters["bad_messages"] += 1
            log.warning("SIP: dropped malformed datagram from %s:%s: %s", addr[0], addr[1], exc)
            self._bad_request(data, addr, str(exc))
            return
        if not trusted and not self._dialog_peer(msg, addr):
            self._untrusted(data, addr, msg)
            return
        try:
            if msg.is_request:
                self._on_request(msg, addr)
            else:
                self._on_response(msg)
        except Exception as exc:  # one bad message must never take the UA down
            self.counters["bad_messages"] += 1
            log.exception("SIP: error handling %s from %s:%s", msg.method or msg.status, addr[0], addr[1])
            if msg.is_request and msg.method != "ACK":
                with contextlib.suppress(Exception):
                    self.send(build_response(msg, 500, "Server Internal Error", addr,
                                             extra=[("Warning", f'399 - "{type(exc).__name__}"')]), addr)

    def _dialog_peer(self, msg: SipMessage, addr: tuple[str, int]) -> bool:
        """A datagram from an address the bridge itself sends to: a response to one of our pending
        requests (matched by its random branch), or an in-dialog request of an existing call from
        that call's next hop (the caller's Contact when no proxy record-routed: the BYE of an end
        point behind a trusted proxy that stepped out of the dialog). Both need identifiers only
        someone on the signalling path can know (a branch; Call-ID plus our random To tag)."""
        source = parse_ip(addr[0])
        if not msg.is_request:
            pending = self._pending.get(msg.branch)
            return pending is not None and source is not None and parse_ip(pending[1]) == source
        call = self.calls.get(msg.call_id)
        if call is None or header_param(msg.get("To"), "tag") != call.local_tag:
            return False
        return source is not None and parse_ip(call.dialog.next_hop()[0]) == source

    def _untrusted(self, data: bytes, addr: tuple[str, int], msg: SipMessage | None) -> None:
        """A datagram from a source the policy does not trust: 403, or nothing; counted, and logged
        at most a few lines a minute however many arrive."""
        method = (msg.method or None) if msg is not None else peek_method(data)
        verdict = self.policy.verdict(addr[0], method)
        response = None
        if verdict is Verdict.REJECT:
            if self.reject_limiter.allow(addr[0], time.monotonic()):
                try:
                    msg = msg or parse_message(data)
                    response = build_response(msg, 403, "Forbidden", addr, to_tag=new_tag())
                except SipParseError:
                    response = None
            if response is None:
                verdict = Verdict.DROP
        if response is not None:
            self.send(response, addr)
        label = method_label(method) if method != "" else "other"
        self.counters["untrusted"] += 1
        METRICS.sip_untrusted.inc(method=label, action=verdict.value)
        first, summary = self.refusals.record(addr[0], time.monotonic())
        if summary:
            log.warning("SIP: %s", summary)
        if first:
            done = "refused with 403" if verdict is Verdict.REJECT else "dropped"
            log.warning("SIP: %s from untrusted %s:%s %s (trusted: %s); further ones are counted in "
                        "sip_untrusted_requests_total and summarised", label, addr[0], addr[1], done,
                        self.policy.describe())

    def _bad_request(self, data: bytes, addr: tuple[str, int], why: str) -> None:
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
            self.send(build_response(stub, 400, "Bad Request", addr, extra=warning), addr)
        except Exception:  # nothing addressable: dropping it is all we can do
            return

    # -- responses to our requests ---------------------------------------------------------------

    def _on_response(self, msg: SipMessage) -> None:
        if msg.status < 200:
            return
        pending = self._pending.get(msg.branch)
        if pending is not None and not pending[0].done():
            pending[0].set_result(msg)

    async def request(self, data: bytes, branch: str, addr: tuple[str, int], timeout_s: float = 8.0,
                      reliable_retransmit: bool = True) -> SipMessage | None:
        """Send a non-INVITE request; retransmit (T1 doubling to T2) until a final response or
        `timeout_s`. Returns the final response or None."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[SipMessage] = loop.create_future()
        self._pending[branch] = (waiter, addr[0])
        deadline = loop.time() + timeout_s
        interval = T1_S
        try:
            while True:
                self.send(data, addr)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                try:
                    return await asyncio.wait_for(asyncio.shield(waiter), min(interval, remaining))
                except TimeoutError:
                    interval = min(interval * 2, T2_S)
                    if not reliable_retransmit:
                        continue
        finally:
            self._pending.pop(branch, None)

    # -- requests --------------------------------------------------------------------------------

    def _on_request(self, msg: SipMessage, addr: tuple[str, int]) -> None:
        method = msg.method
        if method == "INVITE":
            self._on_invite(msg, addr)
        elif method == "ACK":
            call = self.calls.get(msg.call_id)
            if call is not None:
                call.acked = True
        elif method == "BYE":
            call = self.calls.get(msg.call_id)
            if call is None or header_param(msg.get("To"), "tag") != call.local_tag:
                self.send(build_response(msg, 481, "Call/Transaction Does Not Exist", addr), addr)
                return
            self.send(build_response(msg, 200, "OK", addr), addr)
            self._end(call, "bye")
        elif method == "CANCEL":
            self._on_cancel(msg, addr)
        elif method == "OPTIONS":
            self.counters["options"] += 1
            self.send(build_response(msg, 200, "OK", addr, to_tag=new_tag(), extra=[
                ("Allow", ALLOW), ("Accept", "application/sdp"), ("Contact", self.contact)]), addr)
        elif method == "NOTIFY":
            self.send(build_response(msg, 200, "OK", addr), addr)
            self._on_notify(msg)
        elif method == "INFO":
            self.send(build_response(msg, 200, "OK", addr), addr)
            call = self.calls.get(msg.call_id)
            m = re.search(rb"Signal\s*=\s*([0-9*#A-Da-d])", msg.body)
            if call is not None and call.leg is not None and m:
                call.leg.push_dtmf(m.group(1).decode().upper())
        elif method == "REGISTER":
            self.send(build_response(msg, 405, "Method Not Allowed", addr, extra=[("Allow", ALLOW)]), addr)
        else:
            self.send(build_response(msg, 501, "Not Implemented", addr, extra=[("Allow", ALLOW)]), addr)

    def _on_invite(self, msg: SipMessage, addr: tuple[str, int]) -> None:
        call = self.calls.get(msg.call_id)
        to_tag = header_param(msg.get("To"), "tag")
        if call is not None:
            if to_tag is None:
                # Retransmitted initial INVITE (or a fork duplicate): repeat where we are.
                if call.final_response:
                    self.send(call.final_response, addr)
                elif call.invite.branch == msg.branch:
                    self.send(build_response(msg, 180, "Ringing", addr, to_tag=call.local_tag,
                                             extra=[("Contact", self.contact)]), addr)
                else:
                    self.send(build_response(msg, 482, "Loop Detected", addr, to_tag=new_tag()), addr)
                return
            if to_tag == call.local_tag:
                self._on_reinvite(call, msg, addr)
                return
        if to_tag is not None:
            self.send(build_response(msg, 481, "Call/Transaction Does Not Exist", addr), addr)
            return
        if msg.call_id in self._starting:
            return  # a retransmission while the call is being set up: its 180/200 follow
        if self._closing:
            self.send(build_response(msg, 503, "Service Unavailable", addr, to_tag=new_tag()), addr)
            return
        if self.admission is not None and not self.admission.try_acquire():
            # At capacity: 503 + Retry-After (RFC 3261 21.5.4): a proxy or PBX may try another bridge
            # now and avoids this one for that long. Calls in progress are not touched.
            self.counters["calls_rejected"] += 1
            self.counters["busy"] += 1
            METRICS.admission_rejections.inc(leg="sip", reason="max_calls")
            self.send(build_response(msg, 503, "Service Unavailable", addr, to_tag=new_tag(),
                                     extra=[("Retry-After", str(RETRY_AFTER_S))]), addr)
            return
        self.send(build_response(msg, 100, "Trying", addr), addr)
        try:
            if "application/sdp" not in msg.get("Content-Type").lower() or not msg.body:
                raise NotAcceptable("INVITE without an SDP offer (late offer is not supported)")
            offer = parse_sdp(msg.body)
            choice = choose_codec(offer)
        except ProtocolError as exc:
            self._release_slot()
            self.counters["calls_rejected"] += 1
            log.warning("SIP: call %s refused with 488: %s", msg.call_id, exc)
            self.send(build_response(msg, 488, "Not Acceptable Here", addr, to_tag=new_tag(),
                                     extra=[("Warning", f'304 - "{str(exc)[:80]}"')]), addr)
            return
        self._starting.add(msg.call_id)
        asyncio.get_running_loop().create_task(self._start_call(msg, addr, offer, choice))

    async def _start_call(self, msg: SipMessage, addr: tuple[str, int], offer: SdpOffer,
                          choice: CodecChoice) -> None:
        loop = asyncio.get_running_loop()
        local_tag = new_tag()
        stats = RtpStats()
        remote = (offer.address, offer.port)
        receiver = RtpReceiver(choice.encoding, choice.payload_type, choice.dtmf_pt, remote, stats)
        sender = RtpSender(choice.encoding, choice.payload_type, choice.dtmf_pt, stats=stats)
        # Callbacks are pointed at the leg on answer; anything before that is dropped.
        endpoint = RtpEndpoint(receiver, sender, on_audio=_drop, on_dtmf=_drop, on_marks=_drop,
                               clock=loop.time)
        dialog = dialog_from_invite(msg, local_tag, self.contact)
        try:
            port = await open_rtp(self.rtp_bind, self.rtp_ports, endpoint)
        except ProtocolError as exc:
            self._starting.discard(msg.call_id)
            self._release_slot()
            log.error("SIP: call %s refused: %s", msg.call_id, exc)
            self.send(build_response(msg, 503, "Service Unavailable", addr, to_tag=local_tag), addr)
            return
        call = SipCall(msg, addr, local_tag, dialog, choice, port, endpoint,
                       admitted=self.admission is not None)
        if offer.address == "0.0.0.0" or offer.direction in ("recvonly", "inactive"):
            endpoint.sending = False
        self.calls[msg.call_id] = call
        self._starting.discard(msg.call_id)
        self.counters["calls_total"] += 1
        self.send(build_response(msg, 180, "Ringing", addr, to_tag=local_tag,
                                 extra=[("Contact", self.contact)]), addr)
        if self.answer_delay_ms > 0:
            call.timers.append(loop.call_later(self.answer_delay_ms / 1000.0, self._answer, call))
        else:
            self._answer(call)

    def _answer(self, call: SipCall) -> None:
        if call.state != "ringing":
            return
        loop = asyncio.get_running_loop()
        msg, addr = call.invite, call.source
        sdp = build_sdp(self.advertised_ip, call.rtp_port, call.session_id, call.sdp_version, call.choice,
                        _ANSWER_DIRECTION.get(parse_sdp(msg.body).direction, "sendrecv"))
        call.final_response = build_response(
            msg, 200, "OK", addr, to_tag=call.local_tag,
            extra=[("Contact", self.contact), ("Allow", ALLOW), ("Supported", "replaces")],
            body=sdp, content_type="application/sdp")
        call.state = "answered"
        self.send(call.final_response, addr)
        self._retransmit_ok(call, T1_S)
        started = CallStarted(
            call_id=msg.call_id,
            stream_id="sip-" + secrets.token_hex(8),
            caller=uri_user(name_addr_uri(msg.get("From"))),
            called=uri_user(msg.uri) or uri_user(name_addr_uri(msg.get("To"))),
            encoding=call.choice.encoding,
            params=self._call_params(msg),
        )
        leg = SipLeg(started, call.rtp.sender, _CallControl(self, call), call.rtp.receiver.stats)
        call.leg = leg
        holder_set(call.rtp, leg)
        ticker_for_loop().add(call.rtp)
        call.handler = loop.create_task(self._run_handler(call, leg), name=f"sip-call-{msg.call_id[:16]}")

    def _retransmit_ok(self, call: SipCall, interval: float, elapsed: float = 0.0) -> None:
        """RFC 3261 13.3.1.4: resend the 2xx until the ACK; no ACK in 64*T1 ends the call."""
        if call.acked or call.state != "answered":
            return
        if elapsed >= 64 * T1_S:
            log.warning("SIP: call %s got no ACK for its 200 OK; hanging up", call.invite.call_id)
            asyncio.get_running_loop().create_task(self.hang_up(call, reason="error: no ACK"))
            return

        def again() -> None:
            if not call.acked and call.state == "answered":
                self.send(call.final_response, call.source)
                self._retransmit_ok(call, min(interval * 2, T2_S), elapsed + interval)

        call.timers.append(asyncio.get_running_loop().call_later(interval, again))

    @staticmethod
    def _call_params(msg: SipMessage) -> dict[str, str]:
        params = {"request_uri": msg.uri, "from": msg.get("From"), "to": msg.get("To"),
                  "to_user": uri_user(name_addr_uri(msg.get("To")))}
        for name, value in msg.headers:
            if name.lower().startswith("x-") or name in ("User-Agent", "Diversion", "P-Asserted-Identity"):
                params[name] = value
        return params

    async def _run_handler(self, call: SipCall, leg: SipLeg) -> None:
        try:
            await self.on_call(leg)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("SIP: call handler failed for %s", call.invite.call_id)
        finally:
            if call.state != "ended":
                await self.hang_up(call)

    def _on_reinvite(self, call: SipCall, msg: SipMessage, addr: tuple[str, int]) -> None:
        """Session refresh / hold / new media address: same RTP socket, same sender, same SSRC."""
        direction = "sendrecv"
        if msg.body:
            try:
                offer = parse_sdp(msg.body)
                choice = choose_codec(offer)
            except ProtocolError as exc:
                self.send(build_response(msg, 488, "Not Acceptable Here", addr,
                                         extra=[("Warning", f'304 - "{str(exc)[:80]}"')]), addr)
                return
            if choice.encoding != call.choice.encoding:
                self.send(build_response(msg, 488, "Not Acceptable Here", addr,
                                         extra=[("Warning", '304 - "codec change mid-call"')]), addr)
                return
            hold = offer.address == "0.0.0.0" or offer.direction in ("recvonly", "inactive")
            if not hold:
                call.rtp.remote = (offer.address, offer.port)
                call.rtp.receiver.remote = (offer.address, offer.port)
            call.rtp.sending = not hold
            direction = _ANSWER_DIRECTION.get(offer.direction, "sendrecv")
        call.sdp_version += 1
        sdp = build_sdp(self.advertised_ip, call.rtp_port, call.session_id, call.sdp_version, call.choice,
                        direction)
        resp = build_response(msg, 200, "OK", addr, to_tag=call.local_tag,
                              extra=[("Contact", self.contact), ("Allow", ALLOW)],
                              body=sdp, content_type="application/sdp")
        self.send(resp, addr)

    def _on_cancel(self, msg: SipMessage, addr: tuple[str, int]) -> None:
        call = self.calls.get(msg.call_id)
        if call is None or call.invite.branch != msg.branch:
            self.send(build_response(msg, 481, "Call/Transaction Does Not Exist", addr), addr)
            return
        self.send(build_response(msg, 200, "OK", addr, to_tag=call.local_tag), addr)
        if call.state != "ringing":
            return  # already answered: CANCEL has no effect (RFC 3261 9.2); the caller sends BYE
        self.counters["cancelled"] += 1
        call.final_response = build_response(call.invite, 487, "Request Terminated", call.source,
                                             to_tag=call.local_tag)
        self.send(call.final_response, call.source)
        self._end(call, "cancel")

    def _on_notify(self, msg: SipMessage) -> None:
        call = self.calls.get(msg.call_id)
        if call is None or call.notify_waiter is None or call.notify_waiter.done():
            return
        m = re.match(rb"\s*SIP/2\.0\s+(\d{3})", msg.body)
        if m and int(m.group(1)) >= 200:
            call.notify_waiter.set_result(int(m.group(1)))
        elif "terminated" in msg.get("Subscription-State").lower():
            call.notify_waiter.set_result(0)

    # -- ending calls ----------------------------------------------------------------------------

    def _end(self, call: SipCall, reason: str) -> None:
        if call.state == "ended":
            return
        call.state = "ended"
        if call.admitted:
            call.admitted = False
            self._release_slot()
        for timer in call.timers:
            timer.cancel()
        ticker_for_loop().remove(call.rtp)
        call.rtp.close()
        if call.leg is not None:
            call.leg.end(reason)
        loop = asyncio.get_running_loop()
        # Keep the call a while so retransmitted BYE/ACK/INVITEs still match, then forget it.
        loop.call_later(32.0, self.calls.pop, call.invite.call_id, None)

    def _release_slot(self) -> None:
        if self.admission is not None:
            self.admission.release()

    async def hang_up(self, call: SipCall, reason: str = "hangup") -> None:
        """End the call from our side: BYE when answered, 480 while still ringing."""
        if call.state == "ended":
            return
        if call.state == "ringing":
            call.final_response = build_response(call.invite, 480, "Temporarily Unavailable", call.source,
                                                 to_tag=call.local_tag)
            self.send(call.final_response, call.source)
            self._end(call, reason)
            return
        data, branch = call.dialog.request("BYE", self.advertised_ip, self.port)
        self._end(call, reason)
        addr = await self._resolve(call.dialog.next_hop())
        resp = await self.request(data, branch, addr, timeout_s=4.0)
        if resp is None:
            log.warning("SIP: no answer to our BYE for %s", call.invite.call_id)
        elif resp.status >= 300:
            log.warning("SIP: our BYE for %s got %s %s", call.invite.call_id, resp.status, resp.reason)

    async def transfer(self, call: SipCall, target: str) -> bool:
        """Blind transfer (REFER). True once the peer accepted it (2xx); the call then ends when the
        transfer completes (NOTIFY) or after 30 s. False if the peer refused or does not do REFER."""
        if call.state != "answered":
            return False
        uri = self._target_uri(call, target)
        loop = asyncio.get_running_loop()
        call.notify_waiter = loop.create_future()
        data, branch = call.dialog.request("REFER", self.advertised_ip, self.port, extra=[
            ("Refer-To", f"<{uri}>"), ("Referred-By", self.contact)])
        addr = await self._resolve(call.dialog.next_hop())
        resp = await self.request(data, branch, addr, timeout_s=8.0)
        if resp is None or not 200 <= resp.status < 300:
            log.warning("SIP: REFER to %s for %s failed: %s", uri, call.invite.call_id,
                        "no answer" if resp is None else f"{resp.status} {resp.reason}")
            return False

        async def finish() -> None:
            with contextlib.suppress(TimeoutError):
                assert call.notify_waiter is not None
                await asyncio.wait_for(call.notify_waiter, 30.0)
            await self.hang_up(call, reason="transfer")

        call.timers.append(loop.call_later(0, lambda: loop.create_task(finish())))
        return True

    def _target_uri(self, call: SipCall, target: str) -> str:
        target = target.strip()
        if target.lower().startswith(("sip:", "sips:")):
            return target
        if target.lower().startswith("tel:"):
            target = target[4:]
        host = self.server[0] if self.server else uri_hostport(call.dialog.remote_target)[0]
        return f"sip:{target}@{host}"

    async def refresh_server_ips(self) -> None:
        """Resolve SIP_SERVER to all its addresses (A and AAAA) and trust them from now on. A failed
        lookup keeps the addresses already known (the registration reports the failure)."""
        if self.server is None:
            return
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(self.server[0], self.server[1],
                                                                 type=socket.SOCK_DGRAM)
        except OSError as exc:
            log.warning("SIP: %s does not resolve (%s); keeping its known addresses", self.server[0], exc)
            return
        if self.policy.set_server_ips(str(info[4][0]) for info in infos):
            log.info("SIP: trusted sources now %s", self.policy.describe())

    @staticmethod
    async def _resolve(hostport: tuple[str, int]) -> tuple[str, int]:
        host, port = hostport
        try:
            ipaddress.ip_address(host)
            return host, port
        except ValueError:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM,
                                                                 family=socket.AF_INET)
            return infos[0][4][0], port

    # -- registration ----------------------------------------------------------------------------

    def start_registration(self) -> None:
        if self.registration.mode == "register":
            self._register_task = asyncio.get_running_loop().create_task(self._register_loop(),
                                                                        name="sip-register")

    def _pyvoip_client(self) -> Any:
        if self._pyvoip is None:
            import pyVoIP.VoIP  # noqa: F401 - lazy (GPL-3.0, `sip` extra); first, or pyVoIP.SIP half-imports
            from pyVoIP.SIP import SIPClient

            assert self.server is not None
            phone_shim = type("PhoneShim", (), {"_status": None})()
            self._pyvoip = SIPClient(self.server[0], self.server[1], self.user, self.password or "",
                                     phone=phone_shim, myIP=self.advertised_ip, myPort=self.port)
        return self._pyvoip

    async def register_once(self, deregister: bool = False) -> None:
        """One REGISTER transaction (with digest). Raises `RegistrationError` naming the failure."""
        client = self._pyvoip_client()
        from pyVoIP.SIP import SIPMessage as PyVoipMessage

        assert self.server is not None
        await self.refresh_server_ips()
        addr = await self._resolve(self.server)
        first = client.gen_first_response(deregister=deregister)
        resp = await self.request(first.encode(), _branch_of(first), addr, timeout_s=self.register_timeout_s)
        if resp is None:
            raise RegistrationError(f"no response from registrar {addr[0]}:{addr[1]} "
                                    f"within {self.register_timeout_s:g} s")
        if resp.status == 401:
            challenge = PyVoipMessage(_raw_for_pyvoip(resp))
            if "qop" in challenge.authentication:
                raise RegistrationError("registrar wants qop digest, which pyVoIP 1.6.8 cannot answer")
            second = client.gen_register(challenge, deregister=deregister)
            resp = await self.request(second.encode(), _branch_of(second), addr,
                                      timeout_s=self.register_timeout_s)
            if resp is None:
                raise RegistrationError(f"no response from registrar {addr[0]}:{addr[1]} to the "
                                        "authenticated REGISTER")
            if resp.status in (401, 403):
                raise RegistrationError(f"registrar rejected the credentials ({resp.status} {resp.reason}): "
                                        "check SIP_USER / SIP_PASSWORD")
        if resp.status == 407:
            raise RegistrationError("registrar wants proxy authentication (407), which is not supported")
        if not 200 <= resp.status < 300:
            raise RegistrationError(f"registrar answered {resp.status} {resp.reason}")
        expires = resp.get("Expires")
        contact_exp = header_param(resp.get("Contact"), "expires")
        value = contact_exp or expires
        self.registration.expires_s = int(value) if value and value.isdigit() else client.default_expires

    async def _register_loop(self) -> None:
        reg = self.registration
        backoff = 5.0
        while not self._closing:
            reg.state = "registering" if reg.state != "registered" else reg.state
            reg.attempts += 1
            try:
                await self.register_once()
            except (RegistrationError, OSError) as exc:
                reg.failures += 1
                reg.last_error = str(exc)
                if reg.state != "failed":
                    log.error("SIP: registration with %s failed: %s (retrying in %.0f s)", reg.registrar, exc,
                              backoff)
                reg.state = "failed"
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 300.0)
                continue
            if reg.state != "registered":
                log.info("SIP: registered as %s with %s (expires %d s)", self.user, reg.registrar,
                         reg.expires_s)
            reg.state = "registered"
            reg.last_error = ""
            reg.registered_at = time.time()
            backoff = 5.0
            await asyncio.sleep(max(10.0, reg.expires_s * 0.8))

    async def wait_registered(self, timeout_s: float) -> bool:
        """Until the registration succeeded or failed once (tests, start-up reporting)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if self.registration.state in ("registered", "failed"):
                return self.registration.state == "registered"
            await asyncio.sleep(0.02)
        return False

    async def close(self) -> None:
        """Hang up every call, deregister (best effort, bounded), close the socket."""
        self._closing = True
        if self._register_task is not None:
            self._register_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._register_task
        calls = [c for c in self.calls.values() if c.state != "ended"]
        await asyncio.gather(*(self.hang_up(c, reason="closed") for c in calls), return_exceptions=True)
        handlers = [c.handler for c in calls if c.handler is not None and not c.handler.done()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self.registration.state == "registered":
            self.register_timeout_s = min(self.register_timeout_s, 1.0)
            with contextlib.suppress(Exception):
                await self.register_once(deregister=True)
            self.registration.state = "off"
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def status(self) -> dict[str, Any]:
        reg = self.registration
        active = [c for c in self.calls.values() if c.state != "ended"]
        return {
            "mode": reg.mode,
            "registration": reg.state,
            "registrar": reg.registrar,
            "last_error": reg.last_error,
            "registration_attempts": reg.attempts,
            "registration_failures": reg.failures,
            "local": f"{self.advertised_ip}:{self.port}",
            "calls_active": len(active),
            **self.counters,
        }


class RegistrationError(ProtocolError):
    """The registrar did not accept our REGISTER (named: timeout, credentials, status)."""


def holder_set(endpoint: RtpEndpoint, leg: SipLeg) -> None:
    """Point the RTP endpoint's callbacks at the leg (frames before answer are dropped)."""
    endpoint.on_audio = leg.push_audio
    endpoint.on_dtmf = leg.push_dtmf
    endpoint.on_marks = leg.push_marks


def _drop(_: object) -> None:
    return None


def _branch_of(request: str) -> str:
    m = re.search(r"branch=([^;\s]+)", request)
    if not m:
        raise ProtocolError("generated request has no Via branch")
    return m.group(1)


def _raw_for_pyvoip(msg: SipMessage) -> bytes:
    """Re-serialise a response in the exact shape pyVoIP's parser expects (`Name: value`, CRLF)."""
    lines = [msg.start] + [f"{k}: {v}" for k, v in msg.headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + msg.body
