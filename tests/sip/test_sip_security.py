"""Who the SIP leg serves, and how many: real peers on loopback (Kamailio as registrar, SIPp callers).

Linux loopback answers on all of 127/8, so a SIPp bound to 127.0.0.2 is "another host": Kamailio and
the bridge listen on 127.0.0.1. In registration mode the bridge serves only the registrar (Kamailio,
127.0.0.1) and SIP_TRUSTED_PEERS; a caller who skips the registrar gets 403 (or nothing), counted in
/metrics, while the same caller going through the registrar is served. Beyond max_calls, INVITEs get
503 with Retry-After and the calls in progress carry on untouched.
"""

from __future__ import annotations

import asyncio
import audioop
import itertools
import math
import re
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest

from bridge.limits import Slots
from bridge.metrics import METRICS
from bridge.settings import Settings
from bridge.telephony.rtp.packet import parse_packet
from bridge.telephony.sip.leg import SipLeg
from bridge.telephony.sip.service import SipService, start_sip
from tests.helpers.servers import serve
from tests.helpers.sysdeps import require_binary
from tests.sip.conftest import Kamailio, free_udp_port, render, run_sipp

pytestmark = pytest.mark.sip

OUTSIDER = "127.0.0.2"  # a host that is neither the registrar nor (unless configured) a trusted peer
OTHER_METHODS = ["OPTIONS", "BYE", "CANCEL", "REFER", "NOTIFY", "MESSAGE", "INFO", "SUBSCRIBE"]
DIALPLANS = Path(__file__).resolve().parents[2] / "dialplans"


def chirp_frames(seconds: float) -> list[bytes]:
    """µ-law 20 ms frames of a rising tone: every frame differs, so order and loss are visible."""
    n = int(8000 * seconds)
    t = np.arange(n) / 8000
    pcm = (8000 * np.sin(2 * math.pi * (300 * t + 200 * t * t))).astype("<i2").tobytes()
    ulaw = audioop.lin2ulaw(pcm, 2)
    return [ulaw[i : i + 160] for i in range(0, len(ulaw) - 159, 160)]


class Sink:
    """The caller's SDP media port on `host`: records every RTP packet the bridge sends."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.packets: list[tuple[float, bytes]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 2048)
            self.packets.append((loop.time(), data))

    def __enter__(self) -> Sink:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
        self.sock.close()

    def heard(self, ssrc: int | None = None) -> bytes:
        packets = [parse_packet(p) for _, p in self.packets]
        return b"".join(p.payload for p in packets if ssrc is None or p.ssrc == ssrc)


class Calls:
    """The call handler: plays `frames`, waits until they were sent, hangs up; counts calls."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames
        self.started = 0
        self.ended: list[str] = []

    async def __call__(self, leg: SipLeg) -> None:
        from bridge.telephony.leg import CallEnded, CallStarted, MarkPlayed

        async for event in leg.events():
            if isinstance(event, CallStarted):
                self.started += 1
                for frame in self.frames:
                    await leg.send_audio(frame)
                await leg.send_mark("done")
            elif isinstance(event, MarkPlayed) and event.name == "done":
                await leg.hang_up()
            elif isinstance(event, CallEnded):
                self.ended.append(event.reason)


async def registered(kamailio: Kamailio, handler: Calls, **settings: object) -> SipService:
    values: dict[str, object] = {
        "sip_server": "127.0.0.1",
        "sip_port": kamailio.port,
        "sip_user": "bridge",
        "sip_password": "secret",
        "sip_local_port": free_udp_port(),
    }
    values.update(settings)
    svc = await start_sip(Settings(**values), handler, bind_host="127.0.0.1", rtp_ports=None)  # type: ignore[arg-type]
    assert await svc.wait_registered(5.0), svc.status()
    return svc


def untrusted(method: str, action: str) -> float:
    return METRICS.sip_untrusted.value(method=method, action=action)


async def call_and_hear(
    target_port: int, tmp_path: Path, frames: list[bytes], *, local_ip: str, service: str = "bridge"
) -> tuple[int, str, bytes]:
    """A SIPp caller on `local_ip` that waits for the bridge's BYE; returns (exit code, errors, heard)."""
    with Sink(local_ip) as sink:
        scen = render("uac_wait_bye.xml", tmp_path / "call.xml", LISTEN_PORT=sink.port)
        res = await run_sipp(scen, target_port, workdir=tmp_path, local_ip=local_ip, service=service)
        await asyncio.sleep(0.1)
        heard = sink.heard()
    return res.returncode, res.errors or res.stderr, heard


# ---------------------------------------------------------------------------------------------------


async def test_registration_mode_refuses_an_invite_that_skips_the_registrar(
    kamailio: Kamailio, tmp_path: Path
) -> None:
    frames = chirp_frames(1.0)
    calls = Calls(frames)
    svc = await registered(kamailio, calls)
    try:
        before = untrusted("INVITE", "reject")
        # straight to the bridge's SIP port from another host: 403, no call, no RTP
        scen = render(
            "uac_refused.xml", tmp_path / "refused.xml", STATUS=403, CHECK_RE="SIP/2.0 403 Forbidden"
        )
        res = await run_sipp(scen, svc.port, workdir=tmp_path, local_ip=OUTSIDER)
        assert res.returncode == 0, res.errors or res.stderr
        assert untrusted("INVITE", "reject") == before + 1
        assert calls.started == 0
        assert svc.status()["calls_total"] == 0
        # the same caller through the registrar (Kamailio relays from 127.0.0.1): served, heard, BYE
        code, errors, heard = await call_and_hear(kamailio.port, tmp_path, frames, local_ip=OUTSIDER)
        assert code == 0, errors
        assert b"".join(frames) in heard
        assert calls.started == 1
        assert calls.ended == ["hangup"]
        assert untrusted("INVITE", "reject") == before + 1  # the relayed call was not counted
    finally:
        await svc.stop()


async def test_drop_mode_sends_nothing_to_an_untrusted_caller(kamailio: Kamailio, tmp_path: Path) -> None:
    calls = Calls(chirp_frames(0.5))
    svc = await registered(kamailio, calls, sip_untrusted_action="drop")
    try:
        before = untrusted("INVITE", "drop")
        scen = render("uac_unanswered.xml", tmp_path / "silence.xml", SILENCE_MS=2500)
        res = await run_sipp(scen, svc.port, workdir=tmp_path, local_ip=OUTSIDER)
        # SIPp fails the call on any response (100, 403, ...): exit 0 means the bridge stayed silent
        assert res.returncode == 0, res.errors or res.stderr
        assert untrusted("INVITE", "drop") >= before + 3  # the INVITE and its retransmissions
        assert calls.started == 0
        assert svc.status()["untrusted"] >= 3
        # the registrar (and its OPTIONS qualify from 127.0.0.1) is still served
        res = await run_sipp(render("uac_options.xml", tmp_path / "options.xml"), svc.port, workdir=tmp_path)
        assert res.returncode == 0, res.errors or res.stderr
    finally:
        await svc.stop()


async def test_a_trusted_peer_calls_directly_and_its_neighbour_does_not(
    kamailio: Kamailio, tmp_path: Path
) -> None:
    frames = chirp_frames(1.0)
    calls = Calls(frames)
    svc = await registered(kamailio, calls, sip_trusted_peers="10.1.0.0/16, 127.0.0.2, ::1")
    try:
        code, errors, heard = await call_and_hear(svc.port, tmp_path, frames, local_ip="127.0.0.2")
        assert code == 0, errors
        assert b"".join(frames) in heard
        assert calls.ended == ["hangup"]
        scen = render("uac_refused.xml", tmp_path / "refused.xml", STATUS=403, CHECK_RE="SIP/2.0 403")
        res = await run_sipp(scen, svc.port, workdir=tmp_path, local_ip="127.0.0.3")
        assert res.returncode == 0, res.errors or res.stderr
        assert calls.started == 1
    finally:
        await svc.stop()


def _request(method: str, me: tuple[str, int], bridge_port: int, n: int) -> bytes:
    return (
        f"{method} sip:bridge@127.0.0.1:{bridge_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {me[0]}:{me[1]};branch=z9hG4bKsec{n};rport\r\n"
        f"From: <sip:x@{me[0]}>;tag=t{n}\r\nTo: <sip:bridge@127.0.0.1>\r\nCall-ID: sec-{n}\r\n"
        f"CSeq: 1 {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def _metric(text: str, method: str, action: str) -> float:
    m = re.search(
        rf'^ivr_bridge_sip_untrusted_requests_total{{method="{method}",action="{action}"}} (\S+)$', text, re.M
    )
    return float(m.group(1)) if m else 0.0


async def test_the_app_refuses_every_method_from_an_outsider_and_counts_it_in_metrics(
    kamailio: Kamailio, tmp_path: Path
) -> None:
    require_binary("sipp")
    sip_port = free_udp_port()
    settings = Settings(
        host="127.0.0.1",
        dialplans=DIALPLANS,
        sip_server="127.0.0.1",
        sip_port=kamailio.port,
        sip_user="acme-sec",
        sip_password="secret",
        sip_local_port=sip_port,
        log_level="WARNING",
    )
    from bridge.app import create_app

    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((OUTSIDER, 0))
    sock.setblocking(False)
    me = sock.getsockname()
    with serve(lambda port: create_app(settings.model_copy(update={"port": port}), preload_models=False)) as (
        url,
        _app,
    ):
        async with httpx.AsyncClient(base_url=url) as http:
            for _ in range(50):
                if (await http.get("/healthz")).json()["sip"].get("registration") == "registered":
                    break
                await asyncio.sleep(0.1)
            before = (await http.get("/metrics")).text
            scen = render("uac_refused.xml", tmp_path / "refused.xml", STATUS=403, CHECK_RE="SIP/2.0 403")
            res = await run_sipp(scen, sip_port, workdir=tmp_path, local_ip=OUTSIDER)
            assert res.returncode == 0, res.errors or res.stderr
            for n, method in enumerate([*OTHER_METHODS, "XFLOOD"]):
                sock.sendto(_request(method, me, sip_port, n), ("127.0.0.1", sip_port))
                reply = await asyncio.wait_for(loop.sock_recv(sock, 4096), 2)
                assert reply.startswith(b"SIP/2.0 403 Forbidden\r\n"), (method, reply[:60])
                assert f"CSeq: 1 {method}".encode() in reply
            # a forged response (say, a fake 200 to a REGISTER) is ignored, never answered
            fake = (
                b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKforged\r\n"
                b"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: forged\r\n"
                b"CSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
            )
            sock.sendto(fake, ("127.0.0.1", sip_port))
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(loop.sock_recv(sock, 4096), 0.5)
            after = (await http.get("/metrics")).text
            health = (await http.get("/healthz")).json()
    sock.close()
    assert health["sip"]["registration"] == "registered"  # the registrar's answers were not refused
    assert _metric(after, "INVITE", "reject") == _metric(before, "INVITE", "reject") + 1
    for method in OTHER_METHODS:
        assert _metric(after, method, "reject") == _metric(before, method, "reject") + 1, method
    assert _metric(after, "other", "reject") == _metric(before, "other", "reject") + 1  # XFLOOD
    assert _metric(after, "response", "drop") == _metric(before, "response", "drop") + 1
    assert 'method="XFLOOD"' not in after


async def test_calls_beyond_max_calls_get_503_and_the_calls_in_progress_carry_on(tmp_path: Path) -> None:
    frames = chirp_frames(3.0)
    calls = Calls(frames)
    slots = Slots(3)
    assert slots.try_acquire()  # a call on the Twilio leg holds one of the process's slots
    settings = Settings(sip_server="127.0.0.1", sip_user="bridge", sip_local_port=free_udp_port())
    svc = await start_sip(settings, calls, bind_host="127.0.0.1", rtp_ports=None, admission=slots)
    try:
        before = METRICS.admission_rejections.value(leg="sip", reason="max_calls")
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with Sink("127.0.0.1") as sink:
            scen = render("uac_wait_bye.xml", tmp_path / "a" / "call.xml", LISTEN_PORT=sink.port)
            two = asyncio.create_task(run_sipp(scen, svc.port, calls=2, rate=10, workdir=tmp_path / "a"))
            for _ in range(100):
                if svc.status()["calls_active"] == 2 and len(sink.packets) > 20:
                    break
                await asyncio.sleep(0.02)
            assert svc.status()["calls_active"] == 2
            assert slots.full
            busy = render(
                "uac_refused.xml", tmp_path / "b" / "busy.xml", STATUS=503, CHECK_RE="Retry-After: [0-9]+"
            )
            refused = await run_sipp(busy, svc.port, workdir=tmp_path / "b")
            assert refused.returncode == 0, refused.errors or refused.stderr
            assert svc.status()["calls_active"] == 2  # the refusal disturbed nothing
            res = await two
            await asyncio.sleep(0.1)
            packets = [(at, parse_packet(p)) for at, p in sink.packets]
        assert res.returncode == 0, res.errors or res.stderr  # both calls got the bridge's BYE
        assert METRICS.admission_rejections.value(leg="sip", reason="max_calls") == before + 1
        assert calls.started == 2
        assert calls.ended == ["hangup", "hangup"]
        ssrcs = {p.ssrc for _, p in packets}
        assert len(ssrcs) == 2
        for ssrc in ssrcs:
            stream = [(at, p) for at, p in packets if p.ssrc == ssrc]
            assert b"".join(frames) in b"".join(p.payload for _, p in stream)  # every frame, in order
            seqs = [p.sequence for _, p in stream]
            assert all(((b - a) & 0xFFFF) == 1 for a, b in itertools.pairwise(seqs))
            gaps = [b[0] - a[0] for a, b in itertools.pairwise(stream)]
            assert max(gaps) < 0.2, max(gaps)  # 50 packets/s throughout, the refusal included
        # the ended calls gave their slots back: a new call is served
        assert slots.in_use == 1
        code, errors, _ = await call_and_hear(
            svc.port, tmp_path / "b", chirp_frames(0.3), local_ip="127.0.0.1"
        )
        assert code == 0, errors
        assert slots.in_use == 1
    finally:
        await svc.stop()
        slots.release()
