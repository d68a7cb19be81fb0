"""Memory of `ivr-bridge serve`: idle RSS with a cloud-only dialplan vs the default dialplans, and RSS
per call at 0/10/50 held calls (cloud-only plan; the Twilio emulator as callers, the stand-in realtime
server as the cloud model). Writes bench/results/memory.md.

    python -m bench.memory [--calls 0,10,50] [--settle 4]

The bridge runs as its own process (`python -m bridge serve`); RSS is psutil's, of the bridge process
and (separately) of its children (speech workers). Each configuration starts once on its data
directory first, so the measured start finds the records schema at head (a fresh database imports
Alembic for its migrations: a few MB more). Calls stream silence both ways (caller frames every 20 ms,
the bridge's local VAD running on them) to an upstream that never answers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from bench._proc import stop_bridge
from tests.helpers.e2e import Caller, place_call
from tests.helpers.realtime_standin import StandinRealtime
from tests.helpers.servers import bind_ephemeral

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]
MB = 1_000_000

CLOUD_PLAN = """
defaults: {provider: openai, format: pcm24k}
numbers: {default: main}
flows:
  main:
    - agent: {instructions: "You are a helpful phone assistant."}
"""


HISTORY = """## Before lazy start (for comparison; measured by hand, not by this script)

At abcdfb5 (models, workers and aiortc/PyAV/Alembic loaded at start whatever the plan) the same
cloud-only plan idled at ~327-348 MB in the bridge process plus two recognizer workers (~129 MB
each); the import of `bridge.app` alone was 137 MB (now ~90 MB). Per held call it was ~1 MB, most
of it the echo canceller's history rings, now made when the bot first plays. A call whose bot
speaks still makes its canceller (~0.8 MB once its rings fill), so an answered call costs more
than the idle-ish calls above.
"""


def free_port() -> int:
    sock = bind_ephemeral()
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def start_bridge(plans: Path, data: Path, port: int, realtime_url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BRIDGE_REALTIME_URL": realtime_url,
        "OPENAI_API_KEY": "sk-bench",
        "BRIDGE_DATA_DIR": str(data),
        "BRIDGE_LOG_LEVEL": "warning",
        "BRIDGE_MAX_CALLS": "200",
        # every caller comes from 127.0.0.1: the per-source limit (60 burst) would refuse the 50th
        "BRIDGE_RATE_PER_SOURCE_PER_S": "10000",
        "BRIDGE_RATE_BURST": "10000",
    }
    cmd = [sys.executable, "-m", "bridge", "serve", "--port", str(port), "--dialplans", str(plans)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 180.0) -> float:
    t0 = time.monotonic()
    async with httpx.AsyncClient() as http:
        while time.monotonic() - t0 < timeout_s:
            if proc.poll() is not None:
                raise RuntimeError(f"bridge exited with {proc.returncode}")
            try:
                if (await http.get(url + "/readyz")).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("bridge not ready")


def rss(proc: subprocess.Popen[bytes]) -> tuple[float, float, int]:
    """(bridge RSS MB, children RSS MB, number of children)."""
    p = psutil.Process(proc.pid)
    children = p.children(recursive=True)
    kids = 0.0
    for c in children:
        with contextlib.suppress(psutil.Error):
            kids += c.memory_info().rss
    return p.memory_info().rss / MB, kids / MB, len(children)


async def idle(plans: Path, data: Path, settle_s: float, standin_url: str) -> tuple[float, float, int, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    for run in range(2):  # the first start migrates the records database; the second is measured
        proc = start_bridge(plans, data, port, standin_url)
        try:
            ready_s = await wait_ready(url, proc)
            await asyncio.sleep(settle_s)
            figures = rss(proc)
        finally:
            stop_bridge(proc)
        if run == 1:
            return (*figures, ready_s)
    raise AssertionError


async def per_call(
    plans: Path, data: Path, counts: list[int], settle_s: float
) -> list[tuple[int, float, float]]:
    standin = StandinRealtime()
    await standin.start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_bridge(plans, data, port, standin.url)
    rows: list[tuple[int, float, float]] = []
    callers: list[Caller] = []
    try:
        await wait_ready(url, proc)
        for n in sorted(counts):
            while len(callers) < n:
                batch = min(10, n - len(callers))
                callers += await asyncio.gather(*(place_call(url) for _ in range(batch)))
            deadline = time.monotonic() + 30
            while len(standin.sessions) < n and time.monotonic() < deadline:  # noqa: ASYNC110 (a poll)
                await asyncio.sleep(0.1)
            await asyncio.sleep(settle_s)
            main_mb, _kids, _ = rss(proc)
            rows.append((n, main_mb, os.getloadavg()[0]))
            print(f"  {n} calls: {main_mb:.1f} MB (load {os.getloadavg()[0]:.2f})", flush=True)
    finally:
        for caller in callers:
            try:
                await caller.twilio.stop()
                await caller.twilio.close()
            except Exception:  # the bridge may have closed it already
                pass
        stop_bridge(proc)
    return rows


async def run(counts: list[int], settle_s: float) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        cloud = tmp / "cloud"
        cloud.mkdir()
        (cloud / "main.yaml").write_text(CLOUD_PLAN)
        default = tmp / "default"
        shutil.copytree(REPO / "dialplans", default, ignore=shutil.ignore_patterns("examples", "tests"))
        dead = "ws://127.0.0.1:9/v1/realtime"
        load0 = os.getloadavg()[0]
        c_main, c_kids, c_n, c_ready = await idle(cloud, tmp / "data-cloud", settle_s, dead)
        print(f"  idle cloud-only: {c_main:.1f} MB, children {c_n} ({c_kids:.1f} MB)", flush=True)
        d_main, d_kids, d_n, d_ready = await idle(default, tmp / "data-default", settle_s, dead)
        print(f"  idle default: {d_main:.1f} MB, children {d_n} ({d_kids:.1f} MB)", flush=True)
        rows = await per_call(cloud, tmp / "data-cloud", counts, settle_s)
        load1 = os.getloadavg()[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = next((mb for n, mb, _ in rows if n == 0), rows[0][1])
    lines = [
        "# Memory",
        "",
        f"`python -m bench.memory --calls {','.join(map(str, counts))} --settle {settle_s:g}`",
        f"on a 2-core machine shared with other work (1-min load average {load0:.2f} at the start,",
        f"{load1:.2f} at the end). RSS of the `python -m bridge serve` process (psutil), measured after its",
        f"second start on the same data directory (records schema at head) and {settle_s:g} s of settling;",
        "children (speech workers) apart.",
        "",
        "## Idle",
        "",
        "| dialplans | bridge RSS (MB) | children | children RSS (MB) | ready after (s) |",
        "|---|---:|---:|---:|---:|",
        f"| cloud-only (one openai agent) | {c_main:.1f} | {c_n} | {c_kids:.1f} | {c_ready:.1f} |",
        f"| default (`dialplans/`, local engine) | {d_main:.1f} | {d_n} | {d_kids:.1f} | {d_ready:.1f} |",
        "",
        "## Per call (cloud-only plan)",
        "",
        "Calls held open, silence streaming both ways, each with its upstream session to the stand-in.",
        "",
        "| calls | bridge RSS (MB) | per call above 0 calls (MB) | load avg |",
        "|---:|---:|---:|---:|",
    ]
    for n, mb, load in rows:
        per = f"{(mb - base) / n:.2f}" if n else "-"
        lines.append(f"| {n} | {mb:.1f} | {per} | {load:.2f} |")
    lines += ["", HISTORY]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--calls", default="0,10,50", help="held calls to measure at (comma-separated)")
    parser.add_argument("--settle", type=float, default=4.0, help="seconds to wait before each reading")
    args = parser.parse_args(argv if argv is not None else [])
    counts = [int(x) for x in args.calls.split(",") if x.strip()]
    report = asyncio.run(run(counts, args.settle))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main(sys.argv[1:])
