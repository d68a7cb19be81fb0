"""Checks that need the whole plan: targets resolve, every flow and step can run, no loop runs forever
without waiting for the caller, `{variables}` are known, agents can transfer and connect.

They run on a `PlanView`: a schema-valid `Dialplan`, or what the loader could salvage from a file
with schema errors (steps that failed validation are `Unparsed`). On an incomplete view the checks are
conservative: an unparsed step may jump anywhere and may wait for the caller, so it never causes an
"unreachable" or "loop" report of its own. No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bridge.dialplan.schema import (
    BUILTIN_VARIABLES,
    HANG_UP,
    NEXT,
    AgentStep,
    CollectStep,
    Defaults,
    Dialplan,
    GotoStep,
    HangUpStep,
    HoursStep,
    Loc,
    MenuStep,
    PlayStep,
    SayStep,
    StepBase,
    TransferStep,
    text_fields,
)

Problem = tuple[Loc, str]  # (path in the plan, what is wrong)
Node = tuple[str, int]  # (flow, step index)


@dataclass(frozen=True, slots=True)
class Unparsed:
    """A step that failed schema validation (already reported): its YAML data, as read."""

    raw: object


@dataclass(frozen=True, slots=True)
class PlanView:
    """What the checks read. `defaults` is None when it failed validation (checks that need it are
    skipped); `complete` is False when the loader dropped something it read (a duplicate flow), so
    reachability cannot be judged."""

    numbers: Mapping[str, str]
    flows: Mapping[str, Sequence[StepBase | Unparsed]]
    defaults: Defaults | None
    complete: bool = True

    @classmethod
    def of(cls, plan: Dialplan) -> PlanView:
        return cls(plan.numbers, plan.flows, plan.defaults)


def plan_problems(view: PlanView) -> list[Problem]:
    """Everything wrong with the plan that needs the whole plan to see."""
    problems: list[Problem] = []
    flows = view.flows
    known = sorted(flows)

    def target_ok(loc: Loc, target: str, *, allow_next: bool = True) -> bool:
        if target in flows or target == HANG_UP or (allow_next and target == NEXT):
            return True
        problems.append(
            (loc, f"unknown target {target!r}; expected a flow ({', '.join(known)}), next or hang_up")
        )
        return False

    for number, flow in view.numbers.items():
        target_ok(("numbers", number), flow, allow_next=False)

    variables = set(BUILTIN_VARIABLES)
    for steps in flows.values():
        for step in steps:
            if isinstance(step, CollectStep):
                variables.add(step.variable)
            elif isinstance(step, Unparsed):
                variables |= _raw_variables(step.raw)

    # graph over (flow, index): where each step can go next
    edges: dict[Node, list[Node]] = {}
    for name, steps in flows.items():
        for i, step in enumerate(steps):
            if isinstance(step, Unparsed):  # may go anywhere: to the next step or any flow's start
                after = [(name, i + 1)] if i + 1 < len(steps) else []
                edges[(name, i)] = [*after, *((f, 0) for f in flows)]
                continue
            succ: list[Node] = []
            for sub, target in step_targets(step):
                if not target_ok(("flows", name, i, *sub), target):
                    continue
                if target == NEXT:
                    if i + 1 < len(steps):
                        succ.append((name, i + 1))
                elif target in flows:
                    succ.append((target, 0))
            if continues(step) and i + 1 < len(steps):
                succ.append((name, i + 1))
            edges[(name, i)] = succ
            for sub, text in step_texts(step):
                for var in text_fields(text):
                    if var not in variables:
                        problems.append(
                            (
                                ("flows", name, i, *sub),
                                f"unknown variable {{{var}}}; known: {', '.join(sorted(variables))}",
                            )
                        )
            if isinstance(step, AgentStep) and view.defaults is not None:
                problems += _agent_problems(step, view.defaults, ("flows", name, i, "agent"))

    if view.complete:
        problems += _unreachable(view, edges)
    problems += _loops_without_input(view, edges)
    return problems


def _unreachable(view: PlanView, edges: Mapping[Node, Sequence[Node]]) -> list[Problem]:
    """Flows no number and no step leads to; the first step of a flow that nothing reaches."""
    flows = view.flows
    seen: set[Node] = set()
    stack = [(f, 0) for f in set(view.numbers.values()) if f in flows]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(edges.get(node, ()))
    problems: list[Problem] = []
    for name, steps in flows.items():
        if steps and (name, 0) not in seen:
            problems.append((("flows", name), "unreachable: no number and no step leads to this flow"))
            continue
        for i in range(len(steps)):
            if (name, i) not in seen:
                prev = steps[i - 1] if i else None
                kind = prev.kind if isinstance(prev, StepBase) else "?"
                problems.append(
                    (("flows", name, i), f"unreachable: the step before ({kind}) never continues to this one")
                )
                break
    return problems


def _loops_without_input(view: PlanView, edges: Mapping[Node, Sequence[Node]]) -> list[Problem]:
    """Cycles through steps that never wait for the caller (an unparsed step counts as waiting)."""
    flows = view.flows
    quiet = {n: list(succ) for n, succ in edges.items() if not _waits_for_caller(flows[n[0]][n[1]])}
    problems: list[Problem] = []
    reported: set[frozenset[Node]] = set()
    color: dict[Node, int] = {}
    path: list[Node] = []

    def dfs(node: Node) -> None:
        color[node] = 1
        path.append(node)
        for nxt in quiet.get(node, ()):
            if nxt not in quiet:
                continue
            if color.get(nxt) == 1:
                cycle = path[path.index(nxt) :]
                key = frozenset(cycle)
                if key not in reported:
                    reported.add(key)
                    route = " -> ".join(f"{f}[{i}]" for f, i in [*cycle, nxt])
                    problems.append(
                        (
                            ("flows", nxt[0], nxt[1]),
                            f"loop without input: {route} repeats forever without waiting for the caller",
                        )
                    )
            elif color.get(nxt) is None:
                dfs(nxt)
        path.pop()
        color[node] = 2

    for node in quiet:
        if color.get(node) is None:
            dfs(node)
    return problems


def _waits_for_caller(step: StepBase | Unparsed) -> bool:
    return isinstance(step, MenuStep | CollectStep | AgentStep | Unparsed)


def step_targets(step: StepBase) -> list[tuple[Loc, str]]:
    """(location inside the step, target) for every jump the step can make."""
    match step:
        case GotoStep():
            return [(("goto",), step.target)]
        case MenuStep():
            return [
                *((("menu", "options", key), opt.goto) for key, opt in step.options.items()),
                (("menu", "no_input"), step.no_input),
                (("menu", "no_match"), step.no_match),
            ]
        case CollectStep():
            return [(("collect", "no_input"), step.no_input)]
        case HoursStep():
            return [(("hours", "open"), step.open), (("hours", "closed"), step.closed)]
        case PlayStep() | TransferStep():
            return [] if step.on_error is None else [((step.kind, "on_error"), step.on_error)]
        case AgentStep():
            out: list[tuple[Loc, str]] = []
            if step.on_error is not None:
                out.append((("agent", "on_error"), step.on_error))
            for digit, action in step.dtmf.items():
                if action not in ("transfer", "hang_up"):
                    out.append((("agent", "dtmf", digit), action))
            for i, tool in enumerate(step.tools):
                if tool.goto is not None:
                    out.append((("agent", "tools", i, "goto"), tool.goto))
            return out
    return []


def continues(step: StepBase) -> bool:
    """Does the step go on to the next one by itself (not through a `next` target)?"""
    return isinstance(step, SayStep | PlayStep | CollectStep | AgentStep)


def step_texts(step: StepBase) -> list[tuple[Loc, str]]:
    """(location, text) of every text of the step that may hold `{variables}`."""
    match step:
        case SayStep():
            return [(("say", "text"), step.text)]
        case PlayStep():
            return [(("play", "fallback"), step.fallback)]
        case MenuStep():
            return [
                (("menu", "prompt"), step.prompt),
                (("menu", "no_input_prompt"), step.no_input_prompt),
                (("menu", "no_match_prompt"), step.no_match_prompt),
            ]
        case CollectStep():
            out: list[tuple[Loc, str]] = [(("collect", "prompt"), step.prompt)] if step.prompt else []
            return [*out, (("collect", "no_input_prompt"), step.no_input_prompt)]
        case AgentStep():
            texts: list[tuple[Loc, str]] = [(("agent", "instructions"), step.instructions)]
            return [*texts, (("agent", "greeting"), step.greeting)] if step.greeting else texts
        case TransferStep():
            return [(("transfer", "announce"), step.announce)] if step.announce else []
        case HangUpStep():
            return [(("hang_up", "say"), step.say)] if step.say else []
    return []


def _agent_problems(agent: AgentStep, defaults: Defaults, loc: Loc) -> list[Problem]:
    problems: list[Problem] = []
    transfer = agent.tool("transfer")
    needs_target = (transfer is not None and transfer.target is None) or "transfer" in agent.dtmf.values()
    if needs_target and (transfer is None or transfer.target is None) and defaults.transfer_to is None:
        problems.append(
            (
                loc,
                'transfer needs a target: give the tool one (transfer: "+1...") or set defaults.transfer_to',
            )
        )
    provider = agent.provider or defaults.provider
    if provider == "url" and not (agent.url or defaults.url):
        problems.append((loc, "provider url needs `url:` here or in defaults"))
    return problems


def _raw_variables(raw: object) -> set[str]:
    """The variable an unparsed `collect` step would set, so texts using it are not reported."""
    if isinstance(raw, dict):
        body = raw.get("collect")
        if isinstance(body, dict) and isinstance(body.get("variable"), str):
            return {body["variable"]}
    return set()
