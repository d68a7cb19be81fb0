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

Early onsets (`early_onsets=True`; off by default: they paused the bot on echo alone in the
real-socket test, bench/results/bargein.md phase 3): the canceller flags frames whose residual stands
well above the echo it expects and the noise (`caller_energy`); two in a row, while the detector hears
no speech, add an `EarlyOnset` to the frame's changes (the barge-in pauses on it; Silero confirms or
it resumes).

What goes to the model before the echo path is found: the gated audio (the gate against the loudest
reference, so that the model's VAD does not hear the bot's echo in the first second of each reply),
except while the detector hears the caller (double talk: the caller is passed whole, the model and the
menu must get every word, and on a line with no echo the path is never found), and for a second after.

The canceller's state (~0.8 MB of history rings and filters) is made when the bot first plays
(`echo_factory`): until then there is nothing to cancel, and the canceller would pass every frame
through as is, so a call whose bot never speaks never pays for it.

This is the one composition of canceller and detector: `bridge.call.call` uses it for every caller
frame and `bench/bargein.py` drives it to measure what the call does.
"""

from __future__ import annotations

from collections.abc import Callable

from bridge.media.echo import EchoCanceller, EchoCancellerError
from bridge.media.vad import EarlyOnset, EnergyOnset, SpeechDetector, SpeechStart, SpeechStop

_AHEAD_LIMIT_MS = 2000.0  # far audio further ahead of the caller audio than this is dropped
_CONTIGUOUS_MS = 1.0  # schedule slack within which a frame follows the previous one
# Before the echo path is found, once the detector has heard the caller the model gets the audio as
# is for this long at least (the gate chops the caller's words over a loud bot, and the detector,
# fed the chopped audio, can lose them in mid-word).
_UNGATED_HOLD_FRAMES = 50


class CallerFront:
    """Echo canceller (optional) + barge-in detector for one call's caller audio (8 kHz PCM16)."""

    def __init__(
        self,
        detector: SpeechDetector,
        echo: EchoCanceller | None = None,
        *,
        early_onsets: bool = False,
        gate_upstream_unaligned: bool = True,
        echo_factory: Callable[[], EchoCanceller] | None = None,
    ) -> None:
        self.detector = detector
        self.echo = echo
        self._echo_factory = echo_factory  # makes `echo` at the first frame played (when it is None)
        self.onsets = EnergyOnset() if early_onsets else None
        self.gate_upstream_unaligned = gate_upstream_unaligned
        self._ungated = 0  # frames the model still gets as is (the caller talked before alignment)
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

    def hear(self, pcm8k: bytes, now_ms: float) -> tuple[bytes, list[SpeechStart | SpeechStop | EarlyOnset]]:
        """One 20 ms caller frame -> (the frame with the bot's echo removed, for the model and the
        menu listener; the detector's changes on the same frame, gated before the echo path is known).
        With no canceller (or `use_echo` off) the frame is returned as is; the canceller itself
        returns the very same bytes object while nothing was played recently."""
        echo = self.echo
        detector = self.detector
        changes: list[SpeechStart | SpeechStop | EarlyOnset] = []
        if echo is None or not self.use_echo:
            self._near_wall_ms = now_ms  # a canceller made later maps its clock from here
            changes += detector.feed(pcm8k)
            return pcm8k, changes
        gated = echo.near(pcm8k)
        self._near_wall_ms = now_ms  # the canceller's position (the end of this frame) is now
        onsets = self.onsets
        if onsets is not None and onsets.feed(echo.caller_energy) and not detector.speaking:
            changes.append(EarlyOnset(detector.position_ms + 20))
        changes += detector.feed(gated)
        if echo.aligned:
            return gated, changes
        # Until the echo path is found, the canceller only gates against the loudest reference:
        # safe for barge-in, but it can swallow a caller's words over the bot (on a line with no
        # audible echo the path is never found): the model and the menu get the gated audio only
        # while the detector does not hear the caller.
        if detector.speaking:
            self._ungated = _UNGATED_HOLD_FRAMES
        if not self.gate_upstream_unaligned or self._ungated:
            self._ungated = max(0, self._ungated - 1)
            return pcm8k, changes
        return gated, changes
