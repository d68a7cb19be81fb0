"""The SIP endpoint: the thin asyncio shell around the sans-I/O `UasCore`.

One UDP socket. Each datagram goes to `UasCore.receive` with the loop's clock; the core's outputs
are carried out here: datagrams sent, timers run on the loop (fed back to `UasCore.on_timer`), next
hops resolved for our own requests, an RTP socket bound per offered call, and on answer a `SipLeg`
over that call's RTP started and handed to `on_call`. Registration (`registration.Registrar`) uses
the same socket and the core's client transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from bridge.errors import ProtocolError
from bridge.limits import RateLimiter, Slots
from bridge.telephony.rtp.endpoint import RtpEndpoint, open_rtp
from bridge.telephony.rtp.jitter import RtpReceiver
from bridge.telephony.rtp.packet import RtpStats
from bridge.telephony.rtp.sender import RtpSender
from bridge.telephony.rtp.ticker import ticker_for_loop
from bridge.telephony.sip.leg import SipLeg
from bridge.telephony.sip.message import SipMessage
from bridge.telephony.sip.policy import SourcePolicy
from bridge.telephony.sip.registration import Registrar, Registration
from bridge.telephony.sip.uas import (
    TRANSFER_WAIT_S,
    CallAnswered,
    CallEnded,
    CallOffered,
    CancelTimer,
    ClientRequest,
    DtmfReceived,
    MediaChanged,
    Output,
    RequestDone,
    Send,
    SetTimer,
    SipCall,
    TimerKey,
    UasCore,
)

log = logging.getLogger(__name__)

OnCall = Callable[[SipLeg], Awaitable[None]]
CLOSE_TRANSFER_WAIT_S = 5.0  # close(): how long accepted transfers get for their final NOTIFY


@dataclass(slots=True)
class CallMedia:
    """The I/O side of one call: its RTP socket, and once answered its leg and handler task."""

    rtp: RtpEndpoint
    rtp_port: int
    leg: SipLeg | None = None
    handler: asyncio.Task[None] | None = None


class _CallControl:
    """The leg's handle on its dialog (hang_up / transfer)."""

    def __init__(self, endpoint: SipEndpoint, call_id: str) -> None:
        self.endpoint = endpoint
        self.call_id = call_id

    async def hang_up(self) -> None:
        await self.endpoint.hang_up(self.call_id)

    async def transfer(self, target: str) -> bool:
        return await self.endpoint.transfer(self.call_id, target)


class SipEndpoint(asyncio.DatagramProtocol):
    """The SIP user agent: one UDP socket, registration, and the calls it answers."""

    def __init__(
        self,
        *,
        user: str,
        advertised_ip: str,
        on_call: OnCall,
        registration: Registration,
        server: tuple[str, int] | None = None,
        password: str | None = None,
        policy: SourcePolicy | None = None,
        admission: Slots | None = None,
        rtp_bind: str = "0.0.0.0",
        rtp_ports: tuple[int, int] | None = None,
        answer_delay_ms: int = 0,
        register_timeout_s: float = 4.0,
        reject_limiter: RateLimiter | None = None,
    ) -> None:
        self.core = UasCore(
            user=user,
            advertised_ip=advertised_ip,
            server=server,
            policy=policy,
            admission=admission,
            reject_limiter=reject_limiter,
            answer_delay_ms=answer_delay_ms,
        )
        self.user = self.core.user
        self.advertised_ip = advertised_ip
        self.on_call = on_call
        self.registration = registration
        self.server = server
        self.policy = self.core.policy
        self.admission = admission
        self.rtp_bind = rtp_bind
        self.rtp_ports = rtp_ports
        self.registrar = Registrar(
            self,
            registration,
            server=server,
            user=self.core.user,
            password=password,
            timeout_s=register_timeout_s,
        )
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.media: dict[str, CallMedia] = {}
        self._timers: dict[TimerKey, asyncio.TimerHandle] = {}
        self._waiters: dict[str, asyncio.Future[SipMessage | None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- transport -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.port = self.core.port = int(transport.get_extra_info("sockname")[1])

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP socket error: %s", exc)

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    @property
    def contact(self) -> str:
        return self.core.contact

    @property
    def calls(self) -> dict[str, SipCall]:
        return self.core.calls

    @property
    def counters(self) -> dict[str, int]:
        return self.core.counters

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.execute(self.core.receive(data, addr, self._now()))

    # -- carrying out the core's outputs ---------------------------------------------------------

    def execute(self, outputs: list[Output]) -> list[asyncio.Future[SipMessage | None]]:
        """Carry out the core's outputs in order. Returns the outcomes of the requests of ours they
        started (each a final response or None). Those transactions run in the core: cancelling an
        outcome does not stop them."""
        started: list[asyncio.Future[SipMessage | None]] = []
        for out in outputs:
            if isinstance(out, Send):
                self.send(out.data, out.addr)
            elif isinstance(out, SetTimer):
                self._set_timer(out.key, out.delay_s)
            elif isinstance(out, CancelTimer):
                handle = self._timers.pop(out.key, None)
                if handle is not None:
                    handle.cancel()
            elif isinstance(out, RequestDone):
                waiter = self._waiters.pop(out.branch, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(out.response)
            elif isinstance(out, ClientRequest):
                started.append(self._start_request(out))
            elif isinstance(out, CallOffered):
                self._spawn(self._start_media(out), f"sip-rtp-{out.call_id[:16]}")
            elif isinstance(out, CallAnswered):
                self._start_leg(out)
            elif isinstance(out, MediaChanged):
                self._change_media(out)
            elif isinstance(out, DtmfReceived):
                media = self.media.get(out.call_id)
                if media is not None and media.leg is not None:
                    media.leg.push_dtmf(out.digit)
            elif isinstance(out, CallEnded):
                self._end_media(out)
            # Refused: counted and logged by the core
        return started

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _set_timer(self, key: TimerKey, delay_s: float) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        self._timers[key] = asyncio.get_running_loop().call_later(delay_s, self._fire, key)

    def _fire(self, key: TimerKey) -> None:
        self._timers.pop(key, None)
        self.execute(self.core.on_timer(key, self._now()))

    # -- our requests ----------------------------------------------------------------------------

    async def request(
        self, data: bytes, branch: str, addr: tuple[str, int], timeout_s: float = 8.0
    ) -> SipMessage | None:
        """Send a non-INVITE request; retransmit (T1 doubling to T2) until a final response or
        `timeout_s`. Returns the final response or None."""
        waiter = self._waiters[branch] = asyncio.get_running_loop().create_future()
        try:
            self.execute(self.core.send_request(data, branch, addr, self._now(), timeout_s))
            return await waiter
        finally:
            self._waiters.pop(branch, None)

    def _start_request(self, req: ClientRequest) -> asyncio.Future[SipMessage | None]:
        """Send one of our in-dialog requests: at once to an address, after resolving a name."""
        waiter = self._waiters[req.branch] = asyncio.get_running_loop().create_future()
        try:
            ipaddress.ip_address(req.next_hop[0])
        except ValueError:
            self._spawn(self._resolve_and_send(req), f"sip-{req.method.lower()}-resolve")
        else:
            now = self._now()
            self.execute(self.core.send_request(req.data, req.branch, req.next_hop, now, req.timeout_s))
        return waiter

    async def _resolve_and_send(self, req: ClientRequest) -> None:
        try:
            addr = await self.resolve(req.next_hop)
        except OSError as exc:
            self.execute(self.core.request_failed(req.branch, str(exc)))
            return
        self.execute(self.core.send_request(req.data, req.branch, addr, self._now(), req.timeout_s))

    async def hang_up(self, call_id: str, reason: str = "hangup") -> None:
        """End the call from our side (BYE when answered, 480 while ringing); returns once the BYE
        transaction is over."""
        outcomes = self.execute(self.core.hang_up(call_id, reason))
        if outcomes:
            await asyncio.gather(*outcomes, return_exceptions=True)

    async def transfer(self, call_id: str, target: str) -> bool:
        """Blind transfer (REFER). True once the peer accepted it (2xx); the call then ends when the
        transfer completes (NOTIFY) or after 30 s. False if the peer refused or does not do REFER."""
        outcomes = self.execute(self.core.transfer(call_id, target))
        if not outcomes:
            return False
        [resp] = await asyncio.gather(*outcomes)
        return resp is not None and 200 <= resp.status < 300

    async def refresh_server_ips(self) -> None:
        """Resolve SIP_SERVER to all its addresses (A and AAAA) and trust them from now on. A failed
        lookup keeps the addresses already known (the registration reports the failure)."""
        if self.server is None:
            return
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                self.server[0], self.server[1], type=socket.SOCK_DGRAM
            )
        except OSError as exc:
            log.warning("SIP: %s does not resolve (%s); keeping its known addresses", self.server[0], exc)
            return
        if self.policy.set_server_ips(str(info[4][0]) for info in infos):
            log.info("SIP: trusted sources now %s", self.policy.describe())

    @staticmethod
    async def resolve(hostport: tuple[str, int]) -> tuple[str, int]:
        host, port = hostport
        try:
            ipaddress.ip_address(host)
            return host, port
        except ValueError:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_DGRAM, family=socket.AF_INET
            )
            return str(infos[0][4][0]), port

    # -- media and legs --------------------------------------------------------------------------

    async def _start_media(self, offered: CallOffered) -> None:
        loop = asyncio.get_running_loop()
        choice, offer = offered.choice, offered.offer
        stats = RtpStats()
        remote = (offer.address, offer.port)
        receiver = RtpReceiver(choice.encoding, choice.payload_type, choice.dtmf_pt, remote, stats)
        sender = RtpSender(choice.encoding, choice.payload_type, choice.dtmf_pt, stats=stats)
        # Callbacks are pointed at the leg on answer; anything before that is dropped.
        rtp = RtpEndpoint(receiver, sender, on_audio=_drop, on_dtmf=_drop, on_marks=_drop, clock=loop.time)
        try:
            port = await open_rtp(self.rtp_bind, self.rtp_ports, rtp)
        except ProtocolError as exc:
            self.execute(self.core.media_failed(offered.call_id, str(exc)))
            return
        if offered.hold:
            rtp.sending = False
        self.media[offered.call_id] = CallMedia(rtp, port)
        self.execute(self.core.media_ready(offered.call_id, port, self._now()))

    def _start_leg(self, answered: CallAnswered) -> None:
        media = self.media.get(answered.call_id)
        if media is None:
            return
        leg = SipLeg(
            answered.started, media.rtp.sender, _CallControl(self, answered.call_id), media.rtp.receiver.stats
        )
        media.leg = leg
        holder_set(media.rtp, leg)
        ticker_for_loop().add(media.rtp)
        media.handler = asyncio.get_running_loop().create_task(
            self._run_handler(answered.call_id, leg), name=f"sip-call-{answered.call_id[:16]}"
        )

    def _change_media(self, change: MediaChanged) -> None:
        media = self.media.get(change.call_id)
        if media is None:
            return
        if change.remote is not None:
            media.rtp.remote = change.remote
            media.rtp.receiver.remote = change.remote
        media.rtp.sending = change.sending

    def _end_media(self, ended: CallEnded) -> None:
        media = self.media.pop(ended.call_id, None)
        if media is None:
            return
        ticker_for_loop().remove(media.rtp)
        media.rtp.close()
        if media.leg is not None:
            media.leg.end(ended.reason)

    async def _run_handler(self, call_id: str, leg: SipLeg) -> None:
        try:
            await self.on_call(leg)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("SIP: call handler failed for %s", call_id)
        finally:
            await self._transfer_done(call_id, leg)
            await self.hang_up(call_id)

    async def _transfer_done(self, call_id: str, leg: SipLeg) -> None:
        """After an accepted REFER the call is the transferee's to end: the core hangs up on the final
        NOTIFY, or after TRANSFER_WAIT_S. A BYE sent as soon as the call's handler returns (the dialplan
        is done once the REFER is accepted) would overtake that NOTIFY and may abort the transfer at the
        far end (found by tests/sip/test_sip_drain.py: SIPp saw the BYE before its NOTIFY was answered)."""
        call = self.core.calls.get(call_id)
        if call is None or call.transfer != "accepted" or leg.ended is not None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(leg.done.wait(), TRANSFER_WAIT_S + 1.0)

    # -- registration ----------------------------------------------------------------------------

    @property
    def register_timeout_s(self) -> float:
        return self.registrar.timeout_s

    def start_registration(self) -> None:
        self.registrar.start()

    async def register_once(self, deregister: bool = False) -> None:
        await self.registrar.register_once(deregister)

    async def wait_registered(self, timeout_s: float) -> bool:
        return await self.registrar.wait_registered(timeout_s)

    # -- lifecycle -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Hang up every call, deregister (best effort, bounded), close the socket."""
        self.core.closing = True
        await self.registrar.cancel()
        await self._transfers_done(CLOSE_TRANSFER_WAIT_S)
        active = [c.invite.call_id for c in self.core.active_calls()]
        handlers = [
            m.handler
            for cid in active
            if (m := self.media.get(cid)) is not None and m.handler is not None and not m.handler.done()
        ]
        await asyncio.gather(*(self.hang_up(cid, reason="closed") for cid in active), return_exceptions=True)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await self.registrar.deregister()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for waiter in self._waiters.values():  # requests of ours still unanswered end here
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    async def _transfers_done(self, timeout_s: float) -> None:
        """Calls whose REFER was accepted (a drain's last transfers) get a moment for their final
        NOTIFY before `close()` hangs up: a BYE first may abort the transfer at the far end."""
        waits = [
            asyncio.ensure_future(media.leg.done.wait())
            for call in self.core.active_calls()
            if call.transfer == "accepted"
            and (media := self.media.get(call.invite.call_id)) is not None
            and media.leg is not None
        ]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=timeout_s)
            for waiter in pending:
                waiter.cancel()

    def status(self) -> dict[str, Any]:
        reg = self.registration
        return {
            "mode": reg.mode,
            "registration": reg.state,
            "registrar": reg.registrar,
            "last_error": reg.last_error,
            "registration_attempts": reg.attempts,
            "registration_failures": reg.failures,
            "local": f"{self.advertised_ip}:{self.port}",
            "calls_active": len(self.core.active_calls()),
            **self.core.counters,
        }


def holder_set(endpoint: RtpEndpoint, leg: SipLeg) -> None:
    """Point the RTP endpoint's callbacks at the leg (frames before answer are dropped)."""
    endpoint.on_audio = leg.push_audio
    endpoint.on_dtmf = leg.push_dtmf
    endpoint.on_marks = leg.push_marks
    endpoint.receiver.listen(endpoint.clock() * 1000.0)  # silence filled in from now (silence_due)


def _drop(_: object) -> None:
    return None
