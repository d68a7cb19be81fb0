"""Realtime server events as the client parses them: a `ServerEvent` or `RealtimeProtocolError`."""

from __future__ import annotations

import contextlib
import json

from hypothesis import given
from hypothesis import strategies as st

from bridge.realtime.events import SERVER_EVENT_TYPES, RealtimeProtocolError, parse_server_event
from tests.fuzz.strategies import JSON, mutated_object

TEMPLATE = {
    "event_id": "event_1",
    "response_id": "resp_1",
    "item_id": "item_1",
    "output_index": 0,
    "content_index": 0,
    "delta": "AAAA",
    "transcript": "hello",
    "call_id": "call_1",
    "name": "transfer",
    "arguments": "{}",
    "audio_start_ms": 0,
    "audio_end_ms": 10,
    "previous_item_id": None,
    "item": {"id": "item_1", "type": "message", "role": "assistant"},
    "response": {"id": "resp_1", "status": "completed", "output": []},
    "session": {"type": "realtime"},
    "error": {"type": "invalid_request_error", "code": "x", "message": "m"},
    "part": {"type": "audio"},
}


def parse(text: str | bytes) -> None:
    with contextlib.suppress(RealtimeProtocolError):
        parse_server_event(text)


@given(st.text(max_size=300) | st.binary(max_size=300))
def test_any_frame(frame: str | bytes) -> None:
    parse(frame)


@given(JSON)
def test_any_json(value: object) -> None:
    parse(json.dumps(value))


@given(st.sampled_from(sorted(SERVER_EVENT_TYPES)), st.data())
def test_every_known_type_with_mutated_fields(etype: str, data: st.DataObject) -> None:
    event = data.draw(mutated_object({"type": etype, **TEMPLATE}))
    event["type"] = etype
    parse(json.dumps(event))
