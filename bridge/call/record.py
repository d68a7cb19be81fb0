"""What the call tells its record: the one object the call and its agent link notify (`CallObserver`).

The call (`bridge.call.call.Call`) and the agent link (`bridge.call.agent.AgentLink`) call a few
methods of `CallObserver` at the points where something worth keeping happens; the observer turns
them into the rows of a `Recorder` (in production `bridge.records.CallRecorder`, which the app hands
the call as `Records.start_call`), keeps the bot's transcript per item (cut at what was heard when
barged in, `bridge.call.moderation.heard_text`), measures each agent turn's latency by stage, feeds
the two-channel recording, and passes the bot's sentences to the moderator. Every method is
non-blocking and does no I/O (the recorder queues rows; the moderator's endpoint check runs in its
own task), so a slow or dead records database never holds a call up.

The call clock: `t_ms` = ms since the call's `CallStarted` (`t0_ms`, on the call's own clock).

A turn (`TurnStages`): the caller stopped speaking (the bridge's VAD: the end of speech, not when
the VAD noticed it) -> the upstream's `input_audio_buffer.speech_stopped` -> the first audio delta
of the answer -> the first frame of that answer played at the caller (its mark came back).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from bridge.call.moderation import BotLines, Sentence, heard_text

log = logging.getLogger(__name__)

Speaker = Literal["caller", "bot"]
SENSITIVE_TEXT = "[sensitive]"


@dataclass(frozen=True, slots=True)
class TurnStages:
    """One agent turn's milestones, in ms on the call clock (None when a stage did not happen):
    the caller stopped speaking (the bridge's VAD), the upstream `speech_stopped`, the first
    audio delta of the answer, the first answer audio played at the caller (a mark / the pacer)."""

    caller_stopped_ms: int | None = None
    upstream_stopped_ms: int | None = None
    first_delta_ms: int | None = None
    first_played_ms: int | None = None

    def latencies_ms(self) -> dict[str, int | None]:
        def gap(a: int | None, b: int | None) -> int | None:
            return None if a is None or b is None else b - a

        return {
            "vad_to_upstream_stop": gap(self.caller_stopped_ms, self.upstream_stopped_ms),
            "upstream_stop_to_first_delta": gap(self.upstream_stopped_ms, self.first_delta_ms),
            "first_delta_to_played": gap(self.first_delta_ms, self.first_played_ms),
            "total": gap(self.caller_stopped_ms, self.first_played_ms),
        }


class RecordingSink(Protocol):
    def caller(self, pcm16_8k: bytes, t_ms: int | None = None) -> None: ...

    def bot(self, pcm16_8k: bytes, t_ms: int | None = None) -> None: ...


class Recorder(Protocol):
    """One call's record (what `bridge.records.CallRecorder` provides; every method returns at once)."""

    @property
    def recording(self) -> RecordingSink | None: ...

    def answered(self, t_ms: int) -> None: ...

    def event(self, kind: str, t_ms: int, **data: Any) -> None: ...

    def dtmf(self, t_ms: int, digits: str, *, sensitive: bool = False) -> None: ...

    def transcript(self, speaker: Speaker, t_ms: int, text: str, heard_ms: int | None = None) -> None: ...

    def turn(self, stages: TurnStages, t_ms: int | None = None) -> None: ...

    def end(self, reason: str, t_ms: int) -> None: ...


class RecorderFactory(Protocol):
    """`Records.start_call` (keyword arguments only)."""

    def __call__(
        self,
        *,
        leg: Any,
        call_id: str,
        from_number: str | None,
        to_number: str | None,
        flow: str | None = None,
        dialplan_version: int | None = None,
        record_audio: bool = True,
    ) -> Recorder: ...


Flagged = Callable[[Sentence], Awaitable[None]]  # the moderator's verdict on one sentence


class SentenceCheck(Protocol):
    """The moderator as the observer sees it (bridge.call.moderator.Moderator)."""

    async def check(self, sentences: list[Sentence]) -> None: ...


@dataclass(slots=True)
class _Turn:
    caller_stopped: int | None = None
    upstream_stopped: int | None = None
    first_delta: int | None = None
    item_id: str | None = None
    first_mark: str | None = None

    def stages(self, first_played: int | None) -> TurnStages:
        return TurnStages(self.caller_stopped, self.upstream_stopped, self.first_delta, first_played)


@dataclass(slots=True)
class _BotItem:
    first_ms: int  # call clock: when its first frame went to the caller (or its first words came)
    sent: bool = False
    cut_heard_ms: int | None = None
    cut_received_ms: int = 0
    text_done: bool = False
    recorded: bool = False


@dataclass
class CallObserver:
    """The call's notifications -> its record (and the moderator). `recorder` None: nothing is kept
    (the moderator still hears the bot's sentences)."""

    recorder: Recorder | None
    t0_ms: float
    moderator: SentenceCheck | None = None
    lines: BotLines = field(default_factory=BotLines)
    _turn: _Turn | None = None
    _items: dict[str, _BotItem] = field(default_factory=dict)
    _agent: bool = False
    _ended: bool = False
    _caller_offset_ms: float | None = None

    @property
    def recording(self) -> RecordingSink | None:
        return self.recorder.recording if self.recorder is not None else None

    def t(self, now_ms: float) -> int:
        return max(0, int(now_ms - self.t0_ms))

    def event(self, kind: str, now_ms: float, **data: Any) -> None:
        if self.recorder is not None:
            self.recorder.event(kind, self.t(now_ms), **data)

    # -- the call ------------------------------------------------------------------------------

    def answered(self, now_ms: float) -> None:
        if self.recorder is not None:
            self.recorder.answered(self.t(now_ms))

    def caller_audio(self, pcm8k: bytes, timestamp_ms: int, now_ms: float) -> None:
        """Every inbound frame (PCM16 8 kHz, `timestamp_ms` its position in the leg's stream; per frame:
        keep it cheap). Placed on the call clock by the stream's own timeline, anchored at the
        earliest arrival seen (arrival - position, never later): a stall of the event loop delays
        frames, it does not shift the caller's words in the recording."""
        recording = self.recording
        if recording is None:
            return
        offset = now_ms - self.t0_ms - timestamp_ms
        if self._caller_offset_ms is None or offset < self._caller_offset_ms:
            self._caller_offset_ms = offset
        recording.caller(pcm8k, int(self._caller_offset_ms + timestamp_ms))

    def bot_frame(self, item_id: str, pcm8k: bytes, mark: str, now_ms: float) -> None:
        """A 20 ms frame (PCM16 8 kHz) went to the caller (the pacer's send time: it plays from then on)."""
        recording = self.recording
        if recording is not None:
            recording.bot(pcm8k, int(now_ms - self.t0_ms))
        item = self._items.get(item_id)
        if item is not None and not item.sent:
            item.sent = True
            item.first_ms = self.t(now_ms)
        turn = self._turn
        if turn is not None and turn.first_mark is None and turn.item_id == item_id:
            turn.first_mark = mark

    def mark_played(self, mark: str, now_ms: float) -> None:
        turn = self._turn
        if turn is not None and turn.first_mark == mark:
            self._close_turn(self.t(now_ms))

    def caller_stopped(self, now_ms: float) -> None:
        """The bridge's VAD: the caller stopped speaking at `now_ms` (the end of speech)."""
        if not self._agent:
            return
        turn = self._turn
        if turn is None or turn.first_delta is not None:  # the previous answer is on its way: a new turn
            self._close_turn(None)
            self._turn = turn = _Turn()
        turn.caller_stopped = self.t(now_ms)  # the latest stop before the answer (either order with upstream)

    def dtmf(self, digit: str, now_ms: float, *, sensitive: bool) -> None:
        if self.recorder is not None:
            self.recorder.dtmf(self.t(now_ms), digit, sensitive=sensitive)

    def heard(self, text: str, now_ms: float, *, sensitive: bool) -> None:
        """What the menu recognizer heard the caller say."""
        if self.recorder is not None and text.strip():
            self.recorder.transcript("caller", self.t(now_ms), SENSITIVE_TEXT if sensitive else text)

    def prompt(self, prompt_id: str, text: str | None, duration_ms: int, now_ms: float, **data: Any) -> None:
        self.event("prompt_played", now_ms, prompt_id=prompt_id, text=text, duration_ms=duration_ms, **data)

    def agent_started(self, now_ms: float, **data: Any) -> None:
        self._agent = True
        self.event("agent_started", now_ms, **data)

    def agent_stopped(self, now_ms: float, reason: str) -> None:
        if not self._agent:
            return
        self._agent = False
        self.flush_lines(now_ms)
        self._close_turn(None)
        self.event("agent_stopped", now_ms, reason=reason)

    def barge_in(
        self, source: str, item_id: str | None, heard_ms: int, received_ms: int, now_ms: float
    ) -> None:
        """An agent reply was cut (barge-in or moderation): `heard_ms` of its `received_ms` were heard."""
        if item_id is not None:
            item = self._items.get(item_id)
            if item is None:
                item = self._items[item_id] = _BotItem(self.t(now_ms))
            item.cut_heard_ms = heard_ms
            item.cut_received_ms = received_ms
            if item.text_done:
                self._record_line(item_id, received_ms)
        turn = self._turn
        if turn is not None and turn.first_delta is not None:
            self._close_turn(None)
        self.event(
            "barge_in",
            now_ms,
            source=source,
            item_id=item_id,
            heard_ms=heard_ms,
            truncated_ms=max(0, received_ms - heard_ms),
        )

    def end(self, reason: str, now_ms: float) -> None:
        if self._ended:
            return
        self._ended = True
        self.flush_lines(now_ms)
        self._close_turn(None)
        if self.recorder is not None:
            self.recorder.end(reason, self.t(now_ms))

    # -- the agent link (bridge.call.agent.AgentObserver) ----------------------------------------

    def upstream_speech_stopped(self, now_ms: float) -> None:
        turn = self._turn
        if turn is None or turn.first_delta is not None:
            self._close_turn(None)
            self._turn = turn = _Turn()
        turn.upstream_stopped = self.t(now_ms)

    def caller_said(self, text: str, now_ms: float) -> None:
        """The session's transcription of the caller's turn."""
        if self.recorder is not None and text.strip():
            self.recorder.transcript("caller", self.t(now_ms), text.strip())

    def bot_audio(self, item_id: str, now_ms: float) -> None:
        """A delta of the item's audio arrived (and will be played)."""
        if item_id not in self._items:
            # A new reply: the earlier lines can no longer be cut, they are final now.
            for other, item in list(self._items.items()):
                if item.text_done and not item.recorded:
                    self._record_line(other, None)
            self._items[item_id] = _BotItem(self.t(now_ms))
        turn = self._turn
        if turn is not None and turn.first_delta is None:
            turn.first_delta = self.t(now_ms)
            turn.item_id = item_id

    async def bot_text(self, item_id: str, delta: str, received_ms: int, now_ms: float) -> None:
        """`response.output_audio_transcript.delta`: `received_ms` of the item's audio are in."""
        if item_id not in self._items:
            self._items[item_id] = _BotItem(self.t(now_ms))
        sentences = self.lines.add(item_id, delta, received_ms)
        if sentences and self.moderator is not None:
            await self.moderator.check(sentences)

    async def bot_text_done(
        self, item_id: str, transcript: str | None, received_ms: int, now_ms: float
    ) -> None:
        if item_id not in self._items:
            self._items[item_id] = _BotItem(self.t(now_ms))
        sentences = self.lines.finish(item_id, transcript, received_ms)
        if sentences and self.moderator is not None:
            await self.moderator.check(sentences)
        item = self._items[item_id]
        item.text_done = True
        if item.cut_heard_ms is not None:  # already cut: final now; else it may still be cut while it plays
            self._record_line(item_id, received_ms)

    def upstream_error(self, code: str | None, message: str, now_ms: float) -> None:
        self.event("upstream_error", now_ms, code=code, message=message[:500])

    # -- internals -----------------------------------------------------------------------------

    def flush_lines(self, now_ms: float) -> None:
        """Record the bot lines whose transcript never finished (cancelled, session gone)."""
        for item_id in self.lines.items():
            self._record_line(item_id, None)

    def _record_line(self, item_id: str, received_ms: int | None) -> None:
        item = self._items.get(item_id)
        if item is None or item.recorded:
            return
        item.recorded = True
        pieces = self.lines.pieces(item_id)
        self.lines.forget(item_id)
        if self.recorder is None or not pieces:
            return
        if item.cut_heard_ms is not None:
            received = item.cut_received_ms or (received_ms or 0)
            text = heard_text(pieces, received, item.cut_heard_ms)
            self.recorder.transcript("bot", item.first_ms, text, heard_ms=item.cut_heard_ms)
        else:
            text = "".join(t for _, t in pieces).strip()
            if text:
                self.recorder.transcript("bot", item.first_ms, text)

    def _close_turn(self, first_played: int | None) -> None:
        turn, self._turn = self._turn, None
        if turn is None or self.recorder is None:
            return
        if turn.first_delta is None and turn.caller_stopped is None:
            return  # nothing measured
        if turn.first_delta is None and first_played is None and turn.upstream_stopped is None:
            return  # the caller's VAD saw speech the upstream never answered (noise, a backchannel)
        stages = turn.stages(first_played)
        self.recorder.turn(stages, stages.caller_stopped_ms or stages.upstream_stopped_ms)
