"""GA / beta naming in one place: event names, part types, session and response shapes."""

from __future__ import annotations

import copy

import pytest

from bridge.engine.session_config import default_session
from bridge.realtime import events as rt
from bridge.realtime.dialect import (
    BETA,
    GA,
    ClientEventError,
    beta_patch_to_ga,
    beta_response_params,
    session_to_beta,
)


def test_client_parses_exactly_the_beta_audio_names_as_ga_classes() -> None:
    assert rt.BETA_ALIASES == {
        "response.audio.delta": "response.output_audio.delta",
        "response.audio.done": "response.output_audio.done",
        "response.audio_transcript.delta": "response.output_audio_transcript.delta",
        "response.audio_transcript.done": "response.output_audio_transcript.done",
    }
    # the beta-era item event keeps its own class; beta text events stay unknown, as before
    assert isinstance(
        rt.parse_server_event('{"type":"conversation.item.created","item":{}}'), rt.ConversationItemCreated
    )
    assert isinstance(rt.parse_server_event('{"type":"response.text.delta"}'), rt.UnknownServerEvent)


def test_event_names() -> None:
    assert GA.event_type("response.output_audio.delta") == "response.output_audio.delta"
    assert BETA.event_type("response.output_audio.delta") == "response.audio.delta"
    assert BETA.event_type("conversation.item.added") == "conversation.item.created"
    assert BETA.event_type("conversation.item.done") is None
    assert BETA.event_type("response.done") == "response.done"
    event = {"type": "input_audio_buffer.timeout_triggered"}
    assert GA.wire(dict(event)) == event
    assert BETA.wire(dict(event)) is None
    call = {"type": "response.function_call_arguments.done", "name": "transfer", "arguments": "{}"}
    assert GA.wire(dict(call)) == call
    assert BETA.wire(dict(call)) == {"type": "response.function_call_arguments.done", "arguments": "{}"}
    assert (GA.part_type("output_audio"), BETA.part_type("output_audio")) == ("output_audio", "audio")
    assert BETA.part_type("input_text") == "input_text"


def test_session_shapes() -> None:
    config = default_session("sess_1", "gpt-realtime", now_s=0)
    config["audio"]["input"]["turn_detection"]["idle_timeout_ms"] = 5000
    config["ext"] = {"x": 1}
    before = copy.deepcopy(config)
    assert GA.session(config) is config
    beta = BETA.session(config, ("ext",))
    assert config == before
    assert beta == session_to_beta(config, ("ext",))
    assert beta["input_audio_format"] == "pcm16"
    assert beta["modalities"] == ["text", "audio"]
    assert "idle_timeout_ms" not in beta["turn_detection"]  # beta has no idle timeout
    assert beta["ext"] == {"x": 1}
    assert "audio" not in beta


def test_beta_session_patch() -> None:
    patch = {
        "input_audio_format": "g711_ulaw",
        "modalities": ["text"],
        "turn_detection": {"silence_duration_ms": 400},
        "temperature": 0.7,
        "ext": {"y": 2},
    }
    assert beta_patch_to_ga(patch, ("ext",)) == {
        "type": "realtime",
        "output_modalities": ["text"],
        "ext": {"y": 2},
        "audio": {
            "input": {
                "format": {"type": "audio/pcmu"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 400},
            }
        },
    }
    assert GA.session_patch(patch) is patch
    with pytest.raises(ClientEventError) as err:
        BETA.session_patch({"ext": 1})  # not passed through unless named
    assert (err.value.code, err.value.param) == ("unknown_parameter", "session.ext")
    with pytest.raises(ClientEventError) as err:
        BETA.session_patch({"output_audio_format": "opus"})
    assert err.value.param == "session.output_audio_format"


def test_response_shapes() -> None:
    fmt = {"type": "audio/pcmu"}
    assert GA.response_shape(["audio"], fmt, "alloy") == {
        "output_modalities": ["audio"],
        "audio": {"output": {"format": fmt, "voice": "alloy"}},
    }
    assert BETA.response_shape(["text"], fmt, "alloy") == {
        "modalities": ["text"],
        "voice": "alloy",
        "output_audio_format": "g711_ulaw",
    }
    assert beta_response_params({"modalities": ["audio", "text"], "output_audio_format": "g711_alaw"}) == {
        "output_modalities": (["audio"], "response.modalities"),
        "format": ({"type": "audio/pcma"}, "response.output_audio_format"),
    }
    with pytest.raises(ClientEventError) as err:
        beta_response_params({"modalities": []})
    assert err.value.param == "response.modalities"
