"""The UAS side of a dialog: enough to build in-dialog requests (BYE, REFER) that route right. No I/O."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from bridge.telephony.sip.message import (
    USER_AGENT,
    SipMessage,
    name_addr_uri,
    new_branch,
    split_header_list,
    uri_hostport,
)


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

    def request(
        self,
        method: str,
        via_host: str,
        via_port: int,
        *,
        extra: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        content_type: str = "",
    ) -> tuple[bytes, str]:
        """A new in-dialog request with a fresh Via branch (never the INVITE's Via stack).
        Returns the datagram and its branch."""
        self.local_cseq += 1
        branch = new_branch()
        lines = [
            f"{method} {self.remote_target} SIP/2.0",
            f"Via: SIP/2.0/UDP {via_host}:{via_port};branch={branch};rport",
            "Max-Forwards: 70",
        ]
        lines.extend(f"Route: {r}" for r in self.route_set)
        lines += [
            f"From: {self.local_from}",
            f"To: {self.remote_to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.local_cseq} {method}",
            f"Contact: {self.local_contact}",
            f"User-Agent: {USER_AGENT}",
        ]
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
    return Dialog(
        invite.call_id,
        f"{invite.get('To')};tag={local_tag}",
        invite.get("From"),
        target,
        routes,
        local_contact,
    )
