"""Start and stop the SIP leg from the app lifespan.

    service = await start_sip(settings, on_call)   # returns at once; registration runs behind
    service.status()                               # for /healthz, /metrics, `ivr-bridge serve`
    await service.stop()                           # hangs up calls, deregisters, closes sockets

Modes, from the SIP_* settings:
- `register`: SIP_SERVER + SIP_USER + SIP_PASSWORD. Registers (pyVoIP digest), refreshes, and
  retries with back-off; a failure shows in `status()` and the log and never blocks start-up.
- `trunk`: no password. No registration; INVITEs are taken from SIP_SERVER's address only (a PBX
  trunk or SBC), or from anyone if SIP_SERVER is unset (SIP_USER alone enables SIP).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any

from bridge.errors import ConfigError
from bridge.settings import Settings
from bridge.telephony.rtp import ticker_for_loop
from bridge.telephony.sip import OnCall, Registration, SipEndpoint

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


def _resolve_ip(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        try:
            return socket.gethostbyname(host)
        except OSError as exc:
            raise ConfigError(f"SIP_SERVER {host!r} does not resolve: {exc}") from exc


async def start_sip(settings: Settings, on_call: OnCall, *, bind_host: str = "0.0.0.0",
                    rtp_ports: tuple[int, int] | None = DEFAULT_RTP_PORTS, answer_delay_ms: int = 0,
                    register_timeout_s: float = 4.0) -> SipService:
    """Bind the SIP socket on SIP_LOCAL_PORT and start registering (if configured).

    Returns as soon as the socket is bound: registration runs in the background and its state is
    in `status()`. Raises `ConfigError` if the port cannot be bound or SIP_SERVER does not resolve.
    `on_call(leg)` runs once per answered call; when it returns the call is hung up.
    """
    loop = asyncio.get_running_loop()
    register = bool(settings.sip_server and settings.sip_user and settings.sip_password)
    server = (settings.sip_server, settings.sip_port) if settings.sip_server else None
    mode = "register" if register else "trunk"
    registration = Registration(mode=mode, registrar=f"{server[0]}:{server[1]}" if server else "")
    trusted = None
    if not register and server is not None:
        trusted = frozenset({_resolve_ip(server[0]), "127.0.0.1"} if server[0] in ("localhost",) else
                            {_resolve_ip(server[0])})
    advertised = _advertised_ip(settings, bind_host)
    endpoint = SipEndpoint(user=settings.sip_user or "bridge", advertised_ip=advertised, on_call=on_call,
                           registration=registration, server=server, password=settings.sip_password,
                           trusted_ips=trusted, rtp_bind=bind_host, rtp_ports=rtp_ports,
                           answer_delay_ms=answer_delay_ms, register_timeout_s=register_timeout_s)
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
    log.info("SIP: listening on %s:%d (advertised %s), mode %s%s", bind_host, endpoint.port, advertised, mode,
             f", registrar {registration.registrar}" if register else "")
    return SipService(endpoint)
