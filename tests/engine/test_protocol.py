"""The engine's sans-I/O session core: config, input buffer + turn detection, items, responses, errors.

Turn detection runs the real SpeechDetector (hysteresis, timing) over a tiny energy VAD so that the
tests can use tones as "speech" with exact, known boundaries; the Silero path is covered end to end in
test_e2e_speech.py.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from bridge.audio import codec
from bridge.audio.vad import SpeechDetector
from bridge.engine.protocol import (
    DELTA_MS,
    AsrAudio,
    AsrBegin,
    AsrDiscard,
    AsrEnd,
    CancelWork,
    EngineSession,
    GenerateReply,
    SetExpected,
    Synthesize,
)
from bridge.engine.responder import Reply, ToolCall


class EnergyVad:
    """1.0 for a 20 ms window louder than -40 dBFS, else 0.0 (the Vad protocol of bridge.audio.vad)."""

    window_samples = 160

    def __init__(self) -> None:
        self._pending = b""

    def reset(self) -> None:
        self._pending = b""

    def process(self, pcm16_8k: bytes) -> list[float]:
        data = self._pending + pcm16_8k
        n = len(data) // 320
        self._pending = data[n * 320 :]
        out = []
        for i in range(n):
            x = np.frombuffer(data[i * 320 : (i + 1) * 320], dtype="<i2").astype(np.float64)
            out.append(1.0 if np.sqrt(np.mean(x * x)) > 327 else 0.0)
        return out


def energy_detector(threshold: float, min_speech_ms: int, min_silence_ms: int) -> SpeechDetector:
    return SpeechDetector(
        threshold=threshold, min_speech_ms=min_speech_ms, min_silence_ms=min_silence_ms, vad=EnergyVad()
    )


def tone(ms: int, hz: float = 440.0, rate: int = 8000, dbfs: float = -12.0) -> bytes:
    t = np.arange(ms * rate // 1000) / rate
    return (np.sin(2 * np.pi * hz * t) * 32767 * 10 ** (dbfs / 20)).astype("<i2").tobytes()


def quiet(ms: int, rate: int = 8000) -> bytes:
    return bytes(ms * rate // 1000 * 2)


class Harness:
    """Drives an EngineSession with frames and a fake clock; collects events and commands."""

    def __init__(self, *, beta: bool = False) -> None:
        self.now = 1000.0
        self.s = EngineSession(energy_detector, beta=beta, now_ms=self.now)
        self.events: list[dict[str, Any]] = []
        self.commands: list[Any] = []
        self.collect()

    def collect(self) -> list[dict[str, Any]]:
        new = self.s.take_events()
        self.events.extend(new)
        self.commands.extend(self.s.take_commands())
        return new

    def send(self, event: dict[str, Any] | str) -> list[dict[str, Any]]:
        self.s.receive(event if isinstance(event, str) else json.dumps(event), self.now)
        return self.collect()

    def update(self, **session: Any) -> list[dict[str, Any]]:
        return self.send({"type": "session.update", "session": {"type": "realtime", **session}})

    def append_8k(self, pcm: bytes, enc: str = "pcmu", frame_ms: int = 20) -> list[dict[str, Any]]:
        """Append 8 kHz PCM as G.711 frames (the session must be configured for `enc`)."""
        out = []
        step = frame_ms * 16
        for i in range(0, len(pcm), step):
            payload = codec.encode(pcm[i : i + step], enc)  # type: ignore[arg-type]
            out += self.send(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(payload).decode()}
            )
            self.now += frame_ms
        return out

    def types(self, events: list[dict[str, Any]] | None = None) -> list[str]:
        return [e["type"] for e in (self.events if events is None else events)]

    def of(self, etype: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == etype]

    def take(self, kind: type) -> list[Any]:
        found = [c for c in self.commands if isinstance(c, kind)]
        self.commands = [c for c in self.commands if not isinstance(c, kind)]
        return found


def pcmu_session(**td: Any) -> Harness:
    h = Harness()
    turn_detection = {"type": "server_vad", **td} if td is not None else None
    h.update(
        audio={
            "input": {
                "format": {"type": "audio/pcmu"},
                "turn_detection": turn_detection,
                "transcription": {"model": "whisper-1"},
            },
            "output": {"format": {"type": "audio/pcmu"}},
        }
    )
    return h


def speak_turn(h: Harness, speech_ms: int = 800, lead_ms: int = 1000, tail_ms: int = 700) -> None:
    h.append_8k(quiet(lead_ms) + tone(speech_ms) + quiet(tail_ms))


# --------------------------------------------------------------------------------------------------
# session config


def test_session_created_first_with_full_config() -> None:
    h = Harness()
    first = h.events[0]
    assert first["type"] == "session.created"
    sess = first["session"]
    assert sess["id"].startswith("sess_")
    assert sess["object"] == "realtime.session"
    assert sess["type"] == "realtime"
    assert sess["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    td = sess["audio"]["input"]["turn_detection"]
    assert td["type"] == "server_vad"
    assert td["silence_duration_ms"] == 500
    assert td["create_response"] is True
    assert sess["audio"]["output"]["voice"]
    assert sess["output_modalities"] == ["audio"]


def test_session_update_merges_partially() -> None:
    h = Harness()
    h.update(instructions="Be brief.", audio={"output": {"voice": "marin"}})
    new = h.update(audio={"input": {"format": {"type": "audio/pcmu"}}})
    assert h.types(new) == ["session.updated"]
    sess = new[0]["session"]
    assert sess["instructions"] == "Be brief."
    assert sess["audio"]["output"]["voice"] == "marin"
    assert sess["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert sess["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert "event_id" in new[0]
    assert new[0]["event_id"] != h.events[0]["event_id"]


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"instructions": "x"}, "session.type"),
        (
            {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
            "session.audio.input.format.rate",
        ),
        (
            {"type": "realtime", "audio": {"output": {"format": {"type": "audio/opus"}}}},
            "session.audio.output.format.type",
        ),
        ({"type": "realtime", "temperature": 0.7}, "session.temperature"),
        (
            {
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 3}}},
            },
            "session.audio.input.turn_detection.threshold",
        ),
        ({"type": "realtime", "output_modalities": ["audio", "text"]}, "session.output_modalities"),
        (
            {"type": "realtime", "local_engine": {"intents": [{"name": "x", "phrases": ["y"]}]}},
            "session.local_engine",
        ),
        ({"type": "transcription"}, "session.type"),
    ],
)
def test_session_update_errors_echo_event_id_and_keep_session(session: dict[str, Any], param: str) -> None:
    h = Harness()
    new = h.send({"type": "session.update", "event_id": "evt_client_7", "session": session})
    assert h.types(new) == ["error"]
    err = new[0]["error"]
    assert err["event_id"] == "evt_client_7"
    assert err["param"] == param
    assert err["message"]
    # unchanged and still usable
    assert h.update(instructions="ok")[0]["session"]["audio"]["input"]["format"]["type"] == "audio/pcm"


def test_voice_cannot_change_after_audio() -> None:
    h = pcmu_session()
    h.send({"type": "response.create"})
    (gen,) = h.take(GenerateReply)
    h.s.reply_ready(gen.response_id, Reply("Hello."), h.now)
    h.collect()
    (syn,) = h.take(Synthesize)
    h.s.audio_chunk(syn.response_id, "Hello.", tone(300), h.now)
    h.s.synthesis_done(syn.response_id, h.now)
    h.collect()
    new = h.send(
        {
            "type": "session.update",
            "event_id": "e1",
            "session": {"type": "realtime", "audio": {"output": {"voice": "cedar"}}},
        }
    )
    assert new[0]["type"] == "error"
    assert new[0]["error"]["code"] == "cannot_update_voice"


def test_extension_update_sets_expected_phrases() -> None:
    h = Harness()
    h.update(
        local_engine={
            "intents": [{"name": "billing", "phrases": ["billing"], "reply": "OK."}],
            "faq": [{"question": "when are you open", "answer": "Nine to five."}],
            "expected": ["yes"],
        }
    )
    (cmd,) = h.take(SetExpected)
    assert cmd.phrases == ("billing", "when are you open", "yes")
    assert h.events[-1]["session"]["local_engine"]["intents"][0]["name"] == "billing"


# --------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_event"),
        ({"type": "no.such.event", "event_id": "c1"}, "invalid_event"),
        ({"event_id": "c1"}, "missing_required_parameter"),
        ({"type": "input_audio_buffer.append", "event_id": "c1"}, "missing_required_parameter"),
        ({"type": "input_audio_buffer.append", "event_id": "c1", "audio": "!!notbase64"}, "invalid_value"),
        (
            {
                "type": "input_audio_buffer.append",
                "event_id": "c1",
                "audio": base64.b64encode(b"abc").decode(),
            },
            "invalid_value",
        ),
        ({"type": "input_audio_buffer.append", "event_id": "c1", "audio": 5}, "invalid_type"),
        ({"type": "input_audio_buffer.commit", "event_id": "c1"}, "input_audio_buffer_commit_empty"),
        (
            {
                "type": "conversation.item.create",
                "event_id": "c1",
                "item": {"type": "message", "role": "robot", "content": []},
            },
            "invalid_value",
        ),
        (
            {
                "type": "conversation.item.create",
                "event_id": "c1",
                "item": {"type": "message", "role": "user", "content": [{"type": "output_audio"}]},
            },
            "invalid_value",
        ),
        (
            {"type": "conversation.item.create", "event_id": "c1", "item": {"type": "function_call_output"}},
            "missing_required_parameter",
        ),
        (
            {
                "type": "conversation.item.truncate",
                "event_id": "c1",
                "item_id": "nope",
                "content_index": 0,
                "audio_end_ms": 0,
            },
            "invalid_value",
        ),
        (
            {"type": "conversation.item.truncate", "event_id": "c1", "item_id": "nope"},
            "missing_required_parameter",
        ),
        ({"type": "response.cancel", "event_id": "c1"}, "response_cancel_not_active"),
        (
            {"type": "response.create", "event_id": "c1", "response": {"conversation": "other"}},
            "invalid_value",
        ),
    ],
)
def test_bad_input_is_an_error_event_and_the_session_goes_on(frame: Any, code: str) -> None:
    h = Harness()
    new = h.send(frame)
    assert h.types(new) == ["error"]
    err = new[0]["error"]
    assert err["code"] == code
    assert err["message"]
    if isinstance(frame, dict) and "event_id" in frame:
        assert err["event_id"] == frame["event_id"]
    else:
        assert err["event_id"] is None
    assert h.types(h.update(instructions="still fine")) == ["session.updated"]


def test_event_ids_are_unique() -> None:
    h = pcmu_session()
    speak_turn(h)
    h.send("garbage")
    ids = [e["event_id"] for e in h.events]
    assert len(ids) == len(set(ids))
    assert all(isinstance(i, str) and i for i in ids)


# --------------------------------------------------------------------------------------------------
# turn detection


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


def test_response_waits_for_transcript_then_streams_full_sequence() -> None:
    h = pcmu_session()
    h.update(local_engine={"intents": [{"name": "billing", "phrases": ["billing"], "reply": "x"}]})
    speak_turn(h)
    item_id = h.of("input_audio_buffer.committed")[0]["item_id"]
    h.s.transcript_done(item_id, "billing please", h.now)
    h.collect()
    assert h.of("conversation.item.input_audio_transcription.completed")[0]["transcript"] == "billing please"
    (gen,) = h.take(GenerateReply)
    assert gen.turn.kind == "user"
    assert gen.turn.user_text == "billing please"
    assert gen.turn.extension.intents[0].name == "billing"
    mark = len(h.events)
    h.s.reply_ready(
        gen.response_id, Reply("One moment. Connecting you.", ToolCall("transfer", '{"to":"billing"}')), h.now
    )
    h.collect()
    (syn,) = h.take(Synthesize)
    assert syn.rate_hz == 8000
    assert syn.text == "One moment. Connecting you."
    h.s.audio_chunk(syn.response_id, "One moment.", tone(500), h.now)
    h.s.audio_chunk(syn.response_id, "Connecting you.", tone(700), h.now)
    h.s.synthesis_done(syn.response_id, h.now)
    h.collect()
    seq = [t for t in h.types(h.events[mark:]) if not t.endswith(".delta")]
    assert seq == [
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "conversation.item.done",
        "response.output_item.done",
        "response.output_item.added",
        "conversation.item.added",
        "response.function_call_arguments.done",
        "conversation.item.done",
        "response.output_item.done",
        "response.done",
    ]
    deltas = h.of("response.output_audio.delta")
    sizes = [len(base64.b64decode(d["delta"])) for d in deltas]
    assert sum(sizes) == 1200 * 8
    assert max(sizes) <= DELTA_MS * 8
    assert "".join(d["delta"] for d in h.of("response.output_audio_transcript.delta")) == (
        "One moment. Connecting you."
    )
    (call,) = h.of("response.function_call_arguments.done")
    assert call["name"] == "transfer"
    assert json.loads(call["arguments"]) == {"to": "billing"}
    assert call["call_id"].startswith("call_")
    done = h.of("response.done")[0]["response"]
    assert done["status"] == "completed"
    assert [o["type"] for o in done["output"]] == ["message", "function_call"]
    assert done["output"][0]["content"][0]["transcript"] == "One moment. Connecting you."


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


def _start_reply(h: Harness, text: str = "First sentence. Second sentence.") -> Synthesize:
    h.send({"type": "response.create"})
    (gen,) = h.take(GenerateReply)
    h.s.reply_ready(gen.response_id, Reply(text), h.now)
    h.collect()
    (syn,) = h.take(Synthesize)
    return syn


def test_barge_in_cancels_with_turn_detected() -> None:
    h = pcmu_session()
    syn = _start_reply(h)
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
    syn = _start_reply(h)
    h.s.audio_chunk(syn.response_id, "First sentence.", tone(1000), h.now)
    speak_turn(h, lead_ms=200)
    assert h.of("input_audio_buffer.speech_started")
    assert not h.of("response.done")
    assert not h.take(CancelWork)


def test_truncate_trims_audio_and_transcript() -> None:
    h = pcmu_session()
    syn = _start_reply(h)
    h.s.audio_chunk(syn.response_id, "First sentence.", tone(1000), h.now)
    h.s.audio_chunk(syn.response_id, "Second sentence.", tone(1000), h.now)
    h.s.synthesis_done(syn.response_id, h.now)
    h.collect()
    item_id = syn.item_id
    err = h.send(
        {
            "type": "conversation.item.truncate",
            "event_id": "t1",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 2500,
        }
    )
    assert err[0]["type"] == "error"
    assert err[0]["error"]["param"] == "audio_end_ms"
    assert err[0]["error"]["event_id"] == "t1"
    ok = h.send(
        {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 700}
    )
    assert ok == [
        {
            **ok[0],
            "type": "conversation.item.truncated",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 700,
        }
    ]
    got = h.send({"type": "conversation.item.retrieve", "item_id": item_id})[0]["item"]
    assert got["content"][0]["transcript"] == "First sentence."
    # past the truncated length is now an error too
    again = h.send(
        {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 800}
    )
    assert again[0]["type"] == "error"


def test_truncate_during_synthesis_stops_it() -> None:
    h = pcmu_session()
    syn = _start_reply(h)
    h.s.audio_chunk(syn.response_id, "First sentence.", tone(1000), h.now)
    h.collect()
    h.send(
        {
            "type": "conversation.item.truncate",
            "item_id": syn.item_id,
            "content_index": 0,
            "audio_end_ms": 400,
        }
    )
    assert [c.response_id for c in h.take(CancelWork)] == [syn.response_id]
    done = h.of("response.done")[0]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"]["reason"] == "client_cancelled"


def test_response_cancel() -> None:
    h = pcmu_session()
    syn = _start_reply(h)
    new = h.send({"type": "response.cancel", "response_id": syn.response_id})
    assert new[-1]["type"] == "response.done"
    assert new[-1]["response"]["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert h.send({"type": "response.cancel"})[0]["error"]["code"] == "response_cancel_not_active"


def test_second_response_while_active_is_an_error() -> None:
    h = pcmu_session()
    h.send({"type": "response.create"})
    err = h.send({"type": "response.create", "event_id": "r2"})
    assert err[0]["error"]["code"] == "conversation_already_has_active_response"


def test_idle_timeout_commits_and_answers() -> None:
    h = pcmu_session(idle_timeout_ms=5000)
    syn = _start_reply(h, "Hello.")
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
    syn = _start_reply(h, "Hello.")
    h.s.synthesis_done(syn.response_id, h.now)
    h.collect()
    assert h.s.next_deadline_ms() is not None
    h.append_8k(tone(400))
    assert h.s.next_deadline_ms() is None


# --------------------------------------------------------------------------------------------------
# items and out-of-band responses


def test_item_create_and_text_turn() -> None:
    h = Harness()
    new = h.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "hours?"}],
            },
        }
    )
    assert h.types(new) == ["conversation.item.added", "conversation.item.done"]
    assert new[0]["item"]["id"].startswith("item_")
    assert new[0]["previous_item_id"] is None
    err = h.send(
        {
            "type": "conversation.item.create",
            "previous_item_id": "zzz",
            "event_id": "p",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]},
        }
    )
    assert err[0]["error"]["param"] == "previous_item_id"
    h.send({"type": "response.create"})
    (gen,) = h.take(GenerateReply)
    assert gen.turn.kind == "user"
    assert gen.turn.user_text == "hours?"


def test_function_call_output_turn() -> None:
    h = Harness()
    h.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "call_1", "output": '{"say": "Done."}'},
        }
    )
    h.send({"type": "response.create"})
    (gen,) = h.take(GenerateReply)
    assert gen.turn.kind == "tool_output"
    assert gen.turn.tool_output == '{"say": "Done."}'


def test_out_of_band_response_with_instructions() -> None:
    h = Harness()
    h.send(
        {
            "type": "response.create",
            "response": {
                "conversation": "none",
                "instructions": "Say exactly: Welcome.",
                "output_modalities": ["text"],
                "metadata": {"purpose": "greeting"},
            },
        }
    )
    (gen,) = h.take(GenerateReply)
    assert gen.turn.instructions == "Say exactly: Welcome."
    assert gen.turn.kind == "start"
    h.s.reply_ready(gen.response_id, Reply("Welcome."), h.now)
    h.collect()
    kinds = h.types()
    assert "conversation.item.added" not in kinds  # not written to the conversation
    assert h.of("response.output_text.done")[0]["text"] == "Welcome."
    done = h.of("response.done")[0]["response"]
    assert done["conversation_id"] is None
    assert done["metadata"] == {"purpose": "greeting"}


def test_manual_transcript_for_item_audio() -> None:
    h = pcmu_session()
    payload = base64.b64encode(codec.encode(tone(300), "pcmu")).decode()
    h.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_audio", "audio": payload}],
            },
        }
    )
    (begin,) = h.take(AsrBegin)
    assert len(begin.pcm16_8k) == 300 * 16
    assert "audio" not in h.of("conversation.item.added")[0]["item"]["content"][0]


def test_clear_during_speech_discards_recognition() -> None:
    h = pcmu_session()
    h.append_8k(quiet(500) + tone(500))
    assert h.of("input_audio_buffer.speech_started")
    h.send({"type": "input_audio_buffer.clear"})
    assert h.take(AsrDiscard)


# --------------------------------------------------------------------------------------------------
# beta names


def test_beta_names_and_shapes() -> None:
    h = Harness(beta=True)
    sess = h.events[0]["session"]
    assert sess["input_audio_format"] == "pcm16"
    assert "audio" not in sess
    new = h.send(
        {
            "type": "session.update",
            "session": {
                "input_audio_format": "g711_ulaw",
                "output_audio_format": "g711_ulaw",
                "modalities": ["text", "audio"],
                "turn_detection": {"silence_duration_ms": 400},
            },
        }
    )
    assert new[0]["type"] == "session.updated"
    assert new[0]["session"]["input_audio_format"] == "g711_ulaw"
    assert new[0]["session"]["turn_detection"]["silence_duration_ms"] == 400
    speak_turn(h)
    kinds = h.types()
    assert "conversation.item.created" in kinds
    assert "conversation.item.added" not in kinds
    assert "conversation.item.done" not in kinds
    item_id = h.of("input_audio_buffer.committed")[0]["item_id"]
    h.s.transcript_done(item_id, "hello", h.now)
    h.collect()
    (gen,) = h.take(GenerateReply)
    h.s.reply_ready(gen.response_id, Reply("Hi.", ToolCall("hang_up", "{}")), h.now)
    h.collect()
    (syn,) = h.take(Synthesize)
    h.s.audio_chunk(syn.response_id, "Hi.", tone(300), h.now)
    h.s.synthesis_done(syn.response_id, h.now)
    h.collect()
    kinds = h.types()
    assert "response.audio.delta" in kinds
    assert "response.audio_transcript.done" in kinds
    assert not any(k.startswith("response.output_audio") for k in kinds)
    assert "name" not in h.of("response.function_call_arguments.done")[0]
    done = h.of("response.done")[0]["response"]
    assert done["output"][0]["content"][0]["type"] == "audio"
    assert done["output_audio_format"] == "g711_ulaw"


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
