"""One call: a phone leg, the dialplan runner, local prompts and agent steps, one playout.

Shape of a call (one task group; every task has one owner and signals its exit):

    leg events ─► _leg_loop ─► decode ─► barge-in VAD ─► menu listener / agent link (upstream)
                             └─► DTMF, played marks, hang-up ─► control queue
    control queue ─► _control ─► Runner (no I/O) ─► actions: say, play, listen, agent, transfer, hang up
    Playout ─► _pacer ─► leg.send_audio + leg.send_mark per frame (absolute deadlines, <= lead_ms ahead)
    timers ─► _timers ─► Runner.on_timer

Everything that moves the dialplan goes through the control queue and is handled by one task,
in order, so the runner never sees two inputs at once. Audio never waits for the control task.

Barge-in (the local VAD's onset or the server's `speech_started`, whichever comes first, and only
while the bot is audible) is the agent link's job (`bridge.agent`); during prompts the VAD cuts a
prompt that allows it while the caller answers a menu.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridge.agent import AgentLink, agent_config
from bridge.audio import codec
from bridge.audio.playout import Playout
from bridge.audio.vad import SpeechDetector, SpeechStart
from bridge.dialplan import runner as dp
from bridge.dialplan.schema import Dialplan
from bridge.errors import BridgeError
from bridge.settings import Settings
from bridge.telephony.events import AudioIn, CallEnded, CallStarted, Dtmf, Leg, MarkPlayed

log = logging.getLogger(__name__)

PROMPT_PREFIX = "prompt:"
DRAIN_TIMEOUT_S = 15.0


@dataclass(slots=True)
class CallStats:
    """Counters a call keeps for metrics and benchmarks (no per-frame logging)."""

    frames_in: int = 0
    frames_out: int = 0
    barge_ins: int = 0
    truncates: list[tuple[str, int]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    ended_reason: str = ""


class _CallOver(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PromptVoice:
    """Fixed prompts spoken by the local synthesizer at 8 kHz, cached process-wide."""

    def __init__(self) -> None:
        from bridge.engine.tts import Synthesizer

        self._synth = Synthesizer(out_rate=codec.RATE_8K)

    def render(self, text: str, cache: bool) -> bytes:
        audio = self._synth.cached(text) if cache else self._synth.synthesize(text)
        return np.asarray(audio, dtype="<i2").tobytes()


_prompt_voice: PromptVoice | None = None


def prompt_voice() -> PromptVoice:
    global _prompt_voice
    if _prompt_voice is None:
        _prompt_voice = PromptVoice()
    return _prompt_voice


def read_wav_8k(path: Path) -> bytes:
    """A prompt file as PCM16 8 kHz mono (other rates are resampled)."""
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2:
            raise BridgeError(f"{path}: expected 16-bit PCM, got {8 * w.getsampwidth()}-bit")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        if w.getnchannels() > 1:
            data = data.reshape(-1, w.getnchannels()).mean(axis=1).astype(np.int16)
        rate = w.getframerate()
    if rate != codec.RATE_8K:
        import soxr

        data = soxr.resample(data, rate, codec.RATE_8K).astype(np.int16)
    return data.astype("<i2").tobytes()


class Call:
    """Runs one call through its dialplan, from the leg's `CallStarted` to its end."""

    def __init__(
        self,
        leg: Leg,
        plan: Dialplan,
        settings: Settings,
        *,
        plan_dir: Path | None = None,
        voice: PromptVoice | None = None,
    ) -> None:
        self.leg = leg
        self.plan = plan
        self.settings = settings
        self.plan_dir = plan_dir or settings.dialplans
        self.stats = CallStats()
        self.started: CallStarted | None = None
        self.encoding = leg.encoding
        self.runner: dp.Runner | None = None
        self.agent: AgentLink | None = None
        self._voice = voice
        self._loop = asyncio.get_running_loop()
        self._playout = Playout(lead_ms=leg.lead_ms, silence_byte=codec.silence_byte(leg.encoding))
        self._marks: dict[str, tuple[str, int]] = {}
        self._mark_seq = 0
        self._wake = asyncio.Event()
        self._timer_wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._last_played: tuple[str, int, float] | None = None  # item, end ms, when its mark came back
        self._control: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._vad: SpeechDetector | None = None
        self._listener: Any = None  # MenuListener while a menu listens for speech
        self._prompts: dict[str, tuple[str, int, bool]] = {}  # item id -> (prompt id, total ms, barge-in)
        self._prompt_seq = 0
        self._agent_task: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None

    # -- life cycle ----------------------------------------------------------------------------

    async def run(self) -> CallStats:
        """Run until the leg ends or the dialplan hangs up. Never raises for call-level failures."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._leg_loop())
                tg.create_task(self._control_loop())
        except* _CallOver as group:
            self.stats.ended_reason = group.exceptions[0].reason  # type: ignore[attr-defined]
        except* BridgeError as group:
            self.stats.ended_reason = f"error: {group.exceptions[0]}"
            log.warning("call %s ended: %s", self.call_id, group.exceptions[0])
        finally:
            await self._stop_agent()
            if self._listener is not None:
                await self._listener.aclose()
            if not self.stats.ended_reason.startswith(("stop", "closed", "refused", "error")):
                with contextlib.suppress(BridgeError, OSError, RuntimeError):
                    await self.leg.hang_up()
        return self.stats

    @property
    def call_id(self) -> str:
        return self.started.call_id if self.started else "?"

    def _now_ms(self) -> float:
        return self._loop.time() * 1000.0

    def _post(self, *message: Any) -> None:
        self._control.put_nowait(message)

    # -- phone leg -----------------------------------------------------------------------------

    async def _leg_loop(self) -> None:
        async for event in self.leg.events():
            if isinstance(event, AudioIn):
                await self._on_caller_audio(event.payload)
            elif isinstance(event, MarkPlayed):
                self._on_mark(event.name)
            elif isinstance(event, CallStarted):
                self.started = event
                self.encoding = self.leg.encoding
                silence = codec.silence_byte(self.encoding)
                self._playout = Playout(lead_ms=self.leg.lead_ms, silence_byte=silence)
                assert self._tg is not None
                self._tg.create_task(self._pacer())
                self._tg.create_task(self._timers())
                self._post("start", event)
            elif isinstance(event, Dtmf):
                self._post("dtmf", event.digit)
            elif isinstance(event, CallEnded):
                self._post("hangup", event.reason)
                raise _CallOver(event.reason)
        raise _CallOver("closed")

    async def _on_caller_audio(self, payload: bytes) -> None:
        self.stats.frames_in += 1
        pcm8k = codec.decode(payload, self.encoding)
        agent = self.agent
        vad = self._vad
        if vad is not None:
            for change in vad.feed(pcm8k):
                if isinstance(change, SpeechStart):
                    await self._on_speech_onset()
        if self._listener is not None:
            self._listener.feed(pcm8k)
        if agent is not None:
            await agent.send_caller_audio(pcm8k, payload)

    async def _on_speech_onset(self) -> None:
        agent = self.agent
        if agent is not None and agent.config.barge_in:
            await agent.barge_in("local_vad")
            return
        # A prompt that allows barge-in stops when the caller answers over it.
        if self._listener is not None and self._cut_prompts(only_barge_in=True):
            await self.leg.clear()

    def _on_mark(self, name: str) -> None:
        entry = self._marks.pop(name, None)
        if entry is None:
            return
        self._check_drained()
        item_id, end_ms = entry
        self._last_played = (item_id, end_ms, self._now_ms())
        prompt = self._prompts.get(item_id)
        if prompt is not None:
            prompt_id, total_ms, _ = prompt
            if end_ms >= total_ms:
                del self._prompts[item_id]
                self._post("prompt_done", prompt_id)
        elif self.agent is not None:
            self.agent.heard(item_id, end_ms)

    # -- audio out (CallAudio for the agent link) ------------------------------------------------

    def play(self, item_id: str, g711: bytes) -> None:
        self._playout.push(item_id, g711)
        self._wake.set()

    def finish_item(self, item_id: str) -> None:
        self._playout.finish_item(item_id)
        self._wake.set()

    def heard_now(self) -> tuple[str, int] | None:
        """What the caller has heard of the playing item at this instant: the last played mark,
        plus the part of the frame playing since then (at most one frame, and only when a
        later frame of the same item was really sent: a model that paused adds nothing)."""
        last = self._last_played
        if last is None:
            return None
        item_id, end_ms, at_ms = last
        if not any(pending_item == item_id for pending_item, _ in self._marks.values()):
            return item_id, end_ms
        return item_id, end_ms + int(min(self._now_ms() - at_ms, codec.FRAME_MS))

    def bot_audible(self) -> bool:
        return self._playout.queued_ms > 0 or self._playout.busy_until_ms > self._now_ms()

    async def cut_playout(self) -> None:
        self._playout.clear()
        self._marks.clear()
        self._cut_prompts(only_barge_in=False)
        self._check_drained()
        await self.leg.clear()

    def _cut_prompts(self, *, only_barge_in: bool) -> bool:
        cut = [item for item, (_, _, barge) in self._prompts.items() if barge or not only_barge_in]
        if not cut:
            return False
        if only_barge_in and len(cut) < len(self._prompts):
            return False  # a prompt that must be heard is still queued: leave the playout alone
        self._playout.clear()
        self._marks.clear()
        self._check_drained()
        for item in cut:
            prompt_id, _, _ = self._prompts.pop(item)
            self._post("prompt_done", prompt_id)
        return True

    async def _pacer(self) -> None:
        playout, leg = self._playout, self.leg
        while True:
            # One mark per 20 ms frame: the far end's echoes then say, to the frame, what the
            # caller has heard (a mark per batch would leave barge-in ~100 ms blind).
            for frame in playout.pop_due(self._now_ms()):
                self._mark_seq += 1
                name = str(self._mark_seq)
                self._marks[name] = (frame.item_id, frame.end_ms)  # before sending: not drained
                await leg.send_audio(frame.payload)
                await leg.send_mark(name)
                self.stats.frames_out += 1
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

    def _check_drained(self) -> None:
        if not self._marks and self._playout.queued_ms == 0:
            self._drained.set()

    async def _drain(self) -> None:
        """Wait until everything queued has been played to the caller (bounded)."""
        self._drained.clear()
        self._check_drained()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                await self._drained.wait()

    # -- timers --------------------------------------------------------------------------------

    async def _timers(self) -> None:
        """Post a "timer" input when the runner's next deadline passes. The control task sets
        `_timer_wake` after every input it handles, so deadlines are re-read after each change."""
        while True:
            self._timer_wake.clear()
            runner = self.runner
            due = runner.next_timer_ms if runner is not None else None
            if due is not None and due <= self._now_ms():
                self._post("timer")
            elif due is not None:
                timer = self._loop.call_at(due / 1000.0, self._timer_wake.set)
                try:
                    await self._timer_wake.wait()
                finally:
                    timer.cancel()
                continue
            await self._timer_wake.wait()

    # -- control: the runner and its actions -----------------------------------------------------

    async def _control_loop(self) -> None:
        while True:
            message = await self._control.get()
            kind = message[0]
            now = self._now_ms()
            runner = self.runner
            if kind == "start":
                actions = self._start(message[1], now)
            elif runner is None:
                continue
            elif kind == "dtmf":
                if self._cut_prompts(only_barge_in=True):
                    await self.leg.clear()
                actions = runner.on_dtmf(message[1], now)
            elif kind == "speech":
                actions = runner.on_speech(message[1], now)
            elif kind == "prompt_done":
                actions = runner.on_prompt_done(message[1], now)
            elif kind == "timer":
                actions = runner.on_timer(now)
            elif kind == "tool":
                actions = runner.on_agent_tool(message[1], message[2], now)
            elif kind == "agent_ended":
                actions = runner.on_agent_ended(message[1], now)
            elif kind == "failed":
                actions = runner.on_action_failed(message[1], message[2], now)
            elif kind == "hangup":
                actions = runner.on_hangup(now)
            else:
                continue
            for action in actions:
                await self._execute(action)
            self._timer_wake.set()

    def _start(self, started: CallStarted, now: float) -> list[dp.Action]:
        flow = started.params.get("flow") or None
        if flow is not None and flow not in self.plan.flows:
            flow = None
        self.runner = dp.Runner(
            self.plan,
            flow=flow,
            caller=started.caller,
            called=started.called,
            now_ms=now,
            call_id=started.call_id,
        )
        self._vad = SpeechDetector(
            threshold=self.settings.barge_in_threshold,
            min_speech_ms=self.settings.barge_in_min_speech_ms,
            min_silence_ms=300,
        )
        return self.runner.start(now)

    async def _execute(self, action: dp.Action) -> None:
        self.stats.actions.append(type(action).__name__)
        if isinstance(action, dp.Say):
            await self._say(action)
        elif isinstance(action, dp.Play):
            await self._play_file(action)
        elif isinstance(action, dp.StopPrompts):
            if self._cut_prompts(only_barge_in=False):
                await self.leg.clear()
        elif isinstance(action, dp.Listen):
            self._listen(action)
        elif isinstance(action, dp.StopListening):
            if self._listener is not None:
                self._listener.stop()
        elif isinstance(action, dp.StartAgent):
            await self._start_agent(action)
        elif isinstance(action, dp.StopAgent):
            await self._stop_agent()
        elif isinstance(action, dp.SendToAgent):
            if self.agent is not None:
                await self.agent.send_text(action.text)
        elif isinstance(action, dp.Transfer):
            await self._transfer(action)
        elif isinstance(action, dp.HangUp):
            await self._drain()
            log.info("call %s: hang-up (%s)", self.call_id, action.reason)
            raise _CallOver(f"hangup: {action.reason}")

    async def _speak(self, item_id: str, pcm8k: bytes) -> None:
        self.play(item_id, codec.encode(pcm8k, self.encoding))
        self.finish_item(item_id)

    def _new_prompt_item(self, prompt_id: str, pcm8k_bytes: int, barge_in: bool) -> str:
        self._prompt_seq += 1
        item_id = f"{PROMPT_PREFIX}{self._prompt_seq}"
        self._prompts[item_id] = (prompt_id, pcm8k_bytes // (2 * 8), barge_in)
        return item_id

    async def _say(self, action: dp.Say) -> None:
        voice = self._voice or prompt_voice()
        try:
            pcm8k = await self._loop.run_in_executor(None, voice.render, action.text, action.cache)
        except BridgeError as exc:
            self._post("failed", action, f"speech synthesis failed: {exc}")
            return
        if not pcm8k:
            self._post("prompt_done", action.prompt_id)
            return
        item_id = self._new_prompt_item(action.prompt_id, len(pcm8k), action.barge_in)
        await self._speak(item_id, pcm8k)

    async def _play_file(self, action: dp.Play) -> None:
        path = action.path if action.path.is_absolute() else self.plan_dir / action.path
        try:
            pcm8k = await self._loop.run_in_executor(None, read_wav_8k, path)
        except (OSError, EOFError, wave.Error, BridgeError) as exc:
            log.warning("call %s: cannot play %s: %s", self.call_id, path, exc)
            self._post("failed", action, f"cannot play {path}: {exc}")
            return
        item_id = self._new_prompt_item(action.prompt_id, len(pcm8k), action.barge_in)
        await self._speak(item_id, pcm8k)

    def _listen(self, action: dp.Listen) -> None:
        if self._listener is None:
            from bridge.dialplan.listener import MenuListener
            from bridge.engine.asr_pool import RemoteRecognizer  # decoding in the ASR worker pool

            self._listener = MenuListener(
                lambda text: self._post("speech", text), recognizer_factory=RemoteRecognizer, loop=self._loop
            )
        self._listener.listen(action.phrases, digits=action.digits)

    async def _start_agent(self, action: dp.StartAgent) -> None:
        await self._stop_agent()
        try:
            config = agent_config(action.agent, self.settings)
        except BridgeError as exc:
            self._post("failed", action, str(exc))
            return
        link = AgentLink(config, self, on_tool=self._on_tool, call_id=self.call_id)
        self.agent = link
        if self._vad is not None:
            self._vad = SpeechDetector(
                threshold=config.barge_in_threshold,
                min_speech_ms=config.barge_in_min_speech_ms,
                min_silence_ms=300,
            )
        assert self._tg is not None
        try:
            self._agent_task = self._tg.create_task(self._run_agent(link))
        except RuntimeError:  # the call is ending (its task group is shutting down)
            self.agent = None

    async def _run_agent(self, link: AgentLink) -> None:
        error: str | None = None
        try:
            await link.run()
        except BridgeError as exc:
            error = str(exc)
            log.warning("call %s: agent session failed: %s", self.call_id, exc)
        finally:
            await link.close()
        if self.agent is link:  # ended by the upstream, not by the dialplan
            self.agent = None
            self._retire(link)
            self._post("agent_ended", error or "the realtime session closed")

    def _retire(self, link: AgentLink) -> None:
        self.stats.truncates += link.truncates
        self.stats.barge_ins += link.barge_ins

    async def _stop_agent(self) -> None:
        link, task = self.agent, self._agent_task
        self.agent, self._agent_task = None, None
        if link is None:
            return
        self._retire(link)
        await link.close()
        if task is not None:
            task.cancel()

    async def _on_tool(self, name: str, arguments: dict[str, Any]) -> None:
        self._post("tool", name, arguments)

    async def _transfer(self, action: dp.Transfer) -> None:
        if action.announce:
            await self._say(dp.Say(action.announce, None, "transfer-announce", barge_in=False, cache=False))
        await self._drain()
        ok = await self.leg.transfer(action.target)
        if ok:
            raise _CallOver(f"transferred to {action.target}")
        self._post("failed", action, "this leg cannot transfer")
