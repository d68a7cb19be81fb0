"""`ivr-bridge dialplan test FILE...`: scripted conversations against the dialplans, through the
real call path.

Each test file names scripted calls; the runner starts the bridge in-process on 127.0.0.1 (an
ephemeral port, the embedded engine, the file's dialplans, a temporary data directory), calls it
with the Twilio-protocol softphone (bridge/tools/softphone.py), speaks the caller's lines with the
local synthesizer (Piper) through the µ-law phone line, presses keys, stays silent, and checks
what the bot does:

- `say`: what the caller heard is cut into the bot's utterances and recognised locally
  (pocketsphinx, with a language model of every line the dialplan can say); the utterance is taken
  to be the dialplan lines whose words it contains, and the pattern (a case-insensitive regular
  expression) must match one of them or the recognised text;
- `transfer` / `hang_up`: the bridge ends the stream and `/twilio/continue` answers `<Dial>` to the
  target / hangs up (as Twilio would learn it);
- `tool`: the agent called the tool (with at least these arguments), as the running call saw it.

    tests:
      - name: key 1 reaches the assistant
        number: "+15550100"            # or flow: main
        steps:
          - expect: {say: "thanks for calling acme"}
          - press: "1"
          - expect: {say: "acme assistant", within: 10s}
          - say: "what are your opening hours"
          - expect: {say: "monday to friday"}
          - silence: 2s
          - say: goodbye
          - expect: {tool: hang_up}
          - expect: hang_up

Prints a report; `--junit FILE` writes JUnit XML. Exit status 1 when any test fails, 2 when a test
file is wrong (the error names its line).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import yaml

from bridge.dialplan.schema import Dialplan, parse_duration_ms
from bridge.errors import BridgeError, ConfigError
from bridge.tools.softphone import Softphone, SoftphoneError

# Fields of the dialplan whose strings the bot can say (prompts, replies, answers, ...).
SPOKEN_FIELDS = frozenset(
    {
        "text",
        "prompt",
        "no_input_prompt",
        "no_match_prompt",
        "greeting",
        "reply",
        "answer",
        "fallback_reply",
        "no_input_reply",
        "error_prompt",
        "announce",
        "say",
        "fallback",
    }
)
RUNNER_LINES = ("Please call again later. Goodbye.", "Sorry, I can't transfer your call.")
DEFAULT_SAY_WITHIN_S = 15.0
DEFAULT_END_WITHIN_S = 20.0
DEFAULT_TOOL_WITHIN_S = 15.0
QUIET_S = 0.8  # an utterance is complete once the bot has been quiet this long
HEARD_SCORE = 0.6  # share of a dialplan line's words the recognised text must contain


class TestFileError(ConfigError):
    """A dialplan test file is malformed (the message names the file and the line)."""

    __test__ = False  # not a pytest class


# -- the test file ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    kind: str  # say, press, silence, expect_say, expect_transfer, expect_hang_up, expect_tool
    value: str = ""
    within_s: float = 0.0
    arguments: dict[str, Any] = field(default_factory=dict)
    line: int = 0

    def describe(self) -> str:
        if self.kind == "say":
            return f'caller says "{self.value}"'
        if self.kind == "press":
            return f"caller presses {self.value}"
        if self.kind == "silence":
            return f"caller stays silent {self.within_s:g} s"
        if self.kind == "expect_say":
            return f"expect the bot to say /{self.value}/"
        if self.kind == "expect_transfer":
            return f"expect a transfer to {self.value or 'anywhere'}"
        if self.kind == "expect_hang_up":
            return "expect the bot to hang up"
        args = f" with {self.arguments}" if self.arguments else ""
        return f"expect the tool {self.value}{args}"


@dataclass(frozen=True, slots=True)
class TestCase:
    name: str
    steps: tuple[Step, ...]
    number: str = "+15550100"
    flow: str | None = None
    caller: str = "+15555550123"
    line: int = 0

    __test__ = False


@dataclass(frozen=True, slots=True)
class TestFile:
    path: Path
    dialplans: Path
    tests: tuple[TestCase, ...]

    __test__ = False


class _LineLoader(yaml.SafeLoader):
    """Keeps each mapping's line (1-based) under the key `__line__`."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    mapping["__line__"] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _seconds(value: object, where: str) -> float:
    try:
        return parse_duration_ms(value) / 1000.0
    except (ValueError, TypeError) as exc:
        raise TestFileError(f"{where}: expected a duration like 5s or 500ms, got {value!r}") from exc


def _parse_step(raw: object, where: str, line: int) -> Step:
    if raw == "hang_up" or raw == {"expect": "hang_up"}:
        return Step("expect_hang_up", within_s=DEFAULT_END_WITHIN_S, line=line)
    if not isinstance(raw, dict):
        raise TestFileError(f"{where}: a step is `say:`, `press:`, `silence:` or `expect:`; got {raw!r}")
    line = raw.pop("__line__", line)
    where = f"{where.rsplit(':', 1)[0]}:{line}"
    keys = sorted(raw)
    if len(keys) != 1:
        raise TestFileError(f"{where}: a step has exactly one of say, press, silence, expect; got {keys}")
    verb, value = keys[0], raw[keys[0]]
    if verb == "say":
        if not isinstance(value, str) or not value.strip():
            raise TestFileError(f"{where}: say: expected the caller's words")
        return Step("say", value.strip(), line=line)
    if verb == "press":
        keys_text = str(value)
        if isinstance(value, bool) or not keys_text or not all(c in "0123456789*#ABCD" for c in keys_text):
            raise TestFileError(f'{where}: press: expected keys 0-9 * # A-D (quote them: "1")')
        return Step("press", keys_text, line=line)
    if verb == "silence":
        return Step("silence", within_s=_seconds(value, f"{where} silence"), line=line)
    if verb != "expect":
        raise TestFileError(f"{where}: unknown step {verb!r}; expected say, press, silence or expect")
    if value == "hang_up":
        return Step("expect_hang_up", within_s=DEFAULT_END_WITHIN_S, line=line)
    if not isinstance(value, dict):
        raise TestFileError(f"{where}: expect: expected hang_up or a mapping (say, transfer, hang_up, tool)")
    value.pop("__line__", None)
    within = value.pop("within", None)
    arguments = value.pop("arguments", {}) or {}
    if isinstance(arguments, dict):
        arguments.pop("__line__", None)
    else:
        raise TestFileError(f"{where}: expect.arguments: expected a mapping")
    kinds = sorted(value)
    if len(kinds) != 1 or kinds[0] not in ("say", "transfer", "hang_up", "tool"):
        raise TestFileError(
            f"{where}: expect: expected one of say, transfer, hang_up, tool "
            f"(and within, arguments); got {kinds}"
        )
    kind, what = kinds[0], value[kinds[0]]
    if kind == "say":
        if not isinstance(what, str) or not what:
            raise TestFileError(f"{where}: expect.say: expected a pattern")
        try:
            re.compile(what)
        except re.error as exc:
            raise TestFileError(f"{where}: expect.say: bad pattern {what!r}: {exc}") from exc
        default = DEFAULT_SAY_WITHIN_S
    elif kind == "tool":
        if not isinstance(what, str) or not what:
            raise TestFileError(f"{where}: expect.tool: expected the tool's name")
        default = DEFAULT_TOOL_WITHIN_S
    else:
        what = "" if what in (None, True) else str(what)
        default = DEFAULT_END_WITHIN_S
    within_s = _seconds(within, f"{where} within") if within is not None else default
    return Step("expect_" + kind, what, within_s, dict(arguments), line)


def load_test_file(path: Path) -> TestFile:
    """Parse a test file (TestFileError naming the line when it is wrong)."""
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_LineLoader)
    except OSError as exc:
        raise TestFileError(f"{path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise TestFileError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("tests"), list) or not doc["tests"]:
        raise TestFileError(f"{path}: expected `tests:` with a list of tests")
    dialplans = doc.get("dialplans")
    base = path.parent
    if dialplans is None:
        # dialplans/tests/x.yaml tests the dialplans of dialplans/
        plan_dir = base.parent if base.name == "tests" else base
    else:
        plan_dir = (base / str(dialplans)).resolve()
    tests: list[TestCase] = []
    for i, raw in enumerate(doc["tests"]):
        where = f"{path}:{doc.get('__line__', 1)}"
        if not isinstance(raw, dict):
            raise TestFileError(f"{where}: tests[{i}]: expected a mapping with name and steps")
        line = raw.pop("__line__", 0)
        where = f"{path}:{line}"
        unknown = sorted(set(raw) - {"name", "number", "flow", "caller", "steps"})
        if unknown:
            raise TestFileError(
                f"{where}: tests[{i}]: unknown key(s) {unknown}; expected name, number, flow, caller, steps"
            )
        name = str(raw.get("name") or f"test {i + 1}")
        steps_raw = raw.get("steps")
        if not isinstance(steps_raw, list) or not steps_raw:
            raise TestFileError(f"{where}: tests[{i}] ({name}): expected `steps:` with a list")
        steps = tuple(_parse_step(s, where, line) for s in steps_raw)
        tests.append(
            TestCase(
                name,
                steps,
                number=str(raw.get("number", "+15550100")),
                flow=str(raw["flow"]) if raw.get("flow") else None,
                caller=str(raw.get("caller", "+15555550123")),
                line=line,
            )
        )
    return TestFile(path, plan_dir, tuple(tests))


# -- what the bot can say ---------------------------------------------------------------------------


def spoken_lines(plan: Dialplan) -> list[str]:
    """Every line the dialplan can make the bot say (variables left out), for recognition."""
    found: list[str] = list(RUNNER_LINES)

    def walk(value: object, key: str | None) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v, key)
        elif isinstance(value, str) and key in SPOKEN_FIELDS and value.strip():
            text = re.sub(r"\{[^{}]*\}", " ", value)
            if text.strip() and text not in found:
                found.append(text.strip())

    for steps in plan.flows.values():
        for step in steps:
            walk(step.model_dump(), None)
    return found


def _words(text: str) -> list[str]:
    from bridge.speech.asr import normalize_phrase

    return normalize_phrase(text)


def lines_heard(recognised: str, candidates: list[str]) -> list[str]:
    """The dialplan lines whose words the recognised text contains (most of them, in any order)."""
    heard = set(_words(recognised))
    out: list[str] = []
    for line in candidates:
        words = set(_words(line))
        if words and len(words & heard) / len(words) >= HEARD_SCORE:
            out.append(line)
    return out


# -- running ----------------------------------------------------------------------------------------


@dataclass
class Utterance:
    start_s: float
    end_s: float
    text: str
    lines: list[str]


@dataclass
class TestResult:
    case: TestCase
    passed: bool
    seconds: float
    failure: str = ""
    log: list[str] = field(default_factory=list)

    __test__ = False


class _Bridge:
    """The bridge app served by uvicorn in its own thread, on 127.0.0.1 (an ephemeral port)."""

    def __init__(self, dialplans: Path) -> None:
        self.dialplans = dialplans
        self.base_url = ""
        self.app: Any = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="ivr-dialplan-test-")

    def __enter__(self) -> _Bridge:
        import uvicorn

        from bridge.app import create_app
        from bridge.cli import listening_socket
        from bridge.settings import Settings

        sock = listening_socket("127.0.0.1", 0)
        port = sock.getsockname()[1]
        settings = Settings.from_env(
            {}, host="127.0.0.1", port=port, dialplans=self.dialplans, data_dir=Path(self._tmp.name)
        )
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, log_level="warning", log_config=None, ws_ping_interval=None)
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])), name="dialplan-test-bridge", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 120
        while not server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise ConfigError(f"the bridge did not start with the dialplans of {self.dialplans}")
            time.sleep(0.02)
        self.base_url = f"http://127.0.0.1:{port}"
        self._sock = sock
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._sock.close()
        self._tmp.cleanup()

    def tool_calls(self, call_sid: str) -> list[tuple[str, dict[str, object]]]:
        for _ in range(5):
            try:
                calls = [*list(self.app.state.calls), *list(self.app.state.recent_calls)]
                break
            except RuntimeError:  # changed while copying (the app's thread): try again
                continue
        else:
            return []
        for call in calls:  # running Calls and EndedCall summaries: both have call_id and tool_calls
            if call.call_id == call_sid:
                return list(call.tool_calls)
        return []


class _Conversation:
    """One test: a call, its steps, the utterances heard so far."""

    def __init__(
        self, bridge: _Bridge, case: TestCase, candidates: list[str], voice: Any, recognizer: Any
    ) -> None:
        self.bridge = bridge
        self.case = case
        self.candidates = candidates
        self.voice = voice
        self.recognizer = recognizer
        self.phone = Softphone(
            bridge.base_url,
            caller=case.caller,
            called=case.number,
            on_event=lambda e: self.log.append(f"{e.t_s:6.2f}s  [line] {e.kind} {e.detail}".rstrip()),
        )
        self.utterances: list[Utterance] = []
        self.cursor_s = 0.0  # expectations look at what the bot said after this time
        self.used: set[tuple[int, str]] = set()  # (utterance index, line) already matched
        self.log: list[str] = []

    def note(self, text: str) -> None:
        self.log.append(f"{self.phone.now_s:6.2f}s  {text}")

    async def run(self) -> str:
        """'' when every step passed, else what failed."""
        if self.case.flow:
            self.phone.flow = self.case.flow
        try:
            await self.phone.dial()
        except (SoftphoneError, OSError) as exc:
            return f"the call was not connected: {exc}"
        try:
            for number, step in enumerate(self.case.steps, 1):
                self.note(step.describe())
                failure = await self.step(step)
                if failure:
                    return f"step {number} (line {step.line}): {step.describe()}: {failure}"
            return ""
        finally:
            if not self.phone.closed:
                await self.phone.hang_up()
            await self.phone.close()

    async def step(self, step: Step) -> str:
        phone = self.phone
        loop = asyncio.get_running_loop()
        if step.kind == "say":
            pcm = await loop.run_in_executor(None, self.voice, step.value)
            if phone.closed:
                return "the call had ended"
            self.cursor_s = phone.now_s
            await phone.play(pcm)
            return ""
        if step.kind == "press":
            if phone.closed:
                return "the call had ended"
            self.cursor_s = phone.now_s
            await phone.press(step.value)
            return ""
        if step.kind == "silence":
            await asyncio.sleep(step.within_s)
            return ""
        if step.kind == "expect_say":
            return await self.expect_say(step)
        if step.kind == "expect_tool":
            return await self.expect_tool(step)
        if not await phone.wait_closed(step.within_s):
            return f"the call was still up after {step.within_s:g} s"
        outcome = await phone.outcome()
        self.note(f"call ended: {outcome.kind} {outcome.target}".rstrip())
        if step.kind == "expect_hang_up":
            return (
                "" if outcome.kind == "hangup" else f"the call ended with a {outcome.kind} {outcome.target}"
            )
        if outcome.kind != "transfer":
            return f"the call ended with a {outcome.kind}, not a transfer"
        if step.value and outcome.target != step.value:
            return f"transferred to {outcome.target}, not {step.value}"
        return ""

    async def _recognise_new(self) -> None:
        """Recognise each utterance that ended since the last look (the bot quiet for QUIET_S)."""
        phone = self.phone
        known = {round(u.start_s, 2) for u in self.utterances}
        now = phone.now_s
        for start, end in phone.speech_segments(quiet_s=QUIET_S - 0.1):
            if round(start, 2) in known or (now - end < QUIET_S and not phone.closed):
                continue
            pcm = phone.heard_pcm(max(0.0, start - 0.2), end + 0.2)
            text = await asyncio.get_running_loop().run_in_executor(None, self._recognise, pcm)
            lines = lines_heard(text, self.candidates)
            self.utterances.append(Utterance(start, end, text, lines))
            self.note(f'heard ({start:.1f}-{end:.1f} s): "{text}" = {lines or "no dialplan line"}')

    def _recognise(self, pcm: bytes) -> str:
        return self.recognizer.hear(pcm)

    async def expect_say(self, step: Step) -> str:
        pattern = re.compile(step.value, re.IGNORECASE)
        deadline = time.monotonic() + step.within_s
        while True:
            await self._recognise_new()
            for index, utterance in enumerate(self.utterances):
                if utterance.end_s <= self.cursor_s:
                    continue
                for line in [*utterance.lines, utterance.text]:
                    if (index, line) not in self.used and pattern.search(line):
                        self.used.add((index, line))
                        self.cursor_s = max(self.cursor_s, utterance.start_s)
                        return ""
            if time.monotonic() > deadline or (self.phone.closed and self._all_recognised()):
                heard = [f'"{u.text}" {u.lines}' for u in self.utterances if u.end_s > self.cursor_s]
                said = "; ".join(heard) or "nothing"
                return f"not said within {step.within_s:g} s; the bot said: {said}"
            await asyncio.sleep(0.1)

    def _all_recognised(self) -> bool:
        return len(self.utterances) >= len(self.phone.speech_segments(quiet_s=QUIET_S - 0.1))

    async def expect_tool(self, step: Step) -> str:
        deadline = time.monotonic() + step.within_s
        while True:
            calls = self.bridge.tool_calls(self.phone.call_sid)
            for name, arguments in calls:
                if name == step.value and all(arguments.get(k) == v for k, v in step.arguments.items()):
                    self.note(f"tool {name} {arguments}")
                    return ""
            if time.monotonic() > deadline:
                seen = ", ".join(f"{n} {a}" for n, a in calls) or "none"
                return f"not called within {step.within_s:g} s (tools called: {seen})"
            await asyncio.sleep(0.05)


class _Ears:
    """Recognises the bot's utterances with a language model of the dialplan's lines. One warm
    recognizer for a whole run (its cepstral mean adapted to the bot's voice and the line); the
    very first utterance is decoded twice to adapt it."""

    def __init__(self, candidates: list[str]) -> None:
        from bridge.speech.asr import Recognizer

        self._rec = Recognizer()
        self._rec.set_expected(candidates)
        self._adapted = False

    def hear(self, pcm8k: bytes) -> str:
        if not self._adapted:
            self._rec.recognize(pcm8k)
            self._adapted = True
        return str(self._rec.recognize(pcm8k).text)


def _caller_voice() -> Any:
    """The caller's voice: Piper at 8 kHz (the bridge's own local synthesizer), cached per line."""
    from bridge.speech.tts import Synthesizer

    synth = Synthesizer(out_rate=8000)
    cache: dict[str, bytes] = {}

    def speak(text: str) -> bytes:
        if text not in cache:
            cache[text] = np.asarray(synth.synthesize(text), dtype="<i2").tobytes()
        return cache[text]

    return speak


def run_file(test_file: TestFile, out: TextIO, only: str | None = None) -> list[TestResult]:
    from bridge.dialplan.loader import load_dialplan

    plan = load_dialplan(test_file.dialplans)
    candidates = spoken_lines(plan)
    voice = _caller_voice()
    recognizer = _Ears(candidates)
    results: list[TestResult] = []
    print(f"{test_file.path}: {len(test_file.tests)} test(s) against {test_file.dialplans}", file=out)
    with _Bridge(test_file.dialplans) as bridge:
        for case in test_file.tests:
            if only and only.lower() not in case.name.lower():
                continue
            t0 = time.monotonic()
            conversation = _Conversation(bridge, case, candidates, voice, recognizer)
            failure = asyncio.run(conversation.run())
            result = TestResult(case, not failure, time.monotonic() - t0, failure, conversation.log)
            results.append(result)
            status = "PASS" if result.passed else "FAIL"
            print(f"  {status} {case.name} ({result.seconds:.1f} s)", file=out)
            if not result.passed:
                print(f"       {failure}", file=out)
                for line in result.log:
                    print(f"       | {line}", file=out)
            out.flush()
    return results


def junit_xml(results: dict[Path, list[TestResult]]) -> bytes:
    """JUnit XML: one <testsuite> per test file, one <testcase> per test, <failure> with the log."""
    root = ET.Element("testsuites", name="ivr-bridge dialplan test")
    total = failures = 0
    for path, file_results in results.items():
        suite = ET.SubElement(
            root,
            "testsuite",
            name=str(path),
            tests=str(len(file_results)),
            failures=str(sum(not r.passed for r in file_results)),
            errors="0",
            time=f"{sum(r.seconds for r in file_results):.3f}",
        )
        for r in file_results:
            total += 1
            case = ET.SubElement(
                suite,
                "testcase",
                classname=path.stem,
                name=r.case.name,
                time=f"{r.seconds:.3f}",
                file=str(path),
                line=str(r.case.line),
            )
            if not r.passed:
                failures += 1
                failure = ET.SubElement(case, "failure", message=r.failure, type="DialplanExpectation")
                failure.text = "\n".join(r.log)
            ET.SubElement(case, "system-out").text = "\n".join(r.log)
    root.set("tests", str(total))
    root.set("failures", str(failures))
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _expand(paths: list[str]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
        else:
            yield path


def dialplan_test_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        files = [load_test_file(p) for p in _expand(args.files or ["dialplans/tests"])]
    except ConfigError as exc:
        print(f"ivr-bridge dialplan test: {exc}", file=sys.stderr)
        return 2
    if not files:
        print("ivr-bridge dialplan test: no test files", file=sys.stderr)
        return 2
    import logging

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.ERROR if not args.verbose else logging.INFO)
    results: dict[Path, list[TestResult]] = {}
    started = time.monotonic()
    try:
        for test_file in files:
            results[test_file.path] = run_file(test_file, out, args.k)
    except BridgeError as exc:  # the dialplans do not load, the bridge does not start
        print(f"ivr-bridge dialplan test: {exc}", file=sys.stderr)
        return 2
    flat = [r for rs in results.values() for r in rs]
    failed = sum(not r.passed for r in flat)
    if args.junit:
        Path(args.junit).write_bytes(junit_xml(results))
    print(f"{len(flat) - failed} passed, {failed} failed in {time.monotonic() - started:.1f} s", file=out)
    return 1 if failed or not flat else 0


def add_parser(dialplan_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `dialplan test` on the `dialplan` sub-commands."""
    test = dialplan_sub.add_parser(
        "test",
        help="run scripted calls (YAML) against the dialplans through the real call path",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    test.add_argument("files", nargs="*", help="test files or directories (default: dialplans/tests)")
    test.add_argument("--junit", default=None, help="write JUnit XML to this file")
    test.add_argument("-k", default=None, help="run only the tests whose name contains this")
    test.add_argument("-v", "--verbose", action="store_true", help="show the bridge's log")
    test.set_defaults(func=dialplan_test_command)
