"""One call: a phone leg joined to a realtime voice session, with the bridge's own playout.

Shape of a call (one task group, every task has one owner and signals its exit):

    leg events ──► _leg_loop ──► decode ─► local VAD (barge-in) ─► resample ─► upstream append
    upstream   ──► _upstream_loop ─► audio deltas ─► resample ─► encode ─► Playout
    Playout    ──► _pacer ─► leg.send_audio + leg.send_mark   (absolute deadlines, <= lead_ms ahead)
    leg marks  ──► SessionState.heard()  (what the caller has really heard)

Barge-in (local VAD onset or the server's `speech_started`, whichever comes first, and only while
the bot is audible): empty the playout, `clear` the leg, cancel the response if it is still
running, and truncate the playing item at what was heard. The heard position is read *before*
the leg is cleared (Twilio echoes the pending marks of a cleared buffer; those are ignored).

The call ends when the leg ends (`stop`, hang-up, socket closed) or the upstream fails; either
way the other side is closed at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.audio import codec
from bridge.audio.playout import Playout
from bridge.audio.resample import Downsampler, Upsampler
from bridge.audio.vad import SpeechDetector, SpeechStart
from bridge.errors import BridgeError, UpstreamError
from bridge.realtime import events as rt
from bridge.realtime.client import RealtimeClient
from bridge.realtime.providers import Endpoint, session_config
from bridge.realtime.session import SessionState, UpstreamFormat
from bridge.telephony.events import AudioIn, CallEnded, CallStarted, Dtmf, Leg, MarkPlayed

log = logging.getLogger(__name__)

# Caller audio that arrives while the upstream socket is still opening is kept (up to this much)
# and sent once the session is configured, so the caller's first words are not lost.
PRECONNECT_BUFFER_MS = 3000
UPSTREAM_CLOSE_TIMEOUT_S = 0.08


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything one agent session needs: where to connect and how to configure it."""

    endpoint: Endpoint
    upstream_format: UpstreamFormat = "pcm24k"
    instructions: str = "You are a helpful phone assistant. Be brief."
    voice: str = "alloy"
    tools: tuple[dict[str, Any], ...] = ()
    turn_detection: dict[str, Any] | None = None
    session_extra: dict[str, Any] = field(default_factory=dict)
    barge_in_min_speech_ms: int = 200
    barge_in_threshold: float = 0.6


@dataclass(slots=True)
class CallStats:
    """Counters and timings a call keeps for metrics and benchmarks (no per-frame logging)."""

    frames_in: int = 0
    frames_out: int = 0
    barge_ins: int = 0
    truncates: list[tuple[str, int]] = field(default_factory=list)
    ended_reason: str = ""


class _CallOver(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


ToolHandler = Callable[[str, str, str], Awaitable[str | None]]  # (name, call_id, arguments) -> output


class Call:
    """Joins `leg` to the realtime session described by `agent` for the life of the call."""

    def __init__(
        self,
        leg: Leg,
        agent: AgentConfig,
        *,
        on_tool: ToolHandler | None = None,
        client_factory: Callable[[], RealtimeClient] = RealtimeClient,
    ) -> None:
        self.leg = leg
        self.agent = agent
        self.on_tool = on_tool
        self.stats = CallStats()
        self.started: CallStarted | None = None
        self._client_factory = client_factory
        self._client: RealtimeClient | None = None
        self._state = SessionState(agent.upstream_format)
        self._playout = Playout(lead_ms=leg.lead_ms, silence_byte=codec.silence(leg.encoding, 1)[0])
        self._marks: dict[str, tuple[str, int]] = {}
        self._mark_seq = 0
        self._wake = asyncio.Event()
        self._upstream_ready = asyncio.Event()
        self._preconnect: list[str] = []
        self._up = Upsampler()
        self._down = Downsampler()
        self._vad: SpeechDetector | None = None  # created when the call starts
        self._loop = asyncio.get_running_loop()

    # -- life cycle ----------------------------------------------------------------------------

    async def run(self) -> CallStats:
        """Run until the leg or the upstream ends. Never raises for call-level failures."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._leg_loop(tg))
        except* _CallOver as group:
            self.stats.ended_reason = group.exceptions[0].reason  # type: ignore[attr-defined]
        except* BridgeError as group:
            self.stats.ended_reason = f"error: {group.exceptions[0]}"
            log.warning("call %s ended: %s", self._call_id, group.exceptions[0])
        finally:
            await self._close_upstream()
            if not self.stats.ended_reason.startswith(("stop", "closed", "hangup")):
                await self._end_leg()
        return self.stats

    @property
    def _call_id(self) -> str:
        return self.started.call_id if self.started else "?"

    def _now_ms(self) -> float:
        return self._loop.time() * 1000.0

    async def _close_upstream(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(TimeoutError, BridgeError, OSError):
                await asyncio.wait_for(client.close(), UPSTREAM_CLOSE_TIMEOUT_S)

    async def _end_leg(self) -> None:
        try:
            await self.leg.hang_up()
        except (BridgeError, OSError, RuntimeError) as exc:
            log.debug("hang-up of leg failed: %s", exc)

    # -- phone leg -----------------------------------------------------------------------------

    async def _leg_loop(self, tg: asyncio.TaskGroup) -> None:
        async for event in self.leg.events():
            if isinstance(event, AudioIn):
                await self._on_caller_audio(event.payload)
            elif isinstance(event, MarkPlayed):
                self._on_mark(event.name)
            elif isinstance(event, CallStarted):
                self.started = event
                self._start_vad()
                tg.create_task(self._upstream_loop())
                tg.create_task(self._pacer())
            elif isinstance(event, Dtmf):
                await self._on_dtmf(event.digit)
            elif isinstance(event, CallEnded):
                raise _CallOver(event.reason)
        raise _CallOver("closed")

    def _start_vad(self) -> None:
        self._vad = SpeechDetector(
            threshold=self.agent.barge_in_threshold,
            min_speech_ms=self.agent.barge_in_min_speech_ms,
            min_silence_ms=300,
        )

    async def _on_caller_audio(self, payload: bytes) -> None:
        self.stats.frames_in += 1
        encoding = self.leg.encoding
        pcm8k = codec.decode(payload, encoding)
        if self._vad is not None:
            for change in self._vad.feed(pcm8k):
                if isinstance(change, SpeechStart):
                    await self._barge_in("local_vad")
        fmt = self.agent.upstream_format
        if fmt == "pcm24k":
            audio = self._up.process(pcm8k)
        elif fmt == encoding:
            audio = payload
        else:
            audio = codec.encode(pcm8k, fmt)
        message = rt.append_audio_json(base64.b64encode(audio).decode("ascii"))
        client = self._client
        if client is not None and self._upstream_ready.is_set():
            await client.send_raw(message)
        elif len(self._preconnect) * codec.FRAME_MS < PRECONNECT_BUFFER_MS:
            self._preconnect.append(message)

    def _on_mark(self, name: str) -> None:
        entry = self._marks.pop(name, None)
        if entry is not None:
            item_id, end_ms = entry
            self._state.heard(item_id, end_ms)

    async def _on_dtmf(self, digit: str) -> None:
        client = self._client
        if client is None or not self._upstream_ready.is_set():
            return
        text = f"The caller pressed {digit} on the keypad."
        await client.send(
            rt.ConversationItemCreate(
                item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
            )
        )
        if not self._state.response_active:
            await client.send(rt.ResponseCreate())

    # -- upstream session ----------------------------------------------------------------------

    async def _upstream_loop(self) -> None:
        client = self._client_factory()
        self._client = client
        agent = self.agent
        try:
            await client.connect(agent.endpoint)
            session: dict[str, Any] = session_config(
                agent.upstream_format,
                instructions=agent.instructions,
                voice=agent.voice,
                tools=list(agent.tools),
                turn_detection=agent.turn_detection,
                transcription=None,
                extra=agent.session_extra,
            )
            await client.send(rt.SessionUpdate(session=session))
            for message in self._preconnect:
                await client.send_raw(message)
            self._preconnect.clear()
            self._upstream_ready.set()
            async for event in client:
                await self._on_upstream_event(event)
        except UpstreamError as exc:
            log.warning("call %s: upstream failed: %s", self._call_id, exc)
            raise _CallOver(f"upstream: {exc}") from exc
        raise _CallOver("upstream closed")

    async def _on_upstream_event(self, event: rt.ServerEvent) -> None:
        if isinstance(event, rt.ResponseOutputAudioDelta):
            audio = event.audio()
            if self._state.accept_audio(event.item_id, len(audio)):
                self._play(event.item_id, audio)
        elif isinstance(event, rt.ResponseOutputAudioDone):
            self._playout.finish_item(event.item_id)
            self._wake.set()
        elif isinstance(event, rt.ResponseCreated):
            self._state.response_started(event.response_id)
        elif isinstance(event, rt.ResponseDone):
            self._state.response_ended(event.response_id)
        elif isinstance(event, rt.InputAudioBufferSpeechStarted):
            await self._barge_in("server_vad")
        elif isinstance(event, rt.ResponseFunctionCallArgumentsDone):
            await self._on_function_call(event)
        elif isinstance(event, rt.Error):
            log.warning(
                "call %s: upstream error %s: %s", self._call_id, event.error.code, event.error.message
            )

    def _play(self, item_id: str, audio: bytes) -> None:
        fmt = self.agent.upstream_format
        encoding = self.leg.encoding
        if fmt == "pcm24k":
            g711 = codec.encode(self._down.process(audio), encoding)
        elif fmt == encoding:
            g711 = audio
        else:
            g711 = codec.transcode(audio, fmt, encoding)
        self._playout.push(item_id, g711)
        self._wake.set()

    async def _on_function_call(self, event: rt.ResponseFunctionCallArgumentsDone) -> None:
        output = None
        if self.on_tool is not None:
            output = await self.on_tool(event.name, event.call_id, event.arguments)
        client = self._client
        if output is not None and client is not None:
            await client.send(
                rt.ConversationItemCreate(
                    item={"type": "function_call_output", "call_id": event.call_id, "output": output}
                )
            )
            await client.send(rt.ResponseCreate())

    # -- playout -------------------------------------------------------------------------------

    async def _pacer(self) -> None:
        playout, leg, state = self._playout, self.leg, self._state
        while True:
            frames = playout.pop_due(self._now_ms())
            if frames:
                for frame in frames:
                    await leg.send_audio(frame.payload)
                last = frames[-1]
                self.stats.frames_out += len(frames)
                state.audio_sent(last.item_id)
                self._mark_seq += 1
                name = str(self._mark_seq)
                self._marks[name] = (last.item_id, last.end_ms)
                await leg.send_mark(name)
            due = playout.next_due_ms()
            self._wake.clear()
            if due is None:
                await self._wake.wait()
            elif due > self._now_ms():
                # Sleep to the absolute deadline, or until new audio or a barge-in wakes us.
                timer = self._loop.call_at(due / 1000.0, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    timer.cancel()

    def _bot_audible(self) -> bool:
        return self._playout.queued_ms > 0 or self._playout.busy_until_ms > self._now_ms()

    async def _barge_in(self, source: str) -> None:
        if not (self._bot_audible() or self._state.response_active):
            return
        decision = self._state.barge_in()  # reads what was heard before the leg is cleared
        self._playout.clear()
        self._marks.clear()
        self._down.reset()
        self.stats.barge_ins += 1
        await self.leg.clear()
        client = self._client
        if client is None:
            return
        if decision.cancel_response_id is not None:
            await client.send(rt.ResponseCancel())
        if decision.truncate_item_id is not None:
            self.stats.truncates.append((decision.truncate_item_id, decision.audio_end_ms))
            await client.send(
                rt.ConversationItemTruncate(
                    item_id=decision.truncate_item_id, content_index=0, audio_end_ms=decision.audio_end_ms
                )
            )
        log.info(
            "call %s: barge-in (%s), truncated %s at %d ms",
            self._call_id,
            source,
            decision.truncate_item_id,
            decision.audio_end_ms,
        )
