"""Helpers for dialplan tests: write YAML to a temp dir, load it, collect problems."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.dialplan.loader import DialplanInvalid, load_dialplan
from bridge.dialplan.schema import Dialplan

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    def _write(text: str, name: str = "main.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def problems(write: Callable[..., Path]) -> Callable[[str], list[str]]:
    def _problems(text: str) -> list[str]:
        path = write(text)
        with pytest.raises(DialplanInvalid) as info:
            load_dialplan(path)
        return info.value.problems

    return _problems


@pytest.fixture
def plan(write: Callable[..., Path]) -> Callable[[str], Dialplan]:
    def _plan(text: str) -> Dialplan:
        return load_dialplan(write(text))

    return _plan
