"""Realtime GA events: client encoding (checked against the SDK's models), server parsing, aliases."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import ProtocolError
from bridge.realtime import events as rt
from bridge.realtime.events import RealtimeProtocolError, parse_server_event
from tests.helpers.realtime_schema import (
    client_event_types,
    server_event_types,
    validate_client_event,
    validate_server_event,
)

DATA = Path(__file__).resolve().parent.parent / "data"


def jsonl(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- client events

CLIENT_EVENTS: list[tuple[rt.ClientEvent, dict[str, Any]]] = [
    (
        rt.SessionUpdate(session={"type": "realtime", "instructions": "x"}),
        {"type": "session.update", "session": {"type": "realtime", "instructions": "x"}},
    ),
    (
        rt.SessionUpdate(session={"type": "realtime"}, event_id="e1"),
        {"type": "session.update", "session": {"type": "realtime"}, "event_id": "e1"},
    ),
    (rt.InputAudioBufferAppend(audio="AAAA"), {"type": "input_audio_buffer.append", "audio": "AAAA"}),
    (rt.InputAudioBufferCommit(), {"type": "input_audio_buffer.commit"}),
    (rt.InputAudioBufferCommit(event_id="c"), {"type": "input_audio_buffer.commit", "event_id": "c"}),
    (rt.InputAudioBufferClear(), {"type": "input_audio_buffer.clear"}),
    (
        rt.ConversationItemCreate(item={"type": "function_call_output", "call_id": "call_1", "output": "{}"}),
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "call_1", "output": "{}"},
        },
    ),
    (
        rt.ConversationItemCreate(
            item={"type": "message", "role": "system", "content": [{"type": "input_text", "text": "hi"}]},
            previous_item_id="root",
        ),
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "hi"}]},
            "previous_item_id": "root",
        },
    ),
    (
        rt.ConversationItemTruncate(item_id="item_1", content_index=0, audio_end_ms=1234),
        {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 1234},
    ),
    (rt.ResponseCreate(), {"type": "response.create"}),
    (
        rt.ResponseCreate(response={"instructions": "x", "output_modalities": ["audio"]}),
        {"type": "response.create", "response": {"instructions": "x", "output_modalities": ["audio"]}},
    ),
    (rt.ResponseCancel(), {"type": "response.cancel"}),
    (rt.ResponseCancel(response_id="resp_1"), {"type": "response.cancel", "response_id": "resp_1"}),
]


@pytest.mark.parametrize(("ev", "expected"), CLIENT_EVENTS)
def test_client_event_to_dict_encode_and_sdk_schema(ev: rt.ClientEvent, expected: dict[str, Any]) -> None:
    assert ev.to_dict() == expected
    assert json.loads(rt.encode_client_event(ev)) == expected
    validate_client_event(expected)


def test_every_bridge_client_event_type_is_in_the_sdk_union() -> None:
    built = {ev.type for ev, _ in CLIENT_EVENTS}
    assert built <= client_event_types()
    # All eight kinds the bridge may send are covered above.
    assert len(built) == 8


def test_append_audio_json_fast_path_matches_encoder() -> None:
    for payload in (b"", b"\x00", b"\xff" * 160, bytes(range(256)) * 4):
        b64 = base64.b64encode(payload).decode()
        fast = rt.append_audio_json(b64)
        assert json.loads(fast) == rt.InputAudioBufferAppend(audio=b64).to_dict()
        assert fast == rt.encode_client_event(rt.InputAudioBufferAppend(audio=b64))
        validate_client_event(json.loads(fast))


def test_encode_keeps_unicode_and_escapes_controls() -> None:
    ev = rt.SessionUpdate(session={"type": "realtime", "instructions": 'Sag "Grüß Gott"\n☎'})
    text = rt.encode_client_event(ev)
    assert json.loads(text) == ev.to_dict()
    assert "\n" not in text


def test_client_golden_matches_builders_and_sdk() -> None:
    """tests/data/realtime_client_call.jsonl: what the bridge sends during one call."""
    frames = (DATA / "realtime_client_call.jsonl").read_text().splitlines()
    objs = [json.loads(frame) for frame in frames]
    for obj in objs:
        validate_client_event(obj)
    types = [obj["type"] for obj in objs]
    assert set(types) == {ev.type for ev, _ in CLIENT_EVENTS}
    # Rebuild each frame from the typed classes and compare text exactly (compact JSON).
    builders: dict[str, Any] = {
        "session.update": lambda o: rt.SessionUpdate(o["session"], o.get("event_id")),
        "conversation.item.create": lambda o: rt.ConversationItemCreate(
            o["item"], o.get("previous_item_id"), o.get("event_id")
        ),
        "conversation.item.truncate": lambda o: rt.ConversationItemTruncate(
            o["item_id"], o["content_index"], o["audio_end_ms"], o.get("event_id")
        ),
        "response.create": lambda o: rt.ResponseCreate(o.get("response"), o.get("event_id")),
        "response.cancel": lambda o: rt.ResponseCancel(o.get("response_id"), o.get("event_id")),
        "input_audio_buffer.commit": lambda o: rt.InputAudioBufferCommit(o.get("event_id")),
        "input_audio_buffer.clear": lambda o: rt.InputAudioBufferClear(o.get("event_id")),
    }
    for frame, obj in zip(frames, objs, strict=True):
        if obj["type"] == "input_audio_buffer.append":
            assert frame == rt.append_audio_json(obj["audio"])
        else:
            assert frame == rt.encode_client_event(builders[obj["type"]](obj))


# ---------------------------------------------------------------- server events: goldens

EXPECTED_CLASSES = {
    "session.created": rt.SessionCreated,
    "session.updated": rt.SessionUpdated,
    "input_audio_buffer.speech_started": rt.InputAudioBufferSpeechStarted,
    "input_audio_buffer.speech_stopped": rt.InputAudioBufferSpeechStopped,
    "input_audio_buffer.committed": rt.InputAudioBufferCommitted,
    "conversation.item.added": rt.ConversationItemAdded,
    "conversation.item.done": rt.ConversationItemDone,
    "conversation.item.created": rt.ConversationItemCreated,
    "conversation.item.truncated": rt.ConversationItemTruncated,
    "conversation.item.input_audio_transcription.completed": rt.InputAudioTranscriptionCompleted,
    "response.created": rt.ResponseCreated,
    "response.done": rt.ResponseDone,
    "response.output_item.added": rt.ResponseOutputItemAdded,
    "response.output_item.done": rt.ResponseOutputItemDone,
    "response.output_audio.delta": rt.ResponseOutputAudioDelta,
    "response.output_audio.done": rt.ResponseOutputAudioDone,
    "response.output_audio_transcript.delta": rt.ResponseOutputAudioTranscriptDelta,
    "response.output_audio_transcript.done": rt.ResponseOutputAudioTranscriptDone,
    "response.function_call_arguments.done": rt.ResponseFunctionCallArgumentsDone,
    "error": rt.Error,
}


def test_modelled_server_types_are_exactly_the_expected_ones() -> None:
    assert set(EXPECTED_CLASSES) == rt.SERVER_EVENT_TYPES
    assert server_event_types() >= rt.SERVER_EVENT_TYPES


def test_ga_server_golden_parses_validates_and_round_trips() -> None:
    objs = jsonl("realtime_server_ga.jsonl")
    seen_types = set()
    for obj in objs:
        validate_server_event(obj)  # the golden itself is what the SDK expects
        ev = parse_server_event(json.dumps(obj))
        seen_types.add(obj["type"])
        expected = EXPECTED_CLASSES.get(obj["type"], rt.UnknownServerEvent)
        assert type(ev) is expected, obj["type"]
        assert ev.event_id == obj["event_id"]
        out = ev.to_dict()
        # Every modelled field comes back exactly as the server sent it...
        for key, value in out.items():
            assert obj[key] == value, (obj["type"], key)
        # ...a second parse gives the same event, and what we would emit is valid for the SDK.
        assert parse_server_event(json.dumps(out)) == ev
        validate_server_event(out)
    assert set(EXPECTED_CLASSES) <= seen_types  # the golden exercises every modelled class


def test_ga_golden_helpers() -> None:
    events = [parse_server_event(json.dumps(obj)) for obj in jsonl("realtime_server_ga.jsonl")]
    added = [ev for ev in events if isinstance(ev, rt.ConversationItemAdded)]
    assert [(a.item_id, a.role, a.item_type) for a in added] == [
        ("item_CHx3uuuuuuuuuuuu", "user", "message"),
        ("item_CHx4aaaaaaaaaaaa", "assistant", "message"),
    ]
    assert added[1].previous_item_id == "item_CHx3uuuuuuuuuuuu"
    created = [ev for ev in events if isinstance(ev, rt.ResponseCreated)]
    assert [c.response_id for c in created] == [
        "resp_CHx2aaaaaaaaaaaa",
        "resp_CHx6ffffffffffff",
        "resp_CHx8bbbbbbbbbbbb",
    ]
    done = [ev for ev in events if isinstance(ev, rt.ResponseDone)]
    assert [(d.response_id, d.status) for d in done] == [
        ("resp_CHx2aaaaaaaaaaaa", "completed"),
        ("resp_CHx6ffffffffffff", "completed"),
        ("resp_CHx8bbbbbbbbbbbb", "cancelled"),
    ]
    assert done[2].status_details == {"type": "cancelled", "reason": "turn_detected"}
    deltas = [ev for ev in events if isinstance(ev, rt.ResponseOutputAudioDelta)]
    assert [len(d.audio()) for d in deltas] == [480, 800, 1600]
    call = next(ev for ev in events if isinstance(ev, rt.ResponseFunctionCallArgumentsDone))
    assert (call.name, call.call_id, call.parsed_arguments()) == (
        "transfer",
        "call_Qx1",
        {"target": "billing"},
    )
    err = next(ev for ev in events if isinstance(ev, rt.Error))
    assert err.error.code == "response_cancel_not_active"
    assert err.error.event_id == "bridge_cancel_7"
    assert err.error.param is None
    truncated = next(ev for ev in events if isinstance(ev, rt.ConversationItemTruncated))
    assert (truncated.item_id, truncated.content_index, truncated.audio_end_ms) == (
        "item_CHx9bbbbbbbbbbbb",
        0,
        640,
    )
    started = [ev for ev in events if isinstance(ev, rt.InputAudioBufferSpeechStarted)]
    assert [s.audio_start_ms for s in started] == [1120, 9040]
    transcript = next(ev for ev in events if isinstance(ev, rt.InputAudioTranscriptionCompleted))
    assert transcript.transcript == "I'd like to talk about my bill."
    unknown = [ev for ev in events if isinstance(ev, rt.UnknownServerEvent)]
    assert {u.type for u in unknown} == {
        "rate_limits.updated",
        "response.content_part.added",
        "response.content_part.done",
        "response.function_call_arguments.delta",
    }


def test_beta_aliases_parse_to_ga_classes() -> None:
    events = [parse_server_event(json.dumps(obj)) for obj in jsonl("realtime_server_beta.jsonl")]
    assert [type(ev) for ev in events] == [
        rt.ResponseOutputAudioDelta,
        rt.ResponseOutputAudioTranscriptDelta,
        rt.ResponseOutputAudioDone,
        rt.ResponseOutputAudioTranscriptDone,
        rt.ResponseFunctionCallArgumentsDone,
        rt.UnknownServerEvent,  # response.text.* is not something the bridge acts on
    ]
    delta = events[0]
    assert isinstance(delta, rt.ResponseOutputAudioDelta)
    assert delta.audio() == base64.b64decode(jsonl("realtime_server_beta.jsonl")[0]["delta"])
    assert delta.to_dict()["type"] == "response.output_audio.delta"  # re-emitted under the GA name
    call = events[4]
    assert isinstance(call, rt.ResponseFunctionCallArgumentsDone)
    assert call.name == ""  # beta servers do not name the call here
    assert call.parsed_arguments() == {}


# ---------------------------------------------------------------- server events: errors


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("not json", "not JSON"),
        ("", "not JSON"),
        (b"\xff\xfe{", "not JSON"),
        ("[1, 2, 3]", "JSON object"),
        ("42", "JSON object"),
        ("{}", "no 'type'"),
        ('{"type": null}', "no 'type'"),
        ('{"type": 7}', "'type' must be a string"),
        ('{"type": "session.created", "event_id": "e"}', "session.created: missing field 'session'"),
        ('{"type": "session.created", "session": []}', "'session' must be an object"),
        ('{"type": "error", "event_id": "e"}', "error: missing field 'error'"),
        ('{"type": "error", "error": {"message": "m"}}', "missing field 'type'"),
        ('{"type": "error", "error": {"type": "x", "code": 5}}', "'code' must be a string"),
        ('{"type": "session.created", "session": {}, "event_id": 5}', "'event_id' must be a string"),
        (
            '{"type": "conversation.item.truncated", "item_id": "i", "content_index": 0,'
            ' "audio_end_ms": "9"}',
            "'audio_end_ms' must be an integer",
        ),
        (
            '{"type": "conversation.item.truncated", "item_id": "i", "content_index": true,'
            ' "audio_end_ms": 9}',
            "'content_index' must be an integer",
        ),
        (
            '{"type": "input_audio_buffer.speech_started", "item_id": "i"}',
            "missing field 'audio_start_ms'",
        ),
        (
            '{"type": "response.output_audio.delta", "response_id": "r", "item_id": "i", "output_index": 0,'
            ' "content_index": 0}',
            "response.output_audio.delta: missing field 'delta'",
        ),
        (
            '{"type": "response.output_audio.delta", "response_id": "r", "item_id": "i", "output_index": "0",'
            ' "content_index": 0, "delta": ""}',
            "'output_index' must be an integer",
        ),
        (
            '{"type": "response.audio.delta", "response_id": 1, "item_id": "i", "output_index": 0,'
            ' "content_index": 0, "delta": ""}',
            r"response\.audio\.delta: field 'response_id' must be a string",
        ),
        (
            '{"type": "response.function_call_arguments.done", "response_id": "r", "item_id": "i",'
            ' "output_index": 0, "name": "f", "arguments": "{}"}',
            "missing field 'call_id'",
        ),
    ],
)
def test_malformed_server_events(text: str | bytes, needle: str) -> None:
    with pytest.raises(RealtimeProtocolError, match=needle) as info:
        parse_server_event(text)
    assert isinstance(info.value, ProtocolError)


def test_bytes_frames_parse_like_text() -> None:
    raw = b'{"type":"input_audio_buffer.speech_stopped","event_id":"e","audio_end_ms":5,"item_id":"i"}'
    assert parse_server_event(raw) == rt.InputAudioBufferSpeechStopped(
        audio_end_ms=5, item_id="i", event_id="e"
    )


def test_missing_event_id_is_tolerated_as_empty() -> None:
    ev = parse_server_event('{"type":"input_audio_buffer.committed","item_id":"i"}')
    assert ev == rt.InputAudioBufferCommitted(item_id="i")
    assert ev.event_id == ""


def test_unknown_event_keeps_everything() -> None:
    obj = {"type": "output_audio_buffer.started", "event_id": "e9", "response_id": "r"}
    ev = parse_server_event(json.dumps(obj))
    assert ev == rt.UnknownServerEvent("output_audio_buffer.started", obj)
    assert ev.event_id == "e9"
    assert ev.to_dict() == obj


def test_audio_delta_with_bad_base64() -> None:
    ev = parse_server_event(
        '{"type":"response.output_audio.delta","response_id":"r","item_id":"i","output_index":0,'
        '"content_index":0,"delta":"not base64!"}'
    )
    assert isinstance(ev, rt.ResponseOutputAudioDelta)
    with pytest.raises(RealtimeProtocolError, match="not valid base64"):
        ev.audio()


def test_function_arguments_with_bad_json() -> None:
    ev = rt.ResponseFunctionCallArgumentsDone("r", "i", 0, "c", "f", "{oops")
    with pytest.raises(RealtimeProtocolError, match="arguments are not JSON"):
        ev.parsed_arguments()


def test_item_helpers_with_odd_items() -> None:
    ev = rt.ConversationItemDone(item={"id": 5, "type": "function_call"})
    assert ev.item_id is None
    assert ev.role is None
    assert ev.item_type == "function_call"
    done = rt.ResponseDone(response={"status": "failed", "status_details": {"type": "failed", "error": {}}})
    assert done.response_id is None
    assert done.status == "failed"
    assert done.status_details == {"type": "failed", "error": {}}


# ---------------------------------------------------------------- the SDK validators themselves


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"type": "input_audio_buffer.append"}, "audio: Field required"),
        ({"type": "input_audio_buffer.append", "audio": 5}, "valid string"),
        ({"type": "conversation.item.truncate", "item_id": "i", "content_index": 0}, "audio_end_ms"),
        ({"type": "response.cancel", "response_id": None, "extra_key": 1}, "does not know"),
        ({"type": "transcription_session.update", "session": {}}, "not in the SDK's GA union"),
        ({"session": {}}, "no string 'type'"),
        (
            {"type": "conversation.item.create", "item": {"type": "message", "role": "robot", "content": []}},
            "does not match",
        ),
    ],
)
def test_client_validator_catches_mistakes(data: dict[str, Any], needle: str) -> None:
    with pytest.raises(AssertionError, match=needle):
        validate_client_event(data)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"type": "response.audio.delta", "event_id": "e"}, "not in the SDK's GA union"),
        ({"type": "response.done", "event_id": "e"}, "response: Field required"),
        ({"type": "input_audio_buffer.speech_started", "audio_start_ms": 1, "item_id": "i"}, "event_id"),
        (
            {
                "type": "conversation.item.truncated",
                "event_id": "e",
                "item_id": "i",
                "content_index": 0,
                "audio_end_ms": 1,
                "surprise": True,
            },
            "does not know",
        ),
    ],
)
def test_server_validator_catches_mistakes(data: dict[str, Any], needle: str) -> None:
    with pytest.raises(AssertionError, match=needle):
        validate_server_event(data)
