"""Input audio buffer and server-VAD turn detection: through the session, and the `Turns` core alone."""

from __future__ import annotations

import base64
from typing import Any

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
from bridge.engine.outbox import Outbox
from bridge.engine.session_config import EventError
from bridge.engine.turns import Turns
from tests.helpers.engine_session import (
    Harness,
    energy_detector,
    pcmu_session,
    quiet,
    speak_turn,
    start_reply,
    tone,
)


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
    # a session with nothing to understand (no intents, FAQ or chat) answers without the transcript
    assert [g.turn.kind for g in h.take(GenerateReply)] == ["user"]


def test_vad_turn_waits_for_the_transcript_when_the_reply_depends_on_it() -> None:
    h = pcmu_session(prefix_padding_ms=300, silence_duration_ms=500)
    h.update(local_engine={"intents": [{"name": "billing", "phrases": ["billing"], "reply": "Billing."}]})
    speak_turn(h, speech_ms=800, lead_ms=1000, tail_ms=700)
    assert h.of("response.created")
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


# --------------------------------------------------------------------------------------------------
# the Turns core alone (a recording host instead of the session)


class RecordingHost:
    """TurnHost that records what the turns asked for; `busy` plays an active response."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.busy = False
        self.last: str | None = "item_prev"

    def last_item_id(self) -> str | None:
        return self.last

    def add_audio_item(
        self, item_id: str, audio_ms: float, previous: str | None, *, transcribe: bool, pcm16_8k: bytes = b""
    ) -> None:
        self.calls.append(("item", item_id, audio_ms, previous, transcribe))
        self.pcm = pcm16_8k
        self.last = item_id

    def responding(self) -> bool:
        return self.busy

    def barge_in(self) -> None:
        self.calls.append(("barge_in",))

    def respond(self, now_ms: float, *, idle: bool) -> None:
        self.calls.append(("respond", idle))


def vad_turns(**td: Any) -> tuple[Turns, Outbox, RecordingHost]:
    out, host = Outbox(), RecordingHost()
    turns = Turns(out, energy_detector, host)
    turns.set_format("audio/pcmu")
    full = {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }
    turns.set_turn_detection({**full, **td})
    return turns, out, host


def feed(turns: Turns, pcm: bytes, now: float = 0.0) -> None:
    for i in range(0, len(pcm), 320):
        turns.ingest(pcm[i : i + 320], 20.0, now)


def test_turns_core_reports_a_turn_to_its_host() -> None:
    turns, out, host = vad_turns(prefix_padding_ms=200, silence_duration_ms=400)
    feed(turns, quiet(1000) + tone(800) + quiet(700))
    types = [e["type"] for e in out.take_events()]
    assert types == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
    ]
    (item_call,) = [c for c in host.calls if c[0] == "item"]
    _, item_id, audio_ms, previous, transcribe = item_call
    assert previous == "item_prev"
    assert transcribe is True
    assert 1380 <= audio_ms <= 1460  # 800 ms of speech + 200 ms padding + 400 ms silence
    assert host.calls == [("barge_in",), item_call, ("respond", False)]
    cmds = out.take_commands()
    assert isinstance(cmds[0], AsrBegin)
    assert cmds[0].item_id == item_id
    assert isinstance(cmds[-1], AsrEnd)
    assert cmds[-1].item_id == item_id
    assert all(isinstance(c, AsrAudio) for c in cmds[1:-1])
    assert not turns.speaking


def test_turns_core_flags_and_busy_host() -> None:
    turns, _out, host = vad_turns(interrupt_response=False, create_response=False)
    feed(turns, quiet(500) + tone(500) + quiet(700))
    assert [c[0] for c in host.calls] == ["item"]
    turns2, _out2, host2 = vad_turns()
    host2.busy = True  # a response is still running: the turn is committed but not answered
    feed(turns2, quiet(500) + tone(500) + quiet(700))
    assert [c[0] for c in host2.calls] == ["barge_in", "item"]


def test_turns_core_idle_timeout() -> None:
    turns, out, host = vad_turns(idle_timeout_ms=3000)
    feed(turns, quiet(400))
    turns.response_completed(played_until_ms=10_000)
    assert turns.next_deadline_ms() == 13_000
    turns.tick(12_999)
    assert out.take_events() == []
    host.busy = True
    turns.tick(13_000)  # a response started meanwhile: the timer is dropped, nothing is committed
    assert out.take_events() == []
    assert turns.next_deadline_ms() is None
    host.busy = False
    turns.response_completed(played_until_ms=20_000)
    turns.tick(23_000)
    ev = out.take_events()
    assert [e["type"] for e in ev] == ["input_audio_buffer.timeout_triggered", "input_audio_buffer.committed"]
    assert ev[0]["audio_end_ms"] == 400
    assert host.calls[-2][0] == "item"
    assert host.calls[-2][4] is False
    assert host.calls[-1] == ("respond", True)
    assert not [c for c in out.take_commands() if isinstance(c, AsrEnd)]


def test_turns_core_manual_mode_and_turn_detection_change() -> None:
    turns, out, _host = vad_turns()
    feed(turns, quiet(500) + tone(400))
    assert turns.speaking
    out.take_commands()
    out.take_events()
    turns.set_turn_detection(None)  # speech in progress is dropped with its recognition
    assert not turns.speaking
    assert [type(c) for c in out.take_commands()] == [AsrDiscard]
    feed(turns, tone(300))
    assert not any(e["type"].startswith("input_audio_buffer.speech") for e in out.take_events())
    turns.on_commit({}, 0.0)
    (begin,) = [c for c in out.take_commands() if isinstance(c, AsrBegin)]
    assert len(begin.pcm16_8k) == 1200 * 16  # everything since the start: manual mode keeps it all
    with pytest.raises(EventError) as err:
        turns.on_commit({}, 0.0)
    assert err.value.code == "input_audio_buffer_commit_empty"
