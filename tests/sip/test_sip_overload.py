"""Overload through the REAL app: BRIDGE_MAX_CALLS (Settings.max_calls) bounds the SIP calls; beyond it a
burst of SIPp INVITEs gets 503 + Retry-After while the calls in progress go on untouched.

The app is `create_app(settings)` under uvicorn (SIP trunk mode, records, dialplan runner; no speech
models: the dialplan plays a recorded prompt). The callers' SDP media port is the test's `RtpPeer`, so
every packet the admitted calls receive is recorded with its arrival time, and the prompt on the wire is
compared byte for byte with the file. (tests/sip/test_sip_security.py checks the same rule on the SIP
service alone with a handful of calls; this one goes through the app's own call slots.)
"""

from __future__ import annotations

import asyncio
import audioop
import itertools
from pathlib import Path

import httpx
import pytest

from bridge.metrics import METRICS
from bridge.settings import Settings
from tests.helpers.servers import serve
from tests.helpers.sysdeps import asterisk_sound
from tests.sip.conftest import free_udp_port, render, run_sipp
from tests.sip.e2e_helpers import RtpPeer, read_wav_pcm8k, sipp_caller, trim_silence, write_wav

pytestmark = [pytest.mark.sip]

MAX_CALLS = 4
BURST = 12
PROMPT_S = 4.0

DIALPLAN = """
numbers: {default: prompt}
flows:
  prompt:
    - play: {file: prompt.wav, barge_in: false}
    - hang_up: {}
"""


async def test_invites_beyond_max_calls_get_503_and_admitted_calls_play_every_frame(tmp_path: Path) -> None:
    pcm = read_wav_pcm8k(asterisk_sound("demo-congrats"))[: int(PROMPT_S * 16000)]
    plans = tmp_path / "plans"
    plans.mkdir()
    write_wav(plans / "prompt.wav", pcm)
    (plans / "main.yaml").write_text(DIALPLAN)
    expected = audioop.lin2ulaw(pcm, 2)
    sip_port = free_udp_port()
    settings = Settings(
        host="127.0.0.1",
        dialplans=plans,
        data_dir=tmp_path / "data",
        sip_server="127.0.0.1",
        sip_user="bridge",
        sip_local_port=sip_port,
        max_calls=MAX_CALLS,
        log_level="WARNING",
    )
    from bridge.app import create_app

    (tmp_path / "in").mkdir()
    (tmp_path / "busy").mkdir()
    (tmp_path / "after").mkdir()
    with serve(lambda port: create_app(settings.model_copy(update={"port": port}))) as (url, _app):
        async with RtpPeer() as peer, httpx.AsyncClient(base_url=url) as http:
            before = METRICS.admission_rejections.value(leg="sip", reason="max_calls")
            scen = sipp_caller(tmp_path / "in", peer.port, "", wait_bye_ms=int(PROMPT_S * 1000) + 10_000)
            admitted = asyncio.create_task(
                run_sipp(scen, sip_port, calls=MAX_CALLS, rate=20, workdir=tmp_path / "in", timeout_s=30)
            )
            for _ in range(250):
                sip = (await http.get("/healthz")).json()["sip"]
                if sip["calls_active"] == MAX_CALLS and len(peer.streams()) == MAX_CALLS:
                    break
                await asyncio.sleep(0.02)
            assert sip["calls_active"] == MAX_CALLS, sip
            busy = render(
                "uac_refused.xml", tmp_path / "busy" / "busy.xml", STATUS=503, CHECK_RE="Retry-After: [0-9]+"
            )
            burst_from = asyncio.get_running_loop().time()
            refused = await run_sipp(busy, sip_port, calls=BURST, rate=200, workdir=tmp_path / "busy")
            burst_to = asyncio.get_running_loop().time()
            assert refused.returncode == 0, refused.errors or refused.stderr  # every one: 503 + Retry-After
            assert (await http.get("/healthz")).json()["sip"]["calls_active"] == MAX_CALLS
            result = await admitted
            assert result.returncode == 0, result.errors or result.stderr  # each got the bridge's BYE
            assert METRICS.admission_rejections.value(leg="sip", reason="max_calls") == before + BURST
            # the slots came back: a new call is admitted and served
            after = sipp_caller(tmp_path / "after", peer.port, "", wait_bye_ms=int(PROMPT_S * 1000) + 10_000)
            again = await run_sipp(after, sip_port, workdir=tmp_path / "after", timeout_s=30)
            assert again.returncode == 0, again.errors or again.stderr
            health = (await http.get("/healthz")).json()
    assert health["sip"]["calls_total"] == MAX_CALLS + 1
    assert health["sip"]["busy"] == BURST
    streams = peer.streams()
    assert len(streams) == MAX_CALLS + 1
    whole = expected[: len(expected) - len(expected) % 160]
    for ssrc in streams:
        stream = [a for a in peer.arrivals if a.ssrc == ssrc and a.payload_type == 0]
        # every frame of the prompt, in order (comfort silence aside: on a machine this shared the
        # call's pacer can run late and the sender fills in a silent frame; bench/load_sip.py counts those)
        assert trim_silence(whole) in trim_silence(b"".join(a.payload for a in stream))
        assert all(((b.sequence - a.sequence) & 0xFFFF) == 1 for a, b in itertools.pairwise(stream))
        gaps = [b.at - a.at for a, b in itertools.pairwise(stream)]
        # 50 packets/s throughout, the burst of refusals included (the bound is loose: the recorder
        # shares this process and its GIL with the app, and the machine is shared)
        assert max(gaps) < 0.2, max(gaps)
    admitted_streams = [s for s in streams if any(a.ssrc == s and a.at < burst_from for a in peer.arrivals)]
    assert len(admitted_streams) == MAX_CALLS
    for ssrc in admitted_streams:  # in progress across the whole burst
        assert any(a.ssrc == ssrc and a.at > burst_to for a in peer.arrivals)
