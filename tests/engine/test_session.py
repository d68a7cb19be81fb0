"""The engine session facade: session config, client-frame validation and errors, event ids, beta names."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from bridge.engine.commands import GenerateReply, SetExpected, Synthesize
from bridge.engine.responder import Reply, ToolCall
from tests.helpers.engine_session import Harness, pcmu_session, speak_turn, tone

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
