"""Run every benchmark module in bench/ (each has `main() -> None`), or only those named.

Flags after the names go to the modules that read them (`python -m bench load_sip --calls 50,100`):
they are left in `sys.argv[1:]` for the module's own argument parser.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    first_flag = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    names, flags = argv[:first_flag], argv[first_flag:]
    names = names or sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))
    sys.argv = [sys.argv[0], *flags]
    for name in names:
        print(f"== bench.{name}", flush=True)
        importlib.import_module(f"bench.{name}").main()
    return 0


raise SystemExit(main(sys.argv[1:]))
