"""`ivr-bridge dialplan check|simulate`, through the real entry point."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.cli import build_parser, main
from bridge.dialplan.cli import simulate_command
from tests.dialplan.conftest import REPO


def test_check_ok_on_the_shipped_dialplans(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "dialplan",
            "check",
            str(REPO / "dialplans"),
            str(REPO / "dialplans/examples/business-hours-cloud.yaml"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count(": ok (") == 2


def test_check_lists_every_error_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "main.yaml"
    bad.write_text("numbers: {default: main}\nflows:\n  main:\n    - say: no\n    - goto: nowhere\n")
    good = tmp_path / "good.yaml"
    good.write_text("numbers: {default: main}\nflows:\n  main:\n    - hang_up\n")
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", "dialplan", "check", str(bad), str(good)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert f"{bad}:4 flows.main[0].say: YAML reads no as the boolean false" in lines[0]
    assert any(f"{bad}: " in line and "problem(s)" in line for line in lines)
    assert any(line.startswith(f"{good}: ok") for line in lines)


def run_simulation(script: str, *argv: str) -> str:
    args = build_parser().parse_args(["dialplan", "simulate", *argv])
    out = io.StringIO()
    clock = iter(float(t) for t in range(1_700_000_000, 1_700_001_000))
    code = simulate_command(args, inp=io.StringIO(script), out=out, clock=lambda: next(clock))
    assert code == 0, out.getvalue()
    return out.getvalue()


def test_simulate_digits_to_operator() -> None:
    out = run_simulation("0\n", "main", "--dialplans", str(REPO / "dialplans"))
    assert 'SAY "Thanks for calling Acme."' in out
    assert "LISTEN for: one, questions" in out
    assert "PLAY " in out
    assert 'TRANSFER to +15550100 (announce "Please hold while I connect you to an operator.")' in out


def test_simulate_speech_timeouts_and_agent() -> None:
    out = run_simulation("\nquestions\n5\n:tool hang_up\n", "--dialplans", str(REPO / "dialplans"))
    assert 'SAY "Sorry, I didn\'t hear anything."' in out  # Enter let the timeout pass
    assert "START AGENT provider=local" in out
    assert 'TO AGENT "The caller pressed 5."' in out
    assert "HANG UP (agent)" in out
    assert "call ended" in out


def test_simulate_upstream_failure_and_failed_transfer() -> None:
    cloud = str(REPO / "dialplans/examples/business-hours-cloud.yaml")
    out = run_simulation(":fail 500\n1\n5551234567#\n", "after_hours", "--dialplans", cloud)
    assert 'SAY "Thanks. We\'ll call you back at 5 5 5 1 2 3 4 5 6 7 on the next business day."' in out
    out = run_simulation("0\n:fail\n", "main", "--dialplans", str(REPO / "dialplans"))
    assert 'SAY "Sorry, I couldn\'t connect your call. Please call again later. Goodbye."' in out


def test_check_reports_every_kind_of_problem_in_one_run(tmp_path: Path) -> None:
    """A YAML trap, an unknown goto and a bad field (and a trap in a value) in one file: all four are
    reported, each at its line, in one run; not the first kind only."""
    bad = tmp_path / "main.yaml"
    bad.write_text(
        "numbers: {default: main}\n"  # 1
        "flows:\n"  # 2
        "  main:\n"  # 3
        '    - say: "Welcome."\n'  # 4
        "    - menu:\n"  # 5
        '        prompt: "Press 1 for sales."\n'  # 6
        "        options:\n"  # 7
        "          1: sales\n"  # 8  YAML trap: the key is a number
        "    - goto: nowhere\n"  # 9  unknown flow
        "  sales:\n"  # 10
        "    - collect: {variable: account, digits: 40}\n"  # 11 bad field
        "    - say: yes\n"  # 12 YAML trap: a boolean
    )
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", "dialplan", "check", str(bad)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert lines == [
        f'{bad}:8 flows.main[1].menu.options["1"]: YAML reads the key 1 as a number; quote it: "1"',
        f"{bad}:9 flows.main[2].goto: unknown target 'nowhere'; "
        "expected a flow (main, sales), next or hang_up",
        f"{bad}:11 flows.sales[0].collect.digits: expected less than or equal to 32",
        f"{bad}:12 flows.sales[1].say: YAML reads yes as the boolean true; write true, "
        'or quote it ("yes") if you mean the word',
        f"{bad}: 4 problem(s)",
    ], proc.stdout
