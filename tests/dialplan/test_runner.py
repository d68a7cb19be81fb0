"""Runner: events in, actions out, on a fake clock (times are plain numbers, nothing sleeps)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bridge.dialplan.hours import hours_open, parse_window
from bridge.dialplan.loader import load_dialplan
from bridge.dialplan.matching import match_option, normalise, spoken_phrases
from bridge.dialplan.runner import (
    Action,
    HangUp,
    Listen,
    Play,
    Runner,
    Say,
    SendToAgent,
    StartAgent,
    StopAgent,
    StopListening,
    StopPrompts,
    Transfer,
    spell_digits,
)
from bridge.dialplan.schema import Dialplan, HoursStep, MenuStep
from tests.dialplan.conftest import REPO

Plan = Callable[[str], Dialplan]


def says(actions: list[Action]) -> list[str]:
    return [a.text for a in actions if isinstance(a, Say)]


def last_prompt(actions: list[Action]) -> str:
    ids = [a.prompt_id for a in actions if isinstance(a, Say | Play)]
    assert ids, actions
    return ids[-1]


MENU = """
numbers: {default: main, "+15550111": sales}
defaults: {transfer_to: "+15550100"}
flows:
  main:
    - say: "Welcome, caller {caller}."
    - menu:
        prompt: "For billing press 1 or say billing. For sales press 2."
        options:
          "1": {goto: billing, words: [billing, invoice, my bill]}
          "2": sales
          operator: operator
        timeout: 5s
        retries: 1
        no_input: operator
        no_match: sorry
  billing:
    - say: "Billing."
    - hang_up
  sales:
    - say: "Sales."
    - hang_up
  operator:
    - transfer: "+15550100"
  sorry:
    - hang_up: "Sorry, goodbye."
"""


def to_menu(plan: Dialplan, now: float = 0.0) -> tuple[Runner, list[Action]]:
    r = Runner(plan, caller="+15551234")
    first = r.start(now)
    assert says(first) == ["Welcome, caller +1 5 5 5 1 2 3 4."]
    assert first[0].cache is False  # type: ignore[union-attr]  # holds a variable: not for the cache
    menu = r.on_prompt_done(last_prompt(first), now + 1000)
    return r, menu


def test_menu_prompt_then_listen_for_its_words(plan: Plan) -> None:
    _r, actions = to_menu(plan(MENU))
    assert says(actions) == ["For billing press 1 or say billing. For sales press 2."]
    listen = [a for a in actions if isinstance(a, Listen)]
    assert listen == [Listen(("one", "billing", "invoice", "my bill", "two", "operator"), digits=False)]
    assert actions[0].cache is True  # type: ignore[union-attr]


def test_menu_dtmf_reaches_the_step(plan: Plan) -> None:
    r, _menu = to_menu(plan(MENU))
    out = r.on_dtmf("1", 3000)
    assert out[:2] == [StopListening(), StopPrompts()]  # pressed during the prompt: cut it
    assert says(out) == ["Billing."]
    assert r.position == ("billing", 0)
    assert r.variables["choice"] == "1"
    out = r.on_prompt_done(last_prompt(out), 4000)
    assert out == [HangUp("dialplan")]
    assert r.finished


def test_menu_speech_reaches_the_step(plan: Plan) -> None:
    r, menu = to_menu(plan(MENU))
    r.on_prompt_done(last_prompt(menu), 6000)
    out = r.on_speech("uh I have a question about my BILL.", 7000)
    assert out[0] == StopListening()
    assert StopPrompts() not in out  # the prompt had finished
    assert says(out) == ["Billing."]


def test_spoken_digit_word_picks_the_digit_option(plan: Plan) -> None:
    r, _menu = to_menu(plan(MENU))
    assert says(r.on_speech("two", 2000)) == ["Sales."]


def test_menu_timeout_retries_then_no_input(plan: Plan) -> None:
    r, menu = to_menu(plan(MENU))
    assert r.on_timer(3000) == []  # still prompting: the timeout starts when the prompt ends
    r.on_prompt_done(last_prompt(menu), 5000)
    assert r.next_timer_ms == 10_000
    assert r.on_timer(9999) == []
    retry = r.on_timer(10_000)
    assert says(retry) == [
        "Sorry, I didn't hear anything.",
        "For billing press 1 or say billing. For sales press 2.",
    ]
    assert r.next_timer_ms is not None
    assert r.next_timer_ms > 10_000
    r.on_prompt_done(last_prompt(retry), 14_000)
    assert r.next_timer_ms == 19_000
    out = r.on_timer(19_000)
    assert out == [StopListening(), Transfer("+15550100", None)]
    assert r.finished


def test_menu_no_match_retries_then_target(plan: Plan) -> None:
    r, _menu = to_menu(plan(MENU))
    retry = r.on_dtmf("9", 2000)
    assert retry[0] == StopPrompts()
    assert says(retry)[0] == "Sorry, I didn't get that."
    out = r.on_speech("pizza", 3000)
    assert StopListening() in out
    assert says(out) == ["Sorry, goodbye."]
    assert r.on_prompt_done(last_prompt(out), 4000) == [HangUp("dialplan")]


def test_numbers_pick_the_flow(plan: Plan) -> None:
    p = plan(MENU)
    assert says(Runner(p, called="+15550111").start(0)) == ["Sales."]
    assert says(Runner(p, called="sip:+15550111@pbx.example.com").start(0)) == ["Sales."]
    assert says(Runner(p, called="+19990000").start(0))[0].startswith("Welcome")


def test_dtmf_during_greeting_is_typeahead(plan: Plan) -> None:
    r = Runner(plan(MENU))
    r.start(0)
    out = r.on_dtmf("2", 500)
    assert out[0] == StopPrompts()
    assert says(out) == ["Sales."]  # the menu took the digit without prompting


# ------------------------------------------------------------------ collect

COLLECT = """
numbers: {default: main}
flows:
  main:
    - collect:
        variable: account
        digits: 6
        min_digits: 4
        prompt: "Enter your account number, then press pound."
        timeout: 4s
        retries: 1
        no_input: nothing
    - say: "Account {account}."
    - hang_up
  nothing:
    - hang_up: "No account."
"""


def test_collect_digits_with_terminator(plan: Plan) -> None:
    r = Runner(plan(COLLECT))
    start = r.start(0)
    assert Listen((), digits=True) in start
    for i, d in enumerate("1234"):
        r.on_dtmf(d, 1000 + i * 100)
    out = r.on_dtmf("#", 2000)
    assert r.variables["account"] == "1234"
    assert says(out) == ["Account 1 2 3 4."]


def test_collect_stops_at_max_digits_and_speech_digits(plan: Plan) -> None:
    r = Runner(plan(COLLECT))
    r.start(0)
    out = r.on_speech("one two three four five six", 3000)
    assert r.variables["account"] == "123456"
    assert StopListening() in out


def test_collect_too_few_digits_then_timeout(plan: Plan) -> None:
    r = Runner(plan(COLLECT))
    r.on_prompt_done(last_prompt(r.start(0)), 2000)
    r.on_dtmf("1", 2500)
    assert r.next_timer_ms == 6500  # inter-digit timeout restarts with each digit
    retry = r.on_timer(6500)
    assert says(retry) == ["Sorry, I didn't get that.", "Enter your account number, then press pound."]
    r.on_prompt_done(last_prompt(retry), 8000)
    out = r.on_timer(12_000)
    assert says(out) == ["No account."]


def test_collect_timeout_with_enough_digits_accepts(plan: Plan) -> None:
    r = Runner(plan(COLLECT))
    r.on_prompt_done(last_prompt(r.start(0)), 2000)
    for d in "98765":
        r.on_dtmf(d, 2500)
    out = r.on_timer(6500)
    assert r.variables["account"] == "98765"
    assert says(out) == ["Account 9 8 7 6 5."]


# ------------------------------------------------------------------ hours

HOURS = """
numbers: {default: main}
flows:
  main:
    - hours:
        timezone: America/New_York
        windows: ["mon-fri 09:00-17:00"]
        holidays: [2026-12-25]
        closed: closed
    - say: "We are open."
    - hang_up
  closed:
    - say: "We are closed."
    - hang_up
"""


def ms(y: int, mo: int, d: int, h: int, mi: int, tz: str = "America/New_York") -> float:
    return datetime(y, mo, d, h, mi, tzinfo=ZoneInfo(tz)).timestamp() * 1000.0


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (ms(2026, 11, 23, 9, 0), "We are open."),  # Monday 09:00
        (ms(2026, 11, 23, 8, 59), "We are closed."),
        (ms(2026, 11, 23, 17, 0), "We are closed."),  # the end is exclusive
        (ms(2026, 11, 28, 12, 0), "We are closed."),  # Saturday
        (ms(2026, 12, 25, 12, 0), "We are closed."),  # a Friday, but a holiday
    ],
)
def test_hours(plan: Plan, when: float, expected: str) -> None:
    assert says(Runner(plan(HOURS)).start(when)) == [expected]


def test_hours_across_dst_change(plan: Plan) -> None:
    """New York leaves DST on Sun 2026-11-01. 09:30 local on the Friday before is 13:30 UTC, on the Monday
    after it is 14:30 UTC: the same UTC time (13:30) is open before the change and closed after it."""
    p = plan(HOURS)
    fri = datetime(2026, 10, 30, 13, 30, tzinfo=ZoneInfo("UTC")).timestamp() * 1000.0
    mon = datetime(2026, 11, 2, 13, 30, tzinfo=ZoneInfo("UTC")).timestamp() * 1000.0
    assert says(Runner(p).start(fri)) == ["We are open."]  # 09:30 EDT
    assert says(Runner(p).start(mon)) == ["We are closed."]  # 08:30 EST
    assert says(Runner(p).start(mon + 3_600_000)) == ["We are open."]  # 09:30 EST


def test_hours_spring_forward_window_edges() -> None:
    """On 2026-03-08 clocks jump 02:00 -> 03:00 in New York; a 01:00-04:00 Sunday window has 2 real hours."""
    step = HoursStep.model_validate(
        {"timezone": "America/New_York", "windows": ["sun 01:00-04:00"], "closed": "x"}
    )
    start = datetime(2026, 3, 8, 1, 0, tzinfo=ZoneInfo("America/New_York")).timestamp() * 1000.0
    assert hours_open(step, start)
    assert hours_open(step, start + 1.99 * 3_600_000)  # 03:59 EDT
    assert not hours_open(step, start + 2 * 3_600_000)  # 04:00 EDT


def test_window_parsing() -> None:
    w = parse_window("Fri-Mon 22:00-24:00")
    assert w.days == frozenset({4, 5, 6, 0})
    assert (w.start_min, w.end_min) == (1320, 1440)
    with pytest.raises(ValueError, match="ends before it starts"):
        parse_window("mon 17:00-09:00")
    with pytest.raises(ValueError, match="unknown day"):
        parse_window("mun 09:00-10:00")


# ------------------------------------------------------------------ agent

AGENT = """
numbers: {default: main}
defaults: {provider: openai, voice: alloy, transfer_to: "+15550100", barge_in: {min_speech_ms: 300}}
flows:
  main:
    - agent:
        instructions: "Help caller {caller}."
        tools:
          - hang_up
          - transfer: {target: "sip:desk@pbx", announce: "Transferring you."}
          - {name: sales, description: "caller wants sales", goto: sales}
        dtmf: {"0": transfer, "9": hang_up, "7": sales}
        max_duration: 2m
        on_error: fallback
    - say: "Anything else? Goodbye."
    - hang_up
  sales:
    - say: "Sales here."
    - hang_up
  fallback:
    - say: "Let me get you a person."
    - transfer: "+15550100"
"""


def start_agent(plan: Dialplan) -> tuple[Runner, StartAgent]:
    r = Runner(plan, caller="+15551234")
    out = r.start(0)
    assert len(out) == 1
    assert isinstance(out[0], StartAgent)
    return r, out[0]


def test_agent_is_resolved_with_defaults_and_variables(plan: Plan) -> None:
    r, start = start_agent(plan(AGENT))
    a = start.agent
    assert (a.provider, a.voice, a.language) == ("openai", "alloy", "en")
    assert a.instructions == "Help caller +15551234."  # not spelled out: the model reads it
    assert a.barge_in is not None
    assert a.barge_in.min_speech_ms == 300
    assert dict(a.dtmf) == {"0": "transfer", "9": "hang_up", "7": "sales"}
    assert r.next_timer_ms == 120_000


def test_agent_tools_become_call_actions(plan: Plan) -> None:
    p = plan(AGENT)
    r, _ = start_agent(p)
    assert r.on_agent_tool("transfer", {"target": "+19005550000"}, 1000) == [
        StopAgent(),
        Transfer("sip:desk@pbx", "Transferring you."),  # the model cannot pick the number
    ]
    r, _ = start_agent(p)
    assert r.on_agent_tool("hang_up", {}, 1000) == [StopAgent(), HangUp("agent")]
    assert r.finished
    r, _ = start_agent(p)
    out = r.on_agent_tool("sales", {}, 1000)
    assert out[0] == StopAgent()
    assert says(out) == ["Sales here."]
    r, _ = start_agent(p)
    assert r.on_agent_tool("delete_everything", {}, 1000) == []


def test_dtmf_during_agent(plan: Plan) -> None:
    p = plan(AGENT)
    r, _ = start_agent(p)
    assert r.on_dtmf("5", 1000) == [SendToAgent("The caller pressed 5.")]
    assert r.on_dtmf("0", 2000) == [StopAgent(), Transfer("sip:desk@pbx", "Transferring you.")]
    r, _ = start_agent(p)
    assert r.on_dtmf("9", 1000) == [StopAgent(), HangUp("caller pressed 9")]
    r, _ = start_agent(p)
    assert says(r.on_dtmf("7", 1000)) == ["Sales here."]


def test_agent_end_continues_and_max_duration(plan: Plan) -> None:
    r, _ = start_agent(plan(AGENT))
    assert says(r.on_agent_ended(None, 5000)) == ["Anything else? Goodbye."]
    r, _ = start_agent(plan(AGENT))
    out = r.on_timer(120_000)
    assert out[0] == StopAgent()
    assert says(out) == ["Anything else? Goodbye."]


def test_upstream_failure_falls_back_then_on_error(plan: Plan) -> None:
    r, _ = start_agent(plan(AGENT))
    out = r.on_agent_ended("connection refused", 5000)
    assert says(out) == ["Sorry, I'm having trouble right now.", "Let me get you a person."]
    assert not any(isinstance(a, HangUp) for a in out)


def test_upstream_failure_default_apologises_and_hangs_up(plan: Plan) -> None:
    p = plan("""
        numbers: {default: main}
        flows:
          main:
            - agent: {provider: openai, instructions: "You are a helpful phone assistant."}
        """)
    r, _ = start_agent(p)
    out = r.on_agent_ended("401 invalid api key", 1000)
    assert says(out) == ["Sorry, I'm having trouble right now. Please call again later. Goodbye."]
    assert not r.finished  # the apology plays first: no dead air, no cut-off
    assert r.on_prompt_done(last_prompt(out), 4000) == [HangUp("dialplan")]


def test_agent_could_not_start(plan: Plan) -> None:
    r, start = start_agent(plan(AGENT))
    out = r.on_action_failed(start, "no API key", 10)
    assert says(out)[0] == "Sorry, I'm having trouble right now."


# ------------------------------------------------------------------ run-time failures


def test_transfer_the_leg_cannot_do(plan: Plan) -> None:
    p = plan("""
        numbers: {default: main}
        flows:
          main:
            - transfer: {target: "+15550100", on_error: voicemail}
          voicemail:
            - say: "Please call back later."
            - hang_up
        """)
    r = Runner(p)
    out = r.start(0)
    assert out == [Transfer("+15550100", None)]
    assert r.finished
    out = r.on_action_failed(out[0], "leg cannot transfer", 100)
    assert says(out) == ["Sorry, I couldn't connect your call.", "Please call back later."]
    assert not r.finished


def test_missing_audio_at_run_time(plan: Plan, tmp_path: Path) -> None:
    wav = REPO / "dialplans" / "audio" / "chime.wav"
    (tmp_path / "chime.wav").write_bytes(wav.read_bytes())
    p = plan("""
        numbers: {default: main}
        flows:
          main:
            - play: chime.wav
            - say: "After the chime."
            - hang_up
        """)
    r = Runner(p)
    (play,) = r.start(0)
    assert isinstance(play, Play)
    out = r.on_action_failed(play, "file vanished", 10)
    assert says(out) == ["Sorry, a recording is missing.", "After the chime."]


def test_prompt_whose_end_is_never_reported(plan: Plan) -> None:
    r = Runner(plan(MENU))
    r.start(0)
    due = r.next_timer_ms
    assert due is not None
    out = r.on_timer(due)
    assert says(out)[0].startswith("For billing")


def test_hang_up_event_stops_the_agent(plan: Plan) -> None:
    r, _ = start_agent(plan(AGENT))
    assert r.on_hangup(1000) == [StopAgent()]
    assert r.finished
    assert r.on_dtmf("1", 2000) == []
    assert r.next_timer_ms is None


def test_default_dialplan_walk() -> None:
    p = load_dialplan(REPO / "dialplans")
    r = Runner(p, caller="+15551234")
    menu = r.on_prompt_done(last_prompt(r.start(0)), 1000)
    assert any(isinstance(a, Listen) for a in menu)
    out = r.on_speech("operator", 2000)
    assert isinstance(out[-1], Play)
    out = r.on_prompt_done(out[-1].prompt_id, 3000)
    assert out == [Transfer("+15550100", "Please hold while I connect you to an operator.")]


# ------------------------------------------------------------------ matching


def test_normalise() -> None:
    assert normalise("One-Two, THREE!") == ("1", "2", "3")
    assert normalise("I'd like billing.") == ("id", "like", "billing")
    assert normalise("42") == ("4", "2")
    assert normalise("") == ()


def test_match_option_synonyms_and_ambiguity(plan: Plan) -> None:
    p = plan(MENU)
    menu = p.flows["main"][1]
    assert isinstance(menu, MenuStep)
    assert match_option(menu, "Invoice") == "1"
    assert match_option(menu, "my bill please") == "1"
    assert match_option(menu, "press one") == "1"
    assert match_option(menu, "operator") == "operator"
    assert match_option(menu, "billing or sales, two") is None  # two options, equally good
    assert match_option(menu, "something else") is None
    assert spoken_phrases(menu) == ("one", "billing", "invoice", "my bill", "two", "operator")


def test_spell_digits() -> None:
    assert spell_digits("+15550100") == "+1 5 5 5 0 1 0 0"
    assert spell_digits("12") == "12"
