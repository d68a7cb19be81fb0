"""`ivr-bridge dialplan test` end to end: the real CLI (a subprocess) runs scripted calls through
the bridge it starts in-process; the shipped example tests (dialplans/tests/) must pass, so
`make test` fails when a shipped dialplan stops doing what its tests say."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bridge.dialplan.loader import load_dialplan
from bridge.tools.dialplan_test import TestFileError, lines_heard, load_test_file, spoken_lines

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "dialplan", "test", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def test_every_shipped_dialplan_has_tests() -> None:
    for plan in sorted((REPO / "dialplans").glob("*.yaml")):
        tests = REPO / "dialplans" / "tests" / plan.name
        assert tests.is_file(), f"{plan} has no scripted tests ({tests})"
        parsed = load_test_file(tests)
        assert parsed.dialplans == REPO / "dialplans"
        assert parsed.tests


def test_malformed_test_files_name_their_line(tmp_path: Path) -> None:
    cases = {
        "tests:\n  - name: a\n    steps:\n      - press: 1x\n": ":4: press: expected keys",
        "tests:\n  - name: a\n    steps:\n      - expect: {say: '('}\n": ":4: expect.say: bad pattern",
        "tests:\n  - name: a\n    steps:\n      - dance: now\n": ":4: unknown step 'dance'",
        "tests:\n  - name: a\n    colour: red\n    steps: [{press: '1'}]\n": (
            ":2: tests[0]: unknown key(s) ['colour']"
        ),
        "tests:\n  - name: a\n    steps:\n      - expect: {tool: transfer, within: soon}\n": ":4 within",
        "tests: []\n": "expected `tests:` with a list of tests",
    }
    for text, message in cases.items():
        path = tmp_path / "t.yaml"
        path.write_text(text)
        with pytest.raises(TestFileError) as err:
            load_test_file(path)
        assert message in str(err.value), (text, str(err.value))
    path.write_text("tests:\n  - name: a\n    steps:\n      - press: 1x\n")
    done = run_cli(str(path), timeout=60)
    assert done.returncode == 2
    assert f"{path}:4: press: expected keys" in done.stderr


def test_the_bots_lines_are_known_and_found_in_recognised_text() -> None:
    plan = load_dialplan(REPO / "dialplans")
    lines = spoken_lines(plan)
    assert "Thanks for calling Acme." in lines
    assert "Connecting you to an operator." in lines
    assert "Please hold while I connect you to an operator." in lines
    assert any(line.startswith("I'm the Acme assistant") for line in lines)
    heard = lines_heard("thanks for calling acme for opening hours and other questions press one", lines)
    assert "Thanks for calling Acme." in heard
    assert "Connecting you to an operator." not in heard


@pytest.mark.slow
def test_the_shipped_example_tests_pass(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    done = run_cli("dialplans/tests", "--junit", str(junit))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed, 0 failed" in done.stdout, done.stdout
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures")) == ("4", "0")
    cases = root.findall("./testsuite/testcase")
    assert len(cases) == 4
    assert not root.findall(".//failure")


@pytest.mark.slow
def test_a_failing_expectation_fails_the_run_with_a_junit_failure(tmp_path: Path) -> None:
    tests = tmp_path / "wrong.yaml"
    tests.write_text(
        f"dialplans: {REPO / 'dialplans'}\n"
        "tests:\n"
        "  - name: the greeting is right but the shop sells no bicycles\n"
        "    steps:\n"
        "      - expect: {say: thanks for calling acme}\n"
        "      - expect: {say: we sell bicycles, within: 3s}\n"
        "  - name: key 0 goes to the operator, not to a premium number\n"
        "    steps:\n"
        "      - press: '0'\n"
        "      - expect: {transfer: '+19005550000'}\n"
    )
    junit = tmp_path / "junit.xml"
    done = run_cli(str(tests), "--junit", str(junit))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "0 passed, 2 failed" in done.stdout, done.stdout
    assert "step 2 (line 6): expect the bot to say /we sell bicycles/: not said within 3 s" in done.stdout
    assert "transferred to +15550100, not +19005550000" in done.stdout
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures")) == ("2", "2")
    messages = [f.get("message", "") for f in root.iter("failure")]
    assert len(messages) == 2
    assert "we sell bicycles" in messages[0]
    assert "+19005550000" in messages[1]
