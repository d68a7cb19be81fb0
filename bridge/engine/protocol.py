"""The embedded engine's Realtime session, sans I/O.

`EngineSession` is fed client frames (`receive`), time (`tick`) and the results of the work it asked
for (transcripts, replies, synthesized audio), and produces two queues: server events to send
(`take_events`, JSON-ready dicts, each with a unique `event_id`) and commands for the I/O shell
(`take_commands`: run the recogniser, the responder, the synthesizer, or cancel them). It owns the
session config, the conversation items, the input audio buffer and its server-VAD turn detection,
the response lifecycle, truncation and the GA / beta event-name sets. No sockets, threads or clocks.

Audio inside the engine is 8 kHz PCM16: 24 kHz `audio/pcm` input is downsampled, G.711 decoded.
Synthesized audio arrives as PCM16 at the response's output rate (24 kHz, or 8 kHz for G.711, which
is encoded here) and leaves as `response.output_audio.delta` events of at most DELTA_MS each.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from bridge.audio import codec
from bridge.audio.resample import Downsampler
from bridge.audio.vad import SpeechStart, SpeechStop
from bridge.engine.backends import OPERATOR_ONLY, ChatBackend
from bridge.engine.extension import EXTENSION_KEY, EngineExtension, parse_extension
from bridge.engine.responder import DEFAULT_GREETING, Reply, ToolCall, Turn, TurnKind
from bridge.engine.session_config import (
    SEMANTIC_SILENCE_MS,
    EgressError,
    EventError,
    audio_format,
    beta_to_ga_patch,
    default_session,
    ga_to_beta_session,
    max_output_tokens,
    merge_session_update,
    output_modalities,
    tool_choice,
)

RATE_HZ = 8000
BYTES_PER_MS_8K = RATE_HZ * 2 // 1000  # 16
PREROLL_MS = 300  # audio before the VAD onset the recogniser gets
MIN_SPEECH_MS = 150  # speech needed before the VAD reports an onset
MIN_COMMIT_MS = 100  # a manual commit of less is `input_audio_buffer_commit_empty`
MAX_BUFFER_MS = 10 * 60 * 1000  # manual mode keeps at most this much uncommitted audio
MAX_APPEND_BYTES = 15 * 1024 * 1024
DELTA_MS = 200  # audio per response.output_audio.delta
HISTORY_TURNS = 20

# GA event name -> beta name (only the names that differ; None: the beta protocol has no such event).
BETA_NAMES: dict[str, str | None] = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
    "conversation.item.done": None,
    "input_audio_buffer.timeout_triggered": None,
}
_BETA_PART_TYPES = {"output_audio": "audio", "output_text": "text"}
_GA_PART_TYPES = {"audio": "output_audio", "text": "output_text"}


# --------------------------------------------------------------------------------------------------
# commands for the shell


@dataclass(frozen=True, slots=True)
class AsrBegin:
    """Start recognising a turn (item_id) with this pre-roll audio (8 kHz PCM16)."""

    item_id: str
    pcm16_8k: bytes


@dataclass(frozen=True, slots=True)
class AsrAudio:
    item_id: str
    pcm16_8k: bytes


@dataclass(frozen=True, slots=True)
class AsrEnd:
    """Finish the turn; answer with `transcript_done(item_id, ...)` or `transcript_failed`."""

    item_id: str


@dataclass(frozen=True, slots=True)
class AsrDiscard:
    item_id: str


@dataclass(frozen=True, slots=True)
class SetExpected:
    """The phrases the recogniser should expect from now on (None: the general language model)."""

    phrases: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class GenerateReply:
    """Ask the responder; answer with `reply_ready(response_id, reply)` or `work_failed`."""

    response_id: str
    turn: Turn


@dataclass(frozen=True, slots=True)
class Synthesize:
    """Speak `text`; feed `audio_chunk(response_id, sentence, pcm16)` per sentence, then `synthesis_done`."""

    response_id: str
    item_id: str
    text: str
    rate_hz: int
    cacheable: bool = False  # a fixed reply (intent, FAQ, greeting, ...): its audio may be cached


@dataclass(frozen=True, slots=True)
class Prewarm:
    """Synthesize these fixed replies ahead of time at this rate (into the process-wide prompt cache)."""

    texts: tuple[str, ...]
    rate_hz: int


@dataclass(frozen=True, slots=True)
class CancelWork:
    """Stop whatever runs for this response (reply generation, synthesis) as soon as possible."""

    response_id: str


@dataclass(frozen=True, slots=True)
class EgressRefused:
    """A client event tried to choose where the engine sends requests (answered with an `error`; count it)."""


Command = (
    AsrBegin
    | AsrAudio
    | AsrEnd
    | AsrDiscard
    | SetExpected
    | GenerateReply
    | Synthesize
    | CancelWork
    | Prewarm
    | EgressRefused
)


class Detector(Protocol):
    """What the session needs from a speech detector (bridge.audio.vad.SpeechDetector)."""

    def feed(self, pcm16_8k: bytes) -> list[SpeechStart | SpeechStop]: ...


DetectorFactory = Callable[[float, int, int], Detector]  # (threshold, min_speech_ms, min_silence_ms)


# --------------------------------------------------------------------------------------------------
# state


@dataclass(slots=True)
class _Item:
    data: dict[str, Any]  # GA item, as sent (never with audio bytes)
    audio_ms: float = 0.0  # assistant audio produced (or kept after truncation)
    sentences: list[tuple[float, str]] = field(default_factory=list)  # (start_ms, text)
    transcript_pending: bool = False


@dataclass(slots=True)
class _Response:
    id: str
    out_of_band: bool
    modalities: list[str]
    out_format: dict[str, Any]
    voice: Any
    max_output_tokens: Any
    metadata: Any
    turn_kind: TurnKind
    instructions: str | None
    user_text: str
    tool_output: str | None
    wait_item: str | None  # user item whose transcript the reply needs
    output: list[_Item] = field(default_factory=list)
    message: _Item | None = None  # assistant message being streamed
    tool_choice: Any = "auto"
    pending_tool: ToolCall | None = None
    started: bool = False  # GenerateReply issued
    first_audio_at_ms: float | None = None
    audio_ms: float = 0.0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class EngineSession:
    """One Realtime session of the embedded engine (see the module docstring)."""

    def __init__(
        self,
        detector_factory: DetectorFactory,
        *,
        model: str = "gpt-realtime",
        beta: bool = False,
        now_ms: float = 0.0,
        session_id: str | None = None,
        chat_backends: Callable[[str], ChatBackend | None] | None = None,
    ) -> None:
        """`chat_backends` resolves the backend ids the operator configured (nothing resolves without it)."""
        self._detector_factory = detector_factory
        self._chat_backends = chat_backends or (lambda _id: None)
        self.chat_backend: ChatBackend | None = None
        self.beta = beta
        self._rand = secrets.token_hex(5)
        self._counter = 0
        self.id = session_id or "sess_" + secrets.token_hex(12)
        self.config = default_session(self.id, model)
        self.extension = EngineExtension()
        self._conversation_id = "conv_" + self._rand
        self._events: list[dict[str, Any]] = []
        self._commands: list[Command] = []
        self._items: dict[str, _Item] = {}
        self._order: list[str] = []
        self._audio_produced = False
        # input audio
        self._fmt = "audio/pcm"
        self._down = Downsampler()
        self.audio_ms = 0.0  # all audio appended this session
        self._buf = bytearray()  # 8 kHz PCM16 since _buf_start_ms
        self._buf_start_ms = 0.0
        self._detector: Detector | None = None
        self._det_base_ms = 0.0
        self._speech_item: str | None = None
        self._speech_start_ms = 0.0
        self._asr_item: str | None = None
        # responses
        self.active: _Response | None = None
        self._idle_deadline_ms: float | None = None
        self._configure_vad()
        self._emit("session.created", session=self._wire_session())

    # ---------------------------------------------------------------------------------------------
    # outputs

    def take_events(self) -> list[dict[str, Any]]:
        events, self._events = self._events, []
        return events

    def take_commands(self) -> list[Command]:
        commands, self._commands = self._commands, []
        return commands

    def _new_id(self, prefix: str) -> str:
        self._counter += 1
        return prefix + self._rand + str(self._counter)

    def _emit(self, ga_type: str, **fields: Any) -> None:
        name: str | None = ga_type
        if self.beta and ga_type in BETA_NAMES:
            name = BETA_NAMES[ga_type]
            if name is None:
                return
        self._counter += 1
        event = {"type": name, "event_id": "event_" + self._rand + str(self._counter)}
        event.update(fields)
        self._events.append(event)

    def _error(self, exc: EventError, client_event_id: str | None) -> None:
        self._emit(
            "error",
            error={
                "type": "invalid_request_error",
                "code": exc.code,
                "message": exc.message,
                "param": exc.param,
                "event_id": client_event_id,
            },
        )

    def _wire_session(self) -> dict[str, Any]:
        return ga_to_beta_session(self.config) if self.beta else self.config

    def _wire_item(self, item: dict[str, Any]) -> dict[str, Any]:
        """A snapshot of the item for an event (later changes to the item must not reach queued events)."""
        out = dict(item)
        if item.get("type") != "message":
            return out
        if self.beta:
            out["content"] = [
                {**part, "type": _BETA_PART_TYPES.get(part.get("type", ""), part.get("type"))}
                for part in item.get("content", ())
            ]
        else:
            out["content"] = [dict(part) for part in item.get("content", ())]
        return out

    # ---------------------------------------------------------------------------------------------
    # inputs: client frames

    def receive(self, frame: str | bytes, now_ms: float) -> None:
        """One client frame (a JSON object). Problems become `error` events; the session goes on."""
        try:
            msg = json.loads(frame)
        except (ValueError, UnicodeDecodeError):
            self._error(EventError("The frame is not valid JSON.", code="invalid_json"), None)
            return
        if not isinstance(msg, dict):
            self._error(EventError("The frame is not a JSON object.", code="invalid_event"), None)
            return
        event_id = msg.get("event_id")
        if not isinstance(event_id, str):
            event_id = None
        etype = msg.get("type")
        handler = self._handlers.get(etype) if isinstance(etype, str) else None
        try:
            if handler is None:
                if etype is None:
                    raise EventError(
                        "Missing required parameter: 'type'.", code="missing_required_parameter", param="type"
                    )
                raise EventError(
                    f"Invalid value: '{etype}'. Unknown event type.", code="invalid_event", param="type"
                )
            handler(self, msg, now_ms)
        except EventError as exc:
            self._error(exc, event_id)
            if isinstance(exc, EgressError):
                self._commands.append(EgressRefused())

    @staticmethod
    def _require(msg: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
        if key not in msg:
            raise EventError(
                f"Missing required parameter: '{key}'.", code="missing_required_parameter", param=key
            )
        value = msg[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise EventError(f"Invalid type for '{key}'.", code="invalid_type", param=key)
        return value

    # -- session.update --------------------------------------------------------------------------

    def _on_session_update(self, msg: dict[str, Any], now_ms: float) -> None:
        patch = self._require(msg, "session", dict)
        if self.beta:
            patch = beta_to_ga_patch(patch)
        new = merge_session_update(self.config, patch)
        if (
            self._audio_produced
            and new["audio"]["output"]["voice"] != self.config["audio"]["output"]["voice"]
        ):
            raise EventError(
                "Cannot update a session's voice after audio has been produced.",
                code="cannot_update_voice",
                param="session.audio.output.voice",
            )
        old = self.config
        extension_changed = new[EXTENSION_KEY] != old[EXTENSION_KEY]
        if extension_changed:
            extension = parse_extension(new[EXTENSION_KEY])
            backend = self._resolve_chat(extension.chat_completions)
        self.config = new
        if extension_changed:
            self.extension, self.chat_backend = extension, backend
            phrases = self.extension.expected_phrases()
            self._commands.append(SetExpected(tuple(phrases) if phrases else None))
        if new["audio"]["input"]["format"] != old["audio"]["input"]["format"]:
            self._fmt = new["audio"]["input"]["format"]["type"]
            self._down = Downsampler()
        if new["audio"]["input"]["turn_detection"] != old["audio"]["input"]["turn_detection"]:
            self._configure_vad()
        out_format = new["audio"]["output"]["format"]
        if new[EXTENSION_KEY] and (
            new[EXTENSION_KEY] != old[EXTENSION_KEY] or out_format != old["audio"]["output"]["format"]
        ):
            self._commands.append(
                Prewarm(self._fixed_replies(), 24000 if out_format["type"] == "audio/pcm" else RATE_HZ)
            )
        self._emit("session.updated", session=self._wire_session())

    def _resolve_chat(self, backend_id: str | None) -> ChatBackend | None:
        if backend_id is None:
            return None
        backend = self._chat_backends(backend_id)
        if backend is None:
            raise EgressError(
                f"session.{EXTENSION_KEY}.chat_completions: no backend {backend_id!r} is configured; "
                + OPERATOR_ONLY,
                code="invalid_value",
                param=f"session.{EXTENSION_KEY}.chat_completions",
            )
        return backend

    def _fixed_replies(self) -> tuple[str, ...]:
        ext = self.extension
        texts = [ext.greeting or DEFAULT_GREETING]
        texts += [i.reply for i in ext.intents if i.reply]
        texts += [f.answer for f in ext.faq]
        texts += [ext.fallback_reply, ext.no_input_reply]
        return tuple(dict.fromkeys(texts))

    def _configure_vad(self) -> None:
        td = self.config["audio"]["input"]["turn_detection"]
        if self._speech_item is not None:
            self._drop_speech()
        if td is None:
            self._detector = None
            self._idle_deadline_ms = None
            return
        if td["type"] == "semantic_vad":
            threshold, silence_ms = 0.5, SEMANTIC_SILENCE_MS[td["eagerness"]]
        else:
            threshold, silence_ms = td["threshold"], td["silence_duration_ms"]
        threshold = min(max(threshold, 0.01), 0.99)
        self._detector = self._detector_factory(threshold, MIN_SPEECH_MS, max(silence_ms, 20))
        self._det_base_ms = self.audio_ms

    @property
    def _td(self) -> dict[str, Any] | None:
        td: dict[str, Any] | None = self.config["audio"]["input"]["turn_detection"]
        return td

    # -- input audio -------------------------------------------------------------------------------

    def _on_append(self, msg: dict[str, Any], now_ms: float) -> None:
        audio = self._require(msg, "audio", str)
        if len(audio) > MAX_APPEND_BYTES * 4 // 3 + 4:
            raise EventError("Audio chunk larger than 15 MiB.", code="invalid_value", param="audio")
        try:
            raw = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise EventError(
                "Invalid 'audio': not valid base64.", code="invalid_value", param="audio"
            ) from exc
        if self._fmt == "audio/pcm":
            if len(raw) & 1:
                raise EventError(
                    f"Invalid 'audio': {len(raw)} bytes is not whole 16-bit samples.",
                    code="invalid_value",
                    param="audio",
                )
            pcm = self._down.process(raw)
            n_ms = len(raw) / 48.0  # 24 kHz PCM16: 48 bytes per ms
        else:
            pcm = codec.decode(raw, "pcmu" if self._fmt == "audio/pcmu" else "pcma")
            n_ms = len(raw) / 8.0
        self.ingest(pcm, n_ms, now_ms)

    def ingest(self, pcm16_8k: bytes, n_ms: float, now_ms: float) -> None:
        """Audio already at 8 kHz PCM16 (`n_ms` of it in the session's clock)."""
        self._buf += pcm16_8k
        self.audio_ms += n_ms
        if self._asr_item is not None:
            self._commands.append(AsrAudio(self._asr_item, pcm16_8k))
        detector = self._detector
        if detector is not None:
            for ev in detector.feed(pcm16_8k):
                if isinstance(ev, SpeechStart):
                    self._speech_started(self._det_base_ms + ev.audio_ms, now_ms)
                elif isinstance(ev, SpeechStop):
                    self._speech_stopped(self._det_base_ms + ev.audio_ms, now_ms)
            if self._speech_item is None:
                td = self._td
                keep_ms = max(td.get("prefix_padding_ms", 300) if td else 0, PREROLL_MS) + MIN_SPEECH_MS + 500
                if len(self._buf) > 2 * keep_ms * BYTES_PER_MS_8K:
                    self._trim_to(self.audio_ms - keep_ms)
        elif len(self._buf) > MAX_BUFFER_MS * BYTES_PER_MS_8K:
            self._trim_to(self.audio_ms - MAX_BUFFER_MS)

    def _offset(self, ms: float) -> int:
        return max(0, int((ms - self._buf_start_ms) * RATE_HZ / 1000)) * 2

    def _trim_to(self, ms: float) -> None:
        if ms <= self._buf_start_ms:
            return
        cut = min(self._offset(ms), len(self._buf))
        del self._buf[:cut]
        self._buf_start_ms += cut / BYTES_PER_MS_8K

    def _speech_started(self, onset_ms: float, now_ms: float) -> None:
        td = self._td or {}
        padding = td.get("prefix_padding_ms", 300)
        start_ms = max(self._buf_start_ms, onset_ms - padding)
        item_id = self._new_id("item_")
        self._speech_item = item_id
        self._speech_start_ms = start_ms
        self._idle_deadline_ms = None
        self._emit("input_audio_buffer.speech_started", audio_start_ms=int(start_ms), item_id=item_id)
        preroll_from = max(self._buf_start_ms, min(start_ms, onset_ms - PREROLL_MS))
        self._asr_item = item_id
        self._commands.append(AsrBegin(item_id, bytes(self._buf[self._offset(preroll_from) :])))
        if td.get("interrupt_response", True) and self.active is not None and not self.active.out_of_band:
            self._cancel(self.active, "turn_detected")

    def _speech_stopped(self, end_ms: float, now_ms: float) -> None:
        item_id = self._speech_item
        if item_id is None:
            return
        td = self._td or {}
        silence = td.get("silence_duration_ms", SEMANTIC_SILENCE_MS.get(td.get("eagerness", "auto"), 500))
        end_ms = min(self.audio_ms, end_ms + silence)
        self._emit("input_audio_buffer.speech_stopped", audio_end_ms=int(end_ms), item_id=item_id)
        self._speech_item = None
        self._commit(item_id, self._speech_start_ms, end_ms)
        if td.get("create_response", True) and self.active is None:
            self._create_response({}, None, now_ms)

    def _drop_speech(self) -> None:
        if self._asr_item is not None:
            self._commands.append(AsrDiscard(self._asr_item))
        self._asr_item = None
        self._speech_item = None

    def _commit(self, item_id: str, start_ms: float, end_ms: float, *, transcribe: bool = True) -> None:
        """The buffer up to end_ms becomes user item `item_id` (its transcript follows asynchronously)."""
        previous = self._order[-1] if self._order else None
        self._emit("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous)
        item = _Item(
            {
                "id": item_id,
                "object": "realtime.item",
                "type": "message",
                "status": "completed",
                "role": "user",
                "content": [{"type": "input_audio", "transcript": None}],
            },
            audio_ms=end_ms - start_ms,
        )
        self._add_item(item, previous)
        if transcribe:
            item.transcript_pending = True
            if self._asr_item != item_id:
                if self._asr_item is not None:
                    self._commands.append(AsrDiscard(self._asr_item))
                self._commands.append(
                    AsrBegin(item_id, bytes(self._buf[self._offset(start_ms) : self._offset(end_ms)]))
                )
            self._commands.append(AsrEnd(item_id))
        self._asr_item = None
        self._trim_to(end_ms)

    def _add_item(self, item: _Item, previous: str | None, *, at: int | None = None) -> None:
        item_id = item.data["id"]
        self._items[item_id] = item
        if at is None:
            self._order.append(item_id)
        else:
            self._order.insert(at, item_id)
        wire = self._wire_item(item.data)
        self._emit("conversation.item.added", item=wire, previous_item_id=previous)
        self._emit("conversation.item.done", item=wire, previous_item_id=previous)

    def _on_commit(self, msg: dict[str, Any], now_ms: float) -> None:
        start_ms = self._speech_start_ms if self._speech_item is not None else self._buf_start_ms
        if self.audio_ms - start_ms < MIN_COMMIT_MS:
            raise EventError(
                f"Error committing input audio buffer: buffer too small. Expected at least {MIN_COMMIT_MS}ms "
                f"of audio, but buffer only has {max(0.0, self.audio_ms - start_ms):.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        item_id = self._speech_item or self._new_id("item_")
        self._speech_item = None
        self._commit(item_id, start_ms, self.audio_ms)

    def _on_clear(self, msg: dict[str, Any], now_ms: float) -> None:
        self._drop_speech()
        self._buf.clear()
        self._buf_start_ms = self.audio_ms
        self._emit("input_audio_buffer.cleared")

    # -- conversation items ----------------------------------------------------------------------

    def _on_item_create(self, msg: dict[str, Any], now_ms: float) -> None:
        raw = self._require(msg, "item", dict)
        data = self._validate_item(raw)
        if data["id"] in self._items:
            raise EventError(
                f"Item with id '{data['id']}' already exists.", code="invalid_value", param="item.id"
            )
        previous = msg.get("previous_item_id")
        at: int | None = None
        if previous is None:
            previous = self._order[-1] if self._order else None
        elif previous == "root":
            at, previous = 0, None
        elif previous in self._items:
            at = self._order.index(previous) + 1
        else:
            raise EventError(
                f"Previous item with id '{previous}' not found.",
                code="invalid_value",
                param="previous_item_id",
            )
        item = _Item(data)
        audio_parts = [
            p for p in data.get("content", ()) if p.get("type") == "input_audio" and p.get("audio")
        ]
        pcm = self._decode_item_audio(audio_parts[0]["audio"]) if audio_parts else b""
        for part in audio_parts:
            del part["audio"]  # the engine never stores or echoes audio bytes
        self._add_item(item, previous, at=at)
        if audio_parts and not audio_parts[0].get("transcript"):
            item.transcript_pending = True
            self._commands.append(AsrBegin(data["id"], pcm))
            self._commands.append(AsrEnd(data["id"]))

    def _decode_item_audio(self, audio: Any) -> bytes:
        try:
            raw = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise EventError("Invalid 'item.content.audio': not valid base64.", param="item.content") from exc
        if self._fmt == "audio/pcm":
            return Downsampler().process(raw[: len(raw) & ~1])
        return codec.decode(raw, "pcmu" if self._fmt == "audio/pcmu" else "pcma")

    def _validate_item(self, raw: dict[str, Any]) -> dict[str, Any]:
        kind = raw.get("type")
        item_id = raw.get("id") or self._new_id("item_")
        if not isinstance(item_id, str):
            raise EventError("Invalid type for 'item.id'.", code="invalid_type", param="item.id")
        base = {"id": item_id, "object": "realtime.item", "type": kind, "status": "completed"}
        if kind == "message":
            role = raw.get("role")
            allowed = {
                "user": {"input_text", "input_audio", "input_image"},
                "system": {"input_text"},
                "assistant": {"output_text", "output_audio", "text", "audio"},
            }.get(role if isinstance(role, str) else "")
            if allowed is None:
                raise EventError(
                    f"Invalid value for 'item.role': {role!r}.", code="invalid_value", param="item.role"
                )
            content = raw.get("content")
            if not isinstance(content, list):
                raise EventError(
                    "Missing required parameter: 'item.content'.", code="missing_required_parameter",
                    param="item.content",
                )  # fmt: skip
            parts = []
            for i, part in enumerate(content):
                ptype = part.get("type") if isinstance(part, dict) else None
                if ptype not in allowed:
                    raise EventError(
                        f"Invalid value for 'item.content[{i}].type': {ptype!r} in a {role} message.",
                        code="invalid_value",
                        param=f"item.content[{i}].type",
                    )
                assert isinstance(part, dict)
                part = dict(part)
                part["type"] = _GA_PART_TYPES.get(part["type"], part["type"])
                if part["type"] in ("input_text", "output_text") and not isinstance(part.get("text"), str):
                    raise EventError(
                        f"Missing required parameter: 'item.content[{i}].text'.",
                        code="missing_required_parameter",
                        param=f"item.content[{i}].text",
                    )
                parts.append(part)
            return {**base, "role": role, "content": parts}
        if kind == "function_call_output":
            for key in ("call_id", "output"):
                if not isinstance(raw.get(key), str):
                    raise EventError(
                        f"Missing required parameter: 'item.{key}'.", code="missing_required_parameter",
                        param=f"item.{key}",
                    )  # fmt: skip
            return {**base, "call_id": raw["call_id"], "output": raw["output"]}
        if kind == "function_call":
            for key in ("name", "arguments"):
                if not isinstance(raw.get(key), str):
                    raise EventError(
                        f"Missing required parameter: 'item.{key}'.", code="missing_required_parameter",
                        param=f"item.{key}",
                    )  # fmt: skip
            call_id = raw.get("call_id") or self._new_id("call_")
            return {**base, "name": raw["name"], "arguments": raw["arguments"], "call_id": call_id}
        raise EventError(
            f"Invalid value for 'item.type': {kind!r}. "
            "Expected message, function_call or function_call_output.",
            code="invalid_value",
            param="item.type",
        )

    def _item_or_error(self, msg: dict[str, Any]) -> tuple[str, _Item]:
        item_id = self._require(msg, "item_id", str)
        item = self._items.get(item_id)
        if item is None:
            raise EventError(
                f"Item with item_id '{item_id}' not found.", code="invalid_value", param="item_id"
            )
        return item_id, item

    def _on_item_truncate(self, msg: dict[str, Any], now_ms: float) -> None:
        self._require(msg, "item_id", str)
        content_index = self._require(msg, "content_index", int)
        audio_end_ms = self._require(msg, "audio_end_ms", int)
        item_id, item = self._item_or_error(msg)
        data = item.data
        if data.get("role") != "assistant" or not any(
            p.get("type") == "output_audio" for p in data["content"]
        ):
            raise EventError(
                f"Item '{item_id}' is not an assistant message with audio.",
                code="invalid_value",
                param="item_id",
            )
        if content_index != 0:
            raise EventError(
                "Invalid 'content_index': must be 0.", code="invalid_value", param="content_index"
            )
        if audio_end_ms < 0 or audio_end_ms > item.audio_ms + 0.5:
            raise EventError(
                f"Audio content of {int(item.audio_ms)}ms is shorter than {audio_end_ms}ms.",
                code="invalid_value",
                param="audio_end_ms",
            )
        item.audio_ms = float(audio_end_ms)
        kept = [text for start, text in item.sentences if start < audio_end_ms]
        item.sentences = [(s, t) for s, t in item.sentences if s < audio_end_ms]
        for part in data["content"]:
            if part.get("type") == "output_audio":
                part["transcript"] = " ".join(kept)
        self._emit(
            "conversation.item.truncated",
            item_id=item_id,
            content_index=content_index,
            audio_end_ms=audio_end_ms,
        )
        active = self.active
        if active is not None and active.message is item:
            self._cancel(active, "client_cancelled")

    def _on_item_delete(self, msg: dict[str, Any], now_ms: float) -> None:
        item_id, _item = self._item_or_error(msg)
        del self._items[item_id]
        self._order.remove(item_id)
        self._emit("conversation.item.deleted", item_id=item_id)

    def _on_item_retrieve(self, msg: dict[str, Any], now_ms: float) -> None:
        _item_id, item = self._item_or_error(msg)
        self._emit("conversation.item.retrieved", item=self._wire_item(item.data))

    # -- responses ---------------------------------------------------------------------------------

    def _on_response_create(self, msg: dict[str, Any], now_ms: float) -> None:
        params = msg.get("response") or {}
        if not isinstance(params, dict):
            raise EventError("Invalid type for 'response'.", code="invalid_type", param="response")
        if self.active is not None:
            raise EventError(
                f"Conversation already has an active response in progress: {self.active.id}. Wait until the "
                "response is finished before creating a new one.",
                code="conversation_already_has_active_response",
            )
        self._create_response(params, msg, now_ms)

    def _response_params(self, params: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "modalities": self.config["output_modalities"],
            "format": self.config["audio"]["output"]["format"],
            "voice": self.config["audio"]["output"]["voice"],
            "max_output_tokens": self.config["max_output_tokens"],
            "instructions": None,
            "conversation": "auto",
            "metadata": params.get("metadata"),
            "input": None,
            "tool_choice": self.config["tool_choice"],
        }
        if self.beta:
            if "modalities" in params:
                mods = params["modalities"]
                if not isinstance(mods, list) or any(m not in ("text", "audio") for m in mods) or not mods:
                    raise EventError("Invalid value for 'response.modalities'.", param="response.modalities")
                out["modalities"] = ["audio"] if "audio" in mods else ["text"]
            if "output_audio_format" in params:
                fmt = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}.get(
                    params["output_audio_format"], "?"
                )
                out["format"] = audio_format({"type": fmt}, "response.output_audio_format")
            if "voice" in params:
                out["voice"] = params["voice"]
            if "max_response_output_tokens" in params:
                out["max_output_tokens"] = max_output_tokens(
                    params["max_response_output_tokens"], "response.max_response_output_tokens"
                )
        else:
            if "output_modalities" in params:
                out["modalities"] = output_modalities(
                    params["output_modalities"], "response.output_modalities"
                )
            audio = params.get("audio")
            if audio is not None:
                output = audio.get("output", {}) if isinstance(audio, dict) else None
                if not isinstance(output, dict):
                    raise EventError(
                        "Invalid type for 'response.audio'.", code="invalid_type", param="response.audio"
                    )
                if "format" in output:
                    out["format"] = audio_format(output["format"], "response.audio.output.format")
                if "voice" in output:
                    out["voice"] = output["voice"]
            if "max_output_tokens" in params:
                out["max_output_tokens"] = max_output_tokens(
                    params["max_output_tokens"], "response.max_output_tokens"
                )
        if "instructions" in params:
            if not isinstance(params["instructions"], str):
                raise EventError("Invalid type for 'response.instructions'.", code="invalid_type",
                                 param="response.instructions")  # fmt: skip
            out["instructions"] = params["instructions"]
        if "conversation" in params:
            if params["conversation"] not in ("auto", "none"):
                raise EventError(
                    "Invalid value for 'response.conversation': expected 'auto' or 'none'.",
                    param="response.conversation",
                )
            out["conversation"] = params["conversation"]
        if "tool_choice" in params:
            out["tool_choice"] = tool_choice(params["tool_choice"], "response.tool_choice")
        if "input" in params:
            if not isinstance(params["input"], list):
                raise EventError(
                    "Invalid type for 'response.input'.", code="invalid_type", param="response.input"
                )
            out["input"] = params["input"]
        return out

    def _turn_source(self, inputs: list[Any] | None) -> tuple[TurnKind, str, str | None, str | None]:
        """(kind, user_text, tool_output, item the reply must wait for) from the input items."""
        if inputs is not None:
            items: list[dict[str, Any]] = []
            for entry in inputs:
                if isinstance(entry, dict) and entry.get("type") == "item_reference":
                    ref = self._items.get(entry.get("id", ""))
                    if ref is None:
                        raise EventError(
                            f"Item with id '{entry.get('id')}' not found.", param="response.input"
                        )
                    items.append(ref.data)
                elif isinstance(entry, dict):
                    items.append(entry)
            candidates = items
        else:
            candidates = [self._items[i].data for i in self._order]
        for data in reversed(candidates):
            if data.get("type") == "function_call_output":
                return "tool_output", "", str(data.get("output", "")), None
            if data.get("type") == "message" and data.get("role") == "user":
                item = self._items.get(data.get("id", ""))
                if item is not None and item.transcript_pending:
                    return "user", "", None, data["id"]
                return "user", self._message_text(data), None, None
        return "start", "", None, None

    @staticmethod
    def _message_text(data: dict[str, Any]) -> str:
        texts = []
        for part in data.get("content", ()):
            text = (
                part.get("text")
                if part.get("type") in ("input_text", "output_text")
                else part.get("transcript")
            )
            if isinstance(text, str) and text:
                texts.append(text)
        return " ".join(texts)

    def _create_response(
        self,
        params: dict[str, Any],
        msg: dict[str, Any] | None,
        now_ms: float,
        kind_override: TurnKind | None = None,
    ) -> None:
        p = self._response_params(params)
        kind, user_text, tool_output, wait_item = self._turn_source(p["input"])
        resp = _Response(
            id=self._new_id("resp_"),
            out_of_band=p["conversation"] == "none",
            modalities=p["modalities"],
            out_format=p["format"],
            voice=p["voice"],
            max_output_tokens=p["max_output_tokens"],
            metadata=p["metadata"],
            turn_kind=kind,
            instructions=p["instructions"],
            user_text=user_text,
            tool_output=tool_output,
            wait_item=wait_item,
        )
        resp.tool_choice = p["tool_choice"]
        if kind_override is not None:
            resp.turn_kind = kind_override
            resp.wait_item = None
        self.active = resp
        self._idle_deadline_ms = None
        self._emit("response.created", response=self._wire_response(resp, "in_progress"))
        if wait_item is None:
            self._start_reply(resp)

    def _idle_response(self, now_ms: float) -> None:
        self._create_response({}, None, now_ms, "idle")

    def _start_reply(self, resp: _Response) -> None:
        resp.started = True
        history: list[tuple[str, str]] = []
        if not resp.out_of_band:
            for item_id in self._order[-HISTORY_TURNS:]:
                data = self._items[item_id].data
                if data.get("type") == "message" and data.get("role") in ("user", "assistant"):
                    text = self._message_text(data)
                    if text:
                        history.append((data["role"], text))
        turn = Turn(
            kind=resp.turn_kind,
            user_text=resp.user_text,
            instructions=resp.instructions,
            session_instructions=self.config["instructions"],
            history=tuple(history),
            tools=tuple(self.config["tools"]),
            allow_tools=resp.tool_choice != "none",
            tool_output=resp.tool_output,
            extension=self.extension,
            chat=self.chat_backend,
        )
        self._commands.append(GenerateReply(resp.id, turn))

    def _wire_response(
        self, resp: _Response, status: str, details: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        out = {
            "id": resp.id,
            "object": "realtime.response",
            "status": status,
            "status_details": details,
            "output": [self._wire_item(i.data) for i in resp.output],
            "conversation_id": None if resp.out_of_band else self._conversation_id,
            "metadata": resp.metadata,
            "usage": None
            if status == "in_progress"
            else {
                "total_tokens": 0,
                "input_tokens": 0,
                "output_tokens": 0,
                "input_token_details": {"text_tokens": 0, "audio_tokens": 0, "cached_tokens": 0},
                "output_token_details": {"text_tokens": 0, "audio_tokens": 0},
            },
        }
        fmt = resp.out_format
        if self.beta:
            out["modalities"] = ["text", "audio"] if resp.modalities == ["audio"] else ["text"]
            out["voice"] = resp.voice
            out["output_audio_format"] = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw"}.get(
                fmt["type"], "g711_alaw"
            )
            out["max_output_tokens"] = resp.max_output_tokens
        else:
            out["output_modalities"] = resp.modalities
            out["audio"] = {"output": {"format": fmt, "voice": resp.voice}}
            out["max_output_tokens"] = resp.max_output_tokens
        return out

    def _locator(self, resp: _Response, item: _Item) -> dict[str, Any]:
        return {
            "response_id": resp.id,
            "item_id": item.data["id"],
            "output_index": resp.output.index(item),
            "content_index": 0,
        }

    def _open_output_item(self, resp: _Response, data: dict[str, Any]) -> _Item:
        item = _Item(data)
        previous = self._order[-1] if self._order else None
        resp.output.append(item)
        wire = self._wire_item(data)
        self._emit(
            "response.output_item.added", response_id=resp.id, output_index=len(resp.output) - 1, item=wire
        )
        if not resp.out_of_band:
            self._items[data["id"]] = item
            self._order.append(data["id"])
            self._emit("conversation.item.added", item=wire, previous_item_id=previous)
        return item

    def _close_output_item(self, resp: _Response, item: _Item, status: str) -> None:
        item.data["status"] = status
        wire = self._wire_item(item.data)
        if not resp.out_of_band:
            index = self._order.index(item.data["id"]) if item.data["id"] in self._order else 0
            previous = self._order[index - 1] if index > 0 else None
            self._emit("conversation.item.done", item=wire, previous_item_id=previous)
        self._emit(
            "response.output_item.done", response_id=resp.id, output_index=resp.output.index(item), item=wire
        )

    def reply_ready(self, response_id: str, reply: Reply, now_ms: float) -> None:
        resp = self.active
        if resp is None or resp.id != response_id:
            return
        resp.pending_tool = reply.tool
        if not reply.text:
            self._finish_outputs(resp, now_ms)
            return
        audio = resp.modalities == ["audio"]
        part_type = "output_audio" if audio else "output_text"
        item = self._open_output_item(
            resp,
            {
                "id": self._new_id("item_"),
                "object": "realtime.item",
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            },
        )
        resp.message = item
        part = {"type": "audio", "transcript": ""} if audio else {"type": "text", "text": ""}
        self._emit("response.content_part.added", **self._locator(resp, item), part=part)
        if audio:
            item.data["content"] = [{"type": part_type, "transcript": ""}]
            rate = 24000 if resp.out_format["type"] == "audio/pcm" else RATE_HZ
            self._commands.append(
                Synthesize(resp.id, item.data["id"], reply.text, rate, reply.source != "chat")
            )
            return
        item.data["content"] = [{"type": part_type, "text": reply.text}]
        loc = self._locator(resp, item)
        self._emit("response.output_text.delta", **loc, delta=reply.text)
        self._emit("response.output_text.done", **loc, text=reply.text)
        self._emit("response.content_part.done", **loc, part={"type": "text", "text": reply.text})
        self._close_output_item(resp, item, "completed")
        resp.message = None
        self._finish_outputs(resp, now_ms)

    def audio_chunk(self, response_id: str, sentence: str, pcm16: bytes, now_ms: float) -> None:
        """One synthesized sentence (PCM16 at the rate Synthesize asked for)."""
        resp = self.active
        if resp is None or resp.id != response_id or resp.message is None:
            return
        item = resp.message
        loc = self._locator(resp, item)
        part = item.data["content"][0]
        text = sentence if not part["transcript"] else " " + sentence
        part["transcript"] += text
        item.sentences.append((item.audio_ms, sentence))
        self._emit("response.output_audio_transcript.delta", **loc, delta=text)
        fmt = resp.out_format["type"]
        if fmt == "audio/pcm":
            payload, bytes_per_ms = pcm16, 48
        else:
            payload = codec.encode(pcm16[: len(pcm16) & ~1], "pcmu" if fmt == "audio/pcmu" else "pcma")
            bytes_per_ms = 8
        step = DELTA_MS * bytes_per_ms
        if resp.first_audio_at_ms is None and payload:
            resp.first_audio_at_ms = now_ms
        self._audio_produced = True
        for i in range(0, len(payload), step):
            chunk = payload[i : i + step]
            self._emit("response.output_audio.delta", **loc, delta=_b64(chunk))
            item.audio_ms += len(chunk) / bytes_per_ms
        resp.audio_ms = item.audio_ms

    def synthesis_done(self, response_id: str, now_ms: float) -> None:
        resp = self.active
        if resp is None or resp.id != response_id or resp.message is None:
            return
        self._close_message(resp, "completed")
        self._finish_outputs(resp, now_ms)

    def _close_message(self, resp: _Response, status: str) -> None:
        item = resp.message
        if item is None:
            return
        resp.message = None
        loc = self._locator(resp, item)
        part = item.data["content"][0] if item.data["content"] else {"type": "output_audio", "transcript": ""}
        if part["type"] == "output_audio":
            self._emit("response.output_audio.done", **loc)
            self._emit("response.output_audio_transcript.done", **loc, transcript=part["transcript"])
            self._emit(
                "response.content_part.done", **loc, part={"type": "audio", "transcript": part["transcript"]}
            )
        else:
            self._emit("response.output_text.done", **loc, text=part.get("text", ""))
            self._emit(
                "response.content_part.done", **loc, part={"type": "text", "text": part.get("text", "")}
            )
        self._close_output_item(resp, item, status)

    def _finish_outputs(self, resp: _Response, now_ms: float) -> None:
        tool = resp.pending_tool
        if tool is not None:
            call_id = self._new_id("call_")
            item = self._open_output_item(
                resp,
                {
                    "id": self._new_id("item_"),
                    "object": "realtime.item",
                    "type": "function_call",
                    "status": "in_progress",
                    "name": tool.name,
                    "call_id": call_id,
                    "arguments": "",
                },
            )
            index = resp.output.index(item)
            common = {
                "response_id": resp.id,
                "item_id": item.data["id"],
                "output_index": index,
                "call_id": call_id,
            }
            self._emit("response.function_call_arguments.delta", **common, delta=tool.arguments)
            item.data["arguments"] = tool.arguments
            if self.beta:
                self._emit("response.function_call_arguments.done", **common, arguments=tool.arguments)
            else:
                self._emit(
                    "response.function_call_arguments.done",
                    **common,
                    name=tool.name,
                    arguments=tool.arguments,
                )
            self._close_output_item(resp, item, "completed")
        self._end_response(resp, "completed", {"type": "completed", "reason": None}, now_ms)

    def _end_response(self, resp: _Response, status: str, details: dict[str, Any], now_ms: float) -> None:
        self.active = None
        self._emit("response.done", response=self._wire_response(resp, status, details))
        td = self._td
        if td is not None and td.get("idle_timeout_ms") and status == "completed":
            played_until = now_ms
            if resp.first_audio_at_ms is not None:
                played_until = max(now_ms, resp.first_audio_at_ms + resp.audio_ms)
            self._idle_deadline_ms = played_until + td["idle_timeout_ms"]

    def _cancel(self, resp: _Response, reason: Literal["turn_detected", "client_cancelled"]) -> None:
        self._commands.append(CancelWork(resp.id))
        self._close_message(resp, "incomplete")
        self.active = None
        self._emit(
            "response.done",
            response=self._wire_response(resp, "cancelled", {"type": "cancelled", "reason": reason}),
        )

    def _on_response_cancel(self, msg: dict[str, Any], now_ms: float) -> None:
        wanted = msg.get("response_id")
        resp = self.active
        if resp is None or (wanted is not None and wanted != resp.id):
            raise EventError(
                "Cancellation failed: no active response found.", code="response_cancel_not_active"
            )
        self._cancel(resp, "client_cancelled")

    def work_failed(self, response_id: str, message: str, now_ms: float) -> None:
        resp = self.active
        if resp is None or resp.id != response_id:
            return
        self._close_message(resp, "incomplete")
        details = {
            "type": "failed",
            "error": {"type": "server_error", "code": "engine_error", "message": message},
        }
        self._end_response(resp, "failed", details, now_ms)

    # ---------------------------------------------------------------------------------------------
    # inputs: results of the shell's work, and time

    def transcript_done(self, item_id: str, text: str, now_ms: float, *, audio_s: float = 0.0) -> None:
        item = self._items.get(item_id)
        if item is not None:
            item.transcript_pending = False
            for part in item.data["content"]:
                if part.get("type") == "input_audio":
                    part["transcript"] = text
            if self.config["audio"]["input"]["transcription"] is not None:
                self._emit(
                    "conversation.item.input_audio_transcription.delta",
                    item_id=item_id,
                    content_index=0,
                    delta=text,
                )
                self._emit(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=item_id,
                    content_index=0,
                    transcript=text,
                    usage={"type": "duration", "seconds": round(audio_s or item.audio_ms / 1000, 3)},
                )
        resp = self.active
        if resp is not None and resp.wait_item == item_id and not resp.started:
            resp.user_text = text
            resp.wait_item = None
            self._start_reply(resp)

    def transcript_failed(self, item_id: str, message: str, now_ms: float) -> None:
        item = self._items.get(item_id)
        if item is not None and self.config["audio"]["input"]["transcription"] is not None:
            self._emit(
                "conversation.item.input_audio_transcription.failed",
                item_id=item_id,
                content_index=0,
                error={
                    "type": "transcription_error",
                    "code": "asr_failed",
                    "message": message,
                    "param": None,
                },
            )
        self.transcript_done_silently(item_id)

    def transcript_done_silently(self, item_id: str) -> None:
        item = self._items.get(item_id)
        if item is not None:
            item.transcript_pending = False
        resp = self.active
        if resp is not None and resp.wait_item == item_id and not resp.started:
            resp.wait_item = None
            self._start_reply(resp)

    def next_deadline_ms(self) -> float | None:
        """When `tick` next has something to do (the idle timeout), or None."""
        return self._idle_deadline_ms

    def tick(self, now_ms: float) -> None:
        deadline = self._idle_deadline_ms
        if deadline is None or now_ms < deadline:
            return
        self._idle_deadline_ms = None
        if self.active is not None or self._speech_item is not None or self._td is None:
            return
        item_id = self._new_id("item_")
        start_ms = max(self._buf_start_ms, self.audio_ms - self._td["idle_timeout_ms"])
        self._emit(
            "input_audio_buffer.timeout_triggered",
            audio_start_ms=int(start_ms),
            audio_end_ms=int(self.audio_ms),
            item_id=item_id,
        )
        self._commit(item_id, start_ms, self.audio_ms, transcribe=False)
        self._idle_response(now_ms)

    _handlers: ClassVar[dict[str, Callable[[EngineSession, dict[str, Any], float], None]]] = {
        "session.update": _on_session_update,
        "input_audio_buffer.append": _on_append,
        "input_audio_buffer.commit": _on_commit,
        "input_audio_buffer.clear": _on_clear,
        "conversation.item.create": _on_item_create,
        "conversation.item.truncate": _on_item_truncate,
        "conversation.item.delete": _on_item_delete,
        "conversation.item.retrieve": _on_item_retrieve,
        "response.create": _on_response_create,
        "response.cancel": _on_response_cancel,
    }
