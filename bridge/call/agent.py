"""One agent step: a realtime voice session joined to a call's audio.

`AgentLink` owns the upstream socket; the call owns the leg, the playout, the barge-in detector
and the barge-in core (`bridge.call.bargein`), which the link feeds with the session's facts
(responses, audio received per item). The call talks to the link through a few methods:

- `send_caller_audio(pcm8k, payload)`: every inbound frame while the agent is active;
- `cut()` then `tell_model(cut, source)`: the core decided a barge-in (on the local VAD's onset,
  or on the server's `speech_started`, which the link hands to the call);
- `close()`: the step ends (dialplan, tool call, hang-up). Closing never waits more than ~80 ms.

The sessions themselves (reconnect and replay after a drop, failover to the step's
`fallback_provider`, rollover before the provider's session cap, a bounded outbox so a slow server
never blocks the call) are `bridge.call.upstream.Upstream`'s business (docs/resilience.md).

What a tool call means for the call (transfer, hang up, another flow) is the dialplan runner's
business: the link reports it through `on_tool` once the response that made it is done, so the
words spoken with it ("Connecting you now") have all arrived and are queued for playout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.call.bargein import BargeInCore, Cut
from bridge.call.record import CallObserver
from bridge.call.resume import Backoff, RolloverPlan
from bridge.call.upstream import APPEND_MS, SessionPlan, Timeline, Upstream
from bridge.call.watch import BotSaid, CallerSaid, CallNote
from bridge.dialplan.schema import AgentStep, BargeIn, Dialplan, Moderation
from bridge.errors import BridgeError, ConfigError
from bridge.media import g711
from bridge.media.g711 import BYTES_PER_MS, Encoding, UpstreamFormat
from bridge.media.resample import Downsampler, Upsampler
from bridge.realtime import events as rt
from bridge.realtime.local_engine import EXTENSION_KEY, ChatBackend, chat_backend
from bridge.realtime.providers import Endpoint, resolve_endpoint, session_config
from bridge.settings import Settings

log = logging.getLogger(__name__)

# Caller audio that arrives while the upstream socket is still opening (or reopening) is kept (up to
# a few seconds, `resume.GapBuffer`) and sent once the session is configured, so no words are lost.
UPSTREAM_CLOSE_TIMEOUT_S = 0.08
# The session transcribes the caller's turns for the call record.
DEFAULT_TRANSCRIPTION_MODEL = "gpt-4o-mini-transcribe"
# The embedded engine: its own fast transcripts, ready before the reply. ("whisper-1" would give
# Whisper's text from the low-priority record lane, but the last turn of a call that ends on it, a
# transfer, would then be transcribed after the record closed.)
TRANSCRIPTION_MODELS = {"local": "local"}

TRANSFER_TOOL = {
    "name": "transfer",
    "description": "Transfer the caller to a person (an operator). Say a short line first.",
    "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
}
HANG_UP_TOOL = {
    "name": "hang_up",
    "description": "End the call, after saying goodbye, when the caller has nothing more to ask.",
    "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
}


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything one agent session needs: where to connect and how to configure it."""

    endpoint: Endpoint
    upstream_format: UpstreamFormat = "pcm24k"
    instructions: str = "You are a helpful phone assistant. Be brief."
    voice: str | None = None
    tools: tuple[dict[str, Any], ...] = ()
    turn_detection: dict[str, Any] | None = None
    session_extra: dict[str, Any] = field(default_factory=dict)
    greeting: str | None = None  # spoken first (a response.create with "Say exactly: ...")
    moderation: Moderation | None = None  # checks of the bot's words (bridge/call/moderator.py)
    # The caller's words for the call record (conversation.item.input_audio_transcription.completed).
    transcription: dict[str, Any] | None = None
    barge_in: bool = True
    barge_in_min_speech_ms: int = 200
    barge_in_threshold: float = 0.6
    fallback: AgentConfig | None = None  # the same step on its fallback provider
    provider: str = "local"
    max_session_s: float | None = None  # rollover before this (None: never)
    reconnect_max_s: float = 10.0
    hold_line: str | None = None  # said once when the model is away more than a second
    echo_cancel: bool = True
    send_cleaned_upstream: bool = True
    backchannel_max_ms: int = 0  # 0: backchannels cut like any onset


def step_chat_backend(step: AgentStep) -> ChatBackend | None:
    """The chat-completions backend an agent step configures (ConfigError: its key is not allowed)."""
    conf = step.chat_completions
    if conf is None:
        return None
    return chat_backend(conf.url, conf.model, conf.api_key_env)


def dialplan_chat_backends(plan: Dialplan) -> list[ChatBackend]:
    """Every chat-completions backend the plan's agent steps configure, for the engine's registry.

    The operator's dialplan is the only place a backend's URL and key come from; the session only
    carries the backend's id. ConfigError names the step of a backend that is not allowed."""
    backends: list[ChatBackend] = []
    for flow, steps in plan.flows.items():
        for index, step in enumerate(steps):
            if not isinstance(step, AgentStep):
                continue
            try:
                backend = step_chat_backend(step)
            except ConfigError as exc:
                raise ConfigError(f"flows.{flow}[{index}].agent.{exc}") from exc
            if backend is not None:
                backends.append(backend)
    return backends


def agent_config(step: AgentStep, settings: Settings, *, with_fallback: bool = True) -> AgentConfig:
    """An agent step (defaults and variables already resolved by the runner) as a session config."""
    provider = step.provider or "local"
    fallback: AgentConfig | None = None
    if with_fallback and step.fallback_provider and step.fallback_provider != provider:
        other = step.model_copy(update={"provider": step.fallback_provider, "url": None, "voice": None})
        fallback = agent_config(other, settings, with_fallback=False)
    endpoint = resolve_endpoint(
        step.url if provider == "url" and step.url else provider,
        settings=settings,
        model=step.model,
        url=step.url,
    )
    tools: list[dict[str, Any]] = []
    for tool in step.tools:
        if tool.name == "transfer":
            tools.append(dict(TRANSFER_TOOL, description=tool.description or TRANSFER_TOOL["description"]))
        elif tool.name == "hang_up":
            tools.append(dict(HANG_UP_TOOL, description=tool.description or HANG_UP_TOOL["description"]))
        else:
            tools.append(
                {
                    "name": tool.name,
                    "description": tool.description or f"Continue with {tool.goto}.",
                    "parameters": tool.parameters or {"type": "object", "properties": {}},
                }
            )
    extra: dict[str, Any] = {}
    if provider == "local":  # the real API rejects unknown session keys: only the local engine gets these
        extra[EXTENSION_KEY] = {
            "greeting": step.greeting,
            "intents": [
                {
                    "name": i.name,
                    "phrases": list(i.phrases),
                    "reply": i.reply,
                    "tool": i.tool,
                    "arguments": dict(i.arguments),
                }
                for i in step.intents
            ],
            "faq": [{"questions": list(f.questions), "answer": f.answer} for f in step.faq],
        }
        if step.fallback_reply:
            extra[EXTENSION_KEY]["fallback_reply"] = step.fallback_reply
        if step.no_input_reply:
            extra[EXTENSION_KEY]["no_input_reply"] = step.no_input_reply
        backend = step_chat_backend(step)
        if backend is not None:  # only the id: the engine looks the URL and key up in its registry
            extra[EXTENSION_KEY]["chat_completions"] = backend.id
    barge = step.barge_in
    return AgentConfig(
        endpoint=endpoint,
        upstream_format=step.format or settings.upstream_format,
        instructions=step.instructions,
        voice=step.voice if provider != "local" else None,
        tools=tuple(tools),
        session_extra=extra,
        greeting=step.greeting,
        moderation=step.moderation if step.moderation is not None and step.moderation.active else None,
        transcription={"model": TRANSCRIPTION_MODELS.get(provider, DEFAULT_TRANSCRIPTION_MODEL)}
        if provider != "azure"  # an Azure resource names its own transcription deployment
        else None,
        barge_in=barge.enabled if barge is not None else True,
        barge_in_min_speech_ms=(barge.min_speech_ms if barge and barge.min_speech_ms else None)
        or settings.barge_in_min_speech_ms,
        barge_in_threshold=(barge.threshold if barge and barge.threshold else None)
        or settings.barge_in_threshold,
        fallback=fallback,
        provider=provider,
        max_session_s=settings.max_session_s,
        reconnect_max_s=settings.reconnect_max_s,
        hold_line=settings.hold_line or None,
        **barge_in_front(barge, settings),
    )


def session_plan(config: AgentConfig, name: str) -> SessionPlan:
    """What `Upstream` needs to open (and reopen) one provider's session for this step."""
    session = session_config(
        config.upstream_format,
        instructions=config.instructions,
        voice=config.voice,
        tools=list(config.tools),
        turn_detection=config.turn_detection,
        transcription=config.transcription,
        extra=config.session_extra,
    )
    return SessionPlan(
        name=name,
        endpoint=config.endpoint,
        session=session,
        greeting=config.greeting,
        bytes_per_ms=BYTES_PER_MS[config.upstream_format],
    )


def _now_ms() -> float:
    return asyncio.get_running_loop().time() * 1000.0


def barge_in_front(barge: BargeIn | None, settings: Settings) -> dict[str, Any]:
    """Echo cancellation and backchannel settings of an agent step: the step's (already merged with
    the dialplan's defaults by the runner), else the environment's."""

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    b = barge or BargeIn()
    backchannel = pick(b.backchannel, settings.backchannel)
    return {
        "echo_cancel": pick(b.echo_cancel, settings.echo_cancel),
        "send_cleaned_upstream": pick(b.send_cleaned_upstream, settings.echo_to_upstream),
        "backchannel_max_ms": pick(b.backchannel_max_ms, settings.backchannel_max_ms) if backchannel else 0,
    }


class CallAudio(Protocol):
    """What the link needs from its call."""

    encoding: Encoding
    bargein: BargeInCore

    def play(self, item_id: str, payload: bytes) -> None: ...

    def finish_item(self, item_id: str) -> None: ...

    async def server_speech_started(self) -> None:
        """The session heard the caller start talking: barge in if the core says so."""
        ...

    async def say_line(self, text: str) -> None:
        """Say a short line of the bridge's own (the hold line while the model is away)."""
        ...


ToolHandler = Callable[[str, dict[str, object]], Awaitable[None]]  # (name, arguments)


class AgentLink:
    """The upstream realtime session of one agent step."""

    def __init__(
        self,
        config: AgentConfig,
        audio: CallAudio,
        *,
        on_tool: ToolHandler,
        call_id: str = "?",
        timeline: Timeline | None = None,
        observer: CallObserver | None = None,
        on_note: Callable[[CallNote], None] | None = None,
    ) -> None:
        self.config = config
        self._observer = observer  # the call's record and moderator (bridge/call/record.py)
        self._on_note = on_note  # transcripts for whoever watches the call live (bridge.call.watch)
        self.truncates: list[tuple[str, int]] = []
        self.barge_ins = 0
        self._audio = audio
        self._barge = audio.bargein
        self._on_tool = on_tool
        self._call_id = call_id
        plans = [session_plan(config, f"primary:{config.provider}")]
        if config.fallback is not None:
            plans.append(session_plan(config.fallback, f"fallback:{config.fallback.provider}"))
        self.upstream = Upstream(
            plans,
            on_event=self._on_event,
            on_hold=self._hold if config.hold_line else None,
            on_switch=self._on_switch,
            timeline=timeline or (lambda kind, data: None),
            backoff=Backoff(max_total_s=config.reconnect_max_s),
            rollover=RolloverPlan(config.max_session_s) if config.max_session_s else None,
            call_id=call_id,
        )
        self._closed = False
        self._pending_tools: dict[str, list[tuple[str, dict[str, object]]]] = {}
        self._up = Upsampler()
        self._down = Downsampler()
        self._batch: list[bytes] = []  # caller audio not yet appended (less than APPEND_MS)
        self._batch_ms = 0

    # -- life cycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, configure, then handle server events until the session ends.

        Returns when the session closes normally; raises UpstreamError when it fails for good
        (every reconnect, and the fallback provider, failed)."""
        await self.upstream.run()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # asyncio.timeout, not wait_for: wait_for can swallow the caller's cancellation on 3.11,
        # which would leave the call's task group waiting forever after a hang-up.
        with contextlib.suppress(TimeoutError, BridgeError, OSError):
            async with asyncio.timeout(UPSTREAM_CLOSE_TIMEOUT_S):
                await self.upstream.close()

    # -- caller -> model -----------------------------------------------------------------------

    async def send_caller_audio(self, pcm8k: bytes, payload: bytes | None, urgent: bool = False) -> None:
        """One caller frame: PCM16 8 kHz, and the leg's payload it came from (None: it was changed,
        by the echo canceller, so G.711 upstream encodes `pcm8k`). Sent in appends of `APPEND_MS`,
        or at once when `urgent` (the caller may be talking, or just stopped: the server's VAD, which
        can cut the bot and ends the turn, must not wait 20 ms for the next frame)."""
        fmt = self.config.upstream_format
        batch = self._batch
        if fmt == "pcm24k":
            batch.append(pcm8k)  # resampled per append, not per frame
        elif fmt == self._audio.encoding and payload is not None:
            batch.append(payload)
        else:
            batch.append(g711.encode(pcm8k, fmt))
        self._batch_ms += len(pcm8k) // 16  # 16 bytes of PCM16 8 kHz per ms
        if self._batch_ms < APPEND_MS and not urgent:
            return
        audio = batch[0] if len(batch) == 1 else b"".join(batch)
        batch.clear()
        self._batch_ms = 0
        if fmt == "pcm24k":
            audio = self._up.process(audio)
        # Never waits on the network: the upstream's outbox (bounded) or its gap buffer.
        self.upstream.send_audio(rt.append_audio_json(base64.b64encode(audio).decode("ascii")))

    async def send_text(self, text: str) -> None:
        """A user message in text (DTMF digits during an agent step), then a response."""
        upstream = self.upstream
        upstream.log.user_text(text)  # replayed (and answered) if the session is away just now
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        if not upstream.send(rt.ConversationItemCreate(item=item)):
            upstream.responded_after_user = False
            return
        if not self._barge.response_active:
            upstream.send(rt.ResponseCreate())

    # -- model -> caller -----------------------------------------------------------------------

    async def _on_event(self, event: rt.ServerEvent) -> None:
        if isinstance(event, rt.ResponseOutputAudioDelta):
            audio = event.audio()
            if self._barge.audio_received(event.item_id, len(audio)):  # False: cut by a barge-in
                if self._observer is not None:
                    self._observer.bot_audio(event.item_id, _now_ms())
                self._play(event.item_id, audio)
            return
        elif isinstance(event, rt.ResponseOutputAudioDone):
            self._audio.finish_item(event.item_id)
        elif isinstance(event, rt.ResponseCreated):
            if event.response_id is not None:
                self._barge.response_started(event.response_id)
        elif isinstance(event, rt.ResponseDone):
            if event.response_id is None:
                return
            self._barge.response_ended(event.response_id)
            for name, arguments in self._pending_tools.pop(event.response_id, []):
                await self._on_tool(name, arguments)
        elif isinstance(event, rt.InputAudioBufferSpeechStarted):
            await self._audio.server_speech_started()
        elif isinstance(event, rt.ResponseFunctionCallArgumentsDone):
            self._queue_tool(event)
        elif isinstance(event, rt.ResponseOutputAudioTranscriptDone):
            if self._on_note is not None and event.transcript.strip():
                self._on_note(BotSaid(event.transcript.strip(), "agent"))
        elif isinstance(event, rt.InputAudioTranscriptionCompleted):
            if self._on_note is not None and event.transcript.strip():
                self._on_note(CallerSaid(event.transcript.strip(), "agent"))
        elif isinstance(event, rt.Error):
            error = event.error
            # A barge-in's cancel that crossed the response's own `response.done` on the wire: the
            # race every realtime client has (the truncate that follows is what matters), not a fault.
            level = logging.DEBUG if error.code == "response_cancel_not_active" else logging.WARNING
            log.log(level, "call %s: upstream error %s: %s", self._call_id, error.code, error.message)
        if self._observer is not None:
            await self._observe(self._observer, event)

    async def _observe(self, observer: CallObserver, event: rt.ServerEvent) -> None:
        """The call's record: transcripts, turn stages, upstream errors; the bot's words are checked
        by the moderator here, before the audio that follows them is read (and played)."""
        now = _now_ms()
        if isinstance(event, rt.ResponseOutputAudioTranscriptDelta):
            await observer.bot_text(event.item_id, event.delta, self._barge.received_ms(event.item_id), now)
        elif isinstance(event, rt.ResponseOutputAudioTranscriptDone):
            received = self._barge.received_ms(event.item_id)
            await observer.bot_text_done(event.item_id, event.transcript, received, now)
        elif isinstance(event, rt.InputAudioBufferSpeechStopped):
            observer.upstream_speech_stopped(now)
        elif isinstance(event, rt.InputAudioTranscriptionCompleted):
            observer.caller_said(event.transcript, now)
        elif isinstance(event, rt.Error):
            observer.upstream_error(event.error.code, event.error.message, now)

    async def _hold(self) -> None:
        if self.config.hold_line:
            await self._audio.say_line(self.config.hold_line)

    def _on_switch(self, kind: str) -> None:
        """Another session took over: the old one's response will never end by itself."""
        response_id = self._barge.response_id
        if response_id is not None:
            self._barge.response_ended(response_id)
        self._pending_tools.clear()

    def _play(self, item_id: str, audio: bytes) -> None:
        fmt = self.config.upstream_format
        encoding = self._audio.encoding
        if fmt == "pcm24k":
            out = g711.encode(self._down.process(audio), encoding)
        elif fmt == encoding:
            out = audio
        else:
            out = g711.transcode(audio, fmt, encoding)
        self._audio.play(item_id, out)

    def _queue_tool(self, event: rt.ResponseFunctionCallArgumentsDone) -> None:
        try:
            arguments = json.loads(event.arguments) if event.arguments else {}
        except ValueError:
            log.warning("call %s: tool %s sent arguments that are not JSON", self._call_id, event.name)
            arguments = {}
        if not isinstance(arguments, dict):
            arguments = {}
        self._pending_tools.setdefault(event.response_id, []).append((event.name, arguments))

    # -- barge-in (decided by the call's BargeInCore) -------------------------------------------

    def cut(self) -> None:
        """The playout is being cleared for a barge-in: drop the resampler's tail of the cut item."""
        self._down.reset()
        self.barge_ins += 1

    async def tell_model(self, cut: Cut, source: str) -> None:
        """After the playout was cleared: cancel the response and truncate the item as decided."""
        upstream = self.upstream
        if cut.truncate_item_id is not None:  # what a later session is told the caller heard
            upstream.log.heard(cut.truncate_item_id, cut.audio_end_ms)
        if not upstream.ready:
            return
        if cut.cancel_response_id is not None and upstream.response_active:
            upstream.send(rt.ResponseCancel())
        if cut.truncate_item_id is not None and cut.truncate_item_id in upstream.session_items:
            self.truncates.append((cut.truncate_item_id, cut.audio_end_ms))
            upstream.send(
                rt.ConversationItemTruncate(
                    item_id=cut.truncate_item_id, content_index=0, audio_end_ms=cut.audio_end_ms
                )
            )
        log.info(
            "call %s: barge-in (%s), truncated %s at %d ms",
            self._call_id,
            source,
            cut.truncate_item_id,
            cut.audio_end_ms,
        )
