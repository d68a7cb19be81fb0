"""Which sources the SIP endpoint serves, and how refusals are reported: no I/O, time is an input.

- `parse_trusted_peers(text)`: `SIP_TRUSTED_PEERS` (comma-separated addresses or CIDRs, IPv4 or
  IPv6) into networks; a bad entry is a `ConfigError` naming it.
- `SourcePolicy`: trusted = the registrar's (or trunk server's) resolved addresses + the trusted
  peers. `verdict(kind, source_ip)` says what to do with a datagram: serve it, answer `403`, or drop
  it. Responses from untrusted sources are always dropped (never answered).
- `method_label(...)`: the fixed vocabulary of the `method` label of `sip_untrusted_requests_total`.
- `RefusalLog`: what to log about refused datagrams without logging per packet in a flood: the first
  refusal from each of a few sources per window, then one summary line per window.

The UAS core (`bridge.telephony.sip.uas.UasCore`) applies it; the endpoint
(`bridge.telephony.sip.endpoint.SipEndpoint`) resolves host names and feeds addresses in.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from bridge.errors import ConfigError

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
UntrustedAction = Literal["reject", "drop"]

# Label values for the `method` label: known methods, "response" for responses, "other" for the rest
# (a flood of invented method names must not create new time series).
KNOWN_METHODS = frozenset(
    {
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "REGISTER",
        "SUBSCRIBE",
        "NOTIFY",
        "REFER",
        "INFO",
        "MESSAGE",
        "UPDATE",
        "PRACK",
        "PUBLISH",
    }
)


def method_label(method: str | None) -> str:
    """`None` for a response; an upper-case method name for a request."""
    if method is None:
        return "response"
    return method if method in KNOWN_METHODS else "other"


def peek_method(data: bytes) -> str | None:
    """The method of a request datagram without parsing it (None for a response, "" if unreadable)."""
    if data.startswith(b"SIP/"):
        return None
    first = data[:16].split(b" ", 1)[0]
    return first.decode("ascii", "replace").upper() if first.isalpha() else ""


def parse_ip(text: str) -> IpAddress | None:
    """An address as a datagram source or a resolver gives it: zone ids dropped, IPv4-mapped IPv6
    turned into IPv4. None if it is not an address."""
    host = text.strip().strip("[]").split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_trusted_peers(text: str | None) -> tuple[IpNetwork, ...]:
    """`SIP_TRUSTED_PEERS`: "10.0.0.5, 192.0.2.0/24, 2001:db8::/32". Empty entries are skipped."""
    out: list[IpNetwork] = []
    for raw in (text or "").split(","):
        entry = raw.strip()
        if not entry:
            continue
        address = entry.strip("[]") if "/" not in entry else entry
        try:
            net = ipaddress.ip_network(address, strict=True)
        except ValueError as exc:
            hint = ""
            if "/" in entry:
                try:
                    hint = f" (did you mean {ipaddress.ip_network(entry, strict=False)}?)"
                except ValueError:
                    hint = ""
            raise ConfigError(
                f"SIP_TRUSTED_PEERS entry {entry!r} is not an IP address or CIDR: {exc}{hint}"
                " (host names are not accepted here)"
            ) from exc
        if (
            isinstance(net, ipaddress.IPv6Network)
            and net.network_address.ipv4_mapped is not None
            and net.prefixlen >= 96
        ):
            net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
        out.append(net)
    return tuple(out)


class Verdict(enum.Enum):
    SERVE = "serve"
    REJECT = "reject"  # answer 403 Forbidden
    DROP = "drop"  # send nothing


@dataclass
class SourcePolicy:
    """The trust decision for one SIP endpoint.

    `open_to_all` is the lab case (trunk mode with neither SIP_SERVER nor SIP_TRUSTED_PEERS): every
    source is served, as before this policy existed; `start_sip` logs it loudly.
    """

    peers: tuple[IpNetwork, ...] = ()
    action: UntrustedAction = "reject"
    open_to_all: bool = False
    server_ips: frozenset[IpAddress] = field(default_factory=frozenset)

    def set_server_ips(self, addresses: Iterable[str]) -> bool:
        """Replace the registrar's / trunk server's addresses (from a fresh DNS answer). Unparseable
        entries are ignored. Returns True if the set changed."""
        ips = frozenset(ip for ip in (parse_ip(a) for a in addresses) if ip is not None)
        changed = ips != self.server_ips
        self.server_ips = ips
        return changed

    def trusts(self, source_ip: str) -> bool:
        if self.open_to_all:
            return True
        ip = parse_ip(source_ip)
        if ip is None:
            return False
        if ip in self.server_ips:
            return True
        return any(ip in net for net in self.peers if net.version == ip.version)

    def verdict(self, source_ip: str, method: str | None) -> Verdict:
        """What to do with a datagram from `source_ip`: a request (`method`) or a response (None)."""
        if self.trusts(source_ip):
            return Verdict.SERVE
        if method is None or method == "ACK" or not method or self.action == "drop":
            return Verdict.DROP  # responses and ACKs are never answered; unreadable requests neither
        return Verdict.REJECT

    def describe(self) -> str:
        if self.open_to_all:
            return "any source"
        parts = sorted(str(ip) for ip in self.server_ips) + [str(net) for net in self.peers]
        return ", ".join(parts) if parts else "no source (registrar not resolved yet, no trusted peers)"


@dataclass
class RefusalLog:
    """Decides which refusals to log. Per `window_s`: the first refusal from each of up to
    `first_per_window` new sources, then one summary of everything not logged; sources already
    reported are remembered (bounded: `max_sources`), so a steady scanner is one line, not a stream."""

    window_s: float = 60.0
    first_per_window: int = 5
    max_sources: int = 4096
    _seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _window_start: float | None = None
    _firsts: int = 0
    _suppressed: int = 0
    _suppressed_sources: set[str] = field(default_factory=set)

    def record(self, source_ip: str, now_s: float) -> tuple[bool, str | None]:
        """Returns (log this refusal?, summary line to log first or None)."""
        summary = None
        if self._window_start is None:
            self._window_start = now_s
        elif now_s - self._window_start >= self.window_s:
            if self._suppressed:
                sources = len(self._suppressed_sources)
                more = "+" if sources >= self.max_sources else ""  # bounded: "at least"
                summary = (
                    f"{self._suppressed} more SIP datagrams from {sources}{more} untrusted "
                    f"source(s) refused in the last {now_s - self._window_start:.0f} s"
                )
            self._window_start = now_s
            self._firsts = 0
            self._suppressed = 0
            self._suppressed_sources.clear()
        if source_ip not in self._seen and self._firsts < self.first_per_window:
            self._seen[source_ip] = None
            if len(self._seen) > self.max_sources:
                self._seen.popitem(last=False)
            self._firsts += 1
            return True, summary
        self._suppressed += 1
        if len(self._suppressed_sources) < self.max_sources:
            self._suppressed_sources.add(source_ip)
        return False, summary
