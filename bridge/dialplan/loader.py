"""Read dialplan YAML with line numbers, catch YAML's traps, validate, and check the whole plan.

Every problem reads `dialplans/main.yaml:14 flows.main[2].menu.options: what was expected`.
The loader never stops at the first problem: it reports all it can find, of every kind at once
(YAML traps, schema errors, and the whole-plan checks on the steps that did validate). Traps caught:
keys that YAML turns into numbers or booleans (`1:`, `no:`), `yes`/`no`/`on`/`off` values,
leading zeros (`0123` is octal), `17:30` (base-60 number), `+1555...` read as a number,
duplicate keys, tabs in indentation.
"""

from __future__ import annotations

import re
import wave
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from bridge.dialplan.checks import PlanView, Problem, Unparsed, plan_problems
from bridge.dialplan.schema import STEP_TYPES, Defaults, Dialplan, Loc, PlayStep, Step, StepBase
from bridge.errors import DialplanError

TOP_LEVEL_KEYS = ("numbers", "flows", "defaults")
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_LEADING_ZERO = re.compile(r"^[-+]?0[0-9_]+$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


class DialplanInvalid(DialplanError):
    """A dialplan failed to load; `problems` lists every error as `file:line path: message`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


Position = tuple[str, int]  # (file as given, 1-based line)


def format_loc(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.match(part):
            out += f".{part}" if out else part
        else:
            out += f'["{part}"]'
    return out


class _Reader:
    """Turns one YAML file into plain Python data plus a map of path -> line, collecting traps."""

    def __init__(self) -> None:
        self.lines: dict[Loc, int] = {}
        self.plain: dict[Loc, tuple[str, str]] = {}  # path -> (resolved tag, source text) of plain scalars
        self.problems: list[tuple[int, str, str]] = []  # (line, path, message)
        self.trap_locs: set[Loc] = set()  # where a trap was reported (validation errors there are noise)
        self.dropped = False  # a duplicate key was left out: the data is not all the file says
        self._constructor = SafeConstructor()

    def problem(self, line: int, loc: Loc, message: str) -> None:
        self.trap_locs.add(loc)
        self.problems.append((line, format_loc(loc), message))

    def read(self, text: str) -> Any:
        for n, source in enumerate(text.splitlines(), 1):
            indent = source[: len(source) - len(source.lstrip(" \t"))]
            if "\t" in indent:
                self.problem(n, (), "tab in the indentation; YAML needs spaces")
        if self.problems:
            return None
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 1
            what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
            self.problem(line, (), f"not valid YAML: {what}")
            return None
        except yaml.YAMLError as exc:  # e.g. a control character (ReaderError carries no mark)
            self.problem(1, (), f"not valid YAML: {exc}")
            return None
        if node is None:
            self.problem(1, (), "the file is empty")
            return None
        self.lines[()] = node.start_mark.line + 1
        value = self._value(node, ())
        if value is None and not self.problems:  # e.g. a lone `!` or `~`: a document with no data
            self.problem(1, (), "the file holds no data; expected numbers:, flows: and defaults:")
        return value

    def _value(self, node: Node, loc: Loc) -> Any:
        line = node.start_mark.line + 1
        if isinstance(node, MappingNode):
            out: dict[str, Any] = {}
            first_line: dict[str, int] = {}
            for key_node, value_node in node.value:
                key_line = key_node.start_mark.line + 1
                if not isinstance(key_node, ScalarNode):
                    self.problem(key_line, loc, "a key must be plain text")
                    continue
                key = key_node.value
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self.problem(key_line, loc, "`<<` merge keys are not supported; write the keys out")
                    continue
                if key_node.style is None and key_node.tag != _STR:
                    self.problem(key_line, (*loc, key), _key_trap(key, key_node.tag))
                if key in first_line:
                    self.dropped = True
                    self.problem(
                        key_line, (*loc, key), f"duplicate key {key!r} (first at line {first_line[key]})"
                    )
                    continue
                first_line[key] = key_line
                self.lines[(*loc, key)] = key_line
                out[key] = self._value(value_node, (*loc, key))
            return out
        if isinstance(node, SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                self.lines[(*loc, i)] = item.start_mark.line + 1
                items.append(self._value(item, (*loc, i)))
            return items
        assert isinstance(node, ScalarNode)
        if node.style is None and node.tag != _STR:
            trap = _value_trap(node.value, node.tag)
            if trap:
                self.problem(line, loc, trap)
            self.plain[loc] = (node.tag, node.value)
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.problem(line, loc, f"cannot read {node.value!r}: {exc}")
            return None


def _key_trap(text: str, tag: str) -> str:
    if tag == _BOOL:
        return f'YAML reads the key {text} as the boolean {_bool(text)}; quote it: "{text}"'
    if tag == _NULL:
        return f'YAML reads the key {text or "(empty)"} as null; quote it: "{text}"'
    if tag in (_INT, _FLOAT):
        return f'YAML reads the key {text} as a number; quote it: "{text}"'
    return f'YAML reads the key {text} as {tag.rsplit(":", 1)[-1]}; quote it: "{text}"'


def _bool(text: str) -> str:
    return "true" if text.lower() in ("yes", "y", "true", "on") else "false"


def _value_trap(text: str, tag: str) -> str | None:
    if tag == _BOOL and text.lower() not in ("true", "false"):
        return (
            f"YAML reads {text} as the boolean {_bool(text)}; write {_bool(text)}, "
            f'or quote it ("{text}") if you mean the word'
        )
    if tag == _INT and _LEADING_ZERO.match(text):
        return f'YAML reads {text} as an octal number ({int(text.replace("_", ""), 8)}); quote it: "{text}"'
    if tag in (_INT, _FLOAT) and ":" in text:
        return f'YAML reads {text} as a base-60 number; quote it: "{text}"'
    if tag in (_INT, _FLOAT) and text.startswith("+"):
        return f'YAML reads {text} as a number and drops the +; quote it: "{text}"'
    return None


# ------------------------------------------------------------------------- validation messages


def _unwrap(tp: Any) -> Any:
    """Annotated / Optional / containers -> the type one level down (for walking models by path).

    The step union comes back as itself (the step's key picks the model)."""
    if tp is Step:
        return tp
    while True:
        origin = get_origin(tp)
        if origin is None:
            return tp
        if str(origin) == "typing.Annotated" or getattr(origin, "__name__", "") == "Annotated":
            tp = get_args(tp)[0]
            continue
        if origin is Union or str(origin) == "<class 'types.UnionType'>":
            models = [a for a in get_args(tp) if isinstance(a, type) and issubclass(a, BaseModel)]
            return models[0] if models else tp
        return tp


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The pydantic model that `loc` points into (for listing its allowed keys)."""
    tp: Any = Dialplan
    for part in loc:
        tp = _unwrap(tp)
        if tp is Step:
            if not isinstance(part, str) or part not in STEP_TYPES:
                return None
            tp = STEP_TYPES[part]
            continue
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = None
            for name, info in tp.model_fields.items():
                if part in (name, info.alias):
                    field = info
                    break
            if field is None:
                return None
            tp = field.annotation
            continue
        origin = get_origin(tp)
        args = get_args(tp)
        if origin is dict and len(args) == 2:
            tp = args[1]
        elif origin in (list, tuple) and args:
            tp = args[0]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _keys_of(model: type[BaseModel]) -> str:
    return ", ".join(info.alias or name for name, info in model.model_fields.items())


def _message(err: ErrorDetails, reader_plain: dict[Loc, tuple[str, str]]) -> tuple[Loc, Loc, str]:
    """(path to print, path whose line to show, message) for one pydantic error."""
    loc: Loc = tuple(err["loc"])
    kind = err["type"]
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind == "missing":
        return loc[:-1], loc[:-1], f"missing required key `{loc[-1]}`"
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = f"; expected one of: {_keys_of(model)}" if model else ""
        return loc[:-1], loc, f"unknown key `{loc[-1]}`{allowed}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        msg = "expected a mapping (key: value lines)"
    elif kind in ("list_type", "tuple_type"):
        msg = "expected a list (lines starting with `- `)"
    elif msg.startswith("Input should be"):
        msg = "expected" + msg[len("Input should be") :]
    plain = reader_plain.get(loc)
    if plain and kind in ("string_type", "literal_error"):
        msg += f' (YAML read {plain[1]} as {plain[0].rsplit(":", 1)[-1]}; quote it: "{plain[1]}")'
    return loc, loc, msg


# ------------------------------------------------------------------------- public API


def dialplan_files(paths: Sequence[str | Path]) -> list[Path]:
    """Expand directories to their top-level *.yaml / *.yml files (not sub-directories)."""
    files: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files += sorted(f for f in path.iterdir() if f.suffix in (".yaml", ".yml") and f.is_file())
        else:
            files.append(path)
    return files


def load_dialplan(*paths: str | Path) -> Dialplan:
    """Load one dialplan from files and/or directories (their files are merged). Raises DialplanInvalid."""
    files = dialplan_files(paths)
    problems: list[tuple[str, int, str, str]] = []  # file, line, path, message
    if not files:
        raise DialplanInvalid([f"{', '.join(str(p) for p in paths)}: no dialplan files (*.yaml) found"])
    merged: dict[str, Any] = {}
    where: dict[Loc, Position] = {}
    plains: dict[Loc, tuple[str, str]] = {}
    trap_locs: set[Loc] = set()
    unreadable = False
    dropped = False  # something read was left out (a duplicate): the merged data is not all of it
    for file in files:
        name = str(file)
        if not file.exists():
            problems.append((name, 1, "", "file or directory not found"))
            continue
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append((name, 1, "", f"cannot read the file: {exc}"))
            continue
        reader = _Reader()
        data = reader.read(text)
        problems += [(name, line, path, msg) for line, path, msg in reader.problems]
        trap_locs |= reader.trap_locs
        dropped = dropped or reader.dropped
        if data is None:
            unreadable = True
            continue
        if not isinstance(data, dict):
            problems.append((name, 1, "", "expected a mapping with numbers:, flows: and defaults:"))
            continue
        _resolve_play_paths(data, file.parent)
        for key, value in data.items():
            line = reader.lines.get((key,), 1)
            if key not in TOP_LEVEL_KEYS:
                problems.append(
                    (name, line, key, f"unknown key `{key}`; expected one of: {', '.join(TOP_LEVEL_KEYS)}")
                )
                continue
            if key not in merged:
                merged[key] = value if key == "defaults" or not isinstance(value, dict) else dict(value)
                continue
            if key == "defaults" or not isinstance(value, dict) or not isinstance(merged[key], dict):
                dropped = True
                first = where.get((key,), ("?", 0))
                problems.append((name, line, key, f"`{key}` is already given in {first[0]}:{first[1]}"))
                continue
            for sub, v in value.items():
                if sub in merged[key]:
                    dropped = True
                    first = where.get((key, sub), ("?", 0))
                    problems.append(
                        (
                            name,
                            reader.lines.get((key, sub), line),
                            format_loc((key, sub)),
                            f"{sub!r} is already defined in {first[0]}:{first[1]}",
                        )
                    )
                else:
                    merged[key][sub] = v
        for loc, line in reader.lines.items():
            where.setdefault(loc, (name, line))
        for loc, plain in reader.plain.items():
            plains.setdefault(loc, plain)
    default_file = str(files[0])

    def at(loc: Loc) -> Position:
        for n in range(len(loc), -1, -1):
            if loc[:n] in where:
                return where[loc[:n]]
        return (default_file, 1)

    def report(found: list[Problem]) -> None:
        for loc, msg in found:
            where_file, line = at(loc)
            problems.append((where_file, line, format_loc(loc), msg))

    plan: Dialplan | None = None
    if not unreadable:  # a file that is not YAML at all: its flows are unknown, so checks would guess
        try:
            plan = Dialplan.model_validate(merged)
        except ValidationError as exc:
            for err in exc.errors():
                loc, line_loc, msg = _message(err, plains)
                if any(line_loc[: len(t)] == t for t in trap_locs):
                    continue  # already reported as a YAML trap
                where_file, line = at(line_loc)
                problems.append((where_file, line, format_loc(loc), msg))
        # The whole-plan checks run even when other problems were found, on what did validate:
        # ops see every problem of a file in one run.
        view = PlanView.of(plan) if plan is not None else _salvage(merged)
        if dropped:
            view = PlanView(view.numbers, view.flows, view.defaults, complete=False)
        report(plan_problems(view))
        report(_audio_problems(view))
    if problems:
        problems.sort(key=lambda p: (p[0], p[1]))
        raise DialplanInvalid(
            [f"{f}:{line} {path}: {msg}" if path else f"{f}:{line} {msg}" for f, line, path, msg in problems]
        )
    assert plan is not None
    plan._sources = tuple(files)
    return plan


_STEP_ADAPTER: TypeAdapter[StepBase] = TypeAdapter(Step)


def _salvage(merged: dict[str, Any]) -> PlanView:
    """What validates of a plan that does not (its errors are already reported): for the whole-plan checks."""
    raw_numbers = merged.get("numbers")
    numbers = (
        {k: v for k, v in raw_numbers.items() if isinstance(k, str) and isinstance(v, str)}
        if isinstance(raw_numbers, dict)
        else {}
    )
    flows: dict[str, list[StepBase | Unparsed]] = {}
    raw_flows = merged.get("flows")
    for name, raw_steps in raw_flows.items() if isinstance(raw_flows, dict) else ():
        if not isinstance(name, str):
            continue
        if not isinstance(raw_steps, list):
            flows[name] = [Unparsed(raw_steps)]
            continue
        steps: list[StepBase | Unparsed] = []
        for raw in raw_steps:
            try:
                steps.append(_STEP_ADAPTER.validate_python(raw))
            except ValidationError:
                steps.append(Unparsed(raw))
        flows[name] = steps
    try:
        defaults: Defaults | None = Defaults.model_validate(merged.get("defaults", {}))
    except ValidationError:
        defaults = None
    complete = isinstance(raw_numbers, dict) and isinstance(raw_flows, dict)
    return PlanView(numbers, flows, defaults, complete=complete)


def check(*paths: str | Path) -> list[str]:
    """Every problem of the dialplan at `paths` (empty when it is valid)."""
    try:
        load_dialplan(*paths)
    except DialplanInvalid as exc:
        return exc.problems
    return []


def _resolve_play_paths(data: dict[str, Any], base: Path) -> None:
    flows = data.get("flows")
    if not isinstance(flows, dict):
        return
    for steps in flows.values():
        if not isinstance(steps, list):
            continue
        for step in steps:
            if not isinstance(step, dict) or "play" not in step:
                continue
            arg = step["play"]
            if isinstance(arg, str):
                step["play"] = str((base / arg).resolve())
            elif isinstance(arg, dict) and isinstance(arg.get("file"), str):
                step["play"] = {**arg, "file": str((base / arg["file"]).resolve())}


def _audio_problems(view: PlanView) -> list[Problem]:
    out: list[Problem] = []
    for name, steps in view.flows.items():
        for i, step in enumerate(steps):
            if isinstance(step, PlayStep):
                problem = wav_problem(step.file)
                if problem:
                    out.append((("flows", name, i, "play"), problem))
    return out


def wav_problem(path: Path) -> str | None:
    """None if the bridge can play `path` (a mono 16-bit PCM WAV), else what is wrong."""
    if not path.is_file():
        return f"audio file {path} not found"
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                return f"{path.name}: expected a mono 16-bit PCM WAV"
    except (wave.Error, EOFError, OSError) as exc:
        return f"{path.name}: expected a mono 16-bit PCM WAV ({exc})"
    return None
