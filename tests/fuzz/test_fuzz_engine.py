"""The embedded engine's client events: any frame gets events (an `error` at worst), never a crash."""

from __future__ import annotations

import base64
import json

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import JSON, mutated_object
from tests.helpers.engine_session import Harness

CLIENT_EVENTS = [
    {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "instructions": "x",
            "audio": {"input": {"format": {"type": "audio/pcmu"}}},
        },
    },
    {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\xff" * 160).decode()},
    {"type": "input_audio_buffer.commit"},
    {"type": "input_audio_buffer.clear"},
    {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
    },
    {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 100},
    {"type": "conversation.item.delete", "item_id": "item_1"},
    {"type": "conversation.item.retrieve", "item_id": "item_1"},
    {"type": "response.create", "response": {"instructions": "Say hi"}},
    {"type": "response.cancel"},
]


def check(h: Harness, frame: str) -> None:
    events = h.send(frame)
    assert all(isinstance(e, dict) and isinstance(e.get("type"), str) for e in events)


@given(st.text(max_size=200))
def test_any_text(text: str) -> None:
    check(Harness(), text)


@given(JSON)
def test_any_json(value: object) -> None:
    check(Harness(), json.dumps(value))


@given(st.lists(st.sampled_from(CLIENT_EVENTS).flatmap(mutated_object), min_size=1, max_size=6))
def test_mutated_client_events(events: list[dict[str, object]]) -> None:
    h = Harness()
    for event in events:
        check(h, json.dumps(event))
