"""What the call hears of the caller: the bot's own echo removed, then the barge-in detector. No I/O.

    front = CallerFront(detector, EchoCanceller())
    front.played(pcm8k_frame, start_ms)            # every frame the pacer sends, when it starts playing
    cleaned, changes = front.hear(pcm8k, now_ms)   # every caller frame: echo removed, onsets/offsets

The echo canceller needs the reference on the caller-audio clock (ms of caller audio processed);
the call only knows its own clock (`now_ms`, the event loop's). The mapping is taken at each caller
frame (`now_ms` ↔ the canceller's position): a frame the pacer schedules to start at `start_ms`
starts at `position + (start_ms - now_at_last_caller_frame)` on the caller clock. Frames that follow
each other in the schedule are placed back to back (no jitter from the mapping); a new run is placed
by the mapping, and whatever constant offset remains (network, Twilio's buffer, the phone) is the
echo path's delay, which the canceller estimates (up to `max_delay_ms`). Far audio far ahead of the
caller audio (no caller frames arriving) is dropped: there is nothing to cancel it from.

The canceller's state (~0.8 MB of history rings and filters) is made when the bot first plays
(`echo_factory`): until then there is nothing to cancel, and the canceller would pass every frame
through as is, so a call whose bot never speaks never pays for it.

This is the one composition of canceller and detector: `bridge.call.call` uses it for every caller
frame and `bench/bargein.py` drives it to measure what the call does.
"""

from __future__ import annotations

from collections.abc import Callable

from bridge.media.echo import EchoCanceller, EchoCancellerError
from bridge.media.vad import SpeechDetector, SpeechStart, SpeechStop

_AHEAD_LIMIT_MS = 2000.0  # far audio further ahead of the caller audio than this is dropped
_CONTIGUOUS_MS = 1.0  # schedule slack within which a frame follows the previous one


class CallerFront:
    """Echo canceller (optional) + barge-in detector for one call's caller audio (8 kHz PCM16)."""

    def __init__(
        self,
        detector: SpeechDetector,
        echo: EchoCanceller | None = None,
        *,
        echo_factory: Callable[[], EchoCanceller] | None = None,
    ) -> None:
        self.detector = detector
        self.echo = echo
        self._echo_factory = echo_factory  # makes `echo` at the first frame played (when it is None)
        self.use_echo = self.can_cancel  # the agent step's setting (off: the canceller is not fed)
        self._near_wall_ms: float | None = None  # when the last caller frame was heard
        self._next_start_ms: float | None = None  # where the next contiguous far frame would start

    @property
    def can_cancel(self) -> bool:
        """Is there a canceller, or one to make when the bot first plays?"""
        return self.echo is not None or self._echo_factory is not None

    def played(self, pcm8k: bytes, start_ms: float) -> None:
        """A frame the bridge plays, starting at `start_ms` on the call's clock (the pacer's schedule)."""
        if not self.use_echo or self._near_wall_ms is None:
            return
        echo = self.echo
        if echo is None:
            if self._echo_factory is None:
                return
            echo = self.echo = self._echo_factory()  # its clock starts at the last caller frame
        next_start = self._next_start_ms
        self._next_start_ms = start_ms + len(pcm8k) * 1000.0 / 16000.0
        at_ms: float | None
        if next_start is not None and abs(start_ms - next_start) <= _CONTIGUOUS_MS:
            at_ms = None  # right after the previous frame
        else:
            at_ms = echo.position_ms + (start_ms - self._near_wall_ms)
            if at_ms - echo.position_ms > _AHEAD_LIMIT_MS:
                self._next_start_ms = None
                return
        try:
            echo.far(pcm8k, at_ms=at_ms)
        except EchoCancellerError:  # too far ahead of the caller audio (none is arriving)
            self._next_start_ms = None

    def hear(self, pcm8k: bytes, now_ms: float) -> tuple[bytes, list[SpeechStart | SpeechStop]]:
        """One 20 ms caller frame -> (the frame with the bot's echo removed, for the model and the
        menu listener; the detector's changes on the same frame, gated before the echo path is known).
        With no canceller (or `use_echo` off) the frame is returned as is; the canceller itself
        returns the very same bytes object while nothing was played recently."""
        echo = self.echo
        if echo is None or not self.use_echo:
            self._near_wall_ms = now_ms  # a canceller made later maps its clock from here
            return pcm8k, self.detector.feed(pcm8k)
        gated = echo.near(pcm8k)
        self._near_wall_ms = now_ms  # the canceller's position (the end of this frame) is now
        # Until the echo path is found, the canceller only gates against the loudest reference:
        # safe for barge-in, but it can swallow a caller's words over the bot (on a line with no
        # audible echo the path is never found), so the model and the menu get the audio as is.
        return gated if echo.aligned else pcm8k, self.detector.feed(gated)
