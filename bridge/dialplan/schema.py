"""Dialplan schema (pydantic): what ops write in `dialplans/*.yaml`.

The shapes here mirror the YAML one to one, so a validation error's location
(`flows.main[2].menu.options`) is also a path in the file. A step is a discriminated union
(`Step`): each kind (`say`, `menu`, `agent`, ...) is its own model, picked by the step's one key,
and that key is part of the error's location. Checks that need the whole plan (targets resolve,
no unreachable steps, no loops without input, variables are known) live in `checks.py`; the
loader adds file and line to both kinds.
"""

from __future__ import annotations

import re
import string
from datetime import date
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from bridge.dialplan.hours import WINDOW_RE, Window, parse_window
from bridge.dialplan.matching import DTMF_KEYS
from bridge.media.g711 import ConfigurableUpstreamFormat
from bridge.realtime.providers import Provider
from bridge.settings import CHAT_KEY_ENVS

# ---------------------------------------------------------------- scalar helpers

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|secs|seconds?|m|min|mins|minutes?|h)?\s*$")
_UNIT_MS = {"ms": 1.0, "s": 1000.0, "m": 60_000.0, "min": 60_000.0, "h": 3_600_000.0}


def parse_duration_ms(value: object) -> int:
    """`5s`, `500ms`, `2m`, `1.5s`, or a bare number of seconds -> milliseconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 5s, 500ms or 2m")
    if isinstance(value, int | float):
        return round(float(value) * 1000)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            unit = m.group(2) or "s"
            if unit.startswith("sec"):
                unit = "s"
            elif unit.startswith("min"):
                unit = "m"
            return round(float(m.group(1)) * _UNIT_MS[unit])
    raise ValueError(f"expected a duration like 5s, 500ms or 2m, got {value!r}")


DurationMs = Annotated[int, BeforeValidator(parse_duration_ms), Field(ge=0)]

BUILTIN_VARIABLES = ("caller", "called", "digits", "call_id")
# Targets with a fixed meaning; flows may not take these names.
NEXT = "next"
HANG_UP = "hang_up"
RESERVED_TARGETS = frozenset({NEXT, HANG_UP})
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_E164_RE = re.compile(r"^\+[1-9][0-9]{5,14}$")
_SIP_USER_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def text_fields(text: str) -> list[str]:
    """Names of the `{variables}` a text uses. Raises ValueError on malformed braces."""
    names: list[str] = []
    for _literal, field, spec, conv in string.Formatter().parse(text):
        if field is None:
            continue
        if not _VAR_NAME_RE.match(field) or spec or conv:
            raise ValueError(f"`{{{field}}}` is not a variable; write {{name}} (or {{{{ for a brace)")
        names.append(field)
    return names


def _check_text(text: str) -> str:
    try:
        text_fields(text)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    return text


Target = Annotated[str, Field(min_length=1)]
Loc = tuple[str | int, ...]  # a path in the plan: ("flows", "main", 2, "menu", "options")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


# ---------------------------------------------------------------- steps


class StepBase(_Model):
    """What every step model shares: `kind`, the step's key in the YAML (`- say: ...`)."""

    kind: ClassVar[str]


class SayStep(StepBase):
    kind: ClassVar[Literal["say"]] = "say"
    text: str = Field(min_length=1)
    voice: str | None = None  # a LOCAL synthesizer voice; None: defaults.prompt_voice
    barge_in: bool = True

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return _check_text(v)


class PlayStep(StepBase):
    kind: ClassVar[Literal["play"]] = "play"
    file: Path  # relative to the dialplan file; the loader makes it absolute
    barge_in: bool = True
    # If the file cannot be played at run time: say this instead, then continue (or go to on_error).
    fallback: str = "Sorry, a recording is missing."
    on_error: Target | None = None  # None: continue with the next step


class MenuOption(_Model):
    goto: Target
    words: tuple[str, ...] = ()  # extra spoken words or phrases (synonyms) that pick this option


def _option_value(v: object) -> object:
    if v is None:
        raise ValueError("expected a target (a flow name, next or hang_up) or {goto: ..., words: [...]}")
    return {"goto": v} if isinstance(v, str) else v


class MenuStep(StepBase):
    kind: ClassVar[Literal["menu"]] = "menu"
    prompt: str = Field(min_length=1)
    options: dict[str, Annotated[MenuOption, BeforeValidator(_option_value)]] = Field(min_length=1)
    timeout_ms: DurationMs = Field(5000, alias="timeout")
    retries: int = Field(2, ge=0, le=10)
    no_input: Target = NEXT
    no_match: Target = NEXT
    no_input_prompt: str = "Sorry, I didn't hear anything."
    no_match_prompt: str = "Sorry, I didn't get that."
    voice: str | None = None
    barge_in: bool = True

    @field_validator("prompt", "no_input_prompt", "no_match_prompt")
    @classmethod
    def _texts(cls, v: str) -> str:
        return _check_text(v)

    @field_validator("options")
    @classmethod
    def _keys(cls, v: dict[str, MenuOption]) -> dict[str, MenuOption]:
        for key in v:
            if not key.strip():
                raise ValueError("an option key must be a DTMF digit or a spoken word, not empty")
            if len(key) == 1 and key not in DTMF_KEYS and not key.isalpha():
                raise ValueError(f"option key {key!r} is neither a DTMF key (0-9 * # A-D) nor a word")
        return v


class CollectStep(StepBase):
    kind: ClassVar[Literal["collect"]] = "collect"
    variable: str
    digits: int = Field(ge=1, le=32)  # how many digits at most; reaching it ends the input
    min_digits: int | None = Field(None, ge=1, le=32)  # fewer than this counts as no match
    terminator: str = "#"
    prompt: str | None = None
    timeout_ms: DurationMs = Field(5000, alias="timeout")
    retries: int = Field(2, ge=0, le=10)
    no_input: Target = NEXT
    no_input_prompt: str = "Sorry, I didn't get that."
    voice: str | None = None
    # Card numbers, PINs: the call record keeps the keys masked (`****`), and what the caller said
    # while this step listened is kept as "[sensitive]".
    sensitive: bool = False

    @field_validator("variable")
    @classmethod
    def _var(cls, v: str) -> str:
        if not _VAR_NAME_RE.match(v) or v in BUILTIN_VARIABLES:
            raise ValueError(
                f"expected a variable name (letters, digits, _) other than {', '.join(BUILTIN_VARIABLES)}"
            )
        return v

    @field_validator("terminator")
    @classmethod
    def _term(cls, v: str) -> str:
        if v not in ("", "#", "*"):
            raise ValueError("expected '#', '*' or '' (no terminator)")
        return v

    @field_validator("prompt", "no_input_prompt")
    @classmethod
    def _texts(cls, v: str | None) -> str | None:
        return None if v is None else _check_text(v)

    @model_validator(mode="after")
    def _min(self) -> CollectStep:
        if self.min_digits is not None and self.min_digits > self.digits:
            raise ValueError("min_digits is larger than digits")
        return self


def _windows(v: object) -> object:
    if isinstance(v, str):
        v = [v]
    if isinstance(v, list):
        return [parse_window(x) if isinstance(x, str) else x for x in v]
    return v


class HoursStep(StepBase):
    kind: ClassVar[Literal["hours"]] = "hours"
    timezone: str
    windows: Annotated[tuple[Window, ...], BeforeValidator(_windows)] = Field(min_length=1)
    holidays: tuple[date, ...] = ()
    open: Target = NEXT
    closed: Target

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {v!r}; expected an IANA name like America/New_York") from None
        return v

    @model_validator(mode="before")
    @classmethod
    def _open_is_target(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("open"), str | list) and "windows" not in data:
            probe = data["open"] if isinstance(data["open"], str) else "x"
            if WINDOW_RE.match(probe.lower()) or isinstance(data["open"], list):
                raise ValueError(
                    "`open:` is where to go when open; put the schedule in `windows:` "
                    '(e.g. windows: ["mon-fri 09:00-17:00"])'
                )
        return data


class BargeIn(_Model):
    enabled: bool = True
    min_speech_ms: int | None = Field(None, ge=20, le=2000)
    threshold: float | None = Field(None, gt=0.0, lt=1.0)
    # None: the environment's default (BRIDGE_ECHO_CANCEL, BRIDGE_ECHO_TO_UPSTREAM, BRIDGE_BACKCHANNEL,
    # BRIDGE_BACKCHANNEL_MAX_MS).
    echo_cancel: bool | None = None
    send_cleaned_upstream: bool | None = None
    backchannel: bool | None = None
    backchannel_max_ms: int | None = Field(None, ge=100, le=2000)


class Tool(_Model):
    """`transfer` and `hang_up` are built in; any other name is a custom tool that leaves the agent
    for a flow (`goto`)."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # JSON schema of the arguments (custom tools)
    target: str | None = None  # transfer: E.164 number or SIP URI (else defaults.transfer_to)
    announce: str | None = None  # transfer: said before transferring
    goto: str | None = None  # custom tool: the flow to continue with

    @model_validator(mode="after")
    def _kind(self) -> Tool:
        if not _VAR_NAME_RE.match(self.name):
            raise ValueError(f"tool name {self.name!r}: expected letters, digits and _")
        if self.name in ("transfer", "hang_up"):
            if self.goto:
                raise ValueError(f"the built-in tool {self.name} takes no goto")
        elif self.goto is None:
            raise ValueError(f"custom tool {self.name!r} needs `goto:` (the flow to continue with)")
        if self.target is not None:
            if self.name != "transfer":
                raise ValueError("only the transfer tool takes a target")
            check_transfer_target(self.target)
        return self


def _tool(v: object) -> object:
    if isinstance(v, str):
        return {"name": v}
    if isinstance(v, dict) and "name" not in v and len(v) == 1:
        ((name, arg),) = v.items()
        if isinstance(arg, str):
            return {"name": name, ("target" if name == "transfer" else "goto"): arg}
        if isinstance(arg, dict):
            return {"name": name, **arg}
        if arg is None:
            return {"name": name}
    return v


class FaqEntry(_Model):
    questions: tuple[str, ...] = Field(min_length=1, alias="question")
    answer: str = Field(min_length=1)

    @field_validator("questions", mode="before")
    @classmethod
    def _one(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v


class ChatCompletions(_Model):
    """Local engine: an OpenAI-compatible chat-completions endpoint for turns no intent/FAQ matched."""

    url: str = Field(min_length=1)
    model: str = "default"
    api_key_env: str | None = None  # the name of the setting holding the key: one of CHAT_KEY_ENVS

    @field_validator("api_key_env")
    @classmethod
    def _key_env(cls, v: str | None) -> str | None:
        # Only keys meant for language-model endpoints may be sent there: never Twilio, SIP or bridge secrets.
        if v is not None and v not in CHAT_KEY_ENVS:
            raise ValueError(
                f"api_key_env {v!r} is not allowed; expected one of {', '.join(CHAT_KEY_ENVS)} "
                "(the only settings the bridge sends to a chat-completions endpoint)"
            )
        return v


class Intent(_Model):
    """For the local engine: when the caller says one of `phrases`, say `reply` and/or call `tool`."""

    name: str
    phrases: tuple[str, ...] = Field(min_length=1)
    reply: str | None = None
    tool: str | None = None  # transfer | hang_up | a custom tool's name
    arguments: dict[str, Any] = Field(default_factory=dict)  # passed with the tool call

    @model_validator(mode="after")
    def _something(self) -> Intent:
        if self.reply is None and self.tool is None:
            raise ValueError(f"intent {self.name!r} needs a reply, a tool, or both")
        return self


class AgentStep(StepBase):
    kind: ClassVar[Literal["agent"]] = "agent"
    provider: Provider | None = None  # None: defaults.provider (itself default local)
    # Where the call goes on when `provider` stays down (same instructions, FAQ, intents); None:
    # defaults.fallback_provider, and without one `on_error`.
    fallback_provider: Provider | None = None
    url: str | None = None  # provider url: a ws(s):// endpoint speaking the Realtime GA protocol
    model: str | None = None
    voice: str | None = None
    language: str | None = None
    instructions: str = "You are a helpful phone assistant. Keep answers short."
    greeting: str | None = None  # said by the agent first (None: the caller speaks first)
    tools: tuple[Annotated[Tool, BeforeValidator(_tool)], ...] = ()
    intents: tuple[Intent, ...] = ()
    faq: tuple[FaqEntry, ...] = ()
    fallback_reply: str | None = None  # local engine: said when no intent or FAQ matched
    no_input_reply: str | None = None  # local engine: said when the caller stays silent
    chat_completions: ChatCompletions | None = None  # local engine: free-text answers
    barge_in: BargeIn | None = None
    format: ConfigurableUpstreamFormat | None = None
    max_duration_ms: DurationMs = Field(900_000, alias="max_duration")
    on_error: Target | None = None  # None: apologise and hang up
    error_prompt: str = "Sorry, I'm having trouble right now."
    dtmf: dict[str, str] = Field(default_factory=dict)  # digit -> transfer | hang_up | a flow
    moderation: Moderation | None = None  # None: defaults.moderation

    @model_validator(mode="before")
    @classmethod
    def _provider_url(cls, data: Any) -> Any:
        if isinstance(data, dict):
            p = data.get("provider")
            if isinstance(p, str) and re.match(r"^(wss?|https?)://", p):
                if data.get("url") not in (None, p):
                    raise ValueError("give the URL either as provider or as url, not both")
                data = {**data, "provider": "url", "url": p}
        return data

    @field_validator("instructions", "greeting", "error_prompt")
    @classmethod
    def _texts(cls, v: str | None) -> str | None:
        return None if v is None else _check_text(v)

    @field_validator("dtmf")
    @classmethod
    def _dtmf(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if key not in DTMF_KEYS:
                raise ValueError(f"dtmf key {key!r}: expected one DTMF key, 0-9 * # A-D (quoted)")
        return v

    @model_validator(mode="after")
    def _check(self) -> AgentStep:
        if self.provider == "url" and not self.url:
            raise ValueError("provider url needs `url: wss://...`")
        if self.url is not None and not re.match(r"^(wss?|https?)://", self.url):
            raise ValueError(f"url {self.url!r}: expected ws://, wss://, http:// or https://")
        names = [t.name for t in self.tools]
        if len(set(names)) != len(names):
            raise ValueError("a tool is listed twice")
        for intent in self.intents:
            if intent.tool is not None and intent.tool not in names:
                raise ValueError(f"intent {intent.name!r} uses tool {intent.tool!r}, which is not in tools")
        return self

    def tool(self, name: str) -> Tool | None:
        for t in self.tools:
            if t.name == name:
                return t
        return None


def _record_setting(v: object) -> object:
    return {"enabled": v} if isinstance(v, bool) else v


class RecordSetting(_Model):
    """`defaults.record`: a two-channel recording of every call of this dialplan (opt-in), with an
    optional consent line played before the first step."""

    enabled: bool = False
    consent: str | None = None

    @field_validator("consent")
    @classmethod
    def _consent(cls, v: str | None) -> str | None:
        return None if v is None else _check_text(v)


class Moderation(_Model):
    """Checks of the agent's words before the caller hears them (`defaults.moderation`, or per agent
    step): regular expressions, and optionally the moderation endpoint (BRIDGE_MODERATION_URL with
    OPENAI_API_KEY). A hit cuts the reply like a barge-in and says `safe_line`."""

    blocklist: tuple[str, ...] = ()
    safe_line: str = "Sorry, I can't help with that. Is there anything else?"
    endpoint: bool = False

    @field_validator("blocklist")
    @classmethod
    def _patterns(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} is not a regular expression: {exc}") from None
        return v

    @field_validator("safe_line")
    @classmethod
    def _line(cls, v: str) -> str:
        return _check_text(v)

    @property
    def active(self) -> bool:
        return bool(self.blocklist) or self.endpoint


def check_transfer_target(v: str) -> str:
    if _E164_RE.match(v) or re.match(r"^sips?:[^\s@]+(@[^\s]+)?$", v):
        return v
    raise ValueError(f'expected an E.164 number like "+15550199" or a SIP URI like sip:100@pbx, got {v!r}')


class TransferStep(StepBase):
    kind: ClassVar[Literal["transfer"]] = "transfer"
    target: str
    announce: str | None = None
    on_error: Target | None = None  # None: apologise and hang up
    error_prompt: str = "Sorry, I couldn't connect your call."

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        return check_transfer_target(v)


class GotoStep(StepBase):
    """`- goto: flow` (the YAML value is the target itself)."""

    kind: ClassVar[Literal["goto"]] = "goto"
    target: Target


class HangUpStep(StepBase):
    kind: ClassVar[Literal["hang_up"]] = "hang_up"
    say: str | None = None  # a goodbye line, spoken before hanging up
    reason: str = "dialplan"


STEP_TYPES: dict[str, type[StepBase]] = {
    t.kind: t
    for t in (
        SayStep,
        PlayStep,
        MenuStep,
        CollectStep,
        HoursStep,
        GotoStep,
        AgentStep,
        TransferStep,
        HangUpStep,
    )
}
STEP_KINDS = tuple(STEP_TYPES)
_BARE_STEPS = ("hang_up", "agent")  # kinds that may be written alone: `- hang_up`


def _step_arg(kind: str, v: object) -> object:
    """The short forms (`say: "Hi"`, `transfer: "+1..."`, `hang_up: "Bye"`) as the model's mapping."""
    if kind == "say" and isinstance(v, str):
        return {"text": v}
    if kind == "play" and isinstance(v, str):
        return {"file": v}
    if kind == "transfer" and isinstance(v, str):
        return {"target": v}
    if kind == "hang_up":
        if v is None:
            return {}
        if isinstance(v, str):
            return {"say": v}
    if kind == "agent" and v is None:
        return {}
    return v


def _step_shape(data: object) -> object:
    """A YAML step -> `{kind: mapping}` with exactly one known kind (or a step model, unchanged)."""
    if isinstance(data, StepBase):
        return data
    if isinstance(data, str):
        if data in _BARE_STEPS:
            data = {data: None}
        else:
            raise ValueError(f"expected a step like `say: ...`, got {data!r}; steps: {', '.join(STEP_KINDS)}")
    if not isinstance(data, dict):
        raise ValueError(f"expected a step: one of {', '.join(STEP_KINDS)}")
    kinds = [k for k in data if k in STEP_TYPES]
    unknown = [k for k in data if k not in STEP_TYPES]
    if unknown:
        raise ValueError(f"unknown step {unknown[0]!r}; expected one of {', '.join(STEP_KINDS)}")
    if len(kinds) != 1:
        raise ValueError(
            f"a step has exactly one kind, found {', '.join(kinds) or 'none'} "
            "(start each step with its own `- `)"
        )
    kind = kinds[0]
    if data[kind] is None and kind not in _BARE_STEPS:
        raise ValueError(f"`{kind}:` needs a value")
    return {kind: _step_arg(kind, data[kind])}


def _step_kind(data: object) -> str | None:
    """The discriminator: the step's one key (after `_step_shape`), or a step model's kind."""
    if isinstance(data, StepBase):
        return data.kind
    if isinstance(data, dict) and len(data) == 1:
        key = next(iter(data))
        return key if isinstance(key, str) else None
    return None


def _body(data: object) -> object:
    """`{kind: mapping}` -> the mapping the kind's model validates (a model passes through)."""
    if isinstance(data, dict) and len(data) == 1:
        return next(iter(data.values()))
    return data


def _goto_body(data: object) -> object:
    """`{goto: target}` -> {target: ...}; errors stay at `...goto`, where the target is written."""
    value = _body(data)
    if isinstance(value, StepBase):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "Input should be a valid string")
    if not value:
        raise PydanticCustomError("string_too_short", "String should have at least 1 character")
    return {"target": value}


Step = Annotated[
    Annotated[SayStep, BeforeValidator(_body), Tag("say")]
    | Annotated[PlayStep, BeforeValidator(_body), Tag("play")]
    | Annotated[MenuStep, BeforeValidator(_body), Tag("menu")]
    | Annotated[CollectStep, BeforeValidator(_body), Tag("collect")]
    | Annotated[HoursStep, BeforeValidator(_body), Tag("hours")]
    | Annotated[GotoStep, BeforeValidator(_goto_body), Tag("goto")]
    | Annotated[AgentStep, BeforeValidator(_body), Tag("agent")]
    | Annotated[TransferStep, BeforeValidator(_body), Tag("transfer")]
    | Annotated[HangUpStep, BeforeValidator(_body), Tag("hang_up")],
    Discriminator(_step_kind),
    BeforeValidator(_step_shape),
]
"""One step of a flow: a discriminated union on the step's key; `- hang_up` alone is allowed."""


class Defaults(_Model):
    provider: Provider = "local"
    fallback_provider: Provider | None = None
    url: str | None = None
    model: str | None = None
    voice: str | None = None  # agent voice (e.g. alloy for openai)
    prompt_voice: str | None = None  # local synthesizer voice for say/menu prompts
    language: str = "en"
    barge_in: BargeIn = BargeIn()
    format: ConfigurableUpstreamFormat | None = None
    transfer_to: str | None = None  # where the agents' transfer tool and dtmf `transfer` go
    record: Annotated[RecordSetting, BeforeValidator(_record_setting)] = RecordSetting()
    moderation: Moderation | None = None  # for every agent step that has none of its own

    @field_validator("transfer_to")
    @classmethod
    def _tt(cls, v: str | None) -> str | None:
        return None if v is None else check_transfer_target(v)


class Dialplan(_Model):
    numbers: dict[str, str] = Field(min_length=1)
    flows: dict[str, tuple[Step, ...]] = Field(min_length=1)
    defaults: Defaults = Defaults()
    _version: int = PrivateAttr(default=0)
    _sources: tuple[Path, ...] = PrivateAttr(default=())

    @property
    def version(self) -> int:
        """Increases by one with every successful (re)load in a `DialplanStore`."""
        return self._version

    @property
    def sources(self) -> tuple[Path, ...]:
        return self._sources

    @field_validator("numbers")
    @classmethod
    def _numbers(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if key != "default" and not (_E164_RE.match(key) or _SIP_USER_RE.match(key)):
                raise ValueError(
                    f'number {key!r}: expected an E.164 number ("+15550100"), a SIP user, or default'
                )
        if "default" not in v:
            raise ValueError("expected a `default:` entry, so every call has a flow")
        return v

    @field_validator("flows")
    @classmethod
    def _flows(cls, v: dict[str, tuple[Step, ...]]) -> dict[str, tuple[Step, ...]]:
        for name, steps in v.items():
            if not _NAME_RE.match(name):
                raise ValueError(f"flow name {name!r}: expected letters, digits, _ and -")
            if name in RESERVED_TARGETS:
                raise ValueError(f"{name!r} is a reserved target and cannot name a flow")
            if not steps:
                raise ValueError(f"flow {name!r} has no steps")
        return v

    def fixed_prompts(self) -> list[str]:
        """Every text the bridge speaks with its local synthesizer that holds no {variable}:
        what a prompt cache can synthesize before the first call needs it."""
        texts: list[str] = []
        for steps in self.flows.values():
            for step in steps:
                texts += spoken_texts(step)
                if isinstance(step, AgentStep) and step.moderation is not None:
                    texts.append(step.moderation.safe_line)
        if self.defaults.record.enabled and self.defaults.record.consent:
            texts.append(self.defaults.record.consent)
        if self.defaults.moderation is not None:
            texts.append(self.defaults.moderation.safe_line)
        unique = dict.fromkeys(t for t in texts if t and "{" not in t)
        return list(unique)

    def flow_for(self, called: str) -> str:
        """The flow for a called number / SIP user / SIP URI, else `default`."""
        if called in self.numbers:
            return self.numbers[called]
        user = called
        if user.startswith(("sip:", "sips:")):
            user = user.split(":", 1)[1]
        user = user.split("@", 1)[0].split(";", 1)[0]
        if user in self.numbers:
            return self.numbers[user]
        compact = re.sub(r"[\s().\-]", "", user)
        if compact in self.numbers:
            return self.numbers[compact]
        return self.numbers["default"]


def spoken_texts(step: StepBase) -> list[str]:
    """The texts of a step that the bridge itself speaks (prompts, not an agent's instructions)."""
    match step:
        case SayStep():
            return [step.text]
        case PlayStep():
            return [step.fallback]
        case MenuStep():
            return [step.prompt, step.no_input_prompt, step.no_match_prompt]
        case CollectStep():
            return [*([step.prompt] if step.prompt else []), step.no_input_prompt]
        case AgentStep():
            return [step.error_prompt]
        case TransferStep():
            return [step.announce] if step.announce else []
        case HangUpStep():
            return [step.say] if step.say else []
    return []
