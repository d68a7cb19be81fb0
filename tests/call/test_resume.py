"""The no-I/O parts of resuming a conversation: backoff, the replay log, the gap buffer, rollover."""

from __future__ import annotations

import pytest

from bridge.call.resume import (
    INTERRUPTED_OUTPUT,
    Backoff,
    ConversationLog,
    GapBuffer,
    RolloverPlan,
    heard_text,
)
from tests.helpers.realtime_schema import validate_client_event

# -- backoff ---------------------------------------------------------------------------------------


def test_backoff_first_attempt_is_immediate_then_doubles_to_the_cap() -> None:
    b = Backoff(base_s=0.1, factor=2.0, max_delay_s=1.0, jitter=0.0, max_attempts=8, max_total_s=100)
    assert b.schedule([0.0]) == pytest.approx([0.0, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_backoff_jitter_only_shortens_and_stays_within_its_share() -> None:
    b = Backoff(base_s=0.2, jitter=0.5, max_delay_s=5.0, max_attempts=6, max_total_s=100)
    low = b.schedule([0.999999])
    high = b.schedule([0.0])
    for lo, hi in zip(low, high, strict=True):
        assert hi * 0.5 - 1e-6 <= lo <= hi
    assert b.delay_s(3, 0.0, 0.5) == pytest.approx(0.4 * 0.75)


def test_backoff_bounded_in_attempts_and_total_time() -> None:
    b = Backoff(base_s=0.5, jitter=0.0, max_delay_s=1.0, max_attempts=100, max_total_s=3.0)
    delays = b.schedule([0.0])
    assert sum(delays) <= 3.0
    assert b.delay_s(101, 0.0, 0.0) is None
    assert b.delay_s(0, 0.0, 0.0) is None
    assert b.delay_s(5, 2.9, 0.0) is None  # would start past max_total_s


# -- the conversation log ------------------------------------------------------------------------------


def test_replay_keeps_order_and_cuts_the_assistant_at_what_was_heard() -> None:
    log = ConversationLog()
    log.item_added("u1", "message", "user")  # announced before its transcript arrives
    log.assistant_delta("a1", "We are open from nine ")
    log.assistant_delta("a1", "to five on weekdays.")
    log.assistant_audio("a1", 2000)
    log.user_said("u1", "  when are you open  ")
    log.heard("a1", 1000)  # the caller barged in halfway
    items = log.replay_items()
    assert [i["role"] for i in items] == ["user", "assistant"]
    assert items[0]["content"] == [{"type": "input_text", "text": "when are you open"}]
    assert items[1]["content"] == [{"type": "output_text", "text": "We are open from"}]
    for item in items:
        validate_client_event({"type": "conversation.item.create", "item": item})


def test_done_transcript_replaces_deltas_and_nothing_heard_is_left_out() -> None:
    log = ConversationLog()
    log.assistant_delta("a1", "Hel")
    log.assistant_done("a1", "Hello there.")
    log.assistant_audio("a1", 500)
    assert log.replay_items()[0]["content"][0]["text"] == "Hello there."
    log.heard("a1", 0)
    assert log.replay_items() == []
    log.heard("a1", 400)  # a later, longer "heard" never undoes a cut
    assert log.replay_items() == []


def test_tool_calls_are_replayed_with_their_results_or_as_interrupted() -> None:
    log = ConversationLog()
    log.tool_call("f1", "call_1", "lookup", '{"id": 7}')
    log.tool_result("call_1", '{"balance": 12}')
    log.tool_call("f2", "call_2", "transfer", "")
    items = log.replay_items()
    assert [i["type"] for i in items] == [
        "function_call",
        "function_call_output",
        "function_call",
        "function_call_output",
    ]
    assert items[1]["output"] == '{"balance": 12}'
    assert items[2]["arguments"] == "{}"
    assert items[3] == {"type": "function_call_output", "call_id": "call_2", "output": INTERRUPTED_OUTPUT}
    for item in items:
        validate_client_event({"type": "conversation.item.create", "item": item})


def test_log_is_bounded_oldest_first() -> None:
    log = ConversationLog(max_items=3, max_chars=10_000)
    for i in range(5):
        log.user_said(f"u{i}", f"turn {i}")
    assert [i["content"][0]["text"] for i in log.replay_items()] == ["turn 2", "turn 3", "turn 4"]
    small = ConversationLog(max_items=100, max_chars=25)
    for i in range(5):
        small.user_said(f"u{i}", "0123456789")
    assert len(small.replay_items()) == 2


def test_user_text_from_the_bridge_is_replayed() -> None:
    log = ConversationLog()
    log.user_text("The caller pressed 1")
    assert log.replay_items() == [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "The caller pressed 1"}],
        }
    ]


@pytest.mark.parametrize(
    ("text", "audio_ms", "heard_ms", "expected"),
    [
        ("one two three four", 4000, None, "one two three four"),
        ("one two three four", 4000, 4000, "one two three four"),
        ("one two three four", 4000, 2999, "one two"),
        ("one two three four", 4000, 0, ""),
        ("one two", 0, 100, "one two"),  # no audio count: keep the text
    ],
)
def test_heard_text(text: str, audio_ms: int, heard_ms: int | None, expected: str) -> None:
    assert heard_text(text, audio_ms, heard_ms) == expected


# -- gap buffer ---------------------------------------------------------------------------------------


def test_gap_buffer_bounds_and_drops_what_is_too_old() -> None:
    gap = GapBuffer(max_ms=100, max_age_ms=50, frame_ms=20)
    for i in range(8):
        gap.push(f"m{i}", now_ms=i * 20.0)
    assert gap.held_ms == 100
    assert gap.dropped == 3  # the oldest, beyond max_ms
    assert gap.recent(40) == ["m6", "m7"]
    fresh = gap.take(now_ms=160.0)
    assert fresh == ["m6", "m7"]  # m5 is 60 ms old at 160: too old
    assert gap.dropped == 3 + 3
    assert gap.held_ms == 0
    assert gap.take(200.0) == []


# -- rollover ----------------------------------------------------------------------------------------


def test_rollover_waits_for_a_boundary_until_the_force_deadline() -> None:
    plan = RolloverPlan(max_session_s=3600, lead_s=120, force_margin_s=10)
    assert plan.prepare_at_s == 3480
    assert plan.force_at_s == 3590
    assert not plan.should_switch(3000, at_boundary=True)
    assert not plan.should_switch(3500, at_boundary=False)
    assert plan.should_switch(3500, at_boundary=True)
    assert plan.should_switch(3591, at_boundary=False)


def test_rollover_scales_for_short_caps() -> None:
    plan = RolloverPlan(max_session_s=5)
    assert plan.prepare_at_s == pytest.approx(4.0)
    assert plan.force_at_s == pytest.approx(4.75)
