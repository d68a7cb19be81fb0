"""BargeInCore with a fake clock: what the caller heard, and what a barge-in cuts and tells the model.

The clock is a plain number (ms) handed to every fact; frames are fed as the call's pacer sends
them (one mark per 20 ms frame) and marks echoed as Twilio or the SIP leg echoes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.call.bargein import (
    CONTINUE_WINDOW_MS,
    EARLY_CONFIRM_MS,
    PAUSE_LIMIT_MS,
    PROMPT_PREFIX,
    BargeInCore,
    Cut,
    Pause,
    Resume,
)
from bridge.media.g711 import UpstreamFormat

PCM24K_MS = 48  # bytes per ms of 24 kHz PCM16
PCMU_MS = 8


@dataclass
class Leg:
    """The call's side of the core: frames sent with marks, echoes, a fake clock."""

    core: BargeInCore = field(default_factory=BargeInCore)
    now: float = 0.0
    seq: int = 0
    marks: list[str] = field(default_factory=list)  # sent, not yet echoed, in order

    def send(self, item_id: str, *end_ms: int) -> None:
        for end in end_ms:
            self.seq += 1
            name = str(self.seq)
            self.core.frame_sent(name, item_id, end, self.now)
            self.marks.append(name)

    def echo(self, n: int = 1) -> list[str | None]:
        """The far end played the next `n` frames (one mark per frame, in order)."""
        return [self.core.mark_played(self.marks.pop(0), self.now) for _ in range(n)]

    def at(self, now: float) -> Leg:
        self.now = now
        return self


def agent(fmt: UpstreamFormat = "pcm24k", barge_in: bool = True) -> Leg:
    leg = Leg()
    leg.core.agent_started(fmt, barge_in=barge_in)
    return leg


def cut_at(core: BargeInCore, now: float, *, server: bool = False) -> Cut:
    """An agent barge-in while the bot is audible (it must cut)."""
    cut = core.speech_started(now, audible=True, server=server)
    assert cut is not None
    return cut


def frames(first_end: int, n: int) -> tuple[int, ...]:
    return tuple(range(first_end, first_end + 20 * n, 20))


# -- what the caller has heard now -----------------------------------------------------------------


def test_nothing_heard_before_the_first_mark() -> None:
    leg = agent()
    assert leg.core.heard(0.0) is None
    leg.send("item_1", *frames(20, 5))
    assert leg.at(50.0).core.heard(50.0) is None


def test_marks_echoed_in_order_plus_the_frame_playing_since() -> None:
    leg = agent()
    leg.send("item_1", *frames(20, 5))  # 100 ms ahead, as Twilio's lead
    leg.at(20.0).echo()  # frame 1 played
    assert leg.core.heard(20.0) == ("item_1", 20)
    assert leg.core.heard(27.0) == ("item_1", 27)  # 7 ms into frame 2
    assert leg.core.heard(55.0) == ("item_1", 40)  # at most one frame past the last mark
    leg.at(40.0).echo(2)  # two marks at once (a burst): the last one counts
    assert leg.core.heard(40.0) == ("item_1", 60)
    assert leg.core.heard(45.0) == ("item_1", 65)


def test_the_last_frame_of_an_item_adds_nothing_past_its_mark() -> None:
    leg = agent()
    leg.send("item_1", 20, 40)
    leg.at(40.0).echo(2)
    assert leg.core.heard(1000.0) == ("item_1", 40)  # no later frame was sent: nothing playing


def test_never_past_what_was_sent_a_padded_last_frame() -> None:
    leg = agent()
    leg.send("item_1", 20, 40, 45)  # the last frame holds 5 ms of audio, padded with silence
    leg.at(40.0).echo(2)
    assert leg.core.heard(43.0) == ("item_1", 43)
    assert leg.core.heard(59.0) == ("item_1", 45)


def test_model_pause_adds_nothing_for_the_pause() -> None:
    leg = agent()
    leg.send("item_1", *frames(20, 3))
    leg.at(60.0).echo(3)  # played up to 60 ms, then the model paused
    assert leg.core.heard(1000.0) == ("item_1", 60)  # the pause was not heard
    leg.at(1500.0).send("item_1", *frames(80, 5))  # the model resumes 1.44 s later
    # The next frame starts playing when it is sent, not when the last mark came back.
    assert leg.core.heard(1500.0) == ("item_1", 60)
    assert leg.core.heard(1506.0) == ("item_1", 66)
    assert leg.core.heard(1600.0) == ("item_1", 80)
    leg.at(1520.0).echo()
    assert leg.core.heard(1530.0) == ("item_1", 90)


def test_another_item_playing_next_adds_nothing_to_the_last() -> None:
    leg = agent()
    leg.send("item_1", 20, 40)
    leg.send("item_2", 20, 40)
    leg.at(40.0).echo(2)
    assert leg.core.heard(50.0) == ("item_1", 40)  # item_2's first mark has not come back yet
    leg.at(60.0).echo()
    assert leg.core.heard(70.0) == ("item_2", 30)


# -- the barge-in decision -------------------------------------------------------------------------


def test_barge_in_truncates_at_what_was_heard_and_cancels() -> None:
    leg = agent()
    core = leg.core
    core.response_started("resp_1")
    assert core.audio_received("item_1", PCM24K_MS * 500)
    leg.send("item_1", *frames(20, 25))
    leg.at(320.0).echo(16)
    cut = core.speech_started(333.0, audible=True)
    assert cut == Cut(agent=True, cancel_response_id="resp_1", truncate_item_id="item_1", audio_end_ms=333)


def test_truncate_clamped_to_received_audio() -> None:
    # The last frame of an item is padded with silence, so what played can pass what was received.
    leg = agent("pcmu")
    assert leg.core.audio_received("item_1", PCMU_MS * 130)
    leg.send("item_1", *frames(20, 7))  # 140 ms of frames for 130 ms of audio
    leg.at(140.0).echo(7)
    cut = cut_at(leg.core, 150.0)
    assert (cut.truncate_item_id, cut.audio_end_ms) == ("item_1", 130)
    assert leg.core.received_ms("item_1") == 130


def test_nothing_heard_means_no_truncate_but_cancel_and_clear() -> None:
    leg = agent()
    core = leg.core
    core.response_started("resp_1")
    core.audio_received("item_1", PCM24K_MS * 200)
    leg.send("item_1", *frames(20, 5))  # sent, but no mark came back yet
    cut = core.speech_started(10.0, audible=True)
    assert cut == Cut(agent=True, cancel_response_id="resp_1")
    assert (cut.truncate_item_id, cut.audio_end_ms) == (None, 0)
    assert not core.in_flight  # the frames in flight were dropped with the playout


def test_nothing_playing_and_no_response_is_not_a_barge_in() -> None:
    leg = agent()
    assert leg.core.speech_started(0.0, audible=False) is None
    assert leg.core.speech_started(0.0, audible=False, server=True) is None
    leg.core.response_started("resp_1")  # the model is thinking: nothing audible, still cut it
    assert leg.core.speech_started(5.0, audible=False) == Cut(agent=True, cancel_response_id="resp_1")


def test_cancel_only_while_a_response_runs_and_only_once() -> None:
    leg = agent()
    core = leg.core
    core.response_started("resp_1")
    assert cut_at(core, 0.0).cancel_response_id == "resp_1"  # local VAD
    assert cut_at(core, 30.0, server=True).cancel_response_id is None  # then the server's speech_started
    core.response_ended("resp_1")
    assert cut_at(core, 60.0).cancel_response_id is None  # nothing runs any more
    core.response_started("resp_2")
    assert cut_at(core, 90.0).cancel_response_id == "resp_2"


def test_response_done_for_another_response_keeps_this_one_running() -> None:
    core = agent().core
    core.response_started("resp_2")
    core.response_ended("resp_1")
    assert core.response_active
    core.response_ended("resp_2")
    assert not core.response_active


def test_late_deltas_of_a_cut_item_are_dropped_and_late_marks_ignored() -> None:
    leg = agent()
    core = leg.core
    core.audio_received("item_1", PCM24K_MS * 100)
    leg.send("item_1", *frames(20, 5))
    leg.at(60.0).echo(3)
    assert cut_at(core, 60.0).audio_end_ms == 60
    assert not core.audio_received("item_1", 4800)  # in flight when the caller cut in
    assert core.received_ms("item_1") == 100
    # The far end's clear echoes the marks of the dropped frames: they are not "heard".
    assert leg.at(61.0).echo(2) == [None, None]
    assert core.heard(100.0) == ("item_1", 60)
    assert core.speech_started(100.0, audible=True) == Cut(agent=True)  # nothing more to truncate
    assert core.audio_received("item_2", 4800)  # the next reply plays normally


def test_a_second_barge_in_truncates_the_next_item_not_the_cut_one() -> None:
    leg = agent()
    core = leg.core
    core.audio_received("item_1", PCM24K_MS * 1000)
    leg.send("item_1", *frames(20, 5))
    leg.at(40.0).echo(2)
    assert cut_at(core, 40.0).audio_end_ms == 40
    assert leg.at(45.0).echo(3) == [None, None, None]  # the clear's echoes of item_1's dropped frames
    core.audio_received("item_2", PCM24K_MS * 1000)
    leg.at(500.0).send("item_2", *frames(20, 5))
    leg.at(540.0).echo(2)
    cut = cut_at(core, 550.0)
    assert (cut.truncate_item_id, cut.audio_end_ms) == ("item_2", 50)


def test_heard_of_an_earlier_frame_counts_when_another_item_played_last() -> None:
    leg = agent()
    core = leg.core
    core.audio_received("item_1", PCM24K_MS * 40)
    leg.send("item_1", 20, 40)
    leg.at(40.0).echo(2)
    core.audio_received("item_2", PCM24K_MS * 1000)  # queued, but none of it heard yet
    leg.send("item_2", 20, 40)
    assert cut_at(core, 45.0).truncate_item_id is None  # item_2 is the playing item: nothing heard of it


def test_a_new_session_forgets_the_last_one() -> None:
    leg = agent()
    core = leg.core
    core.response_started("resp_1")
    core.audio_received("item_1", PCM24K_MS * 100)
    core.agent_started("pcmu", barge_in=True)
    assert not core.response_active
    cut = core.speech_started(0.0, audible=True)
    assert cut == Cut(agent=True)
    core.agent_stopped()
    assert core.speech_started(0.0, audible=True) is None  # no agent: no agent barge-in


def test_barge_in_disabled_for_the_agent() -> None:
    leg = agent(barge_in=False)
    leg.core.response_started("resp_1")
    assert leg.core.speech_started(0.0, audible=True) is None
    assert leg.core.speech_started(0.0, audible=True, server=True) is None


# -- prompts vs agent items ------------------------------------------------------------------------


def test_prompt_done_when_its_last_frame_is_played() -> None:
    leg = Leg()
    item = leg.core.prompt("welcome", 45, barge_in=True)
    assert item.startswith(PROMPT_PREFIX)
    leg.send(item, 20, 40, 45)
    assert leg.echo(2) == [None, None]
    assert leg.core.in_flight
    assert leg.echo() == ["welcome"]
    assert not leg.core.in_flight
    assert leg.echo(0) == []


def test_prompts_are_never_truncated_and_are_cut_with_the_agent() -> None:
    leg = agent()
    core = leg.core
    prompt = core.prompt("hold-on", 1000, barge_in=False)
    leg.send(prompt, *frames(20, 5))
    leg.at(60.0).echo(3)
    assert core.heard(65.0) == (prompt, 65)
    core.response_started("resp_1")
    cut = core.speech_started(65.0, audible=True)
    # An agent barge-in cuts every prompt (even one that must be heard); no prompt is truncated.
    assert cut == Cut(prompts=("hold-on",), agent=True, cancel_response_id="resp_1")
    assert leg.at(70.0).echo(2) == [None, None]  # nor reported done twice


def test_caller_answering_a_menu_cuts_prompts_that_allow_it() -> None:
    leg = Leg()
    core = leg.core
    first = core.prompt("menu", 2000, barge_in=True)
    core.prompt("options", 1000, barge_in=True)
    leg.send(first, *frames(20, 5))
    assert core.speech_started(0.0, audible=True, listening=False) is None  # no menu listens
    assert core.speech_started(0.0, audible=True, listening=True, server=True) is None
    cut = core.speech_started(0.0, audible=True, listening=True)
    assert cut == Cut(prompts=("menu", "options"))
    assert not core.in_flight
    assert core.cut_prompts(only_barge_in=True) is None  # nothing left


def test_a_prompt_that_must_be_heard_keeps_the_playout() -> None:
    leg = Leg()
    core = leg.core
    core.prompt("menu", 2000, barge_in=True)
    core.prompt("legal", 1000, barge_in=False)
    leg.send("prompt:1", 20)
    assert core.cut_prompts(only_barge_in=True) is None  # DTMF over the menu: the legal text stays
    assert core.in_flight
    assert core.cut_prompts(only_barge_in=False) == Cut(prompts=("menu", "legal"))  # StopPrompts


# -- backchannels: pause at onset, then resume or commit -------------------------------------------


def backchannel_agent(max_ms: int = 400) -> Leg:
    leg = Leg()
    leg.core.agent_started("pcm24k", barge_in=True, backchannel_max_ms=max_ms)
    leg.core.response_started("resp_1")
    leg.core.audio_received("item_1", PCM24K_MS * 2000)
    leg.send("item_1", *frames(20, 30))
    leg.at(400.0).echo(20)  # 400 ms heard, 10 frames still in flight
    return leg


def test_an_onset_pauses_and_keeps_the_unheard_audio() -> None:
    leg = backchannel_agent()
    core = leg.core
    assert core.speech_started(410.0, audible=True) == Pause()
    assert core.paused
    assert not core.in_flight  # the call re-queues them; their late marks are not "heard"
    assert core.mark_played(leg.marks[0], 415.0) is None
    assert core.speech_started(420.0, audible=True) is None  # one pause at a time
    assert core.caller_speech(500.0, voiced_ms=200) is None  # still short


def test_a_short_acknowledgement_resumes_without_cancel_or_truncate() -> None:
    leg = backchannel_agent()
    core = leg.core
    assert core.speech_started(410.0, audible=True) == Pause()
    assert leg.at(412.0).echo(10) == [None] * 10  # the far end's clear echoes the dropped frames' marks
    for now, voiced in ((430.0, 60), (530.0, 160), (650.0, 250)):
        assert core.caller_speech(now, voiced) is None
    assert core.speech_stopped(950.0) == Resume()
    assert not core.paused
    assert core.speech_stopped(960.0) is None
    # Playing on: the re-queued frames are sent again and their marks count.
    leg.send("item_1", *frames(420, 10))
    leg.at(1200.0).echo(10)
    assert core.heard(1200.0) == ("item_1", 600)
    assert core.audio_received("item_1", 100)  # not cut
    # A real interruption later still cuts, at what was heard then.
    core.backchannel_max_ms = 0
    cut = core.speech_started(1210.0, audible=True)
    assert cut == Cut(agent=True, cancel_response_id="resp_1", truncate_item_id="item_1", audio_end_ms=600)


def test_an_onset_soon_after_a_resumed_acknowledgement_cuts_at_once() -> None:
    """Words with a gap between them ("Hello ... world") are the caller going on, not two
    backchannels: the second onset within CONTINUE_WINDOW_MS of the resume cuts at once."""
    leg = backchannel_agent()
    core = leg.core
    assert core.speech_started(410.0, audible=True) == Pause()
    assert core.caller_speech(600.0, voiced_ms=250) is None
    assert core.speech_stopped(800.0) == Resume()
    cut = core.speech_started(800.0 + CONTINUE_WINDOW_MS - 1, audible=True)
    assert isinstance(cut, Cut)
    assert cut.agent
    assert cut.cancel_response_id == "resp_1"
    assert not core.paused


def test_an_onset_long_after_a_resumed_acknowledgement_pauses_again() -> None:
    leg = backchannel_agent()
    core = leg.core
    assert core.speech_started(410.0, audible=True) == Pause()
    assert core.speech_stopped(700.0) == Resume()
    assert core.speech_started(700.0 + CONTINUE_WINDOW_MS + 1, audible=True) == Pause()


def test_speech_longer_than_a_backchannel_commits_at_what_was_heard_at_the_pause() -> None:
    leg = backchannel_agent()
    core = leg.core
    assert core.speech_started(410.0, audible=True) == Pause()  # 10 ms into the 21st frame
    assert core.caller_speech(600.0, voiced_ms=300) is None
    cut = core.caller_speech(760.0, voiced_ms=420)
    assert cut == Cut(agent=True, cancel_response_id="resp_1", truncate_item_id="item_1", audio_end_ms=410)
    assert not core.paused
    assert core.audio_received("item_1", 100) is False  # late deltas of the cut item are dropped


def test_the_server_hearing_speech_commits_a_pause() -> None:
    leg = backchannel_agent()
    core = leg.core
    assert core.speech_started(410.0, audible=True) == Pause()
    cut = core.speech_started(450.0, audible=True, server=True)
    assert isinstance(cut, Cut)
    assert cut.truncate_item_id == "item_1"
    assert cut.audio_end_ms == 410


def test_a_pause_that_never_ends_commits() -> None:
    leg = backchannel_agent(max_ms=400)
    core = leg.core
    assert core.speech_started(410.0, audible=True) == Pause()
    assert core.caller_speech(410.0 + 400 + PAUSE_LIMIT_MS, voiced_ms=100) is None
    assert isinstance(core.caller_speech(411.0 + 400 + PAUSE_LIMIT_MS, voiced_ms=100), Cut)


def test_server_onsets_and_backchannel_off_cut_at_once() -> None:
    leg = backchannel_agent()
    assert isinstance(leg.core.speech_started(410.0, audible=True, server=True), Cut)
    leg = backchannel_agent(max_ms=0)
    assert isinstance(leg.core.speech_started(410.0, audible=True), Cut)


def test_a_new_session_forgets_a_pause() -> None:
    leg = backchannel_agent()
    assert leg.core.speech_started(410.0, audible=True) == Pause()
    leg.core.agent_started("pcm24k", barge_in=True, backchannel_max_ms=400)
    assert not leg.core.paused
    assert leg.core.speech_stopped(500.0) is None


# -- early (energy) onsets: pause at once, resume unless the detector confirms ----------------------


def test_an_early_onset_the_detector_does_not_confirm_resumes() -> None:
    leg = backchannel_agent()
    core = leg.core
    assert core.early_onset(405.0, audible=True) == Pause()
    assert core.paused
    assert not core.in_flight
    assert core.early_onset(410.0, audible=True) is None  # one pause at a time
    assert core.caller_speech(405.0 + EARLY_CONFIRM_MS, voiced_ms=0) is None
    assert core.caller_speech(406.0 + EARLY_CONFIRM_MS, voiced_ms=0) == Resume()
    assert not core.paused
    # Not an acknowledgement: the next onset pauses again (no "caller goes on" cut).
    assert core.speech_started(700.0, audible=True) == Pause()


def test_an_early_onset_confirmed_follows_the_backchannel_rule_and_truncates_at_the_pause() -> None:
    leg = backchannel_agent()
    core = leg.core
    assert core.early_onset(405.0, audible=True) == Pause()
    assert core.speech_started(520.0, audible=True) is None  # confirmed: still paused
    assert core.caller_speech(650.0, voiced_ms=130) is None  # past EARLY_CONFIRM_MS: no resume
    assert core.paused
    cut = core.caller_speech(950.0, voiced_ms=420)
    assert cut == Cut(agent=True, cancel_response_id="resp_1", truncate_item_id="item_1", audio_end_ms=405)


def test_an_early_onset_confirmed_acknowledgement_resumes() -> None:
    leg = backchannel_agent()
    core = leg.core
    assert core.early_onset(405.0, audible=True) == Pause()
    assert core.caller_speech(540.0, voiced_ms=40) is None  # the detector is in speech: confirmed
    assert core.speech_stopped(800.0) == Resume()


def test_an_early_onset_confirmed_with_the_backchannel_rule_off_cuts() -> None:
    leg = backchannel_agent(max_ms=0)
    core = leg.core
    assert core.early_onset(405.0, audible=True) == Pause()
    cut = core.speech_started(520.0, audible=True)
    assert cut == Cut(agent=True, cancel_response_id="resp_1", truncate_item_id="item_1", audio_end_ms=405)


def test_an_early_onset_with_nothing_playing_or_barge_in_off_does_nothing() -> None:
    leg = Leg()
    leg.core.agent_started("pcm24k", barge_in=False, backchannel_max_ms=400)
    leg.core.response_started("resp_1")
    assert leg.core.early_onset(10.0, audible=True) is None
    leg = Leg()
    leg.core.agent_started("pcm24k", barge_in=True, backchannel_max_ms=400)
    assert leg.core.early_onset(10.0, audible=False) is None
