"""Playout buffer and pacer: framing, schedule, lead, pauses, barge-in, per-frame item positions.

What the caller has heard at an instant (from the echoed marks) is tested in tests/call/test_bargein.py."""

from __future__ import annotations

import pytest

from bridge.media.g711 import silence, silence_byte
from bridge.media.playout import Frame, Playout


def _audio(n_bytes: int, fill: int = 0x55) -> bytes:
    return bytes((fill,)) * n_bytes


def test_whole_frames_are_queued_and_remainders_wait() -> None:
    p = Playout()
    p.push("a", _audio(400))  # 2.5 frames
    assert p.queued_ms == 40
    p.push("a", _audio(80))  # completes the third frame
    assert p.queued_ms == 60
    frames = p.pop_due(0)
    assert [len(f.payload) for f in frames] == [160, 160, 160]
    assert [f.end_ms for f in frames] == [20, 40, 60]
    assert all(f.item_id == "a" for f in frames)
    assert p.next_due_ms() is None


def test_remainder_bytes_keep_their_order_across_pushes() -> None:
    p = Playout(lead_ms=1000)
    data = bytes(range(256)) * 3  # 768 bytes: 4 frames + 128 bytes
    for i in range(0, len(data), 7):
        p.push("a", data[i : i + 7])
    p.finish_item("a")
    out = b"".join(f.payload for f in p.pop_due(0))
    assert out[: len(data)] == data
    assert out[len(data) :] == b"\xff" * (800 - len(data))


def test_finish_item_pads_with_silence_and_counts_only_real_audio() -> None:
    p = Playout(silence_byte=silence_byte("pcma"))
    p.push("a", _audio(200))  # 1 frame + 40 bytes (5 ms)
    p.finish_item("b")  # another item: no effect on a's remainder
    assert p.queued_ms == 20
    p.finish_item("a")
    assert p.queued_ms == 40
    frames = p.pop_due(0)
    assert frames[1].payload == _audio(40) + silence("pcma", 120)
    assert [f.end_ms for f in frames] == [20, 25]
    p.finish_item("a")  # nothing left: no extra frame
    assert p.queued_ms == 0


def test_a_new_item_closes_the_previous_remainder() -> None:
    p = Playout(lead_ms=1000)
    p.push("a", _audio(240))
    p.push("b", _audio(160, 0x11))
    frames = p.pop_due(0)
    assert [(f.item_id, f.end_ms) for f in frames] == [("a", 20), ("a", 30), ("b", 20)]
    assert frames[1].payload == _audio(80) + b"\xff" * 80


def test_empty_push_queues_nothing() -> None:
    p = Playout()
    p.push("a", b"")
    assert p.queued_ms == 0
    assert p.next_due_ms() is None
    assert p.pop_due(0) == []


def test_lead_bounds_how_far_ahead_frames_go() -> None:
    p = Playout(lead_ms=100)
    p.push("a", _audio(160 * 20))  # 400 ms
    first = p.pop_due(1000.0)
    # Frames starting at 1000, 1020, ..., 1080 are < 100 ms ahead: five of them.
    assert len(first) == 5
    assert p.busy_until_ms == 1100.0
    assert p.next_due_ms() == 1000.0  # the frame starting at 1100 is due when now > 1000
    assert p.pop_due(1000.0) == []
    assert len(p.pop_due(1000.5)) == 1
    assert len(p.pop_due(1050.0)) == 2  # frames at 1120 and 1140
    assert p.busy_until_ms == 1160.0
    assert p.queued_ms == 400 - 8 * 20


def test_pacer_loop_with_a_fake_clock_sends_at_real_time_rate() -> None:
    p = Playout(lead_ms=100)
    p.push("a", _audio(160 * 50))  # one second
    p.finish_item("a")
    now = 0.0
    sent_at: list[float] = []
    while (due := p.next_due_ms()) is not None:
        now = max(now, due) + 0.25  # the shell wakes a little late, as real timers do
        sent_at.extend(now for _ in p.pop_due(now))
    assert len(sent_at) == 50
    # The schedule starts when the first frame goes (0.25); frame k plays from 0.25 + 20 k and is
    # never sent lead_ms or more before that, nor after it.
    for k, t in enumerate(sent_at):
        assert 0.25 + k * 20 - 100 < t <= 0.25 + k * 20
    assert p.busy_until_ms == 1000.25


def test_zero_lead_hands_frames_out_exactly_on_time() -> None:
    p = Playout(lead_ms=0)
    p.push("a", _audio(480))
    assert len(p.pop_due(500.0)) == 1
    assert p.next_due_ms() == 520.0
    assert p.pop_due(519.9) == []
    assert len(p.pop_due(520.0)) == 1
    assert len(p.pop_due(560.0)) == 1  # late: sent at once, schedule restarts at now
    assert p.busy_until_ms == 580.0


def test_pause_then_resume_is_not_credited() -> None:
    p = Playout(lead_ms=100)
    p.push("a", _audio(160 * 3))
    assert len(p.pop_due(0.0)) == 3
    assert p.busy_until_ms == 60.0
    # The reply pauses; more audio comes 500 ms later: the far end ran dry at 60.
    p.push("a", _audio(160 * 10))
    frames = p.pop_due(500.0)
    assert len(frames) == 5
    assert p.busy_until_ms == 600.0
    assert [f.end_ms for f in frames] == [80, 100, 120, 140, 160]


def test_audio_arriving_while_the_far_end_still_plays_is_appended() -> None:
    p = Playout(lead_ms=100)
    p.push("a", _audio(160 * 5))
    p.pop_due(0.0)
    assert p.busy_until_ms == 100.0
    p.push("a", _audio(160 * 5))
    # At 30 ms the far end holds 70 ms: the next frame starts at 100, < 130, so two go.
    assert len(p.pop_due(30.0)) == 2
    assert p.busy_until_ms == 140.0


def test_clear_drops_everything_and_restarts_the_schedule() -> None:
    p = Playout(lead_ms=100)
    p.push("a", _audio(160 * 10 + 50))
    p.pop_due(0.0)
    assert p.clear() == 5
    assert p.queued_ms == 0
    assert p.next_due_ms() is None
    p.finish_item("a")  # the remainder went too
    assert p.queued_ms == 0
    # The far end was cleared as well: new audio starts now, not after the old playhead (100).
    p.push("b", _audio(160 * 10))
    assert len(p.pop_due(40.0)) == 5
    assert p.busy_until_ms == 140.0
    assert p.clear() == 5
    assert p.clear() == 0


def test_item_position_survives_clear() -> None:
    p = Playout(lead_ms=20)
    p.push("a", _audio(160 * 4))
    assert [f.end_ms for f in p.pop_due(0.0)] == [20]
    p.clear()
    # Late audio of the same item keeps counting from the item's start (160 * 4 bytes were pushed).
    p.push("a", _audio(160))
    assert [f.end_ms for f in p.pop_due(10.0)] == [100]


def test_prompts_use_an_empty_item_id() -> None:
    p = Playout()
    p.push("", _audio(320))
    frames = p.pop_due(0.0)
    assert frames == [Frame(_audio(160), "", 20), Frame(_audio(160), "", 40)]


def test_frames_of_other_geometries() -> None:
    p = Playout(lead_ms=0, frame_ms=10, frame_bytes=80)
    p.push("a", _audio(200))
    p.finish_item("a")
    frames = p.pop_due(0.0)
    assert [(len(f.payload), f.end_ms) for f in frames] == [(80, 10)]
    assert p.next_due_ms() == 10.0
    assert [f.end_ms for f in p.pop_due(10.0) + p.pop_due(20.0)] == [20, 25]


@pytest.mark.parametrize(
    "kwargs", [{"lead_ms": -1}, {"frame_ms": 0}, {"frame_bytes": 0}, {"silence_byte": 256}]
)
def test_bad_geometry_is_rejected(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="bad playout geometry"):
        Playout(**kwargs)


def test_pause_requeues_unplayed_frames_first_and_resume_plays_on() -> None:
    p = Playout(lead_ms=40)
    p.push("a", _audio(160 * 6))
    sent = p.pop_due(0)  # 40 ms of lead: frames starting at 0, 20 (and the one due at once)
    assert [f.end_ms for f in sent] == [20, 40, 60][: len(sent)]
    assert [f.start_ms for f in sent] == [0.0, 20.0, 40.0][: len(sent)]
    p.pause(sent[1:])  # the first was heard; the far end drops the rest
    assert p.paused
    assert p.pop_due(100) == []
    assert p.next_due_ms() is None
    assert p.queued_ms == 20 * (6 - 1)
    p.push("a", _audio(160))  # the model's audio keeps coming while paused
    p.resume()
    again = p.pop_due(500)
    assert [f.end_ms for f in again][:2] == [40, 60]  # from where it was paused
    assert again[0].start_ms == 500.0
    p.pause([])
    p.clear()  # a committed barge-in ends the pause too
    assert not p.paused


def test_refill_wakes_the_pacer_once_per_refill_and_keeps_the_lead() -> None:
    """lead 140 / refill 100 (the SIP leg): the shell is sent back to sleep until the far end is down
    to 40 ms, then hands over 100 ms at once; the far end never holds 140 ms or more, nor runs dry."""
    p = Playout(lead_ms=140, refill_ms=100)
    p.push("a", _audio(160 * 100))  # two seconds
    p.finish_item("a")
    now = 0.0
    wakeups = 0
    sent: list[tuple[float, float]] = []  # (sent at, starts playing at)
    while (due := p.next_due_ms()) is not None:
        now = max(now, due) + 0.25
        wakeups += 1
        sent.extend((now, f.start_ms) for f in p.pop_due(now))
    assert len(sent) == 100
    assert wakeups <= 2000 // 100 + 2  # not one wake-up per frame
    for at, start in sent:
        assert start - 140 < at <= start  # within the lead, never late
    assert [start for _, start in sent] == [0.25 + 20 * k for k in range(100)]  # no gap: never ran dry
    assert Playout(lead_ms=140).next_due_ms() is None


@pytest.mark.parametrize(("lead_ms", "refill_ms"), [(40, 40), (100, 90), (100, -1)])
def test_refill_that_would_let_the_far_end_run_dry_is_refused(lead_ms: int, refill_ms: int) -> None:
    with pytest.raises(ValueError, match="refill_ms"):
        Playout(lead_ms=lead_ms, refill_ms=refill_ms)


def test_a_long_prompt_is_not_queued_as_one_object_per_frame() -> None:
    """A minute of queued audio must not be thousands of objects for the garbage collector to walk
    (150 SIP calls with a long prompt each stalled the loop ~100 ms per full collection); frames are
    cut as they go out, and still carry their item positions exactly."""
    import gc

    audio = bytes(range(256)) * (160 * 3000 // 256)  # 60 s, every frame different
    p = Playout(lead_ms=1000)
    gc.collect()
    before = len(gc.get_objects())
    p.push("a", audio)
    p.finish_item("a")
    assert len(gc.get_objects()) - before < 50
    frames = p.pop_due(0.0)
    assert len(frames) == 50
    p.pause(frames[30:])  # the far end dropped the last 20: they go back to the front
    p.resume()
    frames = frames[:30]
    while (due := p.next_due_ms()) is not None:
        frames.extend(p.pop_due(due + 1))
    whole = len(audio) // 160
    assert [f.payload for f in frames] == [audio[i * 160 : (i + 1) * 160] for i in range(whole)] + (
        [audio[whole * 160 :] + b"\xff" * (160 - len(audio) % 160)] if len(audio) % 160 else []
    )
    assert [f.end_ms for f in frames[:whole]] == [20 * (i + 1) for i in range(whole)]
    if len(audio) % 160:
        assert frames[-1].end_ms == len(audio) * 20 // 160
