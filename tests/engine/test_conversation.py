"""Conversation items (create, truncate, delete, retrieve): through the session, and the core alone."""

from __future__ import annotations

import base64

from bridge.audio import codec
from bridge.engine.commands import (
    AsrBegin,
    GenerateReply,
)
from tests.helpers.engine_session import Harness, pcmu_session, start_reply, tone


def test_truncate_trims_audio_and_transcript() -> None:
    h = pcmu_session()
    syn = start_reply(h)
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
