"""Barge-in, decided in one place: what the caller has heard, and what cutting the bot in means.

No I/O, no clock, no logging: the call and its agent link feed facts with their times (`now_ms`,
any monotonic clock in ms) and execute the `Cut`s this returns. One `BargeInCore` per call.

Facts from the call's playout (the pacer and the leg):
- `frame_sent(mark, item_id, end_ms, now_ms)`: a 20 ms frame went to the leg, followed by `mark`;
  `end_ms` is how much of its item the caller has heard once it has played;
- `mark_played(mark, now_ms)`: the leg echoed `mark` (Twilio once the audio before it has played,
  the SIP leg once it has been transmitted); returns the prompt it finished, if any;
- `prompt(prompt_id, total_ms, barge_in)`: a local prompt is queued (returns its item id).

Facts from the agent's realtime session (one at a time; `agent_started` forgets the last one):
- `response_started/ended(response_id)`; `audio_received(item_id, n_bytes)` (False: the item was
  cut by a barge-in, drop the delta).

Speech: `speech_started(now_ms, audible=..., listening=..., server=...)` for the bridge's own VAD
onset or the server's `input_audio_buffer.speech_started`; `cut_prompts(...)` for DTMF and the
dialplan's `StopPrompts`. A `Cut` always means: empty the playout and tell the leg to drop what
it holds (Twilio `clear`, RTP queue flush), report its prompts as done, and, for an agent
barge-in, cancel the response and truncate the item as it says.

What the caller has heard now (`heard`): the last echoed mark, plus the part of the frame playing
since then, at most one frame and never past that frame's end, and only when a later frame of the
same item was really sent. A model that paused adds nothing: the frame after a pause starts
playing when it is sent, not when the previous mark came back.

The truncate's `audio_end_ms` is what was heard of the item that last went to the playout, clamped
to the audio received for it (truncating past the received audio is an error on the real API; a
padded last frame can count a little more); no truncate when nothing was heard. `response.cancel`
goes once per response, only while it runs.

Backchannels (an agent with `backchannel_max_ms > 0`): the bridge's own onset does not cut at
once but returns a `Pause` (stop playing now, keep what the caller has not heard, hold the caller's
audio back from the model). Then, fed `caller_speech(now_ms, voiced_ms)` on every caller frame and
`speech_stopped(now_ms)` at the detector's offset, the core decides: speech voiced for more than
`backchannel_max_ms` (or a pause that lasts `backchannel_max_ms + PAUSE_LIMIT_MS`), or the server's
`speech_started`, commits the barge-in (the `Cut`, truncated at what was heard when the pause
began); speech that ended sooner was an acknowledgement (`Resume`: play on, the held caller audio
goes to the model as silence). The bot stops as fast as with an immediate cut; only the commit
waits. A new onset within `CONTINUE_WINDOW_MS` of a resume cuts at once (the caller goes on).

Early onsets (`early_onset(now_ms, audible=...)`): the caller's audio rose well above the noise floor
and the residual echo the canceller expects (bridge/media/vad.py `EnergyOnset`), tens of ms before
Silero can score an unvoiced onset ("Stop", "Sorry") as speech. It pauses the bot at once, as a
tentative `Pause`: Silero's onset (or the detector already in speech) within `EARLY_CONFIRM_MS`
confirms it (then the backchannel rule above decides; with the rule off, the confirmation cuts);
otherwise `caller_speech` returns `Resume` (a door, a cough: the bot plays on from where it paused).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.media import g711
from bridge.media.g711 import BYTES_PER_MS, UpstreamFormat

PROMPT_PREFIX = "prompt:"
PAUSE_LIMIT_MS = 1000  # a pause still undecided this long after backchannel_max_ms commits the barge-in
# An onset this soon after a resumed acknowledgement is the caller going on talking ("Hello ... I
# need"): it cuts at once, so words with gaps between them are never taken for backchannels.
CONTINUE_WINDOW_MS = 1500
# A pause from an energy onset that Silero does not confirm within this resumes. An unvoiced onset
# ("s", "st", "f") is scored as speech once voicing starts, 120-170 ms after it.
EARLY_CONFIRM_MS = 200


@dataclass(slots=True)
class _ItemAudio:
    """An assistant item of the current agent session."""

    received_bytes: int = 0
    heard_ms: int = 0
    cut: bool = False  # barge-in cut it: late deltas are dropped, late marks ignored


@dataclass(frozen=True, slots=True)
class Cut:
    """What to do now: clear the playout and the leg, then the rest."""

    prompts: tuple[str, ...] = ()  # prompt ids cut: report each as done
    agent: bool = False  # an agent barge-in (count it; tell the model below)
    cancel_response_id: str | None = None  # send response.cancel (the response is still running)
    truncate_item_id: str | None = None  # send conversation.item.truncate for this item ...
    audio_end_ms: int = 0  # ... up to here (0 when nothing was heard: no truncate)
    # The agent item cut, even when nothing of it was heard (for the call's record; not compared).
    item_id: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Pause:
    """Stop playing now, keeping the audio the caller has not heard (re-queue what the leg holds),
    and hold the caller's audio back from the model until the core decides."""


@dataclass(frozen=True, slots=True)
class Resume:
    """The caller only acknowledged: play on from where the pause began; send the held caller
    audio to the model as silence."""


class BargeInCore:
    """Marks in flight, prompts, and the agent session's audio of one call, as facts came in."""

    def __init__(self, frame_ms: int = g711.FRAME_MS) -> None:
        self.frame_ms = frame_ms
        # Frames sent, not yet played, in sending order: mark -> (item id, end ms, sent at).
        self._in_flight: dict[str, tuple[str, int, float]] = {}
        self._last_played: tuple[str, int, float] | None = None  # item, end ms, when its mark came back
        self._prompts: dict[str, tuple[str, int, bool]] = {}  # item id -> (prompt id, total ms, barge-in)
        self._prompt_seq = 0
        # The agent session (none: barge-in is off and nothing is truncated).
        self._agent_barge_in = False
        self._bytes_per_ms = BYTES_PER_MS["pcm24k"]
        self._items: dict[str, _ItemAudio] = {}
        self._playing_item: str | None = None  # the agent item whose audio went to the playout last
        self.response_id: str | None = None  # the response in progress, if any
        self._cancel_sent = False  # response.cancel already decided for `response_id`
        self.backchannel_max_ms = 0  # 0: every onset cuts at once
        self._paused_at: float | None = None  # a Pause is waiting for its decision since then
        self._resumed_at: float | None = None  # the last acknowledgement ended then
        self._early = False  # the pause came from an energy onset Silero has not confirmed yet

    # -- playout facts -------------------------------------------------------------------------

    def frame_sent(self, mark: str, item_id: str, end_ms: int, now_ms: float) -> None:
        """A frame of `item_id` went to the leg, followed by `mark` (per frame: keep it cheap)."""
        self._in_flight[mark] = (item_id, end_ms, now_ms)

    def mark_played(self, mark: str, now_ms: float) -> str | None:
        """The leg echoed `mark`. Returns the id of the prompt this frame finished, if any.
        Marks of frames dropped by a cut (echoed by the far end's clear) are ignored."""
        entry = self._in_flight.pop(mark, None)
        if entry is None:
            return None
        item_id, end_ms, _ = entry
        self._last_played = (item_id, end_ms, now_ms)
        prompt = self._prompts.get(item_id)
        if prompt is not None:
            if end_ms >= prompt[1]:
                del self._prompts[item_id]
                return prompt[0]
            return None
        item = self._items.get(item_id)
        if item is not None and not item.cut and end_ms > item.heard_ms:
            item.heard_ms = end_ms
        return None

    @property
    def in_flight(self) -> bool:
        """Frames were sent whose marks have not come back yet."""
        return bool(self._in_flight)

    def prompt(self, prompt_id: str, total_ms: int, barge_in: bool) -> str:
        """A prompt of `total_ms` is about to be queued: the item id its frames carry."""
        self._prompt_seq += 1
        item_id = f"{PROMPT_PREFIX}{self._prompt_seq}"
        self._prompts[item_id] = (prompt_id, total_ms, barge_in)
        return item_id

    def heard(self, now_ms: float) -> tuple[str, int] | None:
        """(item id, ms) the caller has heard of the item playing at `now_ms`; None before any mark."""
        last = self._last_played
        if last is None:
            return None
        item_id, end_ms, played_at = last
        for next_item, next_end, sent_at in self._in_flight.values():  # the frame playing now
            if next_item != item_id or next_end <= end_ms:
                break
            since = now_ms - (sent_at if sent_at > played_at else played_at)
            if since > 0:
                return item_id, end_ms + int(min(since, next_end - end_ms, self.frame_ms))
            break
        return item_id, end_ms

    # -- agent session facts -------------------------------------------------------------------

    def agent_started(self, fmt: UpstreamFormat, *, barge_in: bool, backchannel_max_ms: int = 0) -> None:
        """A new realtime session joins the call (forgets the previous one's items and response).
        `backchannel_max_ms > 0`: the bridge's own onsets pause first (see the module docstring)."""
        self.agent_stopped()
        self._agent_barge_in = barge_in
        self._bytes_per_ms = BYTES_PER_MS[fmt]
        self.backchannel_max_ms = backchannel_max_ms

    def agent_stopped(self) -> None:
        self._agent_barge_in = False
        self.backchannel_max_ms = 0
        self._paused_at = None
        self._resumed_at = None
        self._early = False
        self._items.clear()
        self._playing_item = None
        self.response_id = None
        self._cancel_sent = False

    def response_started(self, response_id: str) -> None:
        self.response_id = response_id
        self._cancel_sent = False

    def response_ended(self, response_id: str) -> None:
        if self.response_id == response_id:
            self.response_id = None

    @property
    def response_active(self) -> bool:
        return self.response_id is not None

    def audio_received(self, item_id: str, n_bytes: int) -> bool:
        """`n_bytes` of model audio for `item_id` arrived. True: play it (it is now the playing
        item); False: the item was cut by a barge-in, drop it."""
        item = self._items.get(item_id)
        if item is None:
            item = self._items[item_id] = _ItemAudio()
        elif item.cut:
            return False
        item.received_bytes += n_bytes
        self._playing_item = item_id
        return True

    def received_ms(self, item_id: str) -> int:
        item = self._items.get(item_id)
        return 0 if item is None else item.received_bytes // self._bytes_per_ms

    # -- decisions -----------------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """A Pause is waiting for its decision (Resume or Cut)."""
        return self._paused_at is not None

    def speech_started(
        self, now_ms: float, *, audible: bool, listening: bool = False, server: bool = False
    ) -> Cut | Pause | None:
        """The caller started talking: the bridge's VAD onset, or (`server`) the session's
        `speech_started`. `audible`: the bot's audio is queued or still playing; `listening`: a
        menu listens for the caller's answer. None: nothing to cut (or a pause is already
        waiting for its decision)."""
        if self._agent_barge_in:
            resumed = self._resumed_at
            going_on = resumed is not None and now_ms - resumed < CONTINUE_WINDOW_MS
            if self._paused_at is not None:
                if server:
                    return self._commit(now_ms)
                return self._confirm(now_ms, going_on) if self._early else None
            if (
                not server
                and not going_on
                and self.backchannel_max_ms > 0
                and (audible or self.response_id is not None)
            ):
                self._note_heard(now_ms)
                self._in_flight.clear()  # re-queued by the call: their late marks are not "heard"
                self._paused_at = now_ms
                return Pause()
            return self._agent_cut(now_ms, audible)
        if listening and not server:  # a prompt that allows it stops when the caller answers over it
            return self.cut_prompts(only_barge_in=True)
        return None

    def early_onset(self, now_ms: float, *, audible: bool) -> Pause | None:
        """An energy onset on the caller's (echo-cancelled) audio, before the detector's: pause the
        bot tentatively (see the module docstring). None: nothing plays, barge-in is off, or a pause
        is already waiting for its decision."""
        if not self._agent_barge_in or self._paused_at is not None:
            return None
        if not (audible or self.response_id is not None):
            return None
        self._note_heard(now_ms)
        self._in_flight.clear()  # re-queued by the call: their late marks are not "heard"
        self._paused_at = now_ms
        self._early = True
        return Pause()

    def _confirm(self, now_ms: float, going_on: bool) -> Cut | None:
        """The detector confirmed an early pause: the backchannel rule decides from here (with the
        rule off, or the caller going on after an acknowledgement, the barge-in is committed)."""
        self._early = False
        if self.backchannel_max_ms <= 0 or going_on:
            return self._commit(now_ms)
        return None

    def moderation_cut(self, now_ms: float) -> Cut | None:
        """The bot's words were flagged (bridge/call/moderator.py): cut the agent's reply exactly like
        a barge-in, whether or not the step allows barge-in. None: no agent reply to cut."""
        if self.response_id is None and self._playing_item is None:
            return None
        return self._agent_cut(now_ms, audible=True)

    def cut_prompts(self, *, only_barge_in: bool) -> Cut | None:
        """Stop the queued prompts (only those that allow barge-in: DTMF, an answer over a menu; all
        of them: the dialplan's StopPrompts). None: nothing to cut, or a prompt that must be heard
        is still queued (the playout is left alone)."""
        prompts = self._prompts
        cut = [item for item, (_, _, barge) in prompts.items() if barge or not only_barge_in]
        if not cut or (only_barge_in and len(cut) < len(prompts)):
            return None
        self._in_flight.clear()
        return Cut(prompts=tuple(prompts.pop(item)[0] for item in cut))

    def caller_speech(self, now_ms: float, voiced_ms: int) -> Cut | Resume | None:
        """Every caller frame while paused: `voiced_ms` of the current utterance so far (the
        detector's, 0 while it hears no speech). A Cut once it is longer than an acknowledgement (or
        the pause lasts too long); a Resume when an early pause was not confirmed in time."""
        paused_at = self._paused_at
        if paused_at is None:
            return None
        if self._early:
            if voiced_ms > 0:  # the detector is in speech (its onset may have come before the pause)
                resumed = self._resumed_at
                cut = self._confirm(now_ms, resumed is not None and now_ms - resumed < CONTINUE_WINDOW_MS)
                if cut is not None:
                    return cut
            elif now_ms - paused_at > EARLY_CONFIRM_MS:
                self._paused_at = None
                self._early = False
                return Resume()
            else:
                return None
        limit = self.backchannel_max_ms
        if voiced_ms > limit or now_ms - paused_at > limit + PAUSE_LIMIT_MS:
            return self._commit(now_ms)
        return None

    def speech_stopped(self, now_ms: float) -> Resume | None:
        """The detector's offset: while paused, the utterance was an acknowledgement."""
        if self._paused_at is None:
            return None
        self._paused_at = None
        self._early = False
        self._resumed_at = now_ms
        return Resume()

    def _commit(self, now_ms: float) -> Cut | None:
        self._paused_at = None
        self._early = False
        return self._agent_cut(now_ms, True)

    def _note_heard(self, now_ms: float) -> None:
        """What is heard now becomes the item's heard position (before in-flight frames are forgotten)."""
        now = self.heard(now_ms)
        if now is not None:
            item = self._items.get(now[0])
            if item is not None and not item.cut and now[1] > item.heard_ms:
                item.heard_ms = now[1]

    def _agent_cut(self, now_ms: float, audible: bool) -> Cut | None:
        if not (audible or self.response_id is not None):
            return None
        self._note_heard(now_ms)
        cancel = None if self._cancel_sent else self.response_id
        self._cancel_sent = self._cancel_sent or cancel is not None
        item_id, end_ms = self._playing_item, 0
        if item_id is not None:
            item = self._items[item_id]
            end_ms = min(item.heard_ms, item.received_bytes // self._bytes_per_ms)
            item.cut = True
        self._playing_item = None
        self._in_flight.clear()
        prompts = tuple(prompt_id for prompt_id, _, _ in self._prompts.values())
        self._prompts.clear()
        return Cut(
            prompts=prompts,
            agent=True,
            cancel_response_id=cancel,
            truncate_item_id=item_id if end_ms > 0 else None,
            audio_end_ms=end_ms,
            item_id=item_id,
        )
