"""Leak hunt: does the bridge keep memory per call? (issue 13, the soak's RSS slope)

    python -m bench.leak --batches 6 --calls 10 [--engine] [--top 15]

The real bridge app runs in this process (uvicorn in its own thread and loop, records on, SQLite),
its agent steps on a stand-in realtime server (or, with `--engine`, on the embedded engine with its
speech models, the caller saying a line each turn). Calls are placed in batches of `--calls`
(Twilio-emulated, a model turn each, then hang-up); after each batch, once the bridge holds no call,
`gc.collect()` runs and the bench records:

- live objects by type (`gc.get_objects()`, counted by qualified name) and the live instances of the
  per-call classes (Call, AgentLink, EchoCanceller, engine sessions) through weak references;
- a `tracemalloc` snapshot, compared by traceback with the one after the first batch (warm-up).

Memory that grows with every batch is kept per call (a leak); memory that grows once and then stays
is warm-up (caches, the allocator's arenas). Prints a report; nothing is written to bench/results.
`python -m bench` does not run it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import random
import sys
import tempfile
import time
import tracemalloc
import weakref
from pathlib import Path
from typing import Any

import psutil

from tests.helpers.e2e import place_call, wait_until
from tests.helpers.realtime_standin import AGENT_ONLY, StandinRealtime, StandinSession
from tests.helpers.servers import serve
from tests.helpers.signals import pcm, tone

REPLY = pcm(tone(440, 0.6, 24000))
TRACKED = ("Call", "AgentLink", "EchoCanceller", "EngineSession", "Session", "Playout", "CallRecorder")


def type_counts() -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for obj in gc.get_objects():
        t = type(obj)
        counts[f"{t.__module__}.{t.__qualname__}"] += 1
    return counts


async def model_side(standin: StandinRealtime) -> None:
    async def script(session: StandinSession) -> None:
        try:
            await asyncio.wait_for(session.updated.wait(), 10)
            await asyncio.sleep(random.uniform(0.2, 0.6))
            await session.user_turn("what are your opening hours")
            await session.reply_audio(REPLY, realtime=2.0, transcript="We are open from nine to five.")
        except Exception:
            return

    tasks: set[asyncio.Task[None]] = set()
    while True:
        session = await standin.new_session.get()
        task = asyncio.create_task(script(session))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def one_call(url: str, length_s: float) -> None:
    caller = await place_call(url)
    try:
        await asyncio.sleep(length_s)
    finally:
        await caller.hang_up()


async def run(args: argparse.Namespace) -> None:
    from bridge.app import create_app
    from bridge.settings import Settings

    tracemalloc.start(args.frames)
    standin = StandinRealtime()
    await standin.start()
    model = asyncio.create_task(model_side(standin))
    proc = psutil.Process()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "plans").mkdir()
        (tmp / "plans" / "main.yaml").write_text(AGENT_ONLY)

        def make(port: int) -> Any:
            return create_app(
                Settings(
                    port=port,
                    dialplans=tmp / "plans",
                    data_dir=tmp / "data",
                    realtime_url=standin.url,
                    max_calls=500,
                    rate_per_source_per_s=1000,
                    rate_burst=1000,
                ),
                preload_models=False,
            )

        with serve(make) as (url, app):
            first: tracemalloc.Snapshot | None = None
            first_counts: collections.Counter[str] | None = None
            for batch in range(args.batches):
                t0 = time.monotonic()
                await asyncio.gather(*(one_call(url, args.length_s) for _ in range(args.calls)))
                await wait_until(lambda: not app.state.calls, 60, "the bridge holds no call")
                await asyncio.sleep(1.0)  # records written, sockets closed
                standin.sessions.clear()  # the stand-in keeps what each session received: not the bridge's
                gc.collect()
                counts = type_counts()
                snap = tracemalloc.take_snapshot().filter_traces(
                    [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
                )
                rss = proc.memory_info().rss / 1e6
                traced = sum(s.size for s in snap.statistics("filename")) / 1e6
                live = {name: sum(n for k, n in counts.items() if k.endswith("." + name)) for name in TRACKED}
                print(
                    f"batch {batch + 1}: {args.calls} calls in {time.monotonic() - t0:.1f} s, "
                    f"rss {rss:.1f} MB, traced {traced:.1f} MB, objects {sum(counts.values())}, "
                    f"live {live}",
                    flush=True,
                )
                if first is None:
                    first, first_counts = snap, counts
                    continue
                assert first_counts is not None
                growth = [(k, n - first_counts.get(k, 0)) for k, n in counts.items()]
                growth = [g for g in growth if g[1] > 0]
                growth.sort(key=lambda g: -g[1])
                print("  objects grown since batch 1:", ", ".join(f"{k} +{n}" for k, n in growth[: args.top]))
                if batch == args.batches - 1:
                    print(f"  tracemalloc growth since batch 1 (top {args.top}, by traceback):")
                    for stat in snap.compare_to(first, "traceback")[: args.top]:
                        if stat.size_diff <= 0:
                            continue
                        print(f"  {stat.size_diff / 1024:+9.1f} KB {stat.count_diff:+6d} blocks")
                        for line in stat.traceback.format()[-2 * min(args.frames, 6) :]:
                            print("      " + line)
            refs = [weakref.ref(o) for o in gc.get_objects() if type(o).__name__ in ("Call",)]
            print(f"Call objects alive at the end: {sum(1 for r in refs if r() is not None)}")
    model.cancel()
    await standin.stop()


def main(argv: list[str] | None = None) -> None:
    if argv is None and __name__ != "__main__":
        print("bench.leak: skipped by `python -m bench` (a diagnosis tool); run `python -m bench.leak`")
        return
    parser = argparse.ArgumentParser(prog="python -m bench.leak", description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--length-s", type=float, default=4.0)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    asyncio.run(run(args))


if __name__ == "__main__":
    main(sys.argv[1:])
