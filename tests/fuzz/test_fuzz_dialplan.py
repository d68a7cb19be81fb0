"""Dialplan YAML: any text loads or raises `DialplanInvalid` naming file and line, nothing else."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from bridge.dialplan.loader import DialplanInvalid, load_dialplan

VALID = """numbers:
  "+15550100": main
  default: main
flows:
  main:
    - say: "Thanks for calling."
    - menu:
        prompt: "Press 1 for billing."
        options:
          "1": billing
        timeout: 5s
    - agent: {provider: local, fallback_provider: openai, instructions: "Be brief."}
  billing:
    - transfer: "+15550199"
"""
YAML_TOKENS = [
    "numbers:", "flows:", "defaults:", "  main:", "    - say: x", "    - agent: {}", "    - hang_up",
    "  default: main", "1: a", "yes", "007", "- ", ": ", "{", "}", "[", "]", "&a", "*a",
    "!!python/object:os.system",
    "\t", "'", '"', "\n", "  ", "timeout: 5s", "options:", "goto: main", "provider: wobble",
]  # fmt: skip


def load(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.yaml"
        path.write_text(text, encoding="utf-8")
        problems: list[str] = []
        try:
            load_dialplan(path)
        except DialplanInvalid as exc:
            problems = exc.problems or ["(none listed)"]
        assert all(p.startswith(str(path)) for p in problems), problems


@given(st.text(max_size=300))
def test_any_text(text: str) -> None:
    load(text)


@given(st.lists(st.sampled_from(YAML_TOKENS), max_size=30))
def test_yaml_shaped_noise(tokens: list[str]) -> None:
    load(" ".join(tokens))


@given(st.data())
def test_mutated_valid_plan(data: st.DataObject) -> None:
    lines = VALID.splitlines()
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(lines) - 1))
        op = data.draw(st.integers(0, 2))
        if op == 0:
            del lines[i]
        elif op == 1:
            lines[i] = (
                data.draw(st.sampled_from(YAML_TOKENS)) + lines[i][data.draw(st.integers(0, len(lines[i]))) :]
            )
        else:
            lines.insert(i, lines[i])
        if not lines:
            break
    load("\n".join(lines))
