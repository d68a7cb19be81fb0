"""`ivr-bridge serve` with tracemalloc on, for `python -m bench.soak --trace` (a diagnosis run).

    python -m bench._traced_bridge OUT_DIR [serve arguments]

On SIGUSR1 the bridge process collects garbage and writes, into OUT_DIR, a tracemalloc snapshot
(`snap-N.tracemalloc`) and its live objects counted by type (`types-N.json`). Nothing in bridge/ knows
about it: the hook is installed here, before the CLI runs.
"""

from __future__ import annotations

import collections
import gc
import json
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

FRAMES = 8


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(FRAMES)
    taken = [0]

    def dump(signum: int, frame: FrameType | None) -> None:
        taken[0] += 1
        gc.collect()
        counts: collections.Counter[str] = collections.Counter(
            f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects()
        )
        tracemalloc.take_snapshot().dump(str(out / f"snap-{taken[0]}.tracemalloc"))
        (out / f"types-{taken[0]}.json").write_text(json.dumps(counts))

    signal.signal(signal.SIGUSR1, dump)
    from bridge.cli import main as cli_main

    return cli_main(["serve", *argv[1:]])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
