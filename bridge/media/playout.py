"""The bridge's own playout buffer and pacer, sans I/O: G.711 in, 20 ms frames out on a schedule.

The call pushes the assistant's audio (already at 8 kHz G.711) as it arrives, item by item, and a
thin async shell asks `pop_due(now_ms)` what to send now; `next_due_ms()` says when to ask again.

Schedule: a playhead is the time at which the far end will start playing the next frame handed
out. When the far end has run dry (playhead < now) the playhead restarts at `now`; every frame
handed out advances it by `frame_ms`. A frame is due while its start is less than `lead_ms` ahead
of `now` (a frame that starts now is always due, so `lead_ms=0` hands frames out exactly on time,
as RTP needs). So the far end never holds more than about `lead_ms` of audio, which bounds what
barge-in has to throw away, and a reply that pauses half-way does not get credited for the pause.

Refill (`refill_ms`, 0 by default): `next_due_ms()` then says to come back only when the far end
holds `lead_ms - refill_ms` or less, so the shell wakes once per `refill_ms` and hands out that much
audio at a time instead of one frame per wake-up. For a leg whose queue is the bridge's own and
flushable (SIP: the RTP sender's queue, emptied at once on barge-in, and marks that fire on
transmission) this costs nothing in accuracy and saves most of a call's wake-ups.

Accounting: every frame carries the item it belongs to and `end_ms`, how many ms of that item's
audio the caller has heard once the frame has played (a padded last frame counts only its real
audio). What the caller has heard at an instant is `bridge.call.bargein`'s business (from the marks
the leg echoes for these frames).

Storage: what is pushed is kept as runs (one per push, whole frames of one item) and each `Frame` is
cut when it is handed out, so a queued minute of prompt is one bytes object, not 3000 frame objects
for the garbage collector to walk on every full collection (at 150 SIP calls, each with a long
prompt queued, those walks stalled the event loop ~100 ms, which the caller hears as RTP gaps).

Time is an input (milliseconds on any monotonic clock); nothing here sleeps or reads a clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Final

from bridge.media.g711 import FRAME_BYTES_G711, FRAME_MS, SILENCE_BYTE

_IDLE: Final = float("-inf")


@dataclass(slots=True)
class Frame:
    payload: bytes  # one 20 ms G.711 frame (160 bytes)
    item_id: str  # the realtime assistant item it belongs to ("" for prompts)
    end_ms: int  # ms of that item's audio the caller has heard once this frame is played
    start_ms: float = field(default=0.0, compare=False)  # when it starts playing (pop_due's schedule)


@dataclass(slots=True)
class _Run:
    """Whole frames of one item, queued by one push; frames are cut from `data` as they go out."""

    item_id: str
    data: bytes  # a whole number of frames
    base: int  # bytes of the item before data[0]
    offset: int = 0  # bytes of `data` already handed out
    end_ms: int = -1  # a one-frame run's own end_ms (a padded last frame, a frame put back by pause)


class Playout:
    def __init__(
        self,
        *,
        lead_ms: int = 100,
        refill_ms: int = 0,
        frame_ms: int = FRAME_MS,
        frame_bytes: int = FRAME_BYTES_G711,
        silence_byte: int = SILENCE_BYTE["pcmu"],
    ) -> None:
        bad_refill = refill_ms < 0 or (refill_ms > 0 and refill_ms > lead_ms - frame_ms)
        if lead_ms < 0 or bad_refill or frame_ms <= 0 or frame_bytes <= 0 or not 0 <= silence_byte <= 0xFF:
            raise ValueError(
                f"bad playout geometry: lead_ms={lead_ms} refill_ms={refill_ms} frame_ms={frame_ms} "
                f"frame_bytes={frame_bytes} silence_byte={silence_byte}"
            )
        self.lead_ms = lead_ms
        self.refill_ms = refill_ms
        self.frame_ms = frame_ms
        self.frame_bytes = frame_bytes
        self._silence = bytes((silence_byte,)) * frame_bytes
        self._queue: deque[_Run] = deque()
        self._queued_frames = 0
        # The item audio is being pushed for: its id, bytes pushed so far, and a partial frame.
        self._item_id = ""
        self._item_bytes = 0
        self._remainder = b""
        self._playhead_ms = _IDLE
        self._last_now_ms = 0.0
        self._held = False  # paused: nothing is due until resume()

    # ----------------------------------------------------------------------------- filling

    def push(self, item_id: str, audio: bytes) -> None:
        """Queue G.711 `audio` (any length) of `item_id`. Whole frames are queued at once; a
        remainder waits for more audio of the same item. Audio of another item first closes the
        previous item's remainder (padded with silence), as `finish_item` would."""
        if item_id != self._item_id:
            self._pad_remainder()
            self._item_id = item_id
            self._item_bytes = 0
        if not audio:
            return
        data = self._remainder + audio if self._remainder else audio
        fb = self.frame_bytes
        whole = len(data) - len(data) % fb
        if whole:
            base = self._item_bytes - len(self._remainder)  # item bytes before `data`
            self._queue.append(_Run(item_id, data[:whole] if whole < len(data) else data, base))
            self._queued_frames += whole // fb
        self._remainder = data[whole:]
        self._item_bytes += len(audio)

    def finish_item(self, item_id: str) -> None:
        """`item_id` has no more audio: pad its remainder with silence into a last frame."""
        if item_id == self._item_id:
            self._pad_remainder()

    def _pad_remainder(self) -> None:
        rest = self._remainder
        if rest:
            frame = rest + self._silence[len(rest) :]
            end_ms = self._item_bytes * self.frame_ms // self.frame_bytes
            self._queue.append(_Run(self._item_id, frame, 0, end_ms=end_ms))
            self._queued_frames += 1
            self._remainder = b""

    # ----------------------------------------------------------------------------- pacing

    def pop_due(self, now_ms: float) -> list[Frame]:
        """Frames to send now: those whose scheduled play start is < now_ms + lead_ms (or <= now_ms)."""
        self._last_now_ms = now_ms
        queue = self._queue
        if not queue or self._held:
            return []
        playhead = self._playhead_ms
        if playhead < now_ms:
            playhead = now_ms
        limit = now_ms + self.lead_ms
        frame_ms = self.frame_ms
        fb = self.frame_bytes
        due: list[Frame] = []
        while queue and (playhead < limit or playhead <= now_ms):
            run = queue[0]
            offset = run.offset
            end = offset + fb
            end_ms = run.end_ms if run.end_ms >= 0 else (run.base + end) * frame_ms // fb
            due.append(Frame(run.data[offset:end], run.item_id, end_ms, playhead))
            if end >= len(run.data):
                queue.popleft()
            else:
                run.offset = end
            playhead += frame_ms
        self._queued_frames -= len(due)
        self._playhead_ms = playhead
        return due

    def next_due_ms(self) -> float | None:
        """When `pop_due` will next hand out a frame (a time in the past: now). None: nothing queued.

        With `lead_ms > 0` this is the bound of a strict inequality: any time after it hands the
        frame out, the instant itself may not (a shell that wakes exactly on time just asks again).
        With `refill_ms`, the time the far end is down to `lead_ms - refill_ms` of audio."""
        if not self._queue or self._held:
            return None
        if self._playhead_ms == _IDLE:
            return self._last_now_ms
        if not self.lead_ms:
            return self._playhead_ms
        return self._playhead_ms - self.lead_ms + self.refill_ms

    def clear(self) -> int:
        """Barge-in: drop queued frames and any remainder; returns the number of frames dropped.

        The far end is told to drop what it holds, so the schedule restarts at `now` on the next pop."""
        dropped = self._queued_frames
        self._queue.clear()
        self._queued_frames = 0
        self._remainder = b""
        self._playhead_ms = _IDLE
        self._held = False
        return dropped

    def pause(self, unplayed: list[Frame]) -> None:
        """Stop handing frames out; `unplayed` (frames handed out that the far end will now drop,
        in order) go back to the front of the queue, to be played first on `resume`."""
        self._queue.extendleft(_Run(f.item_id, f.payload, 0, end_ms=f.end_ms) for f in reversed(unplayed))
        self._queued_frames += len(unplayed)
        self._playhead_ms = _IDLE
        self._held = True

    def resume(self) -> None:
        """Hand frames out again, from where `pause` left off (the schedule restarts at `now`)."""
        self._held = False
        self._playhead_ms = _IDLE

    @property
    def paused(self) -> bool:
        return self._held

    # ----------------------------------------------------------------------------- state

    @property
    def queued_ms(self) -> int:
        """Audio queued and not yet handed out, in whole frames (a waiting remainder not counted)."""
        return self._queued_frames * self.frame_ms

    @property
    def busy_until_ms(self) -> float:
        """When the far end will have played everything handed out (a past time when it is idle)."""
        if self._playhead_ms == _IDLE:
            return self._last_now_ms
        return self._playhead_ms
