"""The dialplan runner: call events in, call actions out. No I/O, no clock of its own.

One `Runner` per call, pinned to the `Dialplan` snapshot the call started with. The call shell
(Twilio, SIP) feeds it events with the current time and carries out the actions it returns, in
order; it calls `on_timer` at or after `next_timer_ms`.

States: the runner is in one `State` at a time; every change goes through `TRANSITIONS`, one table
(state -> trigger -> next state), and a change the table does not allow raises `RunnerStateError`.
Which events a state reacts to is in the event methods (`on_dtmf`, `on_speech`, ...).

Prompts: every `Say` is spoken by the LOCAL synthesizer (cached when `cache` is true), even when
agents use a cloud provider. The shell reports the end of each `Say`/`Play` with `on_prompt_done`;
a prompt cut short by `StopPrompts` needs no report. Spoken menu options are recognised by the shell
(`Listen` carries the phrases for a grammar) and matched here by `match_option`.
"""

from __future__ import annotations

import enum
import logging
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar, assert_never

from bridge.dialplan.hours import hours_open
from bridge.dialplan.matching import match_option, spoken_digits, spoken_phrases
from bridge.dialplan.schema import (
    HANG_UP,
    NEXT,
    AgentStep,
    BargeIn,
    CollectStep,
    Dialplan,
    GotoStep,
    HangUpStep,
    HoursStep,
    MenuStep,
    PlayStep,
    SayStep,
    Step,
    StepBase,
    Tool,
    TransferStep,
)
from bridge.errors import BridgeError, DialplanError

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------ actions


@dataclass(frozen=True, slots=True)
class Say:
    """Speak `text` (variables already filled in) with the local synthesizer."""

    text: str
    voice: str | None
    prompt_id: str
    barge_in: bool = True
    cache: bool = True  # False when the text holds call variables: do not fill the cache with them


@dataclass(frozen=True, slots=True)
class Play:
    path: Path
    prompt_id: str
    barge_in: bool = True


@dataclass(frozen=True, slots=True)
class StopPrompts:
    """Cut every Say/Play still playing or queued (the caller answered before the prompt ended)."""


@dataclass(frozen=True, slots=True)
class Listen:
    """Recognise caller speech locally: `phrases` for a grammar; `digits` adds spoken digit strings."""

    phrases: tuple[str, ...]
    digits: bool


@dataclass(frozen=True, slots=True)
class StopListening:
    pass


@dataclass(frozen=True, slots=True)
class StartAgent:
    """Join the caller to a realtime session. `agent` has defaults and variables resolved."""

    agent: AgentStep


@dataclass(frozen=True, slots=True)
class StopAgent:
    pass


@dataclass(frozen=True, slots=True)
class SendToAgent:
    text: str


@dataclass(frozen=True, slots=True)
class Transfer:
    target: str
    announce: str | None = None


@dataclass(frozen=True, slots=True)
class HangUp:
    reason: str


Action = (
    Say
    | Play
    | StopPrompts
    | Listen
    | StopListening
    | StartAgent
    | StopAgent
    | SendToAgent
    | Transfer
    | HangUp
)

# ------------------------------------------------------------------------------------ states


class State(enum.Enum):
    NEW = "new"  # start() not called yet
    PROMPT = "prompt"  # a say or play step is playing
    MENU = "menu"  # a menu waits for a key or words
    COLLECT = "collect"  # digits are being collected
    AGENT = "agent"  # the caller talks with an agent
    TRANSFER = "transfer"  # handed off; a transfer the leg reports as failed brings the call back
    CLOSING = "closing"  # a last line plays, then the runner hangs up
    DONE = "done"  # hung up (by the runner or the caller)


class Trigger(enum.Enum):
    PROMPT = "prompt"  # a say or play step starts
    MENU = "menu"  # a menu step starts
    COLLECT = "collect"  # a collect step starts
    AGENT = "agent"  # an agent step starts
    TRANSFER = "transfer"  # a transfer step, or an agent's transfer (tool or key)
    CLOSE = "close"  # say a last line, then hang up
    HANG_UP = "hang_up"  # the runner ends the call
    CALLER_HUNG_UP = "caller_hung_up"  # the leg ended the call (`on_hangup`)


# From every state that walks the flow, the next step can be of any kind.
_WALK: Mapping[Trigger, State] = MappingProxyType(
    {
        Trigger.PROMPT: State.PROMPT,
        Trigger.MENU: State.MENU,
        Trigger.COLLECT: State.COLLECT,
        Trigger.AGENT: State.AGENT,
        Trigger.TRANSFER: State.TRANSFER,
        Trigger.CLOSE: State.CLOSING,
        Trigger.HANG_UP: State.DONE,
        Trigger.CALLER_HUNG_UP: State.DONE,
    }
)

TRANSITIONS: Mapping[State, Mapping[Trigger, State]] = MappingProxyType(
    {
        State.NEW: _WALK,  # start() runs the first steps
        State.PROMPT: _WALK,  # the prompt ended, failed, or a key skipped it
        State.MENU: _WALK,  # an option, or no input / no match
        State.COLLECT: _WALK,  # digits done, or no input
        State.AGENT: _WALK,  # the agent ended, failed, a tool or a key shortcut
        State.TRANSFER: _WALK,  # the transfer failed: on_error
        State.CLOSING: MappingProxyType(
            {
                Trigger.HANG_UP: State.DONE,  # the last line has played
                Trigger.CALLER_HUNG_UP: State.DONE,
            }
        ),
        State.DONE: MappingProxyType(
            {
                Trigger.CALLER_HUNG_UP: State.DONE,  # the leg reports the end of a call the runner ended
            }
        ),
    }
)


class RunnerStateError(BridgeError):
    """The runner was asked for a state change its transition table does not allow (a bug)."""


def next_state(state: State, trigger: Trigger) -> State:
    """The state after `trigger` in `state`, from `TRANSITIONS`; raises RunnerStateError if not allowed."""
    try:
        return TRANSITIONS[state][trigger]
    except KeyError:
        raise RunnerStateError(f"dialplan runner: {trigger.name} is not allowed in {state.name}") from None


# ------------------------------------------------------------------------------------ runner


class _Vars(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


_FORMATTER = string.Formatter()
MAX_STEPS_WITHOUT_INPUT = 200
PROMPT_WATCHDOG_MS = 20_000.0  # plus PROMPT_MS_PER_CHAR: a prompt whose end is never reported
PROMPT_MS_PER_CHAR = 120.0
PLAY_WATCHDOG_MS = 600_000.0
GOODBYE = "Please call again later. Goodbye."
TOOL_TRANSFER, TOOL_HANG_UP = "transfer", "hang_up"
_S = TypeVar("_S", bound=StepBase)


class Runner:
    """One call's walk through a dialplan. Not thread-safe: the call's task owns it."""

    def __init__(
        self,
        plan: Dialplan,
        *,
        flow: str | None = None,
        caller: str = "",
        called: str = "",
        now_ms: float = 0.0,
        call_id: str = "",
    ) -> None:
        self.plan = plan
        self.flow = flow if flow is not None else plan.flow_for(called)
        if self.flow not in plan.flows:
            raise DialplanError(f"no flow named {self.flow!r}; flows: {', '.join(sorted(plan.flows))}")
        self.started_ms = now_ms  # when the call started (`start()` sets it again)
        self._vars = _Vars(caller=caller, called=called, digits="", call_id=call_id)
        self._index = 0
        self._state = State.NEW
        self._waiting: str | None = None  # prompt id whose end we wait for
        self._prompt_playing = False
        self._deadline: float | None = None  # menu/collect input timeout
        self._watchdog: float | None = None  # prompt end never reported
        self._agent_deadline: float | None = None
        self._attempts = 0
        self._buffer = ""  # collect digits so far
        self._typeahead = ""  # digits pressed during a prompt, for the next menu/collect
        self._listening = False
        self._agent: AgentStep | None = None  # the running agent, defaults and variables resolved
        self._error_source: TransferStep | AgentStep | None = None  # whose on_error a failed transfer takes
        self._prompt_seq = 0
        self._consent = False  # the recording consent line plays before the first step
        # What happened that the call's record keeps (menu choices, collected input): (kind, data),
        # taken by the call after each event with `take_notes()`.
        self._notes: list[tuple[str, dict[str, object]]] = []

    # ------------------------------------------------------------------ read-only view

    @property
    def state(self) -> State:
        return self._state

    @property
    def next_timer_ms(self) -> float | None:
        times = [t for t in (self._deadline, self._watchdog, self._agent_deadline) if t is not None]
        return min(times) if times else None

    @property
    def variables(self) -> dict[str, str]:
        return dict(self._vars)

    @property
    def finished(self) -> bool:
        """True once the runner has handed the call off (hang-up or transfer) and waits for nothing.

        A failed transfer reported by `on_action_failed` brings it back to life."""
        return self._state in (State.DONE, State.TRANSFER)

    @property
    def position(self) -> tuple[str, int]:
        """(flow, step index) now: for logs and tests."""
        return self.flow, self._index

    @property
    def collecting_sensitive(self) -> bool:
        """A `sensitive: true` collect step is taking the caller's input (its keys are kept masked)."""
        step = self.step
        return self._state is State.COLLECT and isinstance(step, CollectStep) and step.sensitive

    def take_notes(self) -> list[tuple[str, dict[str, object]]]:
        """Menu choices and collected input since the last call, for the call's record."""
        notes, self._notes = self._notes, []
        return notes

    @property
    def step(self) -> Step | None:
        steps = self.plan.flows[self.flow]
        return steps[self._index] if self._index < len(steps) else None

    # ------------------------------------------------------------------ events

    def start(self, now_ms: float) -> list[Action]:
        if self._state is not State.NEW:
            return []
        self.started_ms = now_ms
        record = self.plan.defaults.record
        if record.enabled and record.consent:  # "This call may be recorded." before anything else
            self._enter(Trigger.PROMPT)
            self._consent = True
            say = self._say(record.consent, None, now_ms, barge_in=False)
            return [Say(say.text, say.voice, say.prompt_id, False, say.cache)]
        return self._run(now_ms)

    def on_dtmf(self, digit: str, now_ms: float) -> list[Action]:
        match self._state:
            case State.MENU:
                menu = self._current(MenuStep)
                if digit in menu.options:
                    return self._choose(menu, digit, now_ms)
                return self._menu_retry(menu, "no_match", now_ms)
            case State.COLLECT:
                return self._collect_digits(digit, now_ms)
            case State.AGENT:
                return self._agent_dtmf(digit, now_ms)
            case State.PROMPT:
                step = self.step
                if self._consent:  # the consent line must be heard; keys wait for the first menu
                    if len(self._typeahead) < 32:
                        self._typeahead += digit
                    return []
                if isinstance(step, SayStep | PlayStep) and step.barge_in and len(self._typeahead) < 32:
                    self._typeahead += digit
                    self._waiting = None
                    self._watchdog = None
                    self._index += 1
                    return [StopPrompts(), *self._run(now_ms)]
        return []

    def on_speech(self, text: str, now_ms: float) -> list[Action]:
        match self._state:
            case State.MENU:
                menu = self._current(MenuStep)
                if self._prompt_playing and not menu.barge_in:
                    return []
                key = match_option(menu, text)
                if key is not None:
                    return self._choose(menu, key, now_ms)
                return self._menu_retry(menu, "no_match", now_ms)
            case State.COLLECT:
                digits = spoken_digits(text)
                if not digits:
                    return self._collect_retry(now_ms)
                actions: list[Action] = []
                for d in digits:
                    actions += self._collect_digits(d, now_ms)
                    if self._state is not State.COLLECT:
                        return actions
                step = self._current(CollectStep)
                if len(self._buffer) >= (step.min_digits or step.digits):
                    actions += self._collect_done(now_ms)
                return actions
        return []

    def on_prompt_done(self, prompt_id: str, now_ms: float) -> list[Action]:
        if prompt_id != self._waiting:
            return []
        self._waiting = None
        self._watchdog = None
        self._prompt_playing = False
        match self._state:
            case State.PROMPT:
                if self._consent:
                    self._consent = False
                    return self._run(now_ms)
                self._index += 1
                return self._run(now_ms)
            case State.MENU:
                self._deadline = now_ms + self._current(MenuStep).timeout_ms
            case State.COLLECT:
                self._deadline = now_ms + self._current(CollectStep).timeout_ms
            case State.CLOSING:
                return self._hang_up("dialplan")
        return []

    def on_timer(self, now_ms: float) -> list[Action]:
        actions: list[Action] = []
        if self._watchdog is not None and now_ms >= self._watchdog and self._waiting is not None:
            log.warning("prompt %s: end never reported; moving on", self._waiting)
            actions += self.on_prompt_done(self._waiting, now_ms)
        if self._agent_deadline is not None and now_ms >= self._agent_deadline and self._state is State.AGENT:
            log.info("agent step reached max_duration")
            self._agent_deadline = None
            actions += [StopAgent(), *self._agent_finished(now_ms)]
        if self._deadline is not None and now_ms >= self._deadline:
            self._deadline = None
            if self._state is State.MENU:
                actions += self._menu_retry(self._current(MenuStep), "no_input", now_ms)
            elif self._state is State.COLLECT:
                step = self._current(CollectStep)
                if self._buffer and len(self._buffer) >= (step.min_digits or step.digits):
                    actions += self._collect_done(now_ms)
                else:
                    actions += self._collect_retry(now_ms)
        return actions

    def on_agent_tool(self, name: str, arguments: dict[str, object], now_ms: float) -> list[Action]:
        agent = self._agent
        if self._state is not State.AGENT or agent is None:
            return []
        tool = agent.tool(name)
        if tool is None:
            log.warning("agent called tool %r, which this step does not offer; ignored", name)
            return []
        if name == TOOL_TRANSFER:
            return [StopAgent(), *self._transfer_from_agent(tool, now_ms)]
        if name == TOOL_HANG_UP:
            self._leave_agent()
            return [StopAgent(), *self._hang_up("agent")]
        if tool.goto is None:  # the schema gives every custom tool a goto
            return []
        self._leave_agent()
        return [StopAgent(), *self._go(tool.goto, now_ms)]

    def on_agent_ended(self, error: str | None, now_ms: float) -> list[Action]:
        if self._state is not State.AGENT:
            return []
        if error is None:
            return self._agent_finished(now_ms)
        log.warning("agent failed: %s", error)
        step = self._current(AgentStep)
        self._leave_agent()
        return self._fail(step.error_prompt, step.on_error, now_ms)

    def on_action_failed(self, action: Action, reason: str, now_ms: float) -> list[Action]:
        log.warning("action %s failed: %s", type(action).__name__, reason)
        if isinstance(action, Transfer) and self._state is State.TRANSFER:
            source = self._error_source
            prompt, target = "Sorry, I couldn't connect your call.", None
            if isinstance(source, TransferStep):
                prompt, target = source.error_prompt, source.on_error
            elif isinstance(source, AgentStep):
                target = source.on_error
            return self._fail(prompt, target, now_ms)
        if isinstance(action, Play) and action.prompt_id == self._waiting:
            play = self._current(PlayStep)
            self._waiting = None
            self._watchdog = None
            return self._fail(play.fallback, play.on_error or NEXT, now_ms, goodbye=False)
        if isinstance(action, Say) and action.prompt_id == self._waiting:
            return self.on_prompt_done(action.prompt_id, now_ms)
        if isinstance(action, StartAgent) and self._state is State.AGENT:
            return self.on_agent_ended(f"could not start: {reason}", now_ms)
        return []

    def on_hangup(self, now_ms: float) -> list[Action]:
        """The caller (or the leg) ended the call: stop what is running."""
        actions: list[Action] = []
        if self._state is State.AGENT:
            actions.append(StopAgent())
        if self._listening:
            actions.append(StopListening())
            self._listening = False
        self._enter(Trigger.CALLER_HUNG_UP)
        self._deadline = self._watchdog = self._agent_deadline = None
        self._waiting = None
        return actions

    # ------------------------------------------------------------------ the walk

    def _enter(self, trigger: Trigger) -> None:
        """The one place the state changes."""
        self._state = next_state(self._state, trigger)

    def _current(self, kind: type[_S]) -> _S:
        """The step the runner stands on, which its state says is a `kind` step."""
        step = self.step
        if not isinstance(step, kind):
            raise RunnerStateError(
                f"dialplan runner: state {self._state.name} at {self.flow}[{self._index}], "
                f"which is not a {kind.kind} step"
            )
        return step

    def _run(self, now_ms: float) -> list[Action]:
        """Execute steps from the current position until one waits for something."""
        for _ in range(MAX_STEPS_WITHOUT_INPUT):
            steps = self.plan.flows[self.flow]
            if self._index >= len(steps):
                return self._hang_up("end of flow")
            step = steps[self._index]
            match step:
                case SayStep():
                    if step.barge_in and self._typeahead:
                        self._index += 1
                        continue
                    self._enter(Trigger.PROMPT)
                    return [self._say(step.text, step.voice, now_ms, barge_in=step.barge_in)]
                case PlayStep():
                    if step.barge_in and self._typeahead:
                        self._index += 1
                        continue
                    self._enter(Trigger.PROMPT)
                    pid = self._new_pid()
                    self._waiting = pid
                    self._watchdog = now_ms + PLAY_WATCHDOG_MS
                    return [Play(step.file, pid, step.barge_in)]
                case MenuStep():
                    return self._enter_menu(step, now_ms)
                case CollectStep():
                    return self._enter_collect(step, now_ms)
                case HoursStep():
                    if not self._jump(step.open if hours_open(step, now_ms) else step.closed):
                        return self._hang_up("dialplan")
                case GotoStep():
                    if not self._jump(step.target):
                        return self._hang_up("dialplan")
                case AgentStep():
                    return self._enter_agent(step, now_ms)
                case TransferStep():
                    self._typeahead = ""
                    self._enter(Trigger.TRANSFER)
                    self._error_source = step
                    announce = self._fill(step.announce) if step.announce else None
                    return [Transfer(step.target, announce)]
                case HangUpStep():
                    if step.say:
                        return self._close(self._fill(step.say), now_ms, cache=not _has_fields(step.say))
                    return self._hang_up(step.reason)
                case _:
                    assert_never(step)
        log.error("dialplan ran %d steps without waiting for the caller; hanging up", MAX_STEPS_WITHOUT_INPUT)
        return self._hang_up("dialplan loop")

    def _jump(self, target: str) -> bool:
        """Move to `target`; False when the target is hang_up (the caller does the hanging up)."""
        if target == NEXT:
            self._index += 1
        elif target == HANG_UP:
            return False
        else:
            self.flow, self._index = target, 0
        return True

    def _go(self, target: str, now_ms: float) -> list[Action]:
        if not self._jump(target):
            return self._hang_up("dialplan")
        return self._run(now_ms)

    # ------------------------------------------------------------------ prompts

    def _new_pid(self) -> str:
        self._prompt_seq += 1
        return f"p{self._prompt_seq}"

    def _fill(self, text: str, *, spoken: bool = True) -> str:
        """Variables into a text. Spoken texts get digit strings spelled out one by one ("5 5 5 0"),
        so the synthesizer does not read a phone number as billions."""
        if "{" not in text:
            return text
        values = _Vars({k: spell_digits(v) for k, v in self._vars.items()}) if spoken else self._vars
        return _FORMATTER.vformat(text, (), values)

    def _say(self, text: str, voice: str | None, now_ms: float, *, barge_in: bool = True) -> Say:
        pid = self._new_pid()
        self._waiting = pid
        self._prompt_playing = True
        filled = self._fill(text)
        self._watchdog = now_ms + PROMPT_WATCHDOG_MS + PROMPT_MS_PER_CHAR * len(filled)
        voice = voice or self.plan.defaults.prompt_voice
        return Say(filled, voice, pid, barge_in, cache=not _has_fields(text))

    def _close(self, text: str, now_ms: float, *, cache: bool = True) -> list[Action]:
        """Say a last line, hang up when it has played."""
        self._enter(Trigger.CLOSE)
        self._deadline = self._agent_deadline = None
        say = self._say(text, None, now_ms)
        say = Say(say.text, say.voice, say.prompt_id, False, cache)
        return [*self._stop_listening(), say]

    def _hang_up(self, reason: str) -> list[Action]:
        actions = self._stop_listening()
        self._enter(Trigger.HANG_UP)
        self._deadline = self._watchdog = self._agent_deadline = None
        self._waiting = None
        return [*actions, HangUp(reason)]

    def _stop_listening(self) -> list[Action]:
        if self._listening:
            self._listening = False
            return [StopListening()]
        return []

    def _fail(self, prompt: str, target: str | None, now_ms: float, *, goodbye: bool = True) -> list[Action]:
        """A short spoken line, then `target`; no target: apologise and hang up."""
        self._deadline = self._agent_deadline = None
        if target is None or target == HANG_UP:
            return self._close(f"{prompt} {GOODBYE}" if goodbye else prompt, now_ms)
        pid = self._new_pid()
        line = Say(self._fill(prompt), self.plan.defaults.prompt_voice, pid, False, not _has_fields(prompt))
        self._waiting = None  # the next step's prompt follows at once; no need to wait
        return [*self._stop_listening(), line, *self._go(target, now_ms)]

    # ------------------------------------------------------------------ menu

    def _enter_menu(self, menu: MenuStep, now_ms: float) -> list[Action]:
        self._enter(Trigger.MENU)
        self._attempts = 0
        self._deadline = None
        if self._typeahead:
            digit, self._typeahead = self._typeahead[0], ""
            if digit in menu.options:
                return self._choose(menu, digit, now_ms)
        actions: list[Action] = [self._say(menu.prompt, menu.voice, now_ms, barge_in=menu.barge_in)]
        phrases = spoken_phrases(menu)
        if phrases:
            self._listening = True
            actions.append(Listen(phrases, digits=False))
        return actions

    def _choose(self, menu: MenuStep, key: str, now_ms: float) -> list[Action]:
        self._notes.append(("menu_choice", {"flow": self.flow, "step": self._index, "choice": key,
                                            "goto": menu.options[key].goto}))  # fmt: skip
        actions = self._stop_listening()
        if self._prompt_playing:
            actions.append(StopPrompts())
            self._prompt_playing = False
        self._waiting = None
        self._watchdog = self._deadline = None
        self._vars["choice"] = key
        return actions + self._go(menu.options[key].goto, now_ms)

    def _menu_retry(self, menu: MenuStep, why: str, now_ms: float) -> list[Action]:
        self._attempts += 1
        note = {"flow": self.flow, "step": self._index, "attempt": self._attempts}
        self._notes.append((f"menu_{why}", note))
        actions: list[Action] = []
        if self._prompt_playing:
            actions.append(StopPrompts())
            self._prompt_playing = False
        self._deadline = None
        if self._attempts > menu.retries:
            actions += self._stop_listening()
            self._waiting = self._watchdog = None
            target = menu.no_input if why == "no_input" else menu.no_match
            return actions + self._go(target, now_ms)
        sorry = menu.no_input_prompt if why == "no_input" else menu.no_match_prompt
        actions.append(self._say(sorry, menu.voice, now_ms, barge_in=menu.barge_in))
        actions.append(self._say(menu.prompt, menu.voice, now_ms, barge_in=menu.barge_in))
        return actions

    # ------------------------------------------------------------------ collect

    def _enter_collect(self, step: CollectStep, now_ms: float) -> list[Action]:
        self._enter(Trigger.COLLECT)
        self._attempts = 0
        self._buffer = ""
        self._deadline = None
        actions: list[Action] = []
        typed, self._typeahead = self._typeahead, ""
        if step.prompt and not typed:
            actions.append(self._say(step.prompt, step.voice, now_ms))
        else:
            self._deadline = now_ms + step.timeout_ms
        self._listening = True
        actions.append(Listen((), digits=True))
        for d in typed:
            actions += self._collect_digits(d, now_ms)
            if self._state is not State.COLLECT:
                break
        return actions

    def _collect_digits(self, digit: str, now_ms: float) -> list[Action]:
        step = self._current(CollectStep)
        actions: list[Action] = []
        if self._prompt_playing:
            actions.append(StopPrompts())
            self._prompt_playing = False
            self._waiting = self._watchdog = None
        if step.terminator and digit == step.terminator:
            if len(self._buffer) >= (step.min_digits or step.digits):
                return actions + self._collect_done(now_ms)
            return actions + self._collect_retry(now_ms)
        if digit.isdigit():
            self._buffer += digit
            if len(self._buffer) >= step.digits:
                return actions + self._collect_done(now_ms)
        self._deadline = now_ms + step.timeout_ms
        return actions

    def _collect_done(self, now_ms: float) -> list[Action]:
        step = self._current(CollectStep)
        value = self._buffer[: step.digits]
        shown = "*" * len(value) if step.sensitive else value
        note = {"variable": step.variable, "digits": shown, "sensitive": step.sensitive}
        self._notes.append(("collected", note))
        self._vars[step.variable] = value
        self._vars["digits"] = value
        self._buffer = ""
        self._deadline = None
        actions = self._stop_listening()
        self._index += 1
        return actions + self._run(now_ms)

    def _collect_retry(self, now_ms: float) -> list[Action]:
        step = self._current(CollectStep)
        self._attempts += 1
        self._buffer = ""
        self._deadline = None
        actions: list[Action] = []
        if self._prompt_playing:
            actions.append(StopPrompts())
            self._prompt_playing = False
        if self._attempts > step.retries:
            self._waiting = self._watchdog = None
            return actions + self._stop_listening() + self._go(step.no_input, now_ms)
        actions.append(self._say(step.no_input_prompt, step.voice, now_ms))
        if step.prompt:
            actions.append(self._say(step.prompt, step.voice, now_ms))
        return actions

    # ------------------------------------------------------------------ agent

    def _enter_agent(self, step: AgentStep, now_ms: float) -> list[Action]:
        self._typeahead = ""
        self._enter(Trigger.AGENT)
        agent = self._resolve_agent(step)
        self._agent = agent
        self._agent_deadline = now_ms + step.max_duration_ms
        return [StartAgent(agent)]

    def _resolve_agent(self, step: AgentStep) -> AgentStep:
        d = self.plan.defaults
        barge = step.barge_in or BargeIn()
        min_ms = barge.min_speech_ms
        threshold = barge.threshold
        barge = BargeIn(
            enabled=barge.enabled if step.barge_in else d.barge_in.enabled,
            min_speech_ms=min_ms if min_ms is not None else d.barge_in.min_speech_ms,
            threshold=threshold if threshold is not None else d.barge_in.threshold,
            **{
                name: getattr(barge, name) if getattr(barge, name) is not None else getattr(d.barge_in, name)
                for name in ("echo_cancel", "send_cleaned_upstream", "backchannel", "backchannel_max_ms")
            },
        )
        tools = tuple(
            t.model_copy(update={"target": t.target or d.transfer_to}) if t.name == TOOL_TRANSFER else t
            for t in step.tools
        )
        return step.model_copy(
            update={
                "provider": step.provider or d.provider,
                "fallback_provider": step.fallback_provider or d.fallback_provider,
                "url": step.url or d.url,
                "model": step.model or d.model,
                "voice": step.voice or d.voice,
                "language": step.language or d.language,
                "format": step.format or d.format,
                "barge_in": barge,
                "instructions": self._fill(step.instructions, spoken=False),
                "greeting": self._fill(step.greeting) if step.greeting else None,
                "tools": tools,
                "moderation": step.moderation or d.moderation,
            }
        )

    def _agent_dtmf(self, digit: str, now_ms: float) -> list[Action]:
        agent = self._agent
        if agent is None:  # not in the AGENT state: _leave_agent is always followed by a transition
            return []
        action = agent.dtmf.get(digit)
        if action is None:
            return [SendToAgent(f"The caller pressed {digit}.")]
        if action == TOOL_TRANSFER:
            fallback = Tool(name=TOOL_TRANSFER, target=self.plan.defaults.transfer_to)
            tool = agent.tool(TOOL_TRANSFER) or fallback
            return [StopAgent(), *self._transfer_from_agent(tool, now_ms)]
        self._leave_agent()
        if action == TOOL_HANG_UP:
            return [StopAgent(), *self._hang_up("caller pressed " + digit)]
        return [StopAgent(), *self._go(action, now_ms)]

    def _transfer_from_agent(self, tool: Tool, now_ms: float) -> list[Action]:
        step = self._current(AgentStep)
        self._leave_agent()
        target = tool.target or self.plan.defaults.transfer_to
        if target is None:  # the loader rejects this; keep the call alive anyway
            return self._fail("Sorry, I can't transfer your call.", step.on_error, now_ms)
        self._enter(Trigger.TRANSFER)
        self._error_source = step
        announce = self._fill(tool.announce) if tool.announce else None
        return [Transfer(target, announce)]

    def _leave_agent(self) -> None:
        """The agent step is over; the caller of this method moves the walk on at once."""
        self._agent = None
        self._agent_deadline = None

    def _agent_finished(self, now_ms: float) -> list[Action]:
        self._leave_agent()
        self._index += 1
        return self._run(now_ms)


_DIGIT_RUN = re.compile(r"\d{3,}")


def spell_digits(value: str) -> str:
    """Runs of 3+ digits spaced out for speech: "+15550100" -> "+1 5 5 5 0 1 0 0"."""
    return _DIGIT_RUN.sub(lambda m: " ".join(m.group(0)), value)


def _has_fields(text: str) -> bool:
    return any(f is not None for _, f, _, _ in _FORMATTER.parse(text))
