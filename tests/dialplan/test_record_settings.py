"""Dialplan settings for call records: `defaults.record` (consent line first), `collect.sensitive`,
`moderation:`; and what the runner notes for the call's record (menu choices, collected input)."""

from __future__ import annotations

from collections.abc import Callable

from bridge.dialplan.runner import Listen, Runner, Say, StartAgent, StopPrompts
from bridge.dialplan.schema import Dialplan

Plan = Callable[[str], Dialplan]

RECORDED = """
defaults:
  record: {enabled: true, consent: "This call may be recorded."}
  moderation: {blocklist: ["secret"], safe_line: "Sorry."}
numbers: {default: main}
flows:
  main:
    - menu: {prompt: "Press 1 for a PIN, 2 for the agent.", options: {"1": pin, "2": helper}}
  pin:
    - collect: {variable: pin, digits: 4, prompt: "Enter your PIN.", sensitive: true}
    - goto: helper
  helper:
    - agent: {provider: local, instructions: "Help."}
"""


def test_consent_plays_first_and_keys_wait_for_the_menu(plan: Plan) -> None:
    runner = Runner(plan(RECORDED))
    first = runner.start(0)
    assert first == [Say("This call may be recorded.", None, "p1", barge_in=False, cache=True)]
    assert runner.on_dtmf("2", 100) == []  # the consent line is not skipped
    actions = runner.on_prompt_done("p1", 2000)
    # The menu takes the key pressed during the consent line at once.
    assert any(isinstance(a, StartAgent) for a in actions), actions
    assert runner.take_notes() == [
        ("menu_choice", {"flow": "main", "step": 0, "choice": "2", "goto": "helper"})
    ]
    agent = next(a for a in actions if isinstance(a, StartAgent)).agent
    assert agent.moderation is not None
    assert agent.moderation.blocklist == ("secret",)  # defaults.moderation reaches the agent step


def test_no_consent_without_recording(plan: Plan) -> None:
    runner = Runner(plan(RECORDED.replace("enabled: true", "enabled: false")))
    assert [a.text for a in runner.start(0) if isinstance(a, Say)] == ["Press 1 for a PIN, 2 for the agent."]
    assert plan(
        "numbers: {default: m}\nflows: {m: [hang_up]}\ndefaults: {record: true}"
    ).defaults.record.enabled


def test_sensitive_collect_is_flagged_and_noted_masked(plan: Plan) -> None:
    runner = Runner(plan(RECORDED.replace('consent: "This call may be recorded."', "consent: null")))
    runner.start(0)
    actions = runner.on_dtmf("1", 100)
    assert any(isinstance(a, Listen) and a.digits for a in actions)
    assert runner.collecting_sensitive
    runner.take_notes()
    for i, digit in enumerate("987"):
        assert StopPrompts() not in runner.on_dtmf(digit, 200 + i) or i == 0
    assert runner.collecting_sensitive
    actions = runner.on_dtmf("6", 300)
    assert not runner.collecting_sensitive
    assert runner.variables["pin"] == "9876"  # the flow still has the digits
    assert runner.take_notes() == [("collected", {"variable": "pin", "digits": "****", "sensitive": True})]


def test_bad_blocklist_pattern_is_a_dialplan_error(problems: Callable[[str], list[str]]) -> None:
    found = problems(
        """
        numbers: {default: m}
        defaults: {moderation: {blocklist: ["(unclosed"]}}
        flows: {m: [hang_up]}
        """
    )
    assert any("defaults.moderation.blocklist" in p and "not a regular expression" in p for p in found), found
