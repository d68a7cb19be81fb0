"""The runner's state machine: the transition table itself, and every transition in it taken by a real
runner on a real (loaded) dialplan, driven by call events."""

from __future__ import annotations

from collections.abc import Callable
from itertools import product

import pytest

from bridge.dialplan.runner import (
    TRANSITIONS,
    Action,
    Play,
    Runner,
    RunnerStateError,
    Say,
    State,
    Transfer,
    Trigger,
    next_state,
)
from bridge.dialplan.schema import Dialplan

Plan = Callable[[str], Dialplan]

# The state each step-starting trigger leads to (the table must agree wherever the trigger is allowed).
LEADS_TO = {
    Trigger.PROMPT: State.PROMPT,
    Trigger.MENU: State.MENU,
    Trigger.COLLECT: State.COLLECT,
    Trigger.AGENT: State.AGENT,
    Trigger.TRANSFER: State.TRANSFER,
    Trigger.CLOSE: State.CLOSING,
    Trigger.HANG_UP: State.DONE,
    Trigger.CALLER_HUNG_UP: State.DONE,
}
ALLOWED = [(s, t) for s, row in TRANSITIONS.items() for t in row]
FORBIDDEN = [(s, t) for s, t in product(State, Trigger) if t not in TRANSITIONS[s]]


# ------------------------------------------------------------------ the table


def test_every_state_has_a_row_and_every_target_is_a_state() -> None:
    assert set(TRANSITIONS) == set(State)
    for row in TRANSITIONS.values():
        assert all(isinstance(target, State) for target in row.values())


@pytest.mark.parametrize(("state", "trigger"), ALLOWED, ids=lambda x: x.name)
def test_allowed_transition_goes_where_its_trigger_leads(state: State, trigger: Trigger) -> None:
    assert next_state(state, trigger) is LEADS_TO[trigger]


@pytest.mark.parametrize(("state", "trigger"), FORBIDDEN, ids=lambda x: x.name)
def test_forbidden_transition_raises(state: State, trigger: Trigger) -> None:
    with pytest.raises(RunnerStateError, match=f"{trigger.name} is not allowed in {state.name}"):
        next_state(state, trigger)


def test_the_table_shape() -> None:
    """The walking states can start any step; a closing call can only end; an ended one stays ended."""
    walking = {State.NEW, State.PROMPT, State.MENU, State.COLLECT, State.AGENT, State.TRANSFER}
    for state in walking:
        assert set(TRANSITIONS[state]) == set(Trigger), state
    assert set(TRANSITIONS[State.CLOSING]) == {Trigger.HANG_UP, Trigger.CALLER_HUNG_UP}
    assert set(TRANSITIONS[State.DONE]) == {Trigger.CALLER_HUNG_UP}
    assert len(ALLOWED) == 6 * len(Trigger) + 2 + 1
    assert all(TRANSITIONS[s][Trigger.CALLER_HUNG_UP] is State.DONE for s in State)


# ------------------------------------------------------------------ every transition, taken by a runner


class Recorder(Runner):
    """A real runner that also writes down each state change (before, trigger, after)."""

    def __init__(self, plan: Dialplan) -> None:
        super().__init__(plan, caller="+15551234")
        self.log: list[tuple[State, Trigger, State]] = []

    def _enter(self, trigger: Trigger) -> None:
        before = self.state
        super()._enter(trigger)
        self.log.append((before, trigger, self.state))


# The flow `t` starts with a step that fires the trigger.
TARGET_FLOW = {
    Trigger.PROMPT: '- say: "Target."\n    - hang_up',
    Trigger.MENU: '- menu: {prompt: "Target menu.", options: {"1": hang_up}}',
    Trigger.COLLECT: "- collect: {variable: target, digits: 2}",
    Trigger.AGENT: "- agent: {provider: openai}",
    Trigger.TRANSFER: '- transfer: "+15550100"',
    Trigger.CLOSE: '- hang_up: "Bye."',
    Trigger.HANG_UP: "- hang_up",
}

# The flow `main` brings the runner into the state; the event then leads on to the flow `t`.
SOURCE_FLOW = {
    State.NEW: "- goto: t",
    State.PROMPT: '- say: "Hello."\n    - goto: t',
    State.MENU: '- menu: {prompt: "Press 1.", options: {"1": t}}',
    State.COLLECT: "- collect: {variable: number, digits: 1}\n    - goto: t",
    State.AGENT: "- agent: {provider: openai, tools: [{name: go, goto: t}]}",
    State.TRANSFER: '- transfer: {target: "+15550100", on_error: t}',
    State.CLOSING: '- hang_up: "Goodbye."',
    State.DONE: "- hang_up",
}


def plan_text(state: State, trigger: Trigger) -> str:
    flows = f"  main:\n    {SOURCE_FLOW[state]}\n"
    if state not in (State.CLOSING, State.DONE):  # these lead nowhere but to the end of the call
        flows += f"  t:\n    {TARGET_FLOW.get(trigger, '- hang_up')}\n"
    return f"numbers: {{default: main}}\nflows:\n{flows}"


def last_prompt(actions: list[Action]) -> str:
    return [a.prompt_id for a in actions if isinstance(a, Say | Play)][-1]


def drive(runner: Recorder, state: State, trigger: Trigger, started: list[Action]) -> None:
    """The one event that makes the runner leave `state` through `trigger`."""
    if trigger is Trigger.CALLER_HUNG_UP:
        runner.on_hangup(1000)
    elif state is State.NEW:
        pass  # start() already walked from NEW
    elif state in (State.PROMPT, State.CLOSING):
        runner.on_prompt_done(last_prompt(started), 1000)
    elif state is State.MENU:
        runner.on_dtmf("1", 1000)
    elif state is State.COLLECT:
        runner.on_dtmf("5", 1000)
    elif state is State.AGENT:
        runner.on_agent_tool("go", {}, 1000)
    elif state is State.TRANSFER:
        (transfer,) = started
        assert isinstance(transfer, Transfer)
        runner.on_action_failed(transfer, "the leg cannot transfer", 1000)


@pytest.mark.parametrize(("state", "trigger"), ALLOWED, ids=lambda x: x.name)
def test_every_transition_is_taken_by_a_real_runner(plan: Plan, state: State, trigger: Trigger) -> None:
    runner = Recorder(plan(plan_text(state, trigger)))
    assert runner.state is State.NEW
    if state is State.NEW and trigger is not Trigger.CALLER_HUNG_UP:
        runner.start(0)
        assert runner.log[0] == (State.NEW, trigger, TRANSITIONS[State.NEW][trigger])
        return
    started = runner.start(0) if state is not State.NEW else []
    assert runner.state is state, runner.log
    seen = len(runner.log)
    drive(runner, state, trigger, started)
    assert runner.log[seen : seen + 1] == [(state, trigger, TRANSITIONS[state][trigger])], runner.log
    assert runner.state is TRANSITIONS[state][trigger]


def test_a_runner_that_hung_up_ignores_every_event(plan: Plan) -> None:
    runner = Recorder(plan(plan_text(State.DONE, Trigger.CALLER_HUNG_UP)))
    runner.start(0)
    assert runner.state is State.DONE
    assert runner.finished
    assert runner.on_dtmf("1", 10) == []
    assert runner.on_speech("one", 20) == []
    assert runner.on_timer(10_000_000) == []
    assert runner.on_agent_ended(None, 30) == []
    assert runner.on_agent_tool("hang_up", {}, 40) == []
    assert runner.start(50) == []
    assert runner.state is State.DONE
    assert [t for _, t, _ in runner.log] == [Trigger.HANG_UP]
