"""Speech starts only when a dialplan needs it (docs/speech.md, "Lazy start").

The real app runs in a fresh interpreter (tests/helpers/lazy_start_probe.py: `sys.modules` is the
fact under test) on a cloud-only dialplan; then its directory is rewritten to a plan whose agent runs
on the embedded engine, the hot reload picks it up, and a call is placed through the Twilio path.
The pure part (what a plan needs) is checked on parsed plans.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from bridge.dialplan.loader import load_dialplan
from bridge.dialplan.needs import speech_needs

ROOT = Path(__file__).resolve().parents[1]

CLOUD_PLAN = textwrap.dedent(
    """
    defaults:
      provider: openai
      format: pcm24k
    numbers:
      default: main
    flows:
      main:
        - agent:
            instructions: "You are a test agent."
            tools: [hang_up]
    """
)


def plan_from(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "plan.yaml"
    path.write_text(textwrap.dedent(text))
    return load_dialplan(path)


# -- what a plan needs (no I/O) --------------------------------------------------------------------


def test_cloud_only_plan_needs_only_the_vad_and_its_fixed_lines(tmp_path: Path) -> None:
    needs = speech_needs(plan_from(tmp_path, CLOUD_PLAN))
    assert needs.names() == ("vad",)
    assert "Sorry, I'm having trouble right now." in needs.prompts  # the agent's error prompt


def test_default_plan_needs_the_engine(tmp_path: Path) -> None:
    needs = speech_needs(load_dialplan(ROOT / "dialplans" / "default.yaml"))
    assert needs.names() == ("vad", "recognizer", "engine", "synthesizer")


def test_menu_and_collect_need_the_recognizer_not_the_engine(tmp_path: Path) -> None:
    plan = """
        defaults: {provider: openai}
        numbers: {default: main}
        flows:
          main:
            - collect: {variable: pin, digits: 4, prompt: "Your PIN?"}
            - agent: {instructions: "x"}
        """
    needs = speech_needs(plan_from(tmp_path, plan))
    assert needs.names() == ("vad", "recognizer")


def test_text_with_a_variable_needs_the_synthesizer_here(tmp_path: Path) -> None:
    plan = """
        defaults: {provider: openai}
        numbers: {default: main}
        flows:
          main:
            - say: "You called from {caller}."
            - agent: {instructions: "x"}
        """
    needs = speech_needs(plan_from(tmp_path, plan))
    assert needs.names() == ("vad", "synthesizer")
    assert all("{" not in text for text in needs.prompts)


def test_a_local_fallback_provider_needs_the_engine(tmp_path: Path) -> None:
    plan = """
        defaults: {provider: openai, fallback_provider: local}
        numbers: {default: main}
        flows:
          main:
            - agent: {instructions: "x"}
        """
    assert speech_needs(plan_from(tmp_path, plan)).engine


# -- the real app ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_cloud_plan_starts_no_speech_and_a_reload_to_the_engine_starts_it(tmp_path: Path) -> None:
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "main.yaml").write_text(CLOUD_PLAN)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.helpers.lazy_start_probe", str(plans), str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=ROOT,
        env=env,
        check=False,
    )
    stages = {
        s["stage"]: s for s in (json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{"))
    }
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-3000:])

    started = stages["started"]
    assert started["workers"] == [], "a cloud-only plan started speech worker processes"
    # Silero (onnxruntime) is every call's barge-in VAD: the one model a cloud-only plan loads.
    assert started["modules"] == ["onnxruntime"], started["modules"]

    reloaded = stages["reloaded"]
    assert reloaded["version"] == 2
    assert len(reloaded["workers"]) >= 1, "the engine plan was swapped in before its speech workers ran"
    assert "piper" in reloaded["modules"]

    # The call is answered by the engine (the probe fails if nothing is heard within 20 s). How long the
    # greeting takes is not asserted: the Whisper lanes start with the first engine session, as before.
    assert stages["called"]["heard_after_s"] > 0
