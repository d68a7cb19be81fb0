"""Input audio buffer and server-VAD turn detection: through the session, and the `Turns` core alone."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from bridge.engine.commands import (
    AsrAudio,
    AsrBegin,
    AsrDiscard,
    AsrEnd,
    CancelWork,
    GenerateReply,
)
from tests.helpers.engine_session import Harness, pcmu_session, quiet, speak_turn, start_reply, tone


def test_vad_turn_events_with_audio_positions() -> None:
    h = pcmu_session(prefix_padding_ms=300, silence_duration_ms=500)
    speak_turn(h, speech_ms=800, lead_ms=1000, tail_ms=700)
    (started,) = h.of("input_audio_buffer.speech_started")
    (stopped,) = h.of("input_audio_buffer.speech_stopped")
    assert 680 <= started["audio_start_ms"] <= 720  # onset 1000 ms minus 300 ms padding
    assert 2280 <= stopped["audio_end_ms"] <= 2340  # speech ends at 1800 ms, plus 500 ms of silence
    assert started["item_id"] == stopped["item_id"]
    kinds = h.types()
    i = kinds.index("input_audio_buffer.speech_stopped")
    assert kinds[i + 1 : i + 5] == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "response.created",
    ]
    assert h.of("input_audio_buffer.committed")[0]["item_id"] == started["item_id"]
    # the recogniser got the turn: pre-roll at onset, audio while speaking, end at the stop
    (begin,) = h.take(AsrBegin)
    assert begin.item_id == started["item_id"]
    assert len(begin.pcm16_8k) >= 300 * 16
    fed = sum(len(c.pcm16_8k) for c in h.take(AsrAudio))
    assert 500 * 16 <= fed <= 2000 * 16
    assert [c.item_id for c in h.take(AsrEnd)] == [started["item_id"]]
    assert not h.take(GenerateReply)  # waits for the transcript


def test_create_response_false_and_manual_mode() -> None:
    h = pcmu_session(create_response=False)
    speak_turn(h)
    assert h.of("input_audio_buffer.committed")
    assert not h.of("response.created")

    m = pcmu_session()
    m.update(audio={"input": {"turn_detection": None}})
    speak_turn(m)
    assert not any(t.startswith("input_audio_buffer.speech") for t in m.types())
    new = m.send({"type": "input_audio_buffer.commit"})
    assert m.types(new)[:3] == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    assert "response.created" not in m.types(new)
    (begin,) = m.take(AsrBegin)
    assert len(begin.pcm16_8k) == 2500 * 16  # the whole buffer
    assert m.take(AsrEnd)
    err = m.send({"type": "input_audio_buffer.commit", "event_id": "again"})
    assert err[0]["error"]["code"] == "input_audio_buffer_commit_empty"
    assert err[0]["error"]["event_id"] == "again"


def test_clear_drops_buffer() -> None:
    h = pcmu_session()
    h.update(audio={"input": {"turn_detection": None}})
    h.append_8k(tone(500))
    assert h.types(h.send({"type": "input_audio_buffer.clear"})) == ["input_audio_buffer.cleared"]
    assert (
        h.send({"type": "input_audio_buffer.commit"})[0]["error"]["code"] == "input_audio_buffer_commit_empty"
    )


def test_barge_in_cancels_with_turn_detected() -> None:
    h = pcmu_session()
    syn = start_reply(h)
    h.s.audio_chunk(syn.response_id, "First sentence.", tone(1000), h.now)
    h.collect()
    speak_turn(h, lead_ms=200)
    kinds = h.types()
    assert kinds.index("response.done") > kinds.index("input_audio_buffer.speech_started")
    done = h.of("response.done")[0]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"]["reason"] == "turn_detected"
    assert done["output"][0]["status"] == "incomplete"
    assert [c.response_id for c in h.take(CancelWork)] == [syn.response_id]
    # late audio from the cancelled synthesis is dropped
    n = len(h.events)
    h.s.audio_chunk(syn.response_id, "Second sentence.", tone(500), h.now)
    h.s.synthesis_done(syn.response_id, h.now)
    assert h.collect() == []
    assert len(h.events) == n
    # and the new turn gets its own response
    assert h.types().count("response.created") == 2


def test_interrupt_response_false_keeps_response() -> None:
    h = pcmu_session(interrupt_response=False)
    syn = start_reply(h)
    h.s.audio_chunk(syn.response_id, "First sentence.", tone(1000), h.now)
    speak_turn(h, lead_ms=200)
    assert h.of("input_audio_buffer.speech_started")
    assert not h.of("response.done")
    assert not h.take(CancelWork)


def test_idle_timeout_commits_and_answers() -> None:
    h = pcmu_session(idle_timeout_ms=5000)
    syn = start_reply(h, "Hello.")
    h.s.audio_chunk(syn.response_id, "Hello.", tone(1000), h.now)
    h.s.synthesis_done(syn.response_id, h.now)
    h.collect()
    assert h.s.next_deadline_ms() == pytest.approx(h.now + 1000 + 5000)
    h.s.tick(h.now + 5999)
    assert h.collect() == []
    h.s.tick(h.now + 6000)
    new = h.collect()
    assert h.types(new)[:5] == [
        "input_audio_buffer.timeout_triggered",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "response.created",
    ]
    (gen,) = h.take(GenerateReply)
    assert gen.turn.kind == "idle"


def test_speech_cancels_idle_timer() -> None:
    h = pcmu_session(idle_timeout_ms=3000, create_response=False)
    syn = start_reply(h, "Hello.")
    h.s.synthesis_done(syn.response_id, h.now)
    h.collect()
    assert h.s.next_deadline_ms() is not None
    h.append_8k(tone(400))
    assert h.s.next_deadline_ms() is None


def test_clear_during_speech_discards_recognition() -> None:
    h = pcmu_session()
    h.append_8k(quiet(500) + tone(500))
    assert h.of("input_audio_buffer.speech_started")
    h.send({"type": "input_audio_buffer.clear"})
    assert h.take(AsrDiscard)


def test_pcm24k_input_is_downsampled() -> None:
    h = Harness()
    t = np.arange(24000) / 24000
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()
    silence = bytes(48000)
    for block in (silence, pcm, silence, silence):
        for i in range(0, len(block), 960):
            h.send(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(block[i : i + 960]).decode()}
            )
    assert h.s.audio_ms == pytest.approx(4000)
    (started,) = h.of("input_audio_buffer.speech_started")
    assert 680 <= started["audio_start_ms"] <= 720
