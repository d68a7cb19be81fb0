"""OpenAI Realtime GA events as small typed classes, parsed once at the edge. No I/O.

Client events (what the bridge sends) have `to_dict()`; `encode_client_event()` turns one into a
JSON text frame, and `append_audio_json()` is the string-built fast path for the ~50 appends a
second. Server events (what the bridge acts on) come from `parse_server_event()`; every type the
bridge does not model becomes `UnknownServerEvent(type, data)`. Beta names that matter for audio
(`response.audio.delta`, `response.audio.done`, `response.audio_transcript.*`) parse to their GA
classes (the names come from bridge/realtime/dialect.py); `conversation.item.created` (still in the
GA union) has its own class.

Field lists follow the openai SDK's GA types (`openai.types.realtime`, in the `openai` package) and
the API reference (https://platform.openai.com/docs/api-reference/realtime-server-events); docs/realtime.md
describes what the bridge does with them. Server events also have `to_dict()` so a server (the
embedded engine, test stand-ins) can emit them: `parse_server_event(json.dumps(ev.to_dict())) == ev`.
A last group of server events is emitted only (by the embedded engine): the bridge does not act on
them, so `parse_server_event` keeps them as `UnknownServerEvent`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from bridge.errors import ProtocolError
from bridge.realtime.dialect import BETA_TO_GA_EVENT


class RealtimeProtocolError(ProtocolError):
    """A realtime server frame that is not a well-formed event (bad JSON, missing field, bad type)."""


# =========================================================================== client events


@dataclass(frozen=True, slots=True)
class SessionUpdate:
    session: dict[str, Any]
    event_id: str | None = None
    type: ClassVar[str] = "session.update"

    def to_dict(self) -> dict[str, Any]:
        return _with_id({"type": self.type, "session": self.session}, self.event_id)


@dataclass(frozen=True, slots=True)
class InputAudioBufferAppend:
    audio: str  # base64 of raw samples in the session's input format
    event_id: str | None = None
    type: ClassVar[str] = "input_audio_buffer.append"

    def to_dict(self) -> dict[str, Any]:
        return _with_id({"type": self.type, "audio": self.audio}, self.event_id)


@dataclass(frozen=True, slots=True)
class InputAudioBufferCommit:
    event_id: str | None = None
    type: ClassVar[str] = "input_audio_buffer.commit"

    def to_dict(self) -> dict[str, Any]:
        return _with_id({"type": self.type}, self.event_id)


@dataclass(frozen=True, slots=True)
class InputAudioBufferClear:
    event_id: str | None = None
    type: ClassVar[str] = "input_audio_buffer.clear"

    def to_dict(self) -> dict[str, Any]:
        return _with_id({"type": self.type}, self.event_id)


@dataclass(frozen=True, slots=True)
class ConversationItemCreate:
    item: dict[str, Any]
    previous_item_id: str | None = None  # None appends; "root" inserts at the start
    event_id: str | None = None
    type: ClassVar[str] = "conversation.item.create"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "item": self.item}
        if self.previous_item_id is not None:
            out["previous_item_id"] = self.previous_item_id
        return _with_id(out, self.event_id)


@dataclass(frozen=True, slots=True)
class ConversationItemTruncate:
    item_id: str
    content_index: int
    audio_end_ms: int
    event_id: str | None = None
    type: ClassVar[str] = "conversation.item.truncate"

    def to_dict(self) -> dict[str, Any]:
        out = {
            "type": self.type,
            "item_id": self.item_id,
            "content_index": self.content_index,
            "audio_end_ms": self.audio_end_ms,
        }
        return _with_id(out, self.event_id)


@dataclass(frozen=True, slots=True)
class ResponseCreate:
    response: dict[str, Any] | None = None  # per-response overrides; None = session defaults
    event_id: str | None = None
    type: ClassVar[str] = "response.create"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.response is not None:
            out["response"] = self.response
        return _with_id(out, self.event_id)


@dataclass(frozen=True, slots=True)
class ResponseCancel:
    response_id: str | None = None
    event_id: str | None = None
    type: ClassVar[str] = "response.cancel"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.response_id is not None:
            out["response_id"] = self.response_id
        return _with_id(out, self.event_id)


ClientEvent = (
    SessionUpdate
    | InputAudioBufferAppend
    | InputAudioBufferCommit
    | InputAudioBufferClear
    | ConversationItemCreate
    | ConversationItemTruncate
    | ResponseCreate
    | ResponseCancel
)


def _with_id(out: dict[str, Any], event_id: str | None) -> dict[str, Any]:
    if event_id is not None:
        out["event_id"] = event_id
    return out


def encode_client_event(ev: ClientEvent) -> str:
    """One client event as a compact JSON text frame."""
    return json.dumps(ev.to_dict(), separators=(",", ":"), ensure_ascii=False)


def append_audio_json(b64: str) -> str:
    """`input_audio_buffer.append` for already base64-encoded audio, built without json.dumps.

    Base64 never needs JSON escaping, so plain concatenation gives valid JSON.
    """
    return '{"type":"input_audio_buffer.append","audio":"' + b64 + '"}'


# =========================================================================== server events
#
# Each class lists its fields in SDK order, then `event_id`. `_SPEC` drives parsing: (field name,
# kind) where kind is "str", "int", "dict", "list", or the same with "?" for optional (absent or
# null -> None).


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    type: str
    code: str | None = None
    message: str = ""
    param: str | None = None
    event_id: str | None = None  # the client event that failed, when the server knows it

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "event_id": self.event_id,
        }


class _ServerEventBase:
    """Shared behaviour; concrete classes are slotted frozen dataclasses."""

    __slots__ = ()
    type: ClassVar[str]
    _SPEC: ClassVar[tuple[tuple[str, str], ...]]
    _NULLABLE: ClassVar[frozenset[str]] = frozenset()  # None fields sent as null (others are left out)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.name not in self._NULLABLE:
                continue  # optional and absent (usage)
            out[f.name] = value.to_dict() if isinstance(value, ErrorInfo) else value
        return out


@dataclass(frozen=True, slots=True)
class Error(_ServerEventBase):
    error: ErrorInfo
    event_id: str = ""
    type: ClassVar[str] = "error"


@dataclass(frozen=True, slots=True)
class SessionCreated(_ServerEventBase):
    session: dict[str, Any]
    event_id: str = ""
    type: ClassVar[str] = "session.created"
    _SPEC: ClassVar[tuple[tuple[str, str], ...]] = (("session", "dict"),)


@dataclass(frozen=True, slots=True)
class SessionUpdated(_ServerEventBase):
    session: dict[str, Any]
    event_id: str = ""
    type: ClassVar[str] = "session.updated"
    _SPEC: ClassVar[tuple[tuple[str, str], ...]] = (("session", "dict"),)


@dataclass(frozen=True, slots=True)
class _ItemEvent(_ServerEventBase):
    item: dict[str, Any]
    previous_item_id: str | None = None
    event_id: str = ""
    _SPEC: ClassVar[tuple[tuple[str, str], ...]] = (("item", "dict"), ("previous_item_id", "str?"))
    _NULLABLE: ClassVar[frozenset[str]] = frozenset({"previous_item_id"})  # null: the first item

    @property
    def item_id(self) -> str | None:
        value = self.item.get("id")
        return value if isinstance(value, str) else None

    @property
    def role(self) -> str | None:
        value = self.item.get("role")
        return value if isinstance(value, str) else None

    @property
    def item_type(self) -> str | None:
        value = self.item.get("type")
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class ConversationItemAdded(_ItemEvent):
    type: ClassVar[str] = "conversation.item.added"


@dataclass(frozen=True, slots=True)
class ConversationItemDone(_ItemEvent):
    type: ClassVar[str] = "conversation.item.done"


@dataclass(frozen=True, slots=True)
class ConversationItemCreated(_ItemEvent):
    """Beta-era event that is still in the GA union; GA servers send `added` + `done` instead."""

    type: ClassVar[str] = "conversation.item.created"


@dataclass(frozen=True, slots=True)
class ConversationItemTruncated(_ServerEventBase):
    item_id: str
    content_index: int
    audio_end_ms: int
    event_id: str = ""
    type: ClassVar[str] = "conversation.item.truncated"
    _SPEC: ClassVar[tuple[tuple[str, str], ...]] = (
        ("item_id", "str"),
        ("content_index", "int"),
        ("audio_end_ms", "int"),
    )


@dataclass(frozen=True, slots=True)
class InputAudioBufferSpeechStarted(_ServerEventBase):
    audio_start_ms: int
    item_id: str
    event_id: str = ""
    type: ClassVar[str] = "input_audio_buffer.speech_started"
    _SPEC: ClassVar[tuple[tuple[str, str], ...]] = (("audio_start_ms", "int"), ("item_id", "str"))


@dataclass(frozen=True, slots=True)
class InputAudioBufferSpeechStopped(_ServerEventBase):
    audio_end_ms: int
    item_id: str
    event_id: str = ""
    type: ClassVar[str] = "input_audio_buffer.speech_stopped"
    _SPEC: ClassVar[tuple[tuple[str, str], ...]] = (("audio_end_ms", "int"), ("item_id", "str"))


@dataclass(frozen=True, slots=True)
class InputAudioBufferCommitted(_ServerEventBase):
    item_id: str
    previous_item_id: str | None = None
    event_id: str = ""
    type: ClassVar[str] = "input_audio_buffer.committed"
    _SPEC: ClassVar[tuple[tuple[str, str], ...]] = (("item_id", "str"), ("previous_item_id", "str?"))
    _NULLABLE: ClassVar[frozenset[str]] = frozenset({"previous_item_id"})


@dataclass(frozen=True, slots=True)
class InputAudioTranscriptionCompleted(_ServerEventBase):
    item_id: str
    content_index: int
    transcript: str
    usage: dict[str, Any] | None = None  # {type: "tokens", ...} or {type: "duration", seconds}
    event_id: str = ""
    type: ClassVar[str] = "conversation.item.input_audio_transcription.completed"
    _SPEC: ClassVar[tuple[tuple[str, str], ...]] = (
        ("item_id", "str"),
        ("content_index", "int"),
        ("transcript", "str"),
        ("usage", "dict?"),
    )


@dataclass(frozen=True, slots=True)
class _ResponseEvent(_ServerEventBase):
    response: dict[str, Any]
    event_id: str = ""
    _SPEC: ClassVar[tuple[tuple[str, str], ...]] = (("response", "dict"),)

    @property
    def response_id(self) -> str | None:
        value = self.response.get("id")
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class ResponseCreated(_ResponseEvent):
    type: ClassVar[str] = "response.created"


@dataclass(frozen=True, slots=True)
class ResponseDone(_ResponseEvent):
    type: ClassVar[str] = "response.done"

    @property
    def status(self) -> str | None:
        """completed, cancelled, failed or incomplete."""
        value = self.response.get("status")
        return value if isinstance(value, str) else None

    @property
    def status_details(self) -> dict[str, Any] | None:
        """`{type, reason?, error?}`; reason is e.g. turn_detected or client_cancelled."""
        value = self.response.get("status_details")
        return value if isinstance(value, dict) else None


@dataclass(frozen=True, slots=True)
class _OutputItemEvent(_ServerEventBase):
    response_id: str
    output_index: int
    item: dict[str, Any]
    event_id: str = ""
    _SPEC: ClassVar[tuple[tuple[str, str], ...]] = (
        ("response_id", "str"),
        ("output_index", "int"),
        ("item", "dict"),
    )


@dataclass(frozen=True, slots=True)
class ResponseOutputItemAdded(_OutputItemEvent):
    type: ClassVar[str] = "response.output_item.added"


@dataclass(frozen=True, slots=True)
class ResponseOutputItemDone(_OutputItemEvent):
    type: ClassVar[str] = "response.output_item.done"


_LOCATOR: tuple[tuple[str, str], ...] = (
    ("response_id", "str"),
    ("item_id", "str"),
    ("output_index", "int"),
    ("content_index", "int"),
)


@dataclass(frozen=True, slots=True)
class ResponseOutputAudioDelta(_ServerEventBase):
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    delta: str  # base64 audio in the session's output format
    event_id: str = ""
    type: ClassVar[str] = "response.output_audio.delta"
    _SPEC: ClassVar[tuple[tuple[str, str], ...]] = (*_LOCATOR, ("delta", "str"))

    def to_dict(self) -> dict[str, Any]:
        # The hot path of a server (several events a second per session): no field loop.
        return {
            "type": self.type,
            "event_id": self.event_id,
            "response_id": self.response_id,
            "item_id": self.item_id,
            "output_index": self.output_index,
            "content_index": self.content_index,
            "delta": self.delta,
        }

    def audio(self) -> bytes:
        try:
            return base64.b64decode(self.delta, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RealtimeProtocolError(f"realtime {self.type}: delta is not valid base64 ({exc})") from exc


@dataclass(frozen=True, slots=True)
class ResponseOutputAudioDone(_ServerEventBase):
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    event_id: str = ""
    type: ClassVar[str] = "response.output_audio.done"
    _SPEC: ClassVar[tuple[tuple[str, str], ...]] = _LOCATOR


@dataclass(frozen=True, slots=True)
class ResponseOutputAudioTranscriptDelta(_ServerEventBase):
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    delta: str
    event_id: str = ""
    type: ClassVar[str] = "response.output_audio_transcript.delta"
    _SPEC: ClassVar[tuple[tuple[str, str], ...]] = (*_LOCATOR, ("delta", "str"))


@dataclass(frozen=True, slots=True)
class ResponseOutputAudioTranscriptDone(_ServerEventBase):
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    transcript: str
    event_id: str = ""
    type: ClassVar[str] = "response.output_audio_transcript.done"
    _SPEC: ClassVar[tuple[tuple[str, str], ...]] = (*_LOCATOR, ("transcript", "str"))


@dataclass(frozen=True, slots=True)
class ResponseFunctionCallArgumentsDone(_ServerEventBase):
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    name: str  # GA only; "" from beta servers, which name the call in response.output_item.done
    arguments: str  # JSON text, as the model wrote it
    event_id: str = ""
    type: ClassVar[str] = "response.function_call_arguments.done"
    _SPEC: ClassVar[tuple[tuple[str, str], ...]] = (
        ("response_id", "str"),
        ("item_id", "str"),
        ("output_index", "int"),
        ("call_id", "str"),
        ("name", "str="),
        ("arguments", "str"),
    )

    def parsed_arguments(self) -> Any:
        """`arguments` decoded from JSON. Raises RealtimeProtocolError if the model wrote bad JSON."""
        try:
            return json.loads(self.arguments) if self.arguments.strip() else {}
        except ValueError as exc:
            raise RealtimeProtocolError(f"realtime {self.type}: arguments are not JSON ({exc})") from exc


# --------------------------------------------------------------------------- emitted only
#
# Server events the embedded engine sends and the bridge ignores (not parsed: they stay
# UnknownServerEvent on the bridge's side, exactly as from the real API).


@dataclass(frozen=True, slots=True)
class InputAudioBufferCleared(_ServerEventBase):
    event_id: str = ""
    type: ClassVar[str] = "input_audio_buffer.cleared"


@dataclass(frozen=True, slots=True)
class InputAudioBufferTimeoutTriggered(_ServerEventBase):
    audio_start_ms: int
    audio_end_ms: int
    item_id: str
    event_id: str = ""
    type: ClassVar[str] = "input_audio_buffer.timeout_triggered"


@dataclass(frozen=True, slots=True)
class ConversationItemDeleted(_ServerEventBase):
    item_id: str
    event_id: str = ""
    type: ClassVar[str] = "conversation.item.deleted"


@dataclass(frozen=True, slots=True)
class ConversationItemRetrieved(_ServerEventBase):
    item: dict[str, Any]
    event_id: str = ""
    type: ClassVar[str] = "conversation.item.retrieved"


@dataclass(frozen=True, slots=True)
class InputAudioTranscriptionDelta(_ServerEventBase):
    item_id: str
    content_index: int
    delta: str
    event_id: str = ""
    type: ClassVar[str] = "conversation.item.input_audio_transcription.delta"


@dataclass(frozen=True, slots=True)
class InputAudioTranscriptionFailed(_ServerEventBase):
    item_id: str
    content_index: int
    error: dict[str, Any]  # {type, code, message, param}
    event_id: str = ""
    type: ClassVar[str] = "conversation.item.input_audio_transcription.failed"


@dataclass(frozen=True, slots=True)
class _ContentPartEvent(_ServerEventBase):
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    part: dict[str, Any]  # {type: audio, transcript} or {type: text, text}
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class ResponseContentPartAdded(_ContentPartEvent):
    type: ClassVar[str] = "response.content_part.added"


@dataclass(frozen=True, slots=True)
class ResponseContentPartDone(_ContentPartEvent):
    type: ClassVar[str] = "response.content_part.done"


@dataclass(frozen=True, slots=True)
class ResponseOutputTextDelta(_ServerEventBase):
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    delta: str
    event_id: str = ""
    type: ClassVar[str] = "response.output_text.delta"


@dataclass(frozen=True, slots=True)
class ResponseOutputTextDone(_ServerEventBase):
    response_id: str
    item_id: str
    output_index: int
    content_index: int
    text: str
    event_id: str = ""
    type: ClassVar[str] = "response.output_text.done"


@dataclass(frozen=True, slots=True)
class ResponseFunctionCallArgumentsDelta(_ServerEventBase):
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    delta: str
    event_id: str = ""
    type: ClassVar[str] = "response.function_call_arguments.delta"


@dataclass(frozen=True, slots=True)
class UnknownServerEvent:
    """Any server event this module does not model, kept whole."""

    type: str
    data: dict[str, Any]

    @property
    def event_id(self) -> str:
        value = self.data.get("event_id")
        return value if isinstance(value, str) else ""

    def to_dict(self) -> dict[str, Any]:
        return self.data


ServerEvent = (
    Error
    | SessionCreated
    | SessionUpdated
    | ConversationItemAdded
    | ConversationItemDone
    | ConversationItemCreated
    | ConversationItemTruncated
    | InputAudioBufferSpeechStarted
    | InputAudioBufferSpeechStopped
    | InputAudioBufferCommitted
    | InputAudioTranscriptionCompleted
    | ResponseCreated
    | ResponseDone
    | ResponseOutputItemAdded
    | ResponseOutputItemDone
    | ResponseOutputAudioDelta
    | ResponseOutputAudioDone
    | ResponseOutputAudioTranscriptDelta
    | ResponseOutputAudioTranscriptDone
    | ResponseFunctionCallArgumentsDone
    | UnknownServerEvent
)


# --------------------------------------------------------------------------- parsing

_MISSING = object()


def _bad(etype: str, what: str) -> RealtimeProtocolError:
    return RealtimeProtocolError(f"realtime {etype}: {what}")


def _field(obj: dict[str, Any], name: str, kind: str, etype: str) -> Any:
    value = obj.get(name, _MISSING)
    optional = kind.endswith("?")
    if kind.endswith("="):  # optional with an empty-string default (beta servers omit it)
        if value is _MISSING or value is None:
            return ""
        kind = kind[:-1]
    elif optional:
        if value is _MISSING or value is None:
            return None
        kind = kind[:-1]
    elif value is _MISSING:
        raise _bad(etype, f"missing field {name!r}")
    if kind == "str":
        ok = isinstance(value, str)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "dict":
        ok = isinstance(value, dict)
    else:  # pragma: no cover - a typo in a _SPEC
        raise AssertionError(kind)
    if not ok:
        want = {"str": "a string", "int": "an integer", "dict": "an object"}[kind]
        raise _bad(etype, f"field {name!r} must be {want}, got {type(value).__name__}")
    return value


def _event_id(obj: dict[str, Any], etype: str) -> str:
    value = obj.get("event_id", "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _bad(etype, f"field 'event_id' must be a string, got {type(value).__name__}")
    return value


def _spec_parser(cls: type[Any]) -> Callable[[dict[str, Any], str], Any]:
    spec: tuple[tuple[str, str], ...] = cls._SPEC

    def parse(obj: dict[str, Any], etype: str) -> Any:
        kwargs = {name: _field(obj, name, kind, etype) for name, kind in spec}
        return cls(**kwargs, event_id=_event_id(obj, etype))

    return parse


def _parse_error(obj: dict[str, Any], etype: str) -> Error:
    err = _field(obj, "error", "dict", etype)
    info = ErrorInfo(
        type=_field(err, "type", "str", "error.error"),
        code=_field(err, "code", "str?", "error.error"),
        message=_field(err, "message", "str?", "error.error") or "",
        param=_field(err, "param", "str?", "error.error"),
        event_id=_field(err, "event_id", "str?", "error.error"),
    )
    return Error(error=info, event_id=_event_id(obj, etype))


def _parse_audio_delta(obj: dict[str, Any], etype: str) -> ResponseOutputAudioDelta:
    # The hot path (tens of events a second per call): direct field checks, no spec loop.
    try:
        response_id = obj["response_id"]
        item_id = obj["item_id"]
        output_index = obj["output_index"]
        content_index = obj["content_index"]
        delta = obj["delta"]
    except KeyError as exc:
        raise _bad(etype, f"missing field {exc.args[0]!r}") from None
    if not (
        type(response_id) is str
        and type(item_id) is str
        and type(output_index) is int
        and type(content_index) is int
        and type(delta) is str
    ):
        # Slow path for the precise message (and subclasses of str/int, which are fine).
        for name, kind in ResponseOutputAudioDelta._SPEC:
            _field(obj, name, kind, etype)
    return ResponseOutputAudioDelta(
        response_id, item_id, output_index, content_index, delta, _event_id(obj, etype)
    )


_PARSERS: dict[str, Callable[[dict[str, Any], str], Any]] = {
    "response.output_audio.delta": _parse_audio_delta,
    "error": _parse_error,
}
for _cls in (
    SessionCreated,
    SessionUpdated,
    ConversationItemAdded,
    ConversationItemDone,
    ConversationItemCreated,
    ConversationItemTruncated,
    InputAudioBufferSpeechStarted,
    InputAudioBufferSpeechStopped,
    InputAudioBufferCommitted,
    InputAudioTranscriptionCompleted,
    ResponseCreated,
    ResponseDone,
    ResponseOutputItemAdded,
    ResponseOutputItemDone,
    ResponseOutputAudioDone,
    ResponseOutputAudioTranscriptDelta,
    ResponseOutputAudioTranscriptDone,
    ResponseFunctionCallArgumentsDone,
):
    _PARSERS[_cls.type] = _spec_parser(_cls)
del _cls

# Beta names (bridge/realtime/dialect.py) -> the GA class that means the same thing: every beta name
# whose GA event is modelled here, unless the beta name has a class of its own
# (`conversation.item.created`). In effect: the `response.audio*` and `response.audio_transcript*` names.
BETA_ALIASES: dict[str, str] = {
    beta: ga for beta, ga in BETA_TO_GA_EVENT.items() if ga in _PARSERS and beta not in _PARSERS
}
for _beta, _ga in BETA_ALIASES.items():
    _PARSERS[_beta] = _PARSERS[_ga]
del _beta, _ga

SERVER_EVENT_TYPES: frozenset[str] = frozenset(_PARSERS) - frozenset(BETA_ALIASES)


def parse_server_event(text: str | bytes) -> ServerEvent:
    """Parse one server frame. Raises `RealtimeProtocolError` naming the defect."""
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RealtimeProtocolError(f"realtime: server frame is not JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise RealtimeProtocolError(f"realtime: server frame must be a JSON object, got {type(obj).__name__}")
    etype = obj.get("type")
    if not isinstance(etype, str):
        if etype is None:
            raise RealtimeProtocolError("realtime: server event has no 'type'")
        raise RealtimeProtocolError(f"realtime: 'type' must be a string, got {type(etype).__name__}")
    parser = _PARSERS.get(etype)
    if parser is None:
        return UnknownServerEvent(etype, obj)
    result: ServerEvent = parser(obj, etype)
    return result
