"""Answer a browser's SDP offer: one `RTCPeerConnection`, its `WebRtcLeg`, the SDP answer.

No trickle ICE: the page sends its offer once its candidates are gathered, and the answer carries
the bridge's. The bridge offers host candidates only (no STUN or TURN: the softphone is for a
browser that reaches the bridge directly, on the same machine or network), on the addresses of
`BRIDGE_WEBRTC_HOSTS` and on UDP ports from `BRIDGE_WEBRTC_PORTS` (docs/security.md), one port per
call (audio and the data channel are bundled on it).

aioice binds its host candidates on every interface (loopback excluded) on ephemeral ports, with no
setting for either; `_bind_host_candidates` replaces that one step of each connection's gathering
(it relies on aioice's `StunProtocol` and `Connection._protocols`, pinned in pyproject.toml).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from bridge.errors import BridgeError
from bridge.telephony.leg import CallStarted

# aiortc and PyAV cost ~35 MB RSS on import: they load with the first softphone offer, not at start-up
# (bridge/web/phone.py mounts the routes with only this module's policy part imported).
if TYPE_CHECKING:
    from aioice.candidate import Candidate
    from aioice.ice import Connection, StunProtocol
    from aiortc import RTCPeerConnection

    from bridge.telephony.webrtc.leg import WebRtcLeg

WILDCARDS = frozenset({"0.0.0.0", "::", ""})


class WebRtcError(BridgeError):
    """The offer cannot be answered (malformed SDP, no audio, no free UDP port)."""


@dataclass(frozen=True, slots=True)
class IcePolicy:
    """Where the bridge's host candidates live."""

    hosts: tuple[str, ...]
    port_min: int
    port_max: int

    @classmethod
    def from_settings(cls, hosts: str | None, ports: str, bind_host: str) -> IcePolicy:
        """`hosts`: comma-separated addresses (BRIDGE_WEBRTC_HOSTS); unset: `bind_host` when it is
        one address, else every IPv4 interface address and 127.0.0.1. `ports`: "MIN-MAX"."""
        if hosts:
            chosen = tuple(h.strip() for h in hosts.split(",") if h.strip())
        elif bind_host not in WILDCARDS:
            chosen = (bind_host,)
        else:
            from aioice.ice import get_host_addresses  # aioice alone is light (~3 MB)

            chosen = (*get_host_addresses(use_ipv4=True, use_ipv6=False), "127.0.0.1")
        low, high = parse_port_range(ports)
        return cls(chosen, low, high)


def parse_port_range(text: str) -> tuple[int, int]:
    low_text, sep, high_text = text.partition("-")
    try:
        low, high = int(low_text), int(high_text if sep else low_text)
    except ValueError:
        raise WebRtcError(f"BRIDGE_WEBRTC_PORTS must be MIN-MAX (UDP ports), got {text!r}") from None
    if not (1024 <= low <= high <= 65535):
        raise WebRtcError(f"BRIDGE_WEBRTC_PORTS must be MIN-MAX within 1024-65535, got {text!r}")
    return low, high


async def _bind_in_range(
    connection: Connection, address: str, port_min: int, port_max: int
) -> tuple[asyncio.DatagramTransport, StunProtocol]:
    from aioice.ice import StunProtocol

    loop = asyncio.get_running_loop()
    ports = list(range(port_min, port_max + 1))
    start = random.randrange(len(ports))
    for port in ports[start:] + ports[:start]:
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: StunProtocol(connection), local_addr=(address, port)
            )
        except OSError:
            continue
        return transport, protocol
    raise WebRtcError(f"no free UDP port on {address} in {port_min}-{port_max} (BRIDGE_WEBRTC_PORTS)")


async def _bind_host_candidates(
    policy: IcePolicy, connection: Connection, component: int, addresses: Sequence[str]
) -> list[Candidate]:
    """aioice's host-candidate step, on the policy's addresses and ports (`addresses` is ignored)."""
    from aioice.candidate import Candidate, candidate_foundation, candidate_priority

    candidates: list[Candidate] = []
    for address in policy.hosts:
        _transport, protocol = await _bind_in_range(connection, address, policy.port_min, policy.port_max)
        host, port = protocol.transport.get_extra_info("sockname")[:2]
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", host),
            component=component,
            transport="udp",
            priority=candidate_priority(component, "host"),
            host=host,
            port=port,
            type="host",
        )
        connection._protocols.append(protocol)
        candidates.append(protocol.local_candidate)
    return candidates


def _apply_policy(pc: RTCPeerConnection, policy: IcePolicy) -> None:
    gatherers = {id(t.receiver.transport.transport.iceGatherer): t for t in pc.getTransceivers()}
    found = [t.receiver.transport.transport.iceGatherer for t in gatherers.values()]
    if pc.sctp is not None:
        found.append(pc.sctp.transport.transport.iceGatherer)
    for gatherer in found:
        connection = gatherer._connection
        connection.get_component_candidates = partial(_bind_host_candidates, policy, connection)  # type: ignore[method-assign]


async def answer_offer(offer_sdp: str, started: CallStarted, policy: IcePolicy) -> tuple[WebRtcLeg, str]:
    """A connection for the browser's offer: (its leg, the SDP answer with every candidate)."""
    if "\nm=audio " not in "\n" + offer_sdp.replace("\r\n", "\n"):
        raise WebRtcError("the SDP offer has no audio")
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # lazy: see the imports

    from bridge.telephony.webrtc.leg import WebRtcLeg

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    leg = WebRtcLeg(pc, started)
    try:
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            _apply_policy(pc, policy)
            await pc.setLocalDescription(await pc.createAnswer())  # gathers every candidate (no trickle)
        except (ValueError, KeyError, IndexError, AttributeError) as exc:
            raise WebRtcError(f"the SDP offer cannot be answered: {exc}") from exc
    except BaseException:
        await leg.close()
        raise
    return leg, pc.localDescription.sdp
