"""One call: a phone leg, the dialplan runner, local prompts and agent steps, one playout.

Shape of a call (one task group; every task has one owner and signals its exit):

    leg events ─► _leg_loop ─► decode ─► barge-in VAD ─► menu listener / agent link (upstream)
                             └─► DTMF, hang-up ─► control queue; played marks ─► BargeInCore
    control queue ─► _control ─► Runner (no I/O) ─► actions: say, play, listen, agent, transfer, hang up
    Playout ─► _pacer ─► leg.send_audio + leg.send_mark per frame (absolute deadlines, <= lead_ms ahead)
    timers ─► _timers ─► Runner.on_timer

Everything that moves the dialplan goes through the control queue and is handled by one task,
in order, so the runner never sees two inputs at once. Audio never waits for the control task.

Barge-in is decided by `bridge.call.bargein.BargeInCore` (no I/O): the call feeds it the frames sent and
the marks played, the agent link the session's responses and audio; on the local VAD's onset, the
server's `speech_started` (via the agent link), DTMF or StopPrompts it returns a `Cut`, which
`_execute_cut` carries out (playout and leg cleared, prompts done, the link tells the model).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, assert_never

from bridge.call.agent import AgentLink, agent_config
from bridge.call.bargein import BargeInCore, Cut
from bridge.call.observer import (
    BargedIn,
    BotSaid,
    CallerSaid,
    CallFinished,
    CallNote,
    CallObserver,
    KeyPressed,
    StepEntered,
)
from bridge.call.prompts import PromptVoice, prompt_voice, read_wav_8k
from bridge.dialplan import runner as dp
from bridge.dialplan.schema import Dialplan
from bridge.errors import BridgeError
from bridge.media import g711
from bridge.media.playout import Playout
from bridge.media.vad import SpeechDetector, SpeechStart
from bridge.settings import Settings
from bridge.telephony.leg import AudioIn, CallEnded, CallStarted, Dtmf, Leg, MarkPlayed

if TYPE_CHECKING:
    from bridge.dialplan.listener import MenuListener

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 15.0
# The transcription model asked for when a call is watched live (bridge.call.observer).
WATCHED_TRANSCRIPTION_MODEL = "gpt-4o-mini-transcribe"


@dataclass(slots=True)
class CallStats:
    """Counters a call keeps for metrics and benchmarks (no per-frame logging)."""

    barge_ins: int = 0
    truncates: list[tuple[str, int]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    ended_reason: str = ""


# -- control messages: everything that moves the dialplan, handled in order by `_control_loop` --


@dataclass(frozen=True, slots=True)
class Started:
    """The leg's call started (the runner is created from it)."""

    event: CallStarted


@dataclass(frozen=True, slots=True)
class Digit:
    """The caller pressed a key."""

    digit: str


@dataclass(frozen=True, slots=True)
class HungUp:
    """The leg ended (the caller hung up, or the far end closed the stream)."""


@dataclass(frozen=True, slots=True)
class PromptDone:
    """A prompt was played to its end, cut by a barge-in, or had nothing to play."""

    prompt_id: str


@dataclass(frozen=True, slots=True)
class TimerTick:
    """The runner's next deadline has passed."""


@dataclass(frozen=True, slots=True)
class ActionFailed:
    """An action the runner asked for could not be carried out."""

    action: dp.Action
    reason: str


@dataclass(frozen=True, slots=True)
class Heard:
    """The menu listener recognised the caller's words."""

    text: str


@dataclass(frozen=True, slots=True)
class AgentEnded:
    """The agent's realtime session ended by itself (not by the dialplan)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ToolCalled:
    """The agent called a tool (reported once the response that made the call is done)."""

    name: str
    arguments: dict[str, object]


ControlMessage = (
    Started | Digit | HungUp | PromptDone | TimerTick | ActionFailed | Heard | AgentEnded | ToolCalled
)


class _CallOver(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
        observer: CallObserver | None = None,
    ) -> None:
        self.leg = leg
        self.observer = observer  # told what a person watching the call would want to see
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
        self._playout = Playout(lead_ms=leg.lead_ms, silence_byte=g711.silence_byte(leg.encoding))
        self.bargein = BargeInCore()
        self._mark_seq = 0
        self._wake = asyncio.Event()
        self._timer_wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._control: asyncio.Queue[ControlMessage] = asyncio.Queue()
        self._vad: SpeechDetector | None = None
        self._listener: MenuListener | None = None  # while a menu listens for speech
        self._agent_task: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._position: tuple[str, int] | None = None

    # -- life cycle ----------------------------------------------------------------------------

    async def run(self) -> CallStats:
        """Run until the leg ends or the dialplan hangs up. Never raises for call-level failures."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._leg_loop())
                tg.create_task(self._control_loop())
        except* _CallOver as group:
            over = group.exceptions[0]
            self.stats.ended_reason = over.reason if isinstance(over, _CallOver) else str(over)
        except* BridgeError as group:
            self.stats.ended_reason = f"error: {group.exceptions[0]}"
            log.warning("call %s ended: %s", self.call_id, group.exceptions[0])
        finally:
            await self._stop_agent()
            if self._listener is not None:
                await self._listener.aclose()
            self._note(CallFinished(self.stats.ended_reason))  # before the leg closes: the page sees it
            if not self.stats.ended_reason.startswith(("stop", "closed", "refused", "error")):
                with contextlib.suppress(BridgeError, OSError, RuntimeError):
                    await self.leg.hang_up()
        return self.stats

    @property
    def call_id(self) -> str:
        return self.started.call_id if self.started else "?"

    def _now_ms(self) -> float:
        return self._loop.time() * 1000.0

    def _post(self, message: ControlMessage) -> None:
        self._control.put_nowait(message)

    def _note(self, note: CallNote) -> None:
        if self.observer is not None:
            self.observer.note(note)

    def _note_position(self) -> None:
        runner = self.runner
        if self.observer is None or runner is None or runner.finished:
            return
        position = runner.position
        if position != self._position:
            self._position = position
            step = runner.step
            self._note(StepEntered(position[0], position[1], step.kind if step is not None else "end"))

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
                silence = g711.silence_byte(self.encoding)
                self._playout = Playout(lead_ms=self.leg.lead_ms, silence_byte=silence)
                assert self._tg is not None
                self._tg.create_task(self._pacer())
                self._tg.create_task(self._timers())
                self._post(Started(event))
            elif isinstance(event, Dtmf):
                self._post(Digit(event.digit))
            elif isinstance(event, CallEnded):
                self._post(HungUp())
                raise _CallOver(event.reason)
        raise _CallOver("closed")

    async def _on_caller_audio(self, payload: bytes) -> None:
        pcm8k = g711.decode(payload, self.encoding)
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
        now = self._now_ms()
        cut = self.bargein.speech_started(
            now, audible=self._bot_audible(now), listening=self._listener is not None
        )
        if cut is not None:
            await self._execute_cut(cut, "local_vad")

    def _on_mark(self, name: str) -> None:
        done = self.bargein.mark_played(name, self._now_ms())
        self._check_drained()
        if done is not None:
            self._post(PromptDone(done))

    # -- audio out (CallAudio for the agent link) ------------------------------------------------

    def play(self, item_id: str, payload: bytes) -> None:
        self._playout.push(item_id, payload)
        self._wake.set()

    def finish_item(self, item_id: str) -> None:
        self._playout.finish_item(item_id)
        self._wake.set()

    async def server_speech_started(self) -> None:
        """The session's `input_audio_buffer.speech_started` (from the agent link)."""
        now = self._now_ms()
        cut = self.bargein.speech_started(now, audible=self._bot_audible(now), server=True)
        if cut is not None:
            await self._execute_cut(cut, "server_vad")

    def _bot_audible(self, now: float) -> bool:
        return self._playout.queued_ms > 0 or self._playout.busy_until_ms > now

    async def _execute_cut(self, cut: Cut, source: str) -> None:
        """Carry out the core's decision: playout and leg cleared, prompts done, the model told."""
        self._note(BargedIn(source))
        agent = self.agent if cut.agent else None
        if agent is not None:
            agent.cut()
        self._playout.clear()
        self._check_drained()
        for prompt_id in cut.prompts:
            self._post(PromptDone(prompt_id))
        await self.leg.clear()
        if agent is not None:
            await agent.tell_model(cut, source)

    async def _pacer(self) -> None:
        playout, leg, barge = self._playout, self.leg, self.bargein
        while True:
            # One mark per 20 ms frame: the far end's echoes then say, to the frame, what the
            # caller has heard (a mark per batch would leave barge-in ~100 ms blind).
            now = self._now_ms()
            for frame in playout.pop_due(now):
                self._mark_seq += 1
                name = str(self._mark_seq)
                barge.frame_sent(name, frame.item_id, frame.end_ms, now)  # before sending: not drained
                await leg.send_audio(frame.payload)
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

    def _check_drained(self) -> None:
        if not self.bargein.in_flight and self._playout.queued_ms == 0:
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
                self._post(TimerTick())
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
            actions = await self._handle(message, self._now_ms())
            self._note_position()
            for action in actions:
                await self._execute(action)
            self._timer_wake.set()

    async def _handle(self, message: ControlMessage, now: float) -> list[dp.Action]:
        """The runner's answer to one control message (nothing before the call has started)."""
        if isinstance(message, Started):
            return self._start(message.event, now)
        runner = self.runner
        if runner is None:
            return []
        match message:
            case Digit(digit):
                self._note(KeyPressed(digit))
                cut = self.bargein.cut_prompts(only_barge_in=True)
                if cut is not None:
                    await self._execute_cut(cut, "dtmf")
                return runner.on_dtmf(digit, now)
            case Heard(text):
                self._note(CallerSaid(text, "menu"))
                return runner.on_speech(text, now)
            case PromptDone(prompt_id):
                return runner.on_prompt_done(prompt_id, now)
            case TimerTick():
                return runner.on_timer(now)
            case ToolCalled(name, arguments):
                return runner.on_agent_tool(name, arguments, now)
            case AgentEnded(reason):
                return runner.on_agent_ended(reason, now)
            case ActionFailed(action, reason):
                return runner.on_action_failed(action, reason, now)
            case HungUp():
                return runner.on_hangup(now)
            case _:
                assert_never(message)

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
            cut = self.bargein.cut_prompts(only_barge_in=False)
            if cut is not None:
                await self._execute_cut(cut, "stop_prompts")
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
        self.play(item_id, g711.encode(pcm8k, self.encoding))
        self.finish_item(item_id)

    async def _say(self, action: dp.Say) -> None:
        voice = self._voice or prompt_voice()
        try:
            pcm8k = await self._loop.run_in_executor(None, voice.render, action.text, action.cache)
        except BridgeError as exc:
            self._post(ActionFailed(action, f"speech synthesis failed: {exc}"))
            return
        if not pcm8k:
            self._post(PromptDone(action.prompt_id))
            return
        item_id = self.bargein.prompt(action.prompt_id, len(pcm8k) // (2 * 8), action.barge_in)
        self._note(BotSaid(action.text, "prompt"))
        await self._speak(item_id, pcm8k)

    async def _play_file(self, action: dp.Play) -> None:
        path = action.path if action.path.is_absolute() else self.plan_dir / action.path
        try:
            pcm8k = await self._loop.run_in_executor(None, read_wav_8k, path)
        except (OSError, EOFError, wave.Error, BridgeError) as exc:
            log.warning("call %s: cannot play %s: %s", self.call_id, path, exc)
            self._post(ActionFailed(action, f"cannot play {path}: {exc}"))
            return
        item_id = self.bargein.prompt(action.prompt_id, len(pcm8k) // (2 * 8), action.barge_in)
        await self._speak(item_id, pcm8k)

    def _listen(self, action: dp.Listen) -> None:
        if self._listener is None:
            from bridge.dialplan.listener import MenuListener
            from bridge.speech.asr_pool import RemoteRecognizer  # decoding in the ASR worker pool

            self._listener = MenuListener(
                lambda text: self._post(Heard(text)), recognizer_factory=RemoteRecognizer, loop=self._loop
            )
        self._listener.listen(action.phrases, digits=action.digits)

    async def _start_agent(self, action: dp.StartAgent) -> None:
        await self._stop_agent()
        try:
            config = agent_config(action.agent, self.settings)
        except BridgeError as exc:
            self._post(ActionFailed(action, str(exc)))
            return
        if self.observer is not None:  # the watcher wants the caller's words too
            config = dataclasses.replace(config, transcription=WATCHED_TRANSCRIPTION_MODEL)
        link = AgentLink(config, self, on_tool=self._on_tool, call_id=self.call_id, on_note=self._note)
        self.agent = link
        self.bargein.agent_started(config.upstream_format, barge_in=config.barge_in)
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
            self.bargein.agent_stopped()

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
            self._post(AgentEnded(error or "the realtime session closed"))

    def _retire(self, link: AgentLink) -> None:
        self.bargein.agent_stopped()
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

    async def _on_tool(self, name: str, arguments: dict[str, object]) -> None:
        self._post(ToolCalled(name, arguments))

    async def _transfer(self, action: dp.Transfer) -> None:
        if action.announce:
            await self._say(dp.Say(action.announce, None, "transfer-announce", barge_in=False, cache=False))
        await self._drain()
        ok = await self.leg.transfer(action.target)
        if ok:
            raise _CallOver(f"transferred to {action.target}")
        self._post(ActionFailed(action, "this leg cannot transfer"))
