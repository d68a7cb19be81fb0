"""Registration with a SIP registrar, with pyVoIP 1.6.8 where it is sound.

pyVoIP (GPL-3.0, optional `sip` extra, imported lazily) builds and digest-authenticates the REGISTER
requests (`SIPClient.gen_first_response` / `gen_register` / `gen_authorization`) and parses the
registrar's challenges (`SIPMessage`). Its call path (`VoIPPhone` / `VoIPCall` / `RTPClient`) is not
used: every gap that real PBXs hit lives there (see docs/sip.md). The transactions go through the
endpoint's socket (`RequestTransport.request`); the loop refreshes at 80 % of the granted expiry and
retries with back-off (5 s doubling to 5 min), reporting failures in `Registration` instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Protocol

from bridge.errors import ProtocolError
from bridge.telephony.sip.message import SipMessage, header_param

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Registration:
    """What `status()` reports about registration."""

    mode: str  # "register" | "trunk" | "off"
    state: str = "off"  # off | registering | registered | failed
    registrar: str = ""
    last_error: str = ""
    attempts: int = 0
    failures: int = 0
    registered_at: float = 0.0
    expires_s: int = 0


class RegistrationError(ProtocolError):
    """The registrar did not accept our REGISTER (named: timeout, credentials, status)."""


class RequestTransport(Protocol):
    """What registration needs of the SIP endpoint."""

    advertised_ip: str
    port: int

    async def request(
        self, data: bytes, branch: str, addr: tuple[str, int], timeout_s: float = 8.0
    ) -> SipMessage | None: ...

    async def refresh_server_ips(self) -> None: ...

    async def resolve(self, hostport: tuple[str, int]) -> tuple[str, int]: ...


class Registrar:
    """REGISTER transactions and the refresh loop for one endpoint."""

    def __init__(
        self,
        transport: RequestTransport,
        status: Registration,
        *,
        server: tuple[str, int] | None,
        user: str,
        password: str | None,
        timeout_s: float = 4.0,
    ) -> None:
        self.transport = transport
        self.status = status
        self.server = server
        self.user = user
        self.password = password
        self.timeout_s = timeout_s
        self._task: asyncio.Task[None] | None = None
        self._pyvoip: Any = None
        self._closing = False

    def start(self) -> None:
        if self.status.mode == "register":
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="sip-register")

    async def cancel(self) -> None:
        """Stop refreshing (before the calls are hung up)."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def deregister(self) -> None:
        """Best effort, bounded to 1 s: only when registered."""
        if self.status.state == "registered":
            self.timeout_s = min(self.timeout_s, 1.0)
            with contextlib.suppress(Exception):
                await self.register_once(deregister=True)
            self.status.state = "off"

    def _client(self) -> Any:
        if self._pyvoip is None:
            import pyVoIP.VoIP  # noqa: F401 - lazy (GPL-3.0, `sip` extra); first, or pyVoIP.SIP half-imports
            from pyVoIP.SIP import SIPClient

            assert self.server is not None
            phone_shim = type("PhoneShim", (), {"_status": None})()
            self._pyvoip = SIPClient(
                self.server[0],
                self.server[1],
                self.user,
                self.password or "",
                phone=phone_shim,
                myIP=self.transport.advertised_ip,
                myPort=self.transport.port,
            )
        return self._pyvoip

    async def register_once(self, deregister: bool = False) -> None:
        """One REGISTER transaction (with digest). Raises `RegistrationError` naming the failure."""
        client = self._client()
        from pyVoIP.SIP import SIPMessage as PyVoipMessage

        assert self.server is not None
        transport = self.transport
        await transport.refresh_server_ips()
        addr = await transport.resolve(self.server)
        first = client.gen_first_response(deregister=deregister)
        resp = await transport.request(first.encode(), _branch_of(first), addr, timeout_s=self.timeout_s)
        if resp is None:
            raise RegistrationError(
                f"no response from registrar {addr[0]}:{addr[1]} within {self.timeout_s:g} s"
            )
        if resp.status == 401:
            challenge = PyVoipMessage(_raw_for_pyvoip(resp))
            if "qop" in challenge.authentication:
                raise RegistrationError("registrar wants qop digest, which pyVoIP 1.6.8 cannot answer")
            second = client.gen_register(challenge, deregister=deregister)
            resp = await transport.request(
                second.encode(), _branch_of(second), addr, timeout_s=self.timeout_s
            )
            if resp is None:
                raise RegistrationError(
                    f"no response from registrar {addr[0]}:{addr[1]} to the authenticated REGISTER"
                )
            if resp.status in (401, 403):
                raise RegistrationError(
                    f"registrar rejected the credentials ({resp.status} {resp.reason}): "
                    "check SIP_USER / SIP_PASSWORD"
                )
        if resp.status == 407:
            raise RegistrationError("registrar wants proxy authentication (407), which is not supported")
        if not 200 <= resp.status < 300:
            raise RegistrationError(f"registrar answered {resp.status} {resp.reason}")
        expires = resp.get("Expires")
        contact_exp = header_param(resp.get("Contact"), "expires")
        value = contact_exp or expires
        self.status.expires_s = int(value) if value and value.isdigit() else client.default_expires

    async def _loop(self) -> None:
        reg = self.status
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
                    log.error(
                        "SIP: registration with %s failed: %s (retrying in %.0f s)",
                        reg.registrar,
                        exc,
                        backoff,
                    )
                reg.state = "failed"
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 300.0)
                continue
            if reg.state != "registered":
                log.info(
                    "SIP: registered as %s with %s (expires %d s)", self.user, reg.registrar, reg.expires_s
                )
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
            if self.status.state in ("registered", "failed"):
                return self.status.state == "registered"
            await asyncio.sleep(0.02)
        return False


def _branch_of(request: str) -> str:
    m = re.search(r"branch=([^;\s]+)", request)
    if not m:
        raise ProtocolError("generated request has no Via branch")
    return m.group(1)


def _raw_for_pyvoip(msg: SipMessage) -> bytes:
    """Re-serialise a response in the exact shape pyVoIP's parser expects (`Name: value`, CRLF)."""
    lines = [msg.start] + [f"{k}: {v}" for k, v in msg.headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + msg.body
