"""Run every benchmark module in bench/ (each has `main() -> None`), or only those named.

python -m bench                       every module (long ones, soak and load, skip themselves)
python -m bench load --calls 10,50    one module, with its own flags (modules whose `main`
                                      takes an argv get the flags; an empty list when none)
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    first_flag = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    named, flags = argv[:first_flag], argv[first_flag:]  # flags go to the last module named
    explicit = bool(named)
    names = named or sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))
    for name in names:
        print(f"== bench.{name}", flush=True)
        entry = importlib.import_module(f"bench.{name}").main
        if explicit and inspect.signature(entry).parameters:
            entry(flags if name == names[-1] else [])
        else:
            entry()
    return 0


raise SystemExit(main(sys.argv[1:]))
