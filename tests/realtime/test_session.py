"""SessionState: what was received and heard per item, and what a barge-in tells the model."""

from bridge.realtime.session import SessionState


def test_truncate_at_heard_clamped_to_received() -> None:
    state = SessionState("pcm24k")
    state.response_started("resp_1")
    assert state.accept_audio("item_1", 48 * 500)  # 500 ms of 24 kHz PCM16
    state.audio_sent("item_1")
    state.heard("item_1", 320)
    decision = state.barge_in()
    assert decision.cancel_response_id == "resp_1"
    assert decision.truncate_item_id == "item_1"
    assert decision.audio_end_ms == 320


def test_heard_past_received_is_clamped() -> None:
    # The last frame of an item is padded with silence, so "heard" can pass what was received.
    state = SessionState("pcmu")
    state.accept_audio("item_1", 8 * 130)
    state.audio_sent("item_1")
    state.heard("item_1", 140)
    decision = state.barge_in()
    assert decision.audio_end_ms == 130


def test_nothing_heard_means_no_truncate_but_cancel() -> None:
    state = SessionState("pcm24k")
    state.response_started("resp_1")
    state.accept_audio("item_1", 48 * 200)
    state.audio_sent("item_1")
    decision = state.barge_in()
    assert decision.truncate_item_id is None
    assert decision.audio_end_ms == 0
    assert decision.cancel_response_id == "resp_1"


def test_cut_item_drops_late_audio_and_ignores_late_marks() -> None:
    state = SessionState("pcm24k")
    state.accept_audio("item_1", 4800)
    state.audio_sent("item_1")
    state.heard("item_1", 60)
    state.barge_in()
    assert not state.accept_audio("item_1", 4800)
    state.heard("item_1", 100)  # a mark echoed by the far end's clear
    assert state.heard_ms("item_1") == 60
    assert state.accept_audio("item_2", 4800)  # the next reply plays normally


def test_cancel_is_sent_once_per_response() -> None:
    state = SessionState("pcm24k")
    state.response_started("resp_1")
    assert state.barge_in().cancel_response_id == "resp_1"
    assert state.barge_in().cancel_response_id is None  # server VAD fired after local VAD
    state.response_ended("resp_1")
    state.response_started("resp_2")
    assert state.barge_in().cancel_response_id == "resp_2"


def test_response_done_for_other_response_keeps_active() -> None:
    state = SessionState("pcm24k")
    state.response_started("resp_2")
    state.response_ended("resp_1")
    assert state.response_active
    state.response_ended("resp_2")
    assert not state.response_active
