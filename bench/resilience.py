"""Resilience figures: reconnect time, dead air around a drop, rollover seam, drain time.

    python -m bench.resilience [--trials N]

The real bridge app (in-process, uvicorn) with the Twilio emulator as the caller and the stand-in
realtime server as the model, which is reset (TCP RST) mid-reply, or taken down for 0.3 s or 3 s;
a 3 s session cap for rollovers; a real `ivr-bridge serve` process for the drain. Results:
bench/results/resilience.md (the soak curves are in bench/results/soak.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bridge.app import create_app
from bridge.call.prompts import prompt_voice
from bridge.settings import Settings
from tests.helpers.e2e import Caller, place_call
from tests.helpers.realtime_standin import AGENT_ONLY, StandinRealtime, StandinSession
from tests.helpers.servers import bind_ephemeral, serve
from tests.helpers.signals import pcm, tone

RESULTS = Path(__file__).parent / "results"
REPLY = pcm(tone(440, 2.0, 24000))


async def wait_for(predicate: Any, limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate() and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a plain attribute
        await asyncio.sleep(0.005)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def configured(standin: StandinRealtime, wait_s: float = 10.0) -> StandinSession:
    session = await standin.next_session(wait_s)
    await asyncio.wait_for(session.updated.wait(), 5)
    return session


async def answer_when_asked(session: StandinSession) -> None:
    """A resumed session answers the response.create the bridge sends after a drop mid-reply."""
    await wait_for(lambda: bool(session.client_events("response.create")) or session.closed_at is not None)
    if session.closed_at is not None:
        return
    await session.reply_audio(REPLY, realtime=1.0)


def silence_around(caller: Caller, drop_at: float) -> float:
    """The longest run without bot speech heard from 0.3 s before the drop to the resumed answer."""
    frames = [p.at for p in caller.speech_frames(drop_at - 0.3)]
    gaps = [b - a for a, b in itertools.pairwise(frames)]
    return max(gaps, default=float("nan"))


async def drop_trial(url: str, standin: StandinRealtime, outage_s: float | None) -> tuple[float, float]:
    """One call, a drop mid-reply; returns (reconnect ms, dead air ms heard by the caller)."""
    caller = await place_call(url)
    try:
        s1 = await configured(standin)
        await s1.user_turn("what are your opening hours")
        reply = asyncio.create_task(s1.reply_audio(REPLY, realtime=1.0))
        await caller.wait_speech(time.monotonic() - 1, timeout=5)
        await asyncio.sleep(0.6)
        if outage_s is None:
            drop_at = time.monotonic()
            s1.reset()  # the session alone is lost; the server stays up
        else:
            drop_at = await standin.go_down(outage_s)
        reply.cancel()
        s2 = await configured(standin, wait_s=(outage_s or 0) + 15)
        back_ms = (time.monotonic() - drop_at) * 1000.0
        answer = asyncio.create_task(answer_when_asked(s2))
        heard = await caller.wait_speech(time.monotonic(), timeout=10)
        await asyncio.sleep(0.3)
        answer.cancel()
        del heard
        return back_ms, silence_around(caller, drop_at) * 1000.0
    finally:
        await caller.hang_up()
        await asyncio.sleep(0.2)


async def rollover_trial(url: str, standin: StandinRealtime) -> tuple[float, float]:
    """One call across a rollover (3 s cap); returns (upstream audio gap ms, playout gap ms)."""
    caller = await place_call(url)
    try:
        s1 = await configured(standin)
        await s1.user_turn("hello")
        await s1.reply_audio(pcm(tone(440, 0.6, 24000)), realtime=2.0, transcript="Hello there.")
        s2 = await configured(standin, wait_s=6)
        await wait_for(lambda: bool(s2.appended))
        last_old = max(t for t, _ in s1.append_times)
        gap_up = (s2.append_times[0][0] - last_old) * 1000.0
        # Playout across the seam: the caller's line keeps its 20 ms rhythm (frames played).
        t = time.monotonic()
        await asyncio.sleep(0.5)
        played = [p.at for p in caller.twilio.played if p.at > t - 1.0]
        gap_play = max((b - a for a, b in itertools.pairwise(played)), default=0.0) * 1000.0
        return gap_up, gap_play
    finally:
        await caller.hang_up()
        await asyncio.sleep(0.2)


async def drain_trial(standin: StandinRealtime, live_call: bool, drain_s: float) -> float:
    """SIGTERM to a real serve process; seconds until it exits (0 or 1 call outlasting the drain)."""
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "plans").mkdir()
        (tmp / "plans" / "main.yaml").write_text(AGENT_ONLY)
        sock = bind_ephemeral()
        port = sock.getsockname()[1]
        sock.close()
        env = {
            **os.environ,
            "BRIDGE_HOST": "127.0.0.1",
            "BRIDGE_PORT": str(port),
            "BRIDGE_REALTIME_URL": standin.url,
            "BRIDGE_DIALPLANS": str(tmp / "plans"),
            "BRIDGE_DATA_DIR": str(tmp / "data"),
            "BRIDGE_DRAIN_S": str(drain_s),
            "BRIDGE_LOG_LEVEL": "WARNING",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "serve", env=env, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as http:
            for _ in range(600):
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(url + "/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.2)
        caller = None
        if live_call:
            caller = await place_call(url)
            await configured(standin)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 120)
        took = time.monotonic() - t0
        if caller is not None:
            await caller.close()
        return took


async def run(trials: int) -> dict[str, Any]:
    voice = prompt_voice()
    voice.render(Settings().hold_line, True)
    standin = StandinRealtime()
    await standin.start()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "main.yaml").write_text(AGENT_ONLY)

        def make(port: int, **extra: Any) -> object:
            settings = Settings(
                port=port, dialplans=tmp, data_dir=tmp / "data", realtime_url=standin.url, **extra
            )
            return create_app(settings, preload_models=False)

        with serve(make) as (url, _app):
            for name, outage in (
                ("reset, server up", None),
                ("server down 0.3 s", 0.3),
                ("server down 3 s", 3.0),
            ):
                results = [await drop_trial(url, standin, outage) for _ in range(trials)]
                out[name] = results
                print(name, [f"{a:.0f}/{b:.0f}" for a, b in results], flush=True)
        with serve(lambda port: make(port, max_session_s=3.0)) as (url, _app):
            out["rollover"] = [await rollover_trial(url, standin) for _ in range(trials)]
            print("rollover", out["rollover"], flush=True)
    out["drain idle"] = await drain_trial(standin, False, 5.0)
    out["drain one call outlasting 5 s"] = await drain_trial(standin, True, 5.0)
    print("drain", out["drain idle"], out["drain one call outlasting 5 s"], flush=True)
    await standin.stop()
    return out


def write(out: dict[str, Any], trials: int) -> None:
    rows = []
    for name in ("reset, server up", "server down 0.3 s", "server down 3 s"):
        back = [a for a, _ in out[name]]
        dead = [b for _, b in out[name]]
        rows.append(
            f"| {name} | {trials} | {pct(back, 0.5):.0f} | {pct(back, 0.95):.0f} | "
            f"{pct(dead, 0.5):.0f} | {pct(dead, 0.95):.0f} |"
        )
    up = [a for a, _ in out["rollover"]]
    text = f"""# Resilience figures

`python -m bench.resilience --trials {trials}` on a 2-core machine shared with other work (figures
are upper bounds). The real bridge app, the Twilio emulator as the caller, the stand-in realtime
server as the model. Each drop happens 0.6 s into a 2 s reply; the resumed session is asked for
the answer again (`response.create` after the replay) and gives it at once.

## Reconnect and dead air

Reconnect: from the drop to the new session configured (connect, `session.update`). Dead air: the
longest stretch without bot speech the caller heard from 0.3 s before the drop to the resumed
answer (the audio already queued keeps playing for ~0.1 s; past 1 s the hold line
"{Settings().hold_line}" plays).

| drop | trials | reconnect p50 (ms) | p95 (ms) | dead air p50 (ms) | p95 (ms) |
|---|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

The backoff (attempt 1 at once, then 0.1, 0.2, 0.4, 0.8, 1.0 s ... each shortened by up to half at
random, within `BRIDGE_RECONNECT_MAX_S`) puts the reconnect after a 0.3 s outage at 0.4-0.6 s and
after a 3 s outage within ~0.5 s of the server's return.

## Rollover seam (3 s session cap)

| trials | caller audio gap upstream, max (ms) | p50 (ms) |
|---:|---:|---:|
| {trials} | {max(up):.1f} | {pct(up, 0.5):.1f} |

The caller's audio goes to the old session until the switch and to the new one from the switch on
(plus a 300 ms pre-roll). The playout is untouched: the switch waits for a turn boundary, when the
bot is silent, so there is no playout seam (`tests/call/test_resilience.py` asserts the upstream
gap ≤ 40 ms and the context in the new session).

## Drain (SIGTERM to `ivr-bridge serve`)

| case | SIGTERM to exit (s) |
|---|---:|
| no call in progress | {out["drain idle"]:.1f} |
| one call outlasting BRIDGE_DRAIN_S=5 (drain line, hung up) | {out["drain one call outlasting 5 s"]:.1f} |

Soak curves (RSS, fds, threads, tasks over a run with churn): [soak.md](soak.md).
"""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "resilience.md").write_text(text)
    print(f"wrote {RESULTS / 'resilience.md'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.resilience")
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args(argv if argv is not None else [])
    out = asyncio.run(run(args.trials))
    write(out, args.trials)


if __name__ == "__main__":
    main(sys.argv[1:])
