"""What the console pages show, computed server-side with no I/O: a recording's waveform (SVG
paths of peaks), the per-turn latency chart (SVG bars), a call's timeline, each flow's diagram
(steps, menu branches, gotos, transfers as nested boxes) and a dialplan file's problems at their
lines. The templates only place these numbers and strings (escaped by Jinja2)."""

from __future__ import annotations

import io
import re
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridge.dialplan.schema import (
    AgentStep,
    CollectStep,
    Dialplan,
    GotoStep,
    HangUpStep,
    HoursStep,
    MenuStep,
    PlayStep,
    SayStep,
    TransferStep,
)

WAVE_WIDTH = 900
WAVE_LANE = 60  # px per channel lane
CHART_HEIGHT = 160
CHART_BAR = 28
CHART_GAP = 14
LATENCY_STAGES = (
    ("vad_to_upstream_stop_ms", "caller stopped -> upstream stop", "#6c8ebf"),
    ("upstream_stop_to_first_delta_ms", "upstream stop -> first audio", "#d79b00"),
    ("first_delta_to_played_ms", "first audio -> heard", "#82b366"),
)


# -- the recording ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Waveform:
    duration_s: float
    width: int
    height: int
    lanes: list[tuple[str, str, int]]  # (label, SVG path, lane top y)
    marks: list[tuple[float, str]]  # (x, title): barge-ins and other events on the time axis
    ticks: list[tuple[float, str]]  # (x, label) every few seconds


def waveform(wav: bytes, marks_ms: list[tuple[int, str]] | None = None, width: int = WAVE_WIDTH) -> Waveform:
    """Peaks of each channel of a PCM16 WAV (caller, bot) as SVG paths, one column per pixel."""
    with wave.open(io.BytesIO(wav)) as w:
        channels, rate = w.getnchannels(), w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    frames = len(samples) // max(1, channels)
    data = samples[: frames * channels].reshape(frames, channels) if frames else np.zeros((0, channels))
    duration = frames / rate if rate else 0.0
    names = ["caller", "bot"] if channels == 2 else [f"channel {i + 1}" for i in range(channels)]
    lanes: list[tuple[str, str, int]] = []
    half = WAVE_LANE / 2 - 2
    for c in range(channels):
        top = c * WAVE_LANE
        mid = top + WAVE_LANE / 2
        parts: list[str] = []
        if frames:
            x = np.abs(data[:, c].astype(np.int32))
            edges = np.linspace(0, frames, width + 1).astype(int)
            for px in range(width):
                a, b = edges[px], max(edges[px + 1], edges[px] + 1)
                peak = float(x[a:b].max()) / 32768.0 if a < frames else 0.0
                h = max(0.5, min(1.0, peak**0.5) * half)  # square root: quiet speech stays visible
                parts.append(f"M{px + 0.5:.1f} {mid - h:.1f}V{mid + h:.1f}")
        lanes.append((names[c], "".join(parts), top))
    scale = width / duration if duration else 0.0
    marks = [
        (round(t / 1000.0 * scale, 1), title) for t, title in (marks_ms or []) if 0 <= t / 1000.0 <= duration
    ]
    step = _tick_step(duration)
    ticks = [(round(t * scale, 1), f"{t:g}s") for t in np.arange(0.0, duration, step)] if duration else []
    return Waveform(round(duration, 2), width, WAVE_LANE * channels, lanes, marks, ticks)


def _tick_step(duration_s: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300):
        if duration_s / step <= 12:
            return float(step)
    return 600.0


# -- latency per turn ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    label: str
    total_ms: int | None
    segments: list[tuple[float, float, str, str]]  # (y, height, colour, title)


@dataclass(frozen=True, slots=True)
class LatencyChart:
    width: int
    height: int
    bars: list[Bar]
    max_ms: int
    legend: list[tuple[str, str]]
    gridlines: list[tuple[float, str]]


def latency_chart(turns: list[dict[str, Any]]) -> LatencyChart | None:
    """A stacked bar per agent turn (caller stopped -> upstream stop -> first audio -> heard)."""
    if not turns:
        return None
    totals = []
    for t in turns:
        parts = [max(0, int(t.get(key) or 0)) for key, _, _ in LATENCY_STAGES]
        totals.append(max(sum(parts), int(t.get("total_ms") or 0)))
    max_ms = max(100, *totals)
    scale = (CHART_HEIGHT - 20) / max_ms
    bars: list[Bar] = []
    for i, t in enumerate(turns):
        x = 40 + i * (CHART_BAR + CHART_GAP)
        y = float(CHART_HEIGHT)
        segments = []
        for key, name, colour in LATENCY_STAGES:
            ms = t.get(key)
            if ms is None or ms <= 0:
                continue
            h = ms * scale
            y -= h
            segments.append((round(y, 1), round(h, 1), colour, f"turn {i + 1}: {name} {ms} ms"))
        bars.append(Bar(x, str(i + 1), t.get("total_ms"), segments))
    grid_step = next(s for s in (50, 100, 200, 250, 500, 1000, 2000, 5000, 10000) if max_ms / s <= 6)
    gridlines = [(round(CHART_HEIGHT - ms * scale, 1), f"{ms} ms") for ms in range(0, max_ms + 1, grid_step)]
    width = 40 + len(turns) * (CHART_BAR + CHART_GAP) + 20
    legend = [(name, colour) for _, name, colour in LATENCY_STAGES]
    return LatencyChart(max(width, 320), CHART_HEIGHT + 24, bars, max_ms, legend, gridlines)


# -- timeline and transcript ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    t_ms: int
    kind: str  # "event" or the speaker ("caller", "bot")
    title: str
    detail: str = ""
    cut: bool = False  # a bot line cut by barge-in


def timeline(record: dict[str, Any]) -> list[Entry]:
    """The call's events and transcript lines, in time order."""
    entries: list[Entry] = []
    for e in record.get("events", []):
        data = e.get("data") or {}
        detail = ", ".join(f"{k}={v}" for k, v in data.items())
        entries.append(Entry(int(e["t_ms"]), "event", str(e["kind"]), detail))
    for line in record.get("transcript", []):
        text = line.get("text")
        if text is None:
            text = f"(unreadable: {line.get('error', 'encrypted')})"
        heard = line.get("heard_ms")
        cut = line.get("speaker") == "bot" and heard is not None
        detail = f"barge-in: the caller heard {heard / 1000:.1f} s of it" if cut else ""
        entries.append(Entry(int(line["t_ms"]), str(line["speaker"]), str(text), detail, cut))
    entries.sort(key=lambda x: (x.t_ms, x.kind != "event"))
    return entries


def barge_in_marks(record: dict[str, Any]) -> list[tuple[int, str]]:
    marks = [(int(e["t_ms"]), f"{e['kind']} at {e['t_ms'] / 1000:.1f} s") for e in record.get("events", [])]
    return [m for m in marks if m[1].startswith(("barge_in", "transfer", "dtmf"))]


# -- dialplan diagrams ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Branch:
    label: str
    target: str  # a flow name, "next" or "hang_up", or a phone number / URI for transfers
    kind: str  # "flow", "next", "hang_up", "transfer"


@dataclass(frozen=True, slots=True)
class StepBox:
    index: int
    kind: str
    summary: str
    branches: list[Branch] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FlowBox:
    name: str
    steps: list[StepBox]
    numbers: list[str]
    reached_from: list[str]


def _target(label: str, target: str) -> Branch:
    kind = "next" if target == "next" else "hang_up" if target == "hang_up" else "flow"
    return Branch(label, target, kind)


def _short(text: str | None, n: int = 90) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def step_box(index: int, step: Any, plan: Dialplan) -> StepBox:
    if isinstance(step, SayStep):
        return StepBox(index, "say", f'"{_short(step.text)}"')
    if isinstance(step, PlayStep):
        on_error = [_target("on error", step.on_error)] if step.on_error else []
        return StepBox(index, "play", step.file.name, on_error)
    if isinstance(step, MenuStep):
        branches: list[Branch] = []
        for key, option in step.options.items():
            words = f" / {', '.join(option.words)}" if option.words else ""
            branches.append(_target(f"{key}{words}", option.goto))
        branches.append(_target("no input", step.no_input))
        branches.append(_target("no match", step.no_match))
        return StepBox(
            index, "menu", f'"{_short(step.prompt)}" (timeout {step.timeout_ms / 1000:g} s)', branches
        )
    if isinstance(step, CollectStep):
        limits = f"{step.min_digits or step.digits}-{step.digits} digits"
        return StepBox(
            index, "collect", f"{{{step.variable}}}: {limits}", [_target("no input", step.no_input)]
        )
    if isinstance(step, HoursStep):
        windows = ", ".join(_window_text(w) for w in step.windows)
        return StepBox(
            index,
            "hours",
            f"{step.timezone}: {_short(windows)}",
            [_target("open", step.open), _target("closed", step.closed)],
        )
    if isinstance(step, GotoStep):
        return StepBox(index, "goto", step.target, [_target("goto", step.target)])
    if isinstance(step, AgentStep):
        provider = step.provider or plan.defaults.provider
        tools = []
        branches = []
        for tool in step.tools:
            tools.append(tool.name)
            if tool.name == "transfer":
                target = tool.target or plan.defaults.transfer_to or "?"
                branches.append(Branch("tool transfer", target, "transfer"))
            elif tool.name == "hang_up":
                branches.append(Branch("tool hang_up", "hang_up", "hang_up"))
            elif tool.goto:
                branches.append(_target(f"tool {tool.name}", tool.goto))
        for digit, action in step.dtmf.items():
            if action == "transfer":
                branches.append(Branch(f"key {digit}", plan.defaults.transfer_to or "?", "transfer"))
            else:
                branches.append(_target(f"key {digit}", action))
        if step.on_error:
            branches.append(_target("on error", step.on_error))
        summary = f"{provider}" + (f" {step.model}" if step.model else "")
        extras = [
            f"tools: {', '.join(tools)}" if tools else "",
            f"{len(step.intents)} intents" if step.intents else "",
        ]
        extras.append(f"{len(step.faq)} FAQ" if step.faq else "")
        summary += "".join(f"; {x}" for x in extras if x)
        return StepBox(index, "agent", summary, branches)
    if isinstance(step, TransferStep):
        branches = [Branch("transfer", step.target, "transfer")]
        if step.on_error:
            branches.append(_target("on error", step.on_error))
        return StepBox(index, "transfer", step.target, branches)
    if isinstance(step, HangUpStep):
        return StepBox(index, "hang_up", f'"{_short(step.say)}"' if step.say else "", [])
    return StepBox(index, str(getattr(step, "kind", type(step).__name__)), "")


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _window_text(window: Any) -> str:
    days = ",".join(_DAYS[d] for d in sorted(window.days) if 0 <= d < 7)

    def hhmm(m: int) -> str:
        return f"{m // 60:02d}:{m % 60:02d}"

    return f"{days} {hhmm(window.start_min)}-{hhmm(window.end_min)}"


def flow_diagram(plan: Dialplan) -> list[FlowBox]:
    """Each flow as a box of step boxes with their branches, and who leads to it."""
    boxes: dict[str, list[StepBox]] = {}
    for name, steps in plan.flows.items():
        boxes[name] = [step_box(i, s, plan) for i, s in enumerate(steps)]
    reached: dict[str, list[str]] = {name: [] for name in plan.flows}
    for name, step_boxes in boxes.items():
        for box in step_boxes:
            for b in box.branches:
                if b.kind == "flow" and b.target in reached and name not in reached[b.target]:
                    reached[b.target].append(name)
    numbers: dict[str, list[str]] = {name: [] for name in plan.flows}
    for number, flow in plan.numbers.items():
        numbers.setdefault(flow, []).append(number)
    return [FlowBox(n, boxes[n], numbers.get(n, []), reached[n]) for n in plan.flows]


def transfer_targets(plan: Dialplan) -> list[str]:
    """Every transfer target the dialplan names (the only places the console may transfer to)."""
    targets: list[str] = []
    if plan.defaults.transfer_to:
        targets.append(plan.defaults.transfer_to)
    for box in flow_diagram(plan):
        for step in box.steps:
            for b in step.branches:
                if b.kind == "transfer" and b.target not in targets and b.target != "?":
                    targets.append(b.target)
    return targets


# -- a dialplan file's problems at their lines -------------------------------------------------------


_PROBLEM = re.compile(r"^(?P<file>.+?):(?P<line>\d+) (?P<message>.*)$", re.DOTALL)


@dataclass
class FileCheck:
    path: Path
    ok: bool
    summary: str
    lines: list[tuple[int, str, list[str]]]  # (number, text, problems at this line)
    other: list[str]  # problems without a line in this file


def check_file(path: Path, text: str, problems: list[str], summary: str) -> FileCheck:
    """The file's source with each problem placed at its line (problems of other files aside)."""
    at: dict[int, list[str]] = {}
    other: list[str] = []
    for problem in problems:
        m = _PROBLEM.match(problem)
        if m and Path(m["file"]).name == path.name:
            at.setdefault(int(m["line"]), []).append(m["message"])
        else:
            other.append(problem)
    lines = [(i, line, at.pop(i, [])) for i, line in enumerate(text.splitlines(), 1)]
    for number, messages in sorted(at.items()):  # past the end of the file
        other += [f"line {number}: {msg}" for msg in messages]
    return FileCheck(path, not problems, summary, lines, other)
