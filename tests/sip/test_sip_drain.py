"""Graceful drain of a real `ivr-bridge serve` process with the SIP leg (SIGTERM), a SIPp call in progress.

The bridge is a subprocess (SIP in trunk mode on a free port, agent steps on a stand-in realtime server in
the test process); the caller is SIPp, its SDP media port the test's `RtpPeer`, which records what the
bridge sends and streams caller audio back. A second SIPp instance places a new call during the drain.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.realtime_standin import StandinRealtime, StandinSession
from tests.helpers.signals import pcm, tone
from tests.helpers.sysdeps import require_binary
from tests.sip.conftest import SippResult, free_udp_port, render, run_sipp
from tests.sip.e2e_helpers import RtpPeer, sipp_caller
from tests.test_drain import DRAIN_S, start_bridge

pytestmark = [pytest.mark.sip, pytest.mark.slow]

TRANSFER_TO = "+15550188"


async def configured(standin: StandinRealtime) -> StandinSession:
    session = await standin.next_session(15)
    await asyncio.wait_for(session.updated.wait(), 5)
    return session


async def refused_with_503(sip_port: int, workdir: Path) -> SippResult:
    scen = render("uac_refused.xml", workdir / "refused.xml", STATUS=503, CHECK_RE="Retry-After: [0-9]+")
    return await run_sipp(scen, sip_port, service="late", workdir=workdir, timeout_s=10)


async def sigterm_drain(
    standin: StandinRealtime, tmp_path: Path, *, scenario: str, **env: str
) -> tuple[SippResult, RtpPeer, float, float, str]:
    """One SIPp call in progress, SIGTERM, a new INVITE refused, the call goes on then is ended.

    Returns (the in-progress call's SIPp result, its RtpPeer, SIGTERM time, SIPp end time, bridge log)."""
    require_binary("sipp")
    sip_port = free_udp_port()
    sip_env = {"SIP_USER": "bridge", "SIP_SERVER": "127.0.0.1", "SIP_LOCAL_PORT": str(sip_port), **env}
    proc, url = await start_bridge(tmp_path, standin, **sip_env)
    log_path = tmp_path / "bridge.log"
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    late_dir = tmp_path / "late"
    late_dir.mkdir()
    try:
        async with RtpPeer() as peer:
            if scenario == "refer":
                scen = render("uac_refer.xml", live_dir / "caller.xml", LISTEN_PORT=peer.port)
            else:
                scen = sipp_caller(live_dir, peer.port, "", wait_bye_ms=30_000)
            live = asyncio.create_task(
                run_sipp(scen, sip_port, service="main", workdir=live_dir, timeout_s=40)
            )
            session = await configured(standin)
            await peer.wait_media()

            proc.send_signal(signal.SIGTERM)
            term_at = asyncio.get_running_loop().time()
            term_wall = time.monotonic()
            async with httpx.AsyncClient() as http:
                while (await http.get(url + "/readyz")).status_code != 503:
                    assert time.monotonic() - term_wall < 0.5, "/readyz still 200 after SIGTERM"
                    await asyncio.sleep(0.01)

            # A new INVITE during the drain: 503, and nothing else.
            late = await refused_with_503(sip_port, late_dir)
            assert late.returncode == 0, late.errors or late.stderr or late.stdout[-2000:]
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(url + "/metrics")).text
            assert 'ivr_bridge_admission_rejections_total{leg="sip",reason="draining"} 1' in metrics
            assert session.ws is not None

            # The call in progress goes on both ways: the caller's audio reaches the model...
            before = len(session.appended)
            await peer.send_pcm(pcm(tone(300, 0.6, 8000)))
            reached = await _wait(lambda: len(session.appended) - before >= 0.5 * 24000 * 2, 5)
            assert reached, "caller audio stopped reaching the model after SIGTERM"
            # ... and the model's answer reaches the caller.
            replied_at = asyncio.get_running_loop().time()
            await session.reply_audio(pcm(tone(440, 0.5, 24000)), realtime=2.0)
            heard = await _wait(lambda: len(peer.voiced(since=replied_at)) >= 15, 10)
            assert heard, "the model's reply after SIGTERM was not heard"
            assert proc.returncode is None

            result = await live
            ended_at = asyncio.get_running_loop().time()
        rc = await asyncio.wait_for(proc.wait(), 40)
        log = log_path.read_text()
        assert rc == 0, log[-3000:]
        print(
            f"SIP drain: call ended {ended_at - term_at:.1f} s, process exited "
            f"{time.monotonic() - term_wall:.1f} s after SIGTERM (BRIDGE_DRAIN_S={DRAIN_S})"
        )
        return result, peer, term_at, ended_at, log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _wait(predicate: object, timeout_s: float) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


def _assert_drain_line_heard(peer: RtpPeer, term_at: float, ended_at: float) -> None:
    # Nothing voiced between the model's reply and the drain time; then the drain line (~4 s of speech).
    line = peer.voiced(since=term_at + DRAIN_S - 0.2, until=ended_at)
    assert len(line) * 20 >= 1500, f"the drain line was not heard ({len(line) * 20} ms voiced)"
    assert line[0].at - term_at >= DRAIN_S - 0.2


async def test_sigterm_with_a_sip_call_refuses_invites_then_hangs_up_after_the_drain_line(
    standin: StandinRealtime, tmp_path: Path
) -> None:
    result, peer, term_at, ended_at, log = await sigterm_drain(standin, tmp_path, scenario="bye")
    # SIPp exits 0 only when the bridge ended the call with a BYE it could answer.
    assert result.returncode == 0, result.errors or result.stderr or result.stdout[-2000:]
    assert ended_at - term_at >= DRAIN_S, "the call was ended before BRIDGE_DRAIN_S"
    _assert_drain_line_heard(peer, term_at, ended_at)
    assert "drain time up: ending 1 call(s)" in log


async def test_sigterm_with_a_sip_call_transfers_it_with_refer_after_the_drain_line(
    standin: StandinRealtime, tmp_path: Path
) -> None:
    result, peer, term_at, ended_at, _ = await sigterm_drain(
        standin, tmp_path, scenario="refer", BRIDGE_DRAIN_TRANSFER_TO=TRANSFER_TO
    )
    # uac_refer.xml: the bridge sent REFER (202, NOTIFY 200 sipfrag), then BYE: SIPp exits 0.
    assert result.returncode == 0, result.errors or result.stderr or result.stdout[-2000:]
    assert ended_at - term_at >= DRAIN_S
    _assert_drain_line_heard(peer, term_at, ended_at)
