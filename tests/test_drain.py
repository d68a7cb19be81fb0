"""Graceful drain of a real `ivr-bridge serve` process (SIGTERM), with live calls on it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.e2e import place_call
from tests.helpers.realtime_standin import AGENT_ONLY, StandinRealtime, StandinSession
from tests.helpers.servers import bind_ephemeral
from tests.helpers.signals import pcm, tone

pytestmark = pytest.mark.slow

DRAIN_S = 3.0


async def configured(standin: StandinRealtime) -> StandinSession:
    session = await standin.next_session(10)
    await asyncio.wait_for(session.updated.wait(), 5)
    return session


async def start_bridge(
    tmp_path: Path, standin: StandinRealtime, **env: str
) -> tuple[asyncio.subprocess.Process, str]:
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "main.yaml").write_text(AGENT_ONLY)
    sock = bind_ephemeral()
    port = sock.getsockname()[1]
    sock.close()
    environ = {
        **os.environ,
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_PORT": str(port),
        "BRIDGE_REALTIME_URL": standin.url,
        "BRIDGE_DIALPLANS": str(tmp_path / "plans"),
        "BRIDGE_DATA_DIR": str(tmp_path / "data"),
        "BRIDGE_DRAIN_S": str(DRAIN_S),
        **env,
    }
    log = (tmp_path / "bridge.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "serve", env=environ, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    async with httpx.AsyncClient() as http:
        while True:
            assert proc.returncode is None, (tmp_path / "bridge.log").read_text()[-3000:]
            try:
                if (await http.get(url + "/readyz")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the bridge did not become ready"
            await asyncio.sleep(0.2)
    return proc, url


async def test_sigterm_drains_live_calls_refuses_new_ones_and_exits_0(
    standin: StandinRealtime, tmp_path: Path
) -> None:
    proc, url = await start_bridge(tmp_path, standin)
    try:
        short = await place_call(url)
        s1 = await configured(standin)
        long = await place_call(url)
        await configured(standin)

        proc.send_signal(signal.SIGTERM)
        term_at = time.monotonic()
        async with httpx.AsyncClient() as http:
            while (await http.get(url + "/readyz")).status_code != 503:
                assert time.monotonic() - term_at < 0.5, "/readyz still 200 after SIGTERM"
                await asyncio.sleep(0.01)
            refused = await http.post(
                url + "/twilio/voice",
                data={"CallSid": "CA" + "9" * 32, "From": "+15551230000", "To": "+1555"},
            )
        assert refused.status_code == 200
        assert '<Reject reason="busy"' in refused.text

        # Calls in progress go on: the short one still talks with its model, then hangs up by itself.
        t = time.monotonic()
        await s1.reply_audio(pcm(tone(440, 0.5, 24000)), realtime=2.0)
        await short.wait_speech(t, timeout=5)
        await short.hang_up()
        assert proc.returncode is None  # one call is still up

        # The long one outlasts BRIDGE_DRAIN_S: it hears the drain line, then the bridge ends it.
        closed_at = await long.wait_closed(timeout=40)
        assert closed_at - term_at >= DRAIN_S - 0.2
        line = long.speech_frames(term_at + DRAIN_S - 0.2)
        assert len(line) * 20 >= 1500, "the drain line was not heard"
        rc = await asyncio.wait_for(proc.wait(), 30)
        exited_after = time.monotonic() - term_at
        assert rc == 0, (tmp_path / "bridge.log").read_text()[-3000:]
        print(f"drain: process exited {exited_after:.1f} s after SIGTERM (BRIDGE_DRAIN_S={DRAIN_S})")
        await long.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_second_signal_exits_now(standin: StandinRealtime, tmp_path: Path) -> None:
    proc, url = await start_bridge(tmp_path, standin, BRIDGE_DRAIN_S="600")
    try:
        caller = await place_call(url)
        await configured(standin)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert proc.returncode is None  # draining: the call may take up to 600 s
        proc.send_signal(signal.SIGINT)
        t = time.monotonic()
        await asyncio.wait_for(proc.wait(), 10)
        print(f"second signal: exited {time.monotonic() - t:.2f} s later")
        await caller.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
