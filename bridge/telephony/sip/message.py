"""SIP messages: parse, build responses, header helpers. No I/O.

`parse_message(datagram)` gives a `SipMessage` (headers in order, compact forms expanded) or raises
`SipParseError` naming the defect; `build_response(request, ...)` answers a request with its Via
(received/rport filled in), From, To (+ our tag), Call-ID and CSeq.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from bridge.errors import ProtocolError

USER_AGENT = "ivr-bridge"

_COMPACT = {
    "v": "Via",
    "f": "From",
    "t": "To",
    "i": "Call-ID",
    "m": "Contact",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "r": "Refer-To",
    "b": "Referred-By",
    "o": "Event",
}
_CANONICAL = {
    name.lower(): name
    for name in (
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Content-Length",
        "Content-Type",
        "Record-Route",
        "Route",
        "Max-Forwards",
        "Expires",
        "WWW-Authenticate",
        "Proxy-Authenticate",
        "Event",
        "Subscription-State",
        "Refer-To",
        "Referred-By",
        "User-Agent",
        "Allow",
        "Supported",
        "Require",
    )
}


class SipParseError(ProtocolError):
    """A datagram is not a SIP message this bridge can act on."""


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
    out: list[str] = []
    cur: list[str] = []
    depth, quoted = 0, False
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


def build_response(
    request: SipMessage,
    status: int,
    reason: str,
    source: tuple[str, int],
    *,
    to_tag: str | None = None,
    extra: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    content_type: str = "",
) -> bytes:
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
