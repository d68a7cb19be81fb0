"""`ivr-bridge dialplan check [PATH...]` and `ivr-bridge dialplan simulate FLOW`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from bridge.dialplan.loader import DialplanInvalid, load_dialplan
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
)
from bridge.errors import ConfigError, DialplanError
from bridge.settings import Settings

SIMULATE_HELP = """\
Type digits (1, 42#) to press keys, words to speak, Enter or `wait` to let the timeout pass.
During an agent step: `:tool transfer`, `:tool hang_up`, `:tool NAME`, `:end` (agent finished),
`:fail` (upstream error). After a transfer: `:fail` (the leg cannot transfer). `:quit` to stop."""


def _default_dialplans() -> Path:
    try:
        return Settings.from_env().dialplans
    except ConfigError:
        return Path("dialplans")


def check_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    paths = [Path(p) for p in args.paths] or [_default_dialplans()]
    failed = False
    for path in paths:
        start = time.perf_counter()
        try:
            plan = load_dialplan(path)
        except DialplanInvalid as exc:
            failed = True
            for problem in exc.problems:
                print(problem, file=out)
            print(f"{path}: {len(exc.problems)} problem(s)", file=out)
            continue
        ms = (time.perf_counter() - start) * 1000.0
        steps = sum(len(s) for s in plan.flows.values())
        summary = f"{len(plan.flows)} flows, {steps} steps, {len(plan.numbers)} numbers"
        print(f"{path}: ok ({summary}; {ms:.1f} ms)", file=out)
    return 1 if failed else 0


def describe(action: Action) -> str:
    if isinstance(action, Say):
        return f'SAY "{action.text}"' + ("" if action.barge_in else " (no barge-in)")
    if isinstance(action, Play):
        return f"PLAY {action.path}"
    if isinstance(action, Listen):
        what = [*action.phrases, *(["spoken digits"] if action.digits else [])]
        return f"LISTEN for: {', '.join(what) or 'nothing'}"
    if isinstance(action, StopListening):
        return "STOP LISTENING"
    if isinstance(action, StopPrompts):
        return "STOP PROMPTS"
    if isinstance(action, StartAgent):
        a = action.agent
        tools = ", ".join(t.name for t in a.tools) or "none"
        return (
            f"START AGENT provider={a.provider} model={a.model or '-'} voice={a.voice or '-'} tools={tools}"
        )
    if isinstance(action, StopAgent):
        return "STOP AGENT"
    if isinstance(action, SendToAgent):
        return f'TO AGENT "{action.text}"'
    if isinstance(action, Transfer):
        announce = f' (announce "{action.announce}")' if action.announce else ""
        return f"TRANSFER to {action.target}{announce}"
    if isinstance(action, HangUp):
        return f"HANG UP ({action.reason})"
    return repr(action)


def simulate_command(
    args: argparse.Namespace,
    inp: TextIO | None = None,
    out: TextIO | None = None,
    clock: Callable[[], float] = time.time,
) -> int:
    inp = inp or sys.stdin
    out = out or sys.stdout
    source = Path(args.dialplans) if args.dialplans else _default_dialplans()
    try:
        plan = load_dialplan(source)
    except DialplanInvalid as exc:
        for problem in exc.problems:
            print(problem, file=out)
        return 1
    skew_ms = 0.0

    def now() -> float:
        return clock() * 1000.0 + skew_ms

    try:
        runner = Runner(plan, flow=args.flow, caller=args.caller, called=args.called, now_ms=now())
    except DialplanError as exc:
        print(f"ivr-bridge: {exc}", file=out)
        return 2
    print(f"simulating flow {runner.flow} of {source}; caller={args.caller or '-'}", file=out)
    print(SIMULATE_HELP, file=out)
    last: list[Action] = []

    def show(actions: list[Action]) -> None:
        """Print the actions, and play each prompt to its end at once (the simulation has no audio)."""
        nonlocal last
        queue = list(actions)
        while queue:
            action = queue.pop(0)
            print("  " + describe(action), file=out)
            last.append(action)
            if isinstance(action, Say | Play):
                queue += runner.on_prompt_done(action.prompt_id, now())
            elif isinstance(action, Transfer):
                print("  (call handed off; `:fail` simulates a transfer the leg cannot do)", file=out)

    last = []
    show(runner.start(now()))
    agent_on = any(isinstance(a, StartAgent) for a in last)
    while True:
        if runner.finished:
            transferred = any(isinstance(a, Transfer) for a in last[-1:])
            if not transferred:
                print("call ended", file=out)
                return 0
        out.write("> ")
        out.flush()
        line = inp.readline()
        if not line:
            print("\n(end of input)", file=out)
            return 0
        text = line.strip()
        last = []
        if text in (":quit", ":q", "quit", "exit"):
            show(runner.on_hangup(now()))
            print("caller hung up", file=out)
            return 0
        if text in ("", "wait", ":wait"):
            due = runner.next_timer_ms
            if due is None:
                print("  (nothing is waiting for a timeout)", file=out)
                continue
            skew_ms += max(0.0, due - now())
            show(runner.on_timer(now()))
        elif text.startswith(":tool"):
            name = text.split(maxsplit=1)[1] if " " in text else ""
            show(runner.on_agent_tool(name, {}, now()))
        elif text == ":end":
            show(runner.on_agent_ended(None, now()))
        elif text.startswith(":fail"):
            reason = text[5:].strip() or "simulated failure"
            if runner.finished:
                show(runner.on_action_failed(Transfer(""), reason, now()))
            else:
                show(runner.on_agent_ended(reason, now()))
        elif all(ch in "0123456789*#ABCD" for ch in text.replace(" ", "")):
            for digit in text.replace(" ", ""):
                show(runner.on_dtmf(digit, now()))
        else:
            show(runner.on_speech(text, now()))
        agent_on = (agent_on or any(isinstance(a, StartAgent) for a in last)) and not any(
            isinstance(a, StopAgent | HangUp | Transfer) for a in last
        )
        if agent_on and not last:
            print("  (the agent hears this; in a real call it answers)", file=out)


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Register `dialplan check|simulate` on the main parser's sub-commands; returns the `dialplan`
    sub-commands (bridge/cli.py adds `dialplan test` there)."""
    dialplan = sub.add_parser("dialplan", help="check or simulate dialplans")
    dsub = dialplan.add_subparsers(dest="dialplan_command", required=True)
    check = dsub.add_parser("check", help="validate dialplan files or directories; exit 1 on any error")
    check.add_argument(
        "paths", nargs="*", help="files or directories (default: BRIDGE_DIALPLANS or dialplans/)"
    )
    check.set_defaults(func=check_command)
    sim = dsub.add_parser("simulate", help="walk a flow in the terminal by typing digits or phrases")
    sim.add_argument(
        "flow", nargs="?", default=None, help="flow to start (default: by --called via numbers:)"
    )
    sim.add_argument("--dialplans", default=None, help="dialplan file or directory")
    sim.add_argument("--caller", default="+15555550123", help="the caller's number ({caller})")
    sim.add_argument(
        "--called", default="", help="the called number ({called}); picks the flow when none is given"
    )
    sim.set_defaults(func=simulate_command)
    return dsub
