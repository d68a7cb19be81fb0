"""Soak: many calls with churn for a bounded time; the bridge's vitals must stay flat.

    python -m bench.soak --minutes 30 --calls 50      (make soak; SOAK_MINUTES, SOAK_CALLS)

A real `ivr-bridge serve` process (records on, SQLite) with its agent steps pointed at a stand-in
realtime server in this process. `--calls` callers are kept on the line at all times: each talks a
turn every few seconds (the stand-in answers with audio), hangs up after 10-40 s and is replaced
by a new call; one call in ten loses its upstream session mid-call (TCP reset), so the reconnect
path is soaked too. Every `--sample-s` the bridge's RSS, open fds, threads and asyncio tasks (from
/healthz) and its call-record rows are sampled. Results and an SVG chart: bench/results/soak.md.

`python -m bench` (make bench) does not run it: a soak is too long for that; run `make soak`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from tests.helpers.e2e import Caller, place_call
from tests.helpers.realtime_standin import AGENT_ONLY, StandinRealtime, StandinSession
from tests.helpers.servers import bind_ephemeral
from tests.helpers.signals import pcm, tone

RESULTS = Path(__file__).parent / "results"
REPLY = pcm(tone(440, 0.8, 24000))


@dataclass
class Sample:
    t_s: float
    rss_mb: float
    fds: int
    threads: int
    tasks: int
    calls: int
    db_rows: int


@dataclass
class Soak:
    url: str
    standin: StandinRealtime
    calls: int
    stop_at: float
    db: Path
    samples: list[Sample] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    drops: int = 0
    turns: int = 0

    async def session_script(self, session: StandinSession) -> None:
        """The model's side: answer a turn every few seconds until the session closes."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(session.updated.wait(), 10)
            while session.closed_at is None:
                await asyncio.sleep(random.uniform(3.0, 6.0))
                if session.closed_at is not None:
                    return
                await session.user_turn("what are your opening hours")
                await session.reply_audio(REPLY, realtime=1.0, transcript="We are open from nine to five.")
                self.turns += 1

    async def sessions(self) -> None:
        scripts: set[asyncio.Task[None]] = set()
        while True:
            session = await self.standin.new_session.get()
            task = asyncio.create_task(self.session_script(session))
            scripts.add(task)
            task.add_done_callback(scripts.discard)

    async def one_call(self) -> None:
        caller: Caller | None = None
        try:
            caller = await place_call(self.url)
            length = random.uniform(10.0, 40.0)
            if random.random() < 0.1:
                await asyncio.sleep(length / 2)
                live = [s for s in self.standin.sessions if s.closed_at is None]
                if live:
                    random.choice(live).reset()  # the upstream drops mid-call: the bridge reconnects
                    self.drops += 1
                await asyncio.sleep(length / 2)
            else:
                await asyncio.sleep(length)
            if caller.twilio.closed_at is not None:
                self.failed += 1
            else:
                self.completed += 1
        except Exception:
            self.failed += 1
        finally:
            if caller is not None:
                with contextlib.suppress(Exception):
                    await caller.hang_up()

    async def line(self, index: int) -> None:
        await asyncio.sleep(index * 0.2)  # ramp up
        while time.monotonic() < self.stop_at:
            await self.one_call()

    def db_rows(self) -> int:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1)) as conn:
                return int(conn.execute("SELECT count(*) FROM calls").fetchone()[0])
        except sqlite3.Error:
            return -1

    async def sampler(self, proc: psutil.Process, t0: float, every_s: float) -> None:
        async with httpx.AsyncClient() as http:
            while True:
                health = (await http.get(self.url + "/healthz")).json()
                with proc.oneshot():
                    rss = proc.memory_info().rss / 1e6
                    fds = proc.num_fds()
                    threads = proc.num_threads()
                sample = Sample(
                    round(time.monotonic() - t0, 1),
                    round(rss, 1),
                    fds,
                    threads,
                    int(health["runtime"]["tasks"]),
                    int(health["calls"]),
                    self.db_rows(),
                )
                self.samples.append(sample)
                print(
                    f"t={sample.t_s:7.1f}s rss={sample.rss_mb:6.1f}MB fds={fds} threads={threads} "
                    f"tasks={sample.tasks} calls={sample.calls} rows={sample.db_rows} "
                    f"done={self.completed} failed={self.failed} drops={self.drops} turns={self.turns}",
                    flush=True,
                )
                await asyncio.sleep(every_s)


async def start_bridge(
    tmp: Path, standin: StandinRealtime, trace: Path | None = None
) -> tuple[asyncio.subprocess.Process, str]:
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
        "BRIDGE_MAX_CALLS": "500",
        "BRIDGE_RATE_PER_SOURCE_PER_S": "1000",
        "BRIDGE_RATE_BURST": "1000",
        "BRIDGE_LOG_LEVEL": "WARNING",
        "BRIDGE_DRAIN_S": "5",
    }
    log = (tmp / "bridge.log").open("wb")
    command = ["-m", "bridge", "serve"] if trace is None else ["-m", "bench._traced_bridge", str(trace)]
    proc = await asyncio.create_subprocess_exec(sys.executable, *command, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as http:
        for _ in range(600):
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(url + "/readyz")).status_code == 200:
                    return proc, url
            await asyncio.sleep(0.2)
    raise RuntimeError("the bridge did not become ready: " + (tmp / "bridge.log").read_text()[-2000:])


def growth(values: list[float]) -> float:
    """Median of the last third over the median of the middle third, minus one (warm-up excluded)."""
    n = len(values)
    if n < 6:
        return 0.0
    middle = statistics.median(values[n // 3 : 2 * n // 3])
    last = statistics.median(values[2 * n // 3 :])
    return (last - middle) / middle if middle else 0.0


def slope_per_min(samples: list[Sample], values: list[float]) -> float:
    """Least-squares slope (units per minute) over the last 2/3 of the run (the first third is warm-up:
    models, caches, the first calls' buffers)."""
    n = len(samples)
    if n < 4:
        return 0.0
    tail = range(n // 3, n)
    ts = [samples[i].t_s / 60.0 for i in tail]
    ys = [values[i] for i in tail]
    t_mean, y_mean = statistics.fmean(ts), statistics.fmean(ys)
    var = sum((t - t_mean) ** 2 for t in ts)
    if var == 0:
        return 0.0
    return sum((t - t_mean) * (y - y_mean) for t, y in zip(ts, ys, strict=True)) / var


def svg_chart(samples: list[Sample], path: Path) -> None:
    """Four small line charts (RSS, fds, threads, tasks) over time, as plain SVG."""
    series = [
        ("RSS (MB)", [s.rss_mb for s in samples]),
        ("open fds", [float(s.fds) for s in samples]),
        ("threads", [float(s.threads) for s in samples]),
        ("asyncio tasks", [float(s.tasks) for s in samples]),
    ]
    times = [s.t_s for s in samples]
    w, h, pad = 360, 150, 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{2 * h}" font-size="11">']
    for i, (name, ys) in enumerate(series):
        ox, oy = (i % 2) * w, (i // 2) * h
        lo, hi = 0.0, max(ys) * 1.15 or 1.0
        t_hi = max(times) or 1.0
        xs = [ox + pad + (t / t_hi) * (w - 2 * pad) for t in times]
        ys_px = [oy + h - pad - (y - lo) / (hi - lo) * (h - 2 * pad) for y in ys]
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys_px, strict=True))
        parts += [
            f'<rect x="{ox + pad}" y="{oy + pad}" width="{w - 2 * pad}" height="{h - 2 * pad}" '
            'fill="none" stroke="#ccc"/>',
            f'<text x="{ox + pad}" y="{oy + pad - 6}">{name} (0-{hi:.0f}) over {t_hi:.0f} s</text>',
            f'<polyline points="{pts}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>',
        ]
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def write_report(soak: Soak, args: argparse.Namespace, elapsed_s: float) -> None:
    s = soak.samples
    RESULTS.mkdir(exist_ok=True)
    svg_chart(s, RESULTS / "soak.svg")
    rows = "\n".join(
        f"| {x.t_s:.0f} | {x.rss_mb:.1f} | {x.fds} | {x.threads} | {x.tasks} | {x.calls} | {x.db_rows} |"
        for x in s
    )
    g = {
        "RSS": growth([x.rss_mb for x in s]),
        "fds": growth([float(x.fds) for x in s]),
        "threads": growth([float(x.threads) for x in s]),
        "tasks": growth([float(x.tasks) for x in s]),
    }
    verdict = ", ".join(f"{k} {v * 100:+.1f} %" for k, v in g.items())
    # During the calls only: the last sample is taken after the callers hung up.
    during = s[:-1] if len(s) > 4 and s[-1].calls == 0 else s
    rss_slope = slope_per_min(during, [x.rss_mb for x in during])
    per_call = rss_slope / (soak.completed / (elapsed_s / 60.0)) * 1024 if soak.completed else 0.0
    text = f"""# Soak: calls with churn, vitals over time

`python -m bench.soak --minutes {args.minutes:g} --calls {args.calls}` (`make soak` runs 30 min at 50 calls by
default). A real `ivr-bridge serve` process (records on, SQLite), agent steps on a stand-in realtime
server; {args.calls} callers always on the line, each talking a turn every 3-6 s and hanging up after
10-40 s (then replaced); one call in ten has its upstream reset mid-call (reconnect path).
Machine: 2 shared cores, other work running; `os.cpu_count()` = {os.cpu_count()}.

Run: {elapsed_s / 60:.1f} min, {soak.completed} calls completed, {soak.failed} failed, {soak.drops} upstream
drops injected, {soak.turns} turns answered, {s[-1].db_rows if s else 0} call records written.

RSS slope over the last 2/3 of the run (least squares, calls in progress): **{rss_slope:+.2f} MB/min**
({per_call:+.0f} KB per completed call at this churn).
Growth from the middle third of the run to the last third (medians; the first third is warm-up):
**{verdict}**.

![vitals over time](soak.svg)

| t (s) | RSS (MB) | fds | threads | tasks | calls | record rows |
|---:|---:|---:|---:|---:|---:|---:|
{rows}
"""
    (RESULTS / "soak.md").write_text(text)
    print(f"soak: RSS slope {rss_slope:+.2f} MB/min (last 2/3); {verdict}; report in {RESULTS / 'soak.md'}")


async def snapshot(proc: asyncio.subprocess.Process, trace: Path, n: int) -> None:
    """Ask the traced bridge for its n-th snapshot (bench/_traced_bridge.py) and wait for it."""
    proc.send_signal(signal.SIGUSR1)
    for _ in range(1200):
        if (trace / f"types-{n}.json").exists():
            return
        await asyncio.sleep(0.1)


def trace_report(trace: Path, top: int = 15) -> None:
    """What grew in the bridge between the snapshot taken after warm-up and the one with the calls gone."""
    import json
    import tracemalloc

    first, last = (tracemalloc.Snapshot.load(str(trace / f"snap-{n}.tracemalloc")) for n in (1, 2))
    total = [sum(st.size for st in s.statistics("filename")) / 1e6 for s in (first, last)]
    print(f"traced memory in the bridge: {total[0]:.1f} MB after warm-up, {total[1]:.1f} MB at the end")
    for stat in last.compare_to(first, "traceback")[:top]:
        print(f"{stat.size_diff / 1024:+9.1f} KB {stat.count_diff:+7d} blocks")
        for line in stat.traceback.format()[-8:]:
            print("    " + line)
    a, b = (json.loads((trace / f"types-{n}.json").read_text()) for n in (1, 2))
    grown = sorted(((k, v - a.get(k, 0)) for k, v in b.items()), key=lambda kv: -kv[1])[:top]
    print("live objects grown:", ", ".join(f"{k} {d:+d}" for k, d in grown))


async def run(args: argparse.Namespace) -> None:
    standin = StandinRealtime()
    await standin.start()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        trace = tmp / "trace" if args.trace else None
        proc, url = await start_bridge(tmp, standin, trace)
        t0 = time.monotonic()
        soak = Soak(url, standin, args.calls, t0 + args.minutes * 60, tmp / "data" / "ivr-bridge.db")
        background = [
            asyncio.create_task(soak.sessions()),
            asyncio.create_task(soak.sampler(psutil.Process(proc.pid), t0, args.sample_s)),
        ]
        try:
            lines = asyncio.gather(*(soak.line(i) for i in range(args.calls)))
            if trace is not None:  # after warm-up (a third of the run), then with the calls gone
                await asyncio.sleep(args.minutes * 20)
                await snapshot(proc, trace, 1)
            await lines
            await asyncio.sleep(args.sample_s)  # one sample with the calls gone
            if trace is not None:
                await snapshot(proc, trace, 2)
                trace_report(trace)
        finally:
            for task in background:
                task.cancel()
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 60)
            if proc.returncode is None:
                proc.kill()
            await standin.stop()
        if trace is None:  # a traced run is slower: its vitals are not the soak's figures
            write_report(soak, args, time.monotonic() - t0)


def main(argv: list[str] | None = None) -> None:
    if argv is None and __name__ != "__main__":
        print("bench.soak: skipped by `python -m bench` (long); run `make soak`")
        return
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument(
        "--trace",
        action="store_true",
        help="run the bridge with tracemalloc and report what grew in it (no results written)",
    )
    args = parser.parse_args(argv)
    asyncio.run(run(args))


if __name__ == "__main__":
    main(sys.argv[1:])
