"""One Realtime session of the embedded engine, sans I/O: a facade over its cores.

`EngineSession` is fed client frames (`receive`), time (`tick`) and the results of the work it asked
for (transcripts, replies, synthesized audio), and produces two queues: server events to send
(`take_events`, JSON-ready dicts, each with a unique `event_id`) and commands for the I/O shell
(`take_commands`, bridge/engine/commands.py: run the recogniser, the responder, the synthesizer, or
cancel them). No sockets, threads or clocks.

The facade validates client frames, owns the session config (bridge/engine/session_config.py) and
routes each event to a core, all sharing one `Outbox`:

- `Turns` (bridge/engine/turns.py): the input audio buffer and server-VAD turn detection;
- `Conversation` (bridge/engine/conversation.py): the items, truncate, delete, retrieve;
- `Responses` (bridge/engine/responses.py): the response lifecycle and its output events.

GA or beta names and shapes come from the session's `Dialect` (bridge/realtime/dialect.py).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any, ClassVar

from bridge.engine.commands import (
    Command,
    DetectorFactory,
    EgressRefused,
    Prewarm,
    SetExpected,
    WarmWhisper,
)
from bridge.engine.conversation import Conversation
from bridge.engine.outbox import Outbox
from bridge.engine.responder import DEFAULT_GREETING, Reply, match_turn
from bridge.engine.responses import ReplyContext, Response, Responses
from bridge.engine.session_config import (
    EgressError,
    EventError,
    default_session,
    merge_session_update,
    require,
    response_params,
)
from bridge.engine.transcripts import Transcripts
from bridge.engine.turns import Turns
from bridge.media.g711 import RATE_8K, RATE_24K
from bridge.realtime.dialect import BETA, GA
from bridge.realtime.events import (
    InputAudioTranscriptionCompleted,
    InputAudioTranscriptionDelta,
    InputAudioTranscriptionFailed,
    SessionCreated,
    SessionUpdated,
)
from bridge.realtime.local_engine import (
    EXTENSION_KEY,
    OPERATOR_ONLY,
    ChatBackend,
    EngineExtension,
    parse_extension,
)
from bridge.speech.whisper import TRANSCRIPTION_MODELS

_EXTRA_KEYS = (EXTENSION_KEY,)  # the engine's own session key, passed through in both dialects

Handler = Callable[["EngineSession", dict[str, Any], float], None]


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
        self._chat_backends = chat_backends or (lambda _id: None)
        self.chat_backend: ChatBackend | None = None
        self.beta = beta
        self.dialect = BETA if beta else GA
        self.id = session_id or "sess_" + secrets.token_hex(12)
        self.config = default_session(self.id, model)
        self.extension = EngineExtension()
        self._out = Outbox(self.dialect)
        self.conversation = Conversation(self._out)
        self.turns = Turns(self._out, detector_factory, self)
        self.responses = Responses(self._out, self.conversation, self)
        self.transcripts = Transcripts(self._out, self)
        self._prewarmed = False
        self.turns.set_turn_detection(self.config["audio"]["input"]["turn_detection"])
        self._out.emit(SessionCreated(self.dialect.session(self.config, _EXTRA_KEYS)))

    # -- outputs -----------------------------------------------------------------------------------

    def take_events(self) -> list[dict[str, Any]]:
        return self._out.take_events()

    def take_commands(self) -> list[Command]:
        return self._out.take_commands()

    @property
    def active(self) -> Response | None:
        """The response in progress, if any."""
        return self.responses.active

    @property
    def audio_ms(self) -> float:
        """All input audio appended this session, in ms."""
        return self.turns.audio_ms

    # -- inputs: client frames ---------------------------------------------------------------------

    def receive(self, frame: str | bytes, now_ms: float) -> None:
        """One client frame (a JSON object). Problems become `error` events; the session goes on."""
        try:
            msg = json.loads(frame)
        except (ValueError, UnicodeDecodeError):
            self._out.error(EventError("The frame is not valid JSON.", code="invalid_json"), None)
            return
        if not isinstance(msg, dict):
            self._out.error(EventError("The frame is not a JSON object.", code="invalid_event"), None)
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
            self._out.error(exc, event_id)
            if isinstance(exc, EgressError):
                self._out.command(EgressRefused())

    def _on_session_update(self, msg: dict[str, Any], now_ms: float) -> None:
        patch = self.dialect.session_patch(require(msg, "session", dict), _EXTRA_KEYS)
        new = merge_session_update(self.config, patch)
        old = self.config
        if (
            self.responses.audio_produced
            and new["audio"]["output"]["voice"] != old["audio"]["output"]["voice"]
        ):
            raise EventError(
                "Cannot update a session's voice after audio has been produced.",
                code="cannot_update_voice",
                param="session.audio.output.voice",
            )
        extension_changed = new[EXTENSION_KEY] != old[EXTENSION_KEY]
        if extension_changed:
            extension = parse_extension(new[EXTENSION_KEY])
            backend = self._resolve_chat(extension.chat_completions)
        self.config = new
        if extension_changed:
            self.extension, self.chat_backend = extension, backend
            phrases = self.extension.expected_phrases()
            self._out.command(SetExpected(tuple(phrases) if phrases else None))
        new_in, old_in = new["audio"]["input"], old["audio"]["input"]
        if new_in["format"] != old_in["format"]:
            self.turns.set_format(new_in["format"]["type"])
        if new_in["turn_detection"] != old_in["turn_detection"]:
            self.turns.set_turn_detection(new_in["turn_detection"])
        out_format = new["audio"]["output"]["format"]
        # Fixed replies (the greeting and the fallback too, with or without an extension) are put in
        # the prompt cache ahead of the first turn: a reply that needs no understanding never waits.
        if not self._prewarmed or extension_changed or out_format != old["audio"]["output"]["format"]:
            self._prewarmed = True
            rate = RATE_24K if out_format["type"] == "audio/pcm" else RATE_8K
            self._out.command(Prewarm(self._fixed_replies(), rate))
        if self.understands():
            self._out.command(WarmWhisper("live"))
        if self.whisper_events():
            self._out.command(WarmWhisper("record"))
        self._out.emit(SessionUpdated(self.dialect.session(self.config, _EXTRA_KEYS)))

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

    def _on_append(self, msg: dict[str, Any], now_ms: float) -> None:
        self.turns.on_append(msg, now_ms)

    def _on_commit(self, msg: dict[str, Any], now_ms: float) -> None:
        self.turns.on_commit(msg, now_ms)

    def _on_clear(self, msg: dict[str, Any], now_ms: float) -> None:
        self.turns.on_clear(msg, now_ms)

    def _on_item_create(self, msg: dict[str, Any], now_ms: float) -> None:
        audio = self.conversation.on_create(msg, self.turns.decode_item_audio)
        if audio is not None:
            item_id, pcm = audio
            self._track_transcript(item_id, pcm, len(pcm) / 16.0)

    def _on_item_truncate(self, msg: dict[str, Any], now_ms: float) -> None:
        item = self.conversation.on_truncate(msg)
        active = self.responses.active
        if active is not None and active.message is item:
            self.responses.cancel("client_cancelled")

    def _on_item_delete(self, msg: dict[str, Any], now_ms: float) -> None:
        self.conversation.on_delete(msg)

    def _on_item_retrieve(self, msg: dict[str, Any], now_ms: float) -> None:
        self.conversation.on_retrieve(msg)

    def _on_response_create(self, msg: dict[str, Any], now_ms: float) -> None:
        params = msg.get("response") or {}
        if not isinstance(params, dict):
            raise EventError("Invalid type for 'response'.", code="invalid_type", param="response")
        active = self.responses.active
        if active is not None:
            raise EventError(
                f"Conversation already has an active response in progress: {active.id}. Wait until the "
                "response is finished before creating a new one.",
                code="conversation_already_has_active_response",
            )
        self.responses.create(response_params(self.config, params, beta=self.beta))

    def _on_response_cancel(self, msg: dict[str, Any], now_ms: float) -> None:
        wanted = msg.get("response_id")
        resp = self.responses.active
        if resp is None or (wanted is not None and wanted != resp.id):
            raise EventError(
                "Cancellation failed: no active response found.", code="response_cancel_not_active"
            )
        self.responses.cancel("client_cancelled")

    _handlers: ClassVar[dict[str, Handler]] = {
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

    # -- inputs: audio, results of the shell's work, and time -------------------------------------

    def ingest(self, pcm16_8k: bytes, n_ms: float, now_ms: float) -> None:
        """Audio already at 8 kHz PCM16 (`n_ms` of it in the session's clock)."""
        self.turns.ingest(pcm16_8k, n_ms, now_ms)

    def reply_ready(self, response_id: str, reply: Reply, now_ms: float) -> None:
        self.responses.reply_ready(response_id, reply, now_ms)

    def audio_chunk(self, response_id: str, sentence: str, pcm16: bytes, now_ms: float) -> None:
        """One synthesized sentence (PCM16 at the rate Synthesize asked for)."""
        self.responses.audio_chunk(response_id, sentence, pcm16, now_ms)

    def synthesis_done(self, response_id: str, now_ms: float) -> None:
        self.responses.synthesis_done(response_id, now_ms)

    def work_failed(self, response_id: str, message: str, now_ms: float) -> None:
        self.responses.work_failed(response_id, message, now_ms)

    def transcript_done(
        self, item_id: str, text: str, now_ms: float, *, audio_s: float = 0.0, in_grammar: bool = True
    ) -> None:
        """pocketsphinx's transcript of a user turn (`in_grammar`: False when a grammar turn heard
        out-of-grammar speech)."""
        if self.transcripts.tracking(item_id):
            self.transcripts.asr_done(item_id, text, in_grammar=in_grammar, audio_s=audio_s)
            return
        self._final(item_id, text, audio_s)
        self.responses.transcript_settled(item_id, text)

    def _final(self, item_id: str, text: str, audio_s: float) -> None:
        item = self.conversation.set_transcript(item_id, text)
        if item is not None and self.config["audio"]["input"]["transcription"] is not None:
            # One delta with the whole text: Whisper re-reads a 30 s window per pass, so true partials
            # would cost a full transcription each (docs/speech.md).
            self._out.emit(InputAudioTranscriptionDelta(item_id, 0, text))
            usage = {"type": "duration", "seconds": round(audio_s or item.audio_ms / 1000, 3)}
            self._out.emit(InputAudioTranscriptionCompleted(item_id, 0, text, usage))

    def whisper_done(self, item_id: str, text: str, now_ms: float) -> None:
        self.transcripts.whisper_done(item_id, text)

    def whisper_failed(self, item_id: str, message: str, now_ms: float) -> None:
        self.transcripts.whisper_failed(item_id, message)

    # -- TranscriptHost ---------------------------------------------------------------------------

    def final_transcript(self, item_id: str, text: str | None, audio_s: float, message: str) -> None:
        if text is None:
            self._failed_events(item_id, message or "no transcript")
            self.conversation.transcript_settled(item_id)
        else:
            self._final(item_id, text, audio_s)

    def reply_text(self, item_id: str, text: str | None) -> None:
        item = self.conversation.get(item_id)
        if item is not None and item.transcript_pending:
            if text is not None:
                self.conversation.set_transcript(item_id, text)  # the final text may replace it
            else:
                self.conversation.transcript_settled(item_id)
        self.responses.transcript_settled(item_id, text)

    def confident_match(self, text: str) -> bool:
        return match_turn(self.extension, text) is not None

    def understands(self) -> bool:
        """The reply to a caller's turn depends on the words (intents, FAQ or a chat backend)."""
        ext = self.extension
        return bool(ext.intents or ext.faq or self.chat_backend is not None)

    def whisper_events(self) -> bool:
        """The transcript events carry Whisper's text (the session asked for a transcription model)."""
        transcription = self.config["audio"]["input"]["transcription"]
        return transcription is not None and transcription.get("model") in TRANSCRIPTION_MODELS

    def reply_needs_text(self) -> bool:
        return self.understands()

    def _track_transcript(self, item_id: str, pcm16_8k: bytes, audio_ms: float) -> None:
        understand, whisper_events = self.understands(), self.whisper_events()
        if understand or whisper_events:
            self.transcripts.committed(
                item_id,
                pcm16_8k,
                audio_ms,
                understand=understand,
                open_turn=not self.extension.expected_phrases(),
                whisper_events=whisper_events,
            )

    def transcript_failed(self, item_id: str, message: str, now_ms: float) -> None:
        if self.transcripts.tracking(item_id):
            self.transcripts.asr_failed(item_id, message)
            return
        self._failed_events(item_id, message)
        self.transcript_done_silently(item_id)

    def _failed_events(self, item_id: str, message: str) -> None:
        if (
            self.conversation.get(item_id) is not None
            and self.config["audio"]["input"]["transcription"] is not None
        ):
            error = {"type": "transcription_error", "code": "asr_failed", "message": message, "param": None}
            self._out.emit(InputAudioTranscriptionFailed(item_id, 0, error))

    def transcript_done_silently(self, item_id: str) -> None:
        self.conversation.transcript_settled(item_id)
        self.responses.transcript_settled(item_id, None)

    def next_deadline_ms(self) -> float | None:
        """When `tick` next has something to do (the idle timeout), or None."""
        return self.turns.next_deadline_ms()

    def tick(self, now_ms: float) -> None:
        self.turns.tick(now_ms)

    # -- what the cores ask of the session (TurnHost, ResponseHost) --------------------------------

    def last_item_id(self) -> str | None:
        return self.conversation.last_id()

    def add_audio_item(
        self, item_id: str, audio_ms: float, previous: str | None, *, transcribe: bool, pcm16_8k: bytes = b""
    ) -> None:
        self.conversation.add_user_audio(item_id, audio_ms, previous, transcribe=transcribe)
        if transcribe:
            self._track_transcript(item_id, pcm16_8k, audio_ms)

    def responding(self) -> bool:
        return self.responses.active is not None

    def barge_in(self) -> None:
        active = self.responses.active
        if active is not None and not active.out_of_band:
            self.responses.cancel("turn_detected")

    def respond(self, now_ms: float, *, idle: bool) -> None:
        self.responses.create(
            response_params(self.config, {}, beta=self.beta), kind_override="idle" if idle else None
        )

    def reply_context(self) -> ReplyContext:
        return ReplyContext(
            self.config["instructions"], tuple(self.config["tools"]), self.extension, self.chat_backend
        )

    def response_started(self) -> None:
        self.turns.response_started()

    def response_completed(self, played_until_ms: float) -> None:
        self.turns.response_completed(played_until_ms)
