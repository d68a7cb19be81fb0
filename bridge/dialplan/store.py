"""Hot reload: the dialplan that new calls get, swapped atomically when the files change.

`DialplanStore.current()` hands out an immutable snapshot with a version number; a call keeps the
snapshot it started with (its `Runner` holds it), so edits never change a call in progress. A file
that fails to load is rejected with its errors logged, and the previous dialplan keeps serving.
A broken dialplan never starts serving: the constructor raises `DialplanInvalid`.

`content_hash` (sha256 of the files' names and bytes) identifies what was loaded; with several
instances (bridge/cluster/dialplans.py) the cluster numbers each content once and every instance
`adopt_version`s that number, so one version means the same plan everywhere. `on_reload` callbacks
run after each successful reload.

`prepare` (set by the app: bridge/call/warmup.py) runs on a reloaded plan before it is swapped in,
so what the new plan needs (speech models, recognizer workers, rendered prompts) is ready before
its first call; meanwhile new calls keep getting the previous plan.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from bridge.dialplan.loader import DialplanInvalid, dialplan_files, load_dialplan
from bridge.dialplan.schema import Dialplan

log = logging.getLogger(__name__)

Signature = tuple[tuple[str, int, int], ...]  # (file, mtime_ns, size) for every dialplan file


class DialplanStore:
    def __init__(self, *paths: str | Path) -> None:
        if not paths:
            raise ValueError("DialplanStore needs at least one file or directory")
        self.paths = tuple(Path(p) for p in paths)
        self._signature = self._scan()
        self.content_hash = self._hash()
        plan = load_dialplan(*self.paths)  # raises DialplanInvalid: never start with a broken plan
        self._version = 1
        plan._version = 1
        self._plan = plan
        self.last_errors: list[str] = []
        self.on_reload: list[Callable[[], None]] = []
        # Runs on a reloaded plan before the swap (blocking, on the watcher's thread); its errors are
        # logged and the plan is swapped in anyway (what failed to start retries on first use).
        self.prepare: Callable[[Dialplan], object] | None = None
        log.info("dialplan v1 loaded from %s (%d flows)", _names(plan), len(plan.flows))

    def current(self) -> Dialplan:
        """The snapshot new calls should use. Never changes under a call that holds it."""
        return self._plan

    @property
    def version(self) -> int:
        return self._version

    def reload(self) -> list[str]:
        """Load the files now. On success swap and return []; else keep the old plan, return the errors."""
        signature = self._scan()
        content_hash = self._hash()
        try:
            plan = load_dialplan(*self.paths)
        except DialplanInvalid as exc:
            self._signature = signature
            self.last_errors = list(exc.problems)
            log.error(
                "dialplan change rejected; still serving v%d. %d problem(s):",
                self._version,
                len(exc.problems),
            )
            for problem in exc.problems:
                log.error("  %s", problem)
            return list(exc.problems)
        plan._version = self._version + 1
        if self.prepare is not None:
            try:
                self.prepare(plan)
            except Exception:
                log.exception(
                    "dialplan v%d: preparing its speech failed; swapping it in anyway", plan.version
                )
        self._version += 1
        self._signature = signature
        self.last_errors = []
        self.content_hash = content_hash
        self._plan = plan  # one reference assignment: atomic for every reader
        log.info("dialplan v%d loaded from %s (%d flows)", self._version, _names(plan), len(plan.flows))
        for callback in list(self.on_reload):
            callback()
        return []

    def adopt_version(self, version: int) -> bool:
        """Number the current plan `version` (the cluster's number for this content). Versions never
        go back: a lower number is ignored (False)."""
        if version < self._version:
            return False
        if version != self._version:
            log.info("dialplan v%d is cluster version v%d", self._version, version)
            self._version = version
            self._plan._version = version
        return True

    def _hash(self) -> str:
        """sha256 over every dialplan file's name and bytes, in load order."""
        digest = hashlib.sha256()
        for file in dialplan_files(self.paths):
            digest.update(file.name.encode("utf-8") + b"\0")
            try:
                digest.update(file.read_bytes())
            except OSError:
                digest.update(b"\0missing")
            digest.update(b"\0")
        return digest.hexdigest()

    def changed(self) -> bool:
        """Have the files changed since the last load (or rejected load)?"""
        return self._scan() != self._signature

    async def run_watcher(self, interval_s: float = 1.0) -> None:
        """Poll the files' mtimes every `interval_s`; reload once a change has stayed still for one poll
        (so a half-written file is not loaded). Runs until cancelled."""
        pending: Signature | None = None
        while True:
            await asyncio.sleep(interval_s)
            try:
                signature = await asyncio.to_thread(self._scan)
                if signature == self._signature:
                    pending = None
                    continue
                if signature != pending:
                    pending = signature  # changed: wait one more poll for the writer to finish
                    continue
                pending = None
                await asyncio.to_thread(self.reload)
            except asyncio.CancelledError:
                raise
            except Exception:  # the watcher must outlive any one bad poll
                log.exception("dialplan watcher: poll failed")

    def _scan(self) -> Signature:
        out: list[tuple[str, int, int]] = []
        for file in dialplan_files(self.paths):
            try:
                st = file.stat()
            except OSError:
                out.append((str(file), -1, -1))
                continue
            out.append((str(file), st.st_mtime_ns, st.st_size))
        return tuple(out)


def _names(plan: Dialplan) -> str:
    return ", ".join(str(p) for p in plan.sources) or "?"
