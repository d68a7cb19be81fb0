"""Start and stop the SIP leg from the app lifespan.

    service = await start_sip(settings, on_call)   # returns at once; registration runs behind
    service.status()                               # for /healthz, /metrics, `ivr-bridge serve`
    await service.stop()                           # hangs up calls, deregisters, closes sockets

Modes, from the SIP_* settings:
- `register`: SIP_SERVER + SIP_USER + SIP_PASSWORD. Registers (pyVoIP digest), refreshes, and
  retries with back-off; a failure shows in `status()` and the log and never blocks start-up.
- `trunk`: no password. No registration; requests are taken from SIP_SERVER's address only (a PBX
  trunk or SBC), or from anyone if SIP_SERVER is unset (SIP_USER alone enables SIP).

Trusted sources (both modes): SIP_SERVER's addresses (resolved at start and, when registering, on
every REGISTER) plus SIP_TRUSTED_PEERS; anything else gets 403 or nothing (SIP_UNTRUSTED_ACTION).
Admission: the `admission` slots (shared with the Twilio leg by the app; max_calls of its own when
none are given) bound the calls in progress; beyond them INVITEs get 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from bridge.errors import ConfigError
from bridge.limits import Slots
from bridge.settings import Settings
from bridge.telephony.rtp.ticker import ticker_for_loop
from bridge.telephony.sip.endpoint import OnCall, SipEndpoint
from bridge.telephony.sip.policy import SourcePolicy, parse_trusted_peers
from bridge.telephony.sip.registration import Registration

log = logging.getLogger(__name__)

DEFAULT_RTP_PORTS = (10000, 20000)


class SipService:
    def __init__(self, endpoint: SipEndpoint) -> None:
        self.endpoint = endpoint

    def status(self) -> dict[str, Any]:
        status = self.endpoint.status()
        status["enabled"] = True
        status["rtp_streams"] = ticker_for_loop().active
        return status

    @property
    def port(self) -> int:
        return self.endpoint.port

    async def wait_registered(self, timeout_s: float = 5.0) -> bool:
        return await self.endpoint.wait_registered(timeout_s)

    def refuse_new_calls(self) -> None:
        """Drain: new INVITEs get 503 from now on; calls in progress go on."""
        self.endpoint.core.closing = True

    async def stop(self) -> None:
        await self.endpoint.close()


def _advertised_ip(settings: Settings, bind_host: str) -> str:
    if settings.sip_public_ip:
        return settings.sip_public_ip
    if bind_host not in ("0.0.0.0", ""):
        return bind_host
    # The address the kernel would use toward the server (no packet is sent).
    probe = settings.sip_server or "192.0.2.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((probe, settings.sip_port))
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def source_policy(settings: Settings) -> SourcePolicy:
    """The trust policy from the settings, before SIP_SERVER is resolved. Raises `ConfigError` for a
    bad SIP_TRUSTED_PEERS entry."""
    peers = parse_trusted_peers(settings.sip_trusted_peers)
    open_to_all = not settings.sip_server and not peers  # lab trunk: SIP_USER alone
    return SourcePolicy(peers=peers, action=settings.sip_untrusted_action, open_to_all=open_to_all)


async def start_sip(
    settings: Settings,
    on_call: OnCall,
    *,
    bind_host: str = "0.0.0.0",
    rtp_ports: tuple[int, int] | None = DEFAULT_RTP_PORTS,
    answer_delay_ms: int = 0,
    register_timeout_s: float = 4.0,
    admission: Slots | None = None,
) -> SipService:
    """Bind the SIP socket on SIP_LOCAL_PORT and start registering (if configured).

    Returns as soon as the socket is bound: registration runs in the background and its state is
    in `status()`. Raises `ConfigError` if the port cannot be bound, SIP_TRUSTED_PEERS has a bad
    entry, or (trunk mode) SIP_SERVER does not resolve.
    `on_call(leg)` runs once per answered call; when it returns the call is hung up.
    `admission`: the process's call slots (shared with the Twilio leg); a slot is taken when an
    INVITE is accepted and given back when that call ends. Own `Slots(max_calls)` when None.
    """
    loop = asyncio.get_running_loop()
    register = bool(settings.sip_server and settings.sip_user and settings.sip_password)
    server = (settings.sip_server, settings.sip_port) if settings.sip_server else None
    mode = "register" if register else "trunk"
    registration = Registration(mode=mode, registrar=f"{server[0]}:{server[1]}" if server else "")
    policy = source_policy(settings)
    advertised = _advertised_ip(settings, bind_host)
    endpoint = SipEndpoint(
        user=settings.sip_user or "bridge",
        advertised_ip=advertised,
        on_call=on_call,
        registration=registration,
        server=server,
        password=settings.sip_password,
        policy=policy,
        admission=admission if admission is not None else Slots(settings.max_calls),
        rtp_bind=bind_host,
        rtp_ports=rtp_ports,
        answer_delay_ms=answer_delay_ms,
        register_timeout_s=register_timeout_s,
    )
    await endpoint.refresh_server_ips()
    if server is not None and not policy.server_ips and not register:
        raise ConfigError(f"SIP_SERVER {server[0]!r} does not resolve: the trunk's address is unknown")
    if policy.open_to_all:
        log.warning(
            "SIP: neither SIP_SERVER nor SIP_TRUSTED_PEERS is set: SIP requests from ANY address "
            "are served (lab use only)"
        )
    try:
        await loop.create_datagram_endpoint(lambda: endpoint, local_addr=(bind_host, settings.sip_local_port))
    except OSError as exc:
        raise ConfigError(f"SIP_LOCAL_PORT {settings.sip_local_port} on {bind_host}: {exc}") from exc
    if register:
        try:
            import pyVoIP  # noqa: F401 - the `sip` extra
        except ImportError:
            registration.state = "failed"
            registration.last_error = "pyVoIP is not installed: pip install 'ivr-bridge[sip]'"
            log.error("SIP: %s", registration.last_error)
        else:
            registration.state = "registering"
            endpoint.start_registration()
    log.info(
        "SIP: listening on %s:%d (advertised %s), mode %s%s; trusted sources: %s; at most %d calls",
        bind_host,
        endpoint.port,
        advertised,
        mode,
        f", registrar {registration.registrar}" if register else "",
        policy.describe(),
        endpoint.admission.limit if endpoint.admission else 0,
    )
    return SipService(endpoint)
