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
import audioop
import contextlib
import logging
import math
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, assert_never

from bridge.call.agent import AgentConfig, AgentLink, agent_config
from bridge.call.bargein import BargeInCore, Cut, Pause, Resume
from bridge.call.caller_audio import CallerFront
from bridge.call.prompts import PromptVoice, prompt_voice, read_wav_8k
from bridge.call.record import CallObserver, RecorderFactory
from bridge.call.watch import (
    BargedIn,
    BotSaid,
    CallerSaid,
    CallFinished,
    CallNote,
    CallWatcher,
    KeyPressed,
    StepEntered,
)
from bridge.dialplan import runner as dp
from bridge.dialplan.schema import AgentStep, Dialplan
from bridge.errors import BridgeError
from bridge.logsafe import OperatorValue
from bridge.media import g711
from bridge.media.echo import EchoCanceller
from bridge.media.playout import Frame, Playout
from bridge.media.vad import GATE_DBFS, EarlyOnset, SpeechDetector, SpeechStart, SpeechStop
from bridge.settings import Settings
from bridge.telephony.leg import AudioIn, CallEnded, CallStarted, Dtmf, Leg, MarkPlayed

if TYPE_CHECKING:
    from bridge.call.moderator import Flag, Moderator
    from bridge.dialplan.listener import MenuListener

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 15.0
# Caller audio goes upstream frame by frame from the detector's (candidate) onset until this long after
# it last heard the caller: covers the server VAD's end-of-turn silence (500 ms by default).
URGENT_AFTER_SPEECH_MS = 1000.0
_AUDIBLE_RMS = 32768.0 * 10.0 ** (GATE_DBFS / 20.0)  # the detector's own floor (bridge/media/vad.py)


@dataclass(slots=True)
class CallStats:
    """Counters a call keeps for metrics and benchmarks (no per-frame logging)."""

    barge_ins: int = 0
    pauses: int = 0  # onsets that paused the bot (backchannel rule) ...
    resumes: int = 0  # ... and those that were acknowledgements (the bot played on)
    truncates: list[tuple[str, int]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    ended_reason: str = ""
    # The call's timeline of resilience events (upstream lost / resumed, failover, rollover, drain):
    # (ms on the loop clock, kind, data); also written to the call's record as events.
    events: list[tuple[float, str, dict[str, object]]] = field(default_factory=list)
    moderation_cuts: int = 0


@dataclass(frozen=True, slots=True)
class EndedCall:
    """What stays of a call once it has ended (the ops console's recent calls, `ivr-bridge dialplan
    test`): plain values only. The app keeps the last few of these, never the `Call` itself, whose
    buffers (playout, echo canceller rings, agent link) must be freed when the call ends."""

    call_id: str
    leg: str
    caller: str
    called: str
    flow: str
    step: str
    state: str
    provider: str
    started_wall_s: float | None
    ended_wall_s: float | None
    ended_reason: str
    operator_error: str | None
    tool_calls: tuple[tuple[str, dict[str, object]], ...]


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


@dataclass(frozen=True, slots=True)
class ShutDown:
    """The process is draining and the call's time is up: a last line, then transfer or hang up."""

    line: str
    transfer_to: str | None = None


@dataclass(frozen=True, slots=True)
class OperatorAction:
    """An operator (the ops console) ends the call or transfers it to a target of the dialplan."""

    kind: str  # "hang_up" | "transfer"
    target: str = ""
    who: str = "operator"


ControlMessage = (
    Started
    | Digit
    | HungUp
    | PromptDone
    | TimerTick
    | ActionFailed
    | Heard
    | AgentEnded
    | ToolCalled
    | ShutDown
    | OperatorAction
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
        records: RecorderFactory | None = None,
        watcher: CallWatcher | None = None,
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
        self._playout = _playout_for(leg, g711.silence_byte(leg.encoding))
        self.bargein = BargeInCore()
        self._mark_seq = 0
        self._wake = asyncio.Event()
        self._timer_wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._control: asyncio.Queue[ControlMessage] = asyncio.Queue()
        self._front: CallerFront | None = None  # echo canceller + barge-in detector, from the start
        self._caller_heard_at = -1e12  # when the detector last heard the caller (possibly) talking
        self._clean_upstream = settings.echo_to_upstream  # the model gets the echo-cancelled audio
        self._unplayed: dict[str, Frame] = {}  # frames sent whose marks have not come back (by mark)
        self._held: list[tuple[bytes, bytes | None]] = []  # caller audio held from the model while paused
        self._listener: MenuListener | None = None  # while a menu listens for speech
        self._agent_task: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        # The call's record (bridge/call/record.py): created with the runner; every hook below is
        # `if self.observer is not None: self.observer.<what happened>(...)`, no I/O.
        self._records = records
        self.watcher = watcher  # told what a person watching the call live would want to see
        self._position: tuple[str, int] | None = None
        self.observer: CallObserver | None = None
        self._moderator: Moderator | None = None
        self._safe_line = ""
        self._moderation_seq = 0
        # What the ops console shows and `ivr-bridge dialplan test` checks (wall-clock seconds).
        self.started_wall_s: float | None = None
        self.ended_wall_s: float | None = None
        self.tool_calls: list[tuple[str, dict[str, object]]] = []
        self.operator_error: str | None = None

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
            self._record_end()
            self._note(CallFinished(self.stats.ended_reason))  # before the leg closes: the page sees it
            if not self.stats.ended_reason.startswith(("stop", "closed", "refused", "error")):
                with contextlib.suppress(BridgeError, OSError, RuntimeError):
                    await self.leg.hang_up()
            self.ended_wall_s = time.time()
        return self.stats

    @property
    def call_id(self) -> str:
        return self.started.call_id if self.started else "?"

    def summary(self) -> EndedCall:
        """The call's position and outcome as plain values (read on the event loop)."""
        started = self.started
        runner = self.runner
        flow, index, step_kind, state, provider = "-", 0, "-", "starting", "-"
        if runner is not None:
            flow, index = runner.position
            step = runner.step
            step_kind = getattr(step, "kind", "-") if step is not None else "-"
            state = runner.state.name.lower()
            if isinstance(step, AgentStep) and self.agent is not None:
                provider = step.provider or self.plan.defaults.provider
        return EndedCall(
            call_id=started.call_id if started else "?",
            leg=self.leg.kind,
            caller=started.caller if started else "",
            called=started.called if started else "",
            flow=flow,
            step=f"{flow}[{index}] {step_kind}",
            state=state,
            provider=provider,
            started_wall_s=self.started_wall_s,
            ended_wall_s=self.ended_wall_s,
            ended_reason=self.stats.ended_reason,
            operator_error=self.operator_error,
            tool_calls=tuple(self.tool_calls),
        )

    def _now_ms(self) -> float:
        return self._loop.time() * 1000.0

    def _post(self, message: ControlMessage) -> None:
        self._control.put_nowait(message)

    # -- operator actions (the ops console): handled in order with everything else ----------------

    def _note(self, note: CallNote) -> None:
        if self.watcher is not None:
            self.watcher.note(note)

    def _note_position(self) -> None:
        runner = self.runner
        if self.watcher is None or runner is None or runner.finished:
            return
        position = runner.position
        if position != self._position:
            self._position = position
            step = runner.step
            self._note(StepEntered(position[0], position[1], step.kind if step is not None else "end"))

    def request_hang_up(self, who: str = "operator") -> None:
        """End the call now (what the caller hears stops; the leg is hung up)."""
        self._post(OperatorAction("hang_up", who=who))

    def request_transfer(self, target: str, who: str = "operator") -> None:
        """Hand the call to `target` now (a target the dialplan names; the caller checks that)."""
        self._post(OperatorAction("transfer", target, who))

    # -- phone leg -----------------------------------------------------------------------------

    async def _leg_loop(self) -> None:
        async for event in self.leg.events():
            if isinstance(event, AudioIn):
                pcm8k = g711.decode(event.payload, self.encoding)  # once per frame, for all below
                if self.observer is not None:  # the recording's caller channel, on the stream's own clock
                    self.observer.caller_audio(pcm8k, event.timestamp_ms, self._now_ms())
                await self._on_caller_audio(event.payload, pcm8k)
            elif isinstance(event, MarkPlayed):
                self._on_mark(event.name)
            elif isinstance(event, CallStarted):
                self.started = event
                self.started_wall_s = time.time()
                self.encoding = self.leg.encoding
                silence = g711.silence_byte(self.encoding)
                self._playout = _playout_for(self.leg, silence)
                assert self._tg is not None
                self._tg.create_task(self._pacer())
                self._tg.create_task(self._timers())
                self._post(Started(event))
            elif isinstance(event, Dtmf):
                self._post(Digit(event.digit))
            elif isinstance(event, CallEnded):
                if self.observer is not None:
                    self.observer.event("hangup", self._now_ms(), by="caller", reason=event.reason)
                self._post(HungUp())
                raise _CallOver(event.reason)
        raise _CallOver("closed")

    async def _on_caller_audio(self, payload: bytes, pcm8k: bytes) -> None:
        front = self._front
        barge = self.bargein
        observer = self.observer
        heard = pcm8k
        now = self._now_ms()
        if front is not None:
            heard, changes = front.hear(pcm8k, now)
            for change in changes:
                if isinstance(change, SpeechStart):
                    await self._on_speech_onset()
                elif isinstance(change, EarlyOnset):
                    if isinstance(barge.early_onset(now, audible=self._bot_audible(now)), Pause):
                        await self._pause()
                elif isinstance(change, SpeechStop):
                    if observer is not None:  # when the caller's speech ended, on the call clock
                        observer.caller_stopped(now - (front.detector.position_ms - change.audio_ms))
                    if barge.paused:
                        await self._on_speech_end(now)
            if barge.paused:
                cut = barge.caller_speech(now, front.detector.voiced_ms)
                if isinstance(cut, Resume):  # an early onset the detector did not confirm
                    await self._resume()
                elif cut is not None:
                    await self._execute_cut(cut, "local_vad")
        if self._listener is not None:
            self._listener.feed(heard)
        agent = self.agent
        if agent is not None:
            up: tuple[bytes, bytes | None] = (pcm8k, payload)
            if self._clean_upstream and heard is not pcm8k:
                up = (heard, None)  # changed by the canceller: G.711 upstream re-encodes it
            if barge.paused:
                self._held.append(up)
            else:
                # Frame by frame while the caller may be talking and for a while after: the server's
                # VAD decides barge-ins and the end of the turn on these frames (two per append
                # otherwise: bench/sip_e2e, +20-30 ms on both). "May be talking": the detector hears
                # a (candidate) onset, or the frame holds anything it would score at all (its
                # candidate onset comes up to a window later).
                if front is not None and (front.detector.hearing or audioop.rms(heard, 2) > _AUDIBLE_RMS):
                    self._caller_heard_at = now
                await agent.send_caller_audio(
                    *up, urgent=now - self._caller_heard_at < URGENT_AFTER_SPEECH_MS
                )

    async def _on_speech_onset(self) -> None:
        now = self._now_ms()
        decision = self.bargein.speech_started(
            now, audible=self._bot_audible(now), listening=self._listener is not None
        )
        if isinstance(decision, Pause):
            await self._pause()
        elif decision is not None:
            await self._execute_cut(decision, "local_vad")

    async def _on_speech_end(self, now: float) -> None:
        if isinstance(self.bargein.speech_stopped(now), Resume):
            await self._resume()

    async def _pause(self) -> None:
        """Stop the bot now, keeping what the caller has not heard: the frames the leg holds go back
        to the front of the playout (the leg drops them), and caller audio is held from the model."""
        self.stats.pauses += 1
        unplayed = list(self._unplayed.values())
        self._unplayed.clear()
        self._playout.pause(unplayed)
        await self.leg.clear()

    async def _resume(self) -> None:
        """An acknowledgement: play on, and let the model hear silence for it (its VAD must not
        cut the bot either)."""
        self.stats.resumes += 1
        self._playout.resume()
        self._wake.set()
        held, self._held = self._held, []
        agent = self.agent
        if agent is not None:
            for pcm8k, _ in held:
                await agent.send_caller_audio(bytes(len(pcm8k)), None)

    async def _flush_held(self) -> None:
        """The barge-in was committed: the model gets everything the caller said."""
        held, self._held = self._held, []
        agent = self.agent
        if agent is not None:
            for pcm8k, payload in held:
                await agent.send_caller_audio(pcm8k, payload)

    def _on_mark(self, name: str) -> None:
        self._unplayed.pop(name, None)
        if self.observer is not None:
            self.observer.mark_played(name, self._now_ms())
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

    async def say_line(self, text: str) -> None:
        """A line of the bridge's own over the agent (the hold line while the model is away)."""
        await self._say(dp.Say(text, None, "bridge-line", barge_in=True, cache=True))

    def timeline(self, kind: str, data: dict[str, object]) -> None:
        now = self._now_ms()
        self.stats.events.append((now, kind, data))
        if self.observer is not None:  # upstream lost / resumed, failover, rollover, drain
            self.observer.event(kind, now, **data)

    def shut_down(self, line: str, transfer_to: str | None = None) -> None:
        """Drain: end the call soon (from any task): stop the agent, say `line`, transfer or hang up."""
        self._post(ShutDown(line, transfer_to))

    async def server_speech_started(self) -> None:
        """The session's `input_audio_buffer.speech_started` (from the agent link)."""
        now = self._now_ms()
        cut = self.bargein.speech_started(now, audible=self._bot_audible(now), server=True)
        if isinstance(cut, Cut):
            await self._execute_cut(cut, "server_vad")

    def _bot_audible(self, now: float) -> bool:
        return self._playout.queued_ms > 0 or self._playout.busy_until_ms > now

    async def _execute_cut(self, cut: Cut, source: str) -> None:
        """Carry out the core's decision: playout and leg cleared, prompts done, the model told."""
        self._note(BargedIn(source))
        agent = self.agent if cut.agent else None
        if agent is not None:
            agent.cut()
            if self.observer is not None:
                received = self.bargein.received_ms(cut.item_id) if cut.item_id else 0
                self.observer.barge_in(source, cut.item_id, cut.audio_end_ms, received, self._now_ms())
        self._playout.clear()
        self._unplayed.clear()
        self._check_drained()
        for prompt_id in cut.prompts:
            self._post(PromptDone(prompt_id))
        await self.leg.clear()
        if agent is not None:
            await agent.tell_model(cut, source)
        if self._held:
            await self._flush_held()

    async def _pacer(self) -> None:
        playout, leg, barge, unplayed = self._playout, self.leg, self.bargein, self._unplayed
        while True:
            # One mark per 20 ms frame: the far end's echoes then say, to the frame, what the
            # caller has heard (a mark per batch would leave barge-in ~100 ms blind).
            now = self._now_ms()
            observer = self.observer
            front = self._front
            for frame in playout.pop_due(now):
                self._mark_seq += 1
                name = str(self._mark_seq)
                barge.frame_sent(name, frame.item_id, frame.end_ms, now)  # before sending: not drained
                unplayed[name] = frame
                if observer is not None or front is not None:  # decoded once for both
                    pcm8k = g711.decode(frame.payload, self.encoding)
                    if observer is not None:  # the bot channel at send time: it plays from then on
                        observer.bot_frame(frame.item_id, pcm8k, name, now)
                    if front is not None:  # the echo canceller's reference, when it starts playing
                        front.played(pcm8k, frame.start_ms)
                await leg.send_audio(frame.payload)
                await leg.send_mark(name)
            due = playout.next_due_ms()
            self._wake.clear()
            if due is None:
                await self._wake.wait()
            elif due >= self._now_ms():
                # Sleep past the deadline (`pop_due` hands the frame out at any time after it), or
                # until new audio or a barge-in wakes us.
                timer = self._loop.call_at(_timer_s(due), self._wake.set)
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
                timer = self._loop.call_at(_timer_s(due), self._timer_wake.set)
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
            now = self._now_ms()
            self._record_input(message, now)
            actions = await self._handle(message, now)
            self._record_outcome(message, actions, now)
            self._note_position()
            for action in actions:
                await self._execute(action)
            self._timer_wake.set()

    async def _handle(self, message: ControlMessage, now: float) -> list[dp.Action]:
        """The runner's answer to one control message (nothing before the call has started)."""
        if isinstance(message, Started):
            return self._start(message.event, now)
        if isinstance(message, ShutDown):
            await self._shut_down(message)
            return []
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
            case ShutDown():  # handled above
                return []
            case OperatorAction():
                return await self._operator(message)
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
        self._record_start(started, now)
        settings = self.settings
        detector = SpeechDetector(
            threshold=settings.barge_in_threshold,
            min_speech_ms=settings.barge_in_min_speech_ms,
            min_silence_ms=300,
        )
        # The canceller's state is made when the bot first plays (a call that is never answered, or
        # only listens, does not hold its ~0.8 MB).
        self._front = CallerFront(detector, echo_factory=EchoCanceller if settings.echo_cancel else None)
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
            if self.observer is not None:
                self.observer.event("hangup", self._now_ms(), by="bridge", reason=action.reason)
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
        if self.observer is not None:
            self.observer.prompt(action.prompt_id, action.text, len(pcm8k) // 16, self._now_ms())
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
        if self.observer is not None:
            self.observer.prompt(action.prompt_id, None, len(pcm8k) // 16, self._now_ms(), file=path.name)
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
        link = AgentLink(
            config,
            self,
            on_tool=self._on_tool,
            call_id=self.call_id,
            timeline=self.timeline,
            observer=self.observer,
            on_note=self._note if self.watcher is not None else None,
        )
        self._start_moderation(config)
        if self.observer is not None:
            self.observer.agent_started(
                self._now_ms(), provider=action.agent.provider, format=config.upstream_format
            )
        self.agent = link
        self.bargein.agent_started(
            config.upstream_format,
            barge_in=config.barge_in,
            backchannel_max_ms=config.backchannel_max_ms if config.barge_in else 0,
        )
        front = self._front
        if front is not None:
            front.detector = SpeechDetector(
                threshold=config.barge_in_threshold,
                min_speech_ms=config.barge_in_min_speech_ms,
                min_silence_ms=300,
            )
            front.use_echo = front.can_cancel and config.echo_cancel
        self._clean_upstream = config.send_cleaned_upstream
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
            if self.observer is not None:
                self.observer.upstream_error(None, error, self._now_ms())
        finally:
            await link.close()
        if self.agent is link:  # ended by the upstream, not by the dialplan
            self.agent = None
            self._retire(link)
            self._post(AgentEnded(error or "the realtime session closed"))

    async def _shut_down(self, message: ShutDown) -> None:
        self.timeline("drain_shutdown", {"transfer_to": OperatorValue(message.transfer_to or "")})
        await self._stop_agent()
        if self._listener is not None:
            self._listener.stop()
        cut = self.bargein.cut_prompts(only_barge_in=False)
        if cut is not None:
            await self._execute_cut(cut, "drain")
        if message.line:
            await self._say(dp.Say(message.line, None, "drain-line", barge_in=False, cache=True))
        await self._drain()
        if message.transfer_to:
            ok = await self.leg.transfer(message.transfer_to)
            if self.observer is not None:
                target = OperatorValue(message.transfer_to)  # BRIDGE_DRAIN_TRANSFER_TO: kept unmasked
                self.observer.event("transfer", self._now_ms(), target=target, ok=ok, by="drain")
            if ok:
                raise _CallOver(f"transferred to {message.transfer_to} (drain)")
        raise _CallOver("hangup: drain")

    def _retire(self, link: AgentLink) -> None:
        if self.observer is not None:
            self.observer.agent_stopped(self._now_ms(), "stopped")
        if self.bargein.paused:  # a pause left undecided: the bot's audio plays on
            self._playout.resume()
            self._wake.set()
        self._held.clear()
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
        self.tool_calls.append((name, dict(arguments)))
        self._post(ToolCalled(name, arguments))

    async def _operator(self, message: OperatorAction) -> list[dp.Action]:
        """Carry out an operator's hang-up or transfer at once (prompts and agent stopped first)."""
        log.info("call %s: %s by %s %s", self.call_id, message.kind, message.who, message.target)
        await self._stop_agent()
        cut = self.bargein.cut_prompts(only_barge_in=False)
        if cut is not None:
            await self._execute_cut(cut, "operator")
        if message.kind == "hang_up":
            raise _CallOver(f"hangup: operator ({message.who})")
        if await self.leg.transfer(message.target):
            raise _CallOver(f"transferred to {message.target} (operator {message.who})")
        self.operator_error = f"this leg cannot transfer to {message.target}"
        return []

    async def _transfer(self, action: dp.Transfer) -> None:
        if action.announce:
            await self._say(dp.Say(action.announce, None, "transfer-announce", barge_in=False, cache=False))
        await self._drain()
        ok = await self.leg.transfer(action.target)
        if self.observer is not None:
            # the target is the operator's (dialplan), not caller data: the record keeps it unmasked
            self.observer.event("transfer", self._now_ms(), target=OperatorValue(action.target), ok=ok)
        if ok:
            raise _CallOver(f"transferred to {action.target}")
        self._post(ActionFailed(action, "this leg cannot transfer"))

    # -- the call's record and moderation (bridge/call/record.py, bridge/call/moderator.py) --------

    def _record_start(self, started: CallStarted, now: float) -> None:
        records, runner = self._records, self.runner
        recorder = None
        if records is not None and runner is not None:
            try:
                recorder = records(
                    leg=self.leg.kind,
                    call_id=started.call_id,
                    from_number=started.caller or None,
                    to_number=started.called or None,
                    flow=runner.flow,
                    dialplan_version=self.plan.version,
                    record_audio=self.plan.defaults.record.enabled,
                )
            except (BridgeError, OSError, ValueError) as exc:  # no record, but the call goes on
                log.error("call %s: no record kept: %s", started.call_id, exc)
        self.observer = CallObserver(recorder, now)
        self.observer.answered(now)

    def _record_input(self, message: ControlMessage, now: float) -> None:
        observer, runner = self.observer, self.runner
        if observer is None or runner is None:
            return
        if isinstance(message, Digit):
            observer.dtmf(message.digit, now, sensitive=runner.collecting_sensitive)
        elif isinstance(message, Heard):
            observer.heard(message.text, now, sensitive=runner.collecting_sensitive)

    def _record_outcome(self, message: ControlMessage, actions: list[dp.Action], now: float) -> None:
        observer, runner = self.observer, self.runner
        if observer is None or runner is None:
            return
        for kind, data in runner.take_notes():
            observer.event(kind, now, **data)
        if isinstance(message, ToolCalled):
            quiet = (dp.StopAgent, dp.StopListening, dp.StopPrompts)
            result = [_describe(action) for action in actions if not isinstance(action, quiet)] or ["ignored"]
            observer.event("tool_call", now, name=message.name, args=message.arguments, result=result)

    def _record_end(self) -> None:
        if self._moderator is not None:
            moderator, self._moderator = self._moderator, None
            self._loop.create_task(moderator.aclose())
        if self.observer is not None:
            self.observer.end(self.stats.ended_reason or "closed", self._now_ms())

    def _start_moderation(self, config: AgentConfig) -> None:
        moderation = config.moderation
        if self._moderator is not None:
            old, self._moderator = self._moderator, None
            self._loop.create_task(old.aclose())
        if self.observer is not None:
            self.observer.moderator = None
        if moderation is None or self.observer is None:
            return
        from bridge.call.moderation import Blocklist
        from bridge.call.moderator import ModerationEndpoint, Moderator

        endpoint = None
        if moderation.endpoint:
            if self.settings.openai_api_key:
                endpoint = ModerationEndpoint(self.settings.moderation_url, self.settings.openai_api_key)
            else:
                log.warning("call %s: moderation endpoint wanted; OPENAI_API_KEY is not set", self.call_id)
        self._moderator = Moderator(
            Blocklist(moderation.blocklist), self._moderation_cut, endpoint=endpoint, call_id=self.call_id
        )
        self._safe_line = moderation.safe_line
        self.observer.moderator = self._moderator

    async def _moderation_cut(self, flag: Flag) -> None:
        """The bot's words were flagged: cut the reply like a barge-in, then say the safe line."""
        now = self._now_ms()
        cut = self.bargein.moderation_cut(now)
        heard_ms = cut.audio_end_ms if cut is not None else None
        if self.observer is not None:
            self.observer.event(
                "moderation",
                now,
                source=flag.source,
                rule=flag.rule,
                item_id=flag.sentence.item_id,
                sentence=flag.sentence.text,
                sentence_start_ms=flag.sentence.start_ms,
                heard_ms=heard_ms,
                cut_before_heard=heard_ms is not None and heard_ms <= flag.sentence.start_ms,
            )
        if cut is not None:
            try:
                await self._execute_cut(cut, "moderation")
            except (BridgeError, OSError) as exc:
                log.warning("call %s: moderation cut failed: %s", self.call_id, exc)
                return
        self.stats.moderation_cuts += 1
        self._moderation_seq += 1
        say = dp.Say(self._safe_line, None, f"moderation-{self._moderation_seq}", barge_in=True, cache=True)
        await self._say(say)


def _timer_s(due_ms: float) -> float:
    """The loop time (s) to wake at for a deadline `due_ms` on the loop clock: the next whole ms after
    it. uvloop's clock and timers step in whole ms: a timer set at a fractional ms fires before it
    and, re-armed, fires again every loop iteration until the clock's ms passes it (66 wake-ups per
    20 ms deadline measured here); and waking exactly on an integer deadline hands nothing out
    (`Playout.pop_due` is strict). One wake-up per deadline, at most 1 ms after it."""
    return (math.floor(due_ms) + 1) / 1000.0


def _describe(action: dp.Action) -> str:
    """An action as the record's `tool_call.result` names it."""
    if isinstance(action, dp.Transfer):
        return OperatorValue(f"transfer {action.target}")  # the dialplan's target: kept unmasked
    if isinstance(action, dp.HangUp):
        return f"hang_up ({action.reason})"
    if isinstance(action, dp.StartAgent):
        return "agent"
    return type(action).__name__


def _playout_for(leg: Leg, silence_byte: int) -> Playout:
    """The call's playout for `leg`: `lead_ms` ahead, refilled every `refill_ms` when the leg says
    its queue is flushable (SIP: one pacer wake-up per 100 ms instead of per 20 ms frame)."""
    return Playout(lead_ms=leg.lead_ms, refill_ms=getattr(leg, "refill_ms", 0), silence_byte=silence_byte)
