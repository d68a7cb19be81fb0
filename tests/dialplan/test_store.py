"""Hot reload: valid changes swap atomically, invalid ones are rejected, live calls keep their version."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from bridge.dialplan.loader import DialplanInvalid
from bridge.dialplan.runner import Runner, Say
from bridge.dialplan.store import DialplanStore

V1 = """\
numbers: {default: main}
flows:
  main:
    - menu:
        prompt: "Version one. Press 1."
        options: {"1": bye}
        retries: 3
  bye:
    - hang_up: "Bye from version one."
"""

V2 = V1.replace("one", "two")

BROKEN = V1.replace('{"1": bye}', '{"1": nowhere}')


def write(path: Path, text: str) -> None:
    """Write and move the mtime forward, so even a same-second rewrite is seen as a change."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(before + 10_000_000, before + 10_000_000))


def says(actions: list[object]) -> list[str]:
    return [a.text for a in actions if isinstance(a, Say)]


def test_a_broken_dialplan_never_starts_serving(tmp_path: Path) -> None:
    (tmp_path / "main.yaml").write_text(BROKEN)
    with pytest.raises(DialplanInvalid, match="unknown target 'nowhere'"):
        DialplanStore(tmp_path)


def test_reload_swaps_and_versions(tmp_path: Path) -> None:
    f = tmp_path / "main.yaml"
    write(f, V1)
    store = DialplanStore(tmp_path)
    v1 = store.current()
    assert v1.version == 1
    assert not store.changed()
    write(f, V2)
    assert store.changed()
    assert store.reload() == []
    v2 = store.current()
    assert (v2.version, store.version) == (2, 2)
    assert v1.flows["main"][0].prompt == "Version one. Press 1."  # type: ignore[union-attr]
    assert v2.flows["main"][0].prompt == "Version two. Press 1."  # type: ignore[union-attr]


def test_invalid_change_is_rejected_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "main.yaml"
    write(f, V1)
    store = DialplanStore(f)
    write(f, BROKEN)
    with caplog.at_level(logging.ERROR, logger="bridge.dialplan.store"):
        errors = store.reload()
    assert len(errors) == 2  # the bad target, and the flow it no longer reaches
    assert 'main.yaml:6 flows.main[0].menu.options["1"]: unknown target' in errors[0]
    assert "main.yaml:8 flows.bye: unreachable" in errors[1]
    assert store.current().version == 1
    assert "still serving v1" in caplog.text
    assert "unknown target 'nowhere'" in caplog.text
    assert not store.changed()  # the rejected files are remembered: no re-logging every poll


def test_live_call_finishes_on_its_version(tmp_path: Path) -> None:
    f = tmp_path / "main.yaml"
    write(f, V1)
    store = DialplanStore(tmp_path)
    call = Runner(store.current())
    first = call.start(0)
    assert says(first) == ["Version one. Press 1."]
    write(f, V2)
    assert store.reload() == []
    # the live call: a retry and the goodbye still come from version one
    call.on_prompt_done(first[0].prompt_id, 1000)  # type: ignore[union-attr]
    assert says(call.on_timer(6000))[-1] == "Version one. Press 1."
    assert says(call.on_dtmf("1", 7000)) == ["Bye from version one."]
    # a new call gets version two
    assert says(Runner(store.current()).start(8000)) == ["Version two. Press 1."]


async def test_watcher_reloads_a_changed_file_and_keeps_serving_on_errors(tmp_path: Path) -> None:
    f = tmp_path / "main.yaml"
    write(f, V1)
    store = DialplanStore(tmp_path)
    task = asyncio.create_task(store.run_watcher(0.02))
    try:
        write(f, BROKEN)
        for _ in range(250):
            if store.last_errors:
                break
            await asyncio.sleep(0.02)
        assert store.last_errors
        assert store.current().version == 1
        write(f, V2)
        for _ in range(250):
            if store.version == 2:
                break
            await asyncio.sleep(0.02)
        assert store.version == 2
        assert store.last_errors == []
        # a new file in the directory is picked up too
        (tmp_path / "extra.yaml").write_text("flows:\n  extra:\n    - goto: main\n")
        for _ in range(250):
            if store.version == 3 or store.last_errors:
                break
            await asyncio.sleep(0.02)
        # an extra flow nobody reaches is an error: the plan stays at v2
        assert store.version == 2
        assert any("extra.yaml:2 flows.extra: unreachable" in e for e in store.last_errors)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
