"""Conversation items (create, truncate, delete, retrieve): through the session, and the core alone."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from bridge.engine.commands import (
    AsrBegin,
    GenerateReply,
)
from bridge.engine.conversation import Conversation, Item
from bridge.engine.outbox import Outbox
from bridge.engine.session_config import EventError
from bridge.media import g711
from bridge.realtime.dialect import BETA
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
    payload = base64.b64encode(g711.encode(tone(300), "pcmu")).decode()
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


# --------------------------------------------------------------------------------------------------
# the Conversation core alone


def user_text(text: str, item_id: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": text}],
    }
    if item_id:
        item["id"] = item_id
    return {"type": "conversation.item.create", "item": item}


def no_audio(_audio: Any) -> bytes:
    raise AssertionError("no audio expected")


def test_conversation_core_order_and_previous_ids() -> None:
    out = Outbox()
    conv = Conversation(out)
    conv.on_create(user_text("a", "item_a"), no_audio)
    conv.on_create(user_text("c", "item_c"), no_audio)
    conv.on_create({**user_text("b", "item_b"), "previous_item_id": "item_a"}, no_audio)
    conv.on_create({**user_text("z", "item_z"), "previous_item_id": "root"}, no_audio)
    assert conv.ids() == ["item_z", "item_a", "item_b", "item_c"]
    added = [e for e in out.take_events() if e["type"] == "conversation.item.added"]
    assert [(e["item"]["id"], e["previous_item_id"]) for e in added] == [
        ("item_a", None),
        ("item_c", "item_a"),
        ("item_b", "item_a"),
        ("item_z", None),
    ]
    with pytest.raises(EventError) as err:
        conv.on_create(user_text("again", "item_a"), no_audio)
    assert err.value.param == "item.id"
    assert conv.history() == (("user", "z"), ("user", "a"), ("user", "b"), ("user", "c"))
    out.take_events()
    conv.on_delete({"item_id": "item_b"})
    (deleted,) = out.take_events()
    assert (deleted["type"], deleted["item_id"]) == ("conversation.item.deleted", "item_b")
    assert conv.ids() == ["item_z", "item_a", "item_c"]
    with pytest.raises(EventError):
        conv.on_retrieve({"item_id": "item_b"})


def test_conversation_core_truncate_limits_and_transcript() -> None:
    out = Outbox()
    conv = Conversation(out)
    data = {
        "id": "item_bot",
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_audio", "transcript": "One. Two. Three."}],
    }
    item = Item(data, audio_ms=3000.0, sentences=[(0.0, "One."), (1000.0, "Two."), (2000.0, "Three.")])
    conv.add(item, conv.last_id())
    out.take_events()
    with pytest.raises(EventError) as err:
        conv.on_truncate({"item_id": "item_bot", "content_index": 0, "audio_end_ms": 3001})
    assert err.value.param == "audio_end_ms"
    assert "3000ms is shorter than 3001ms" in err.value.message
    with pytest.raises(EventError) as err:
        conv.on_truncate({"item_id": "item_bot", "content_index": 1, "audio_end_ms": 10})
    assert err.value.param == "content_index"
    assert conv.on_truncate({"item_id": "item_bot", "content_index": 0, "audio_end_ms": 1000}) is item
    assert data["content"][0]["transcript"] == "One."  # "Two." starts at 1000 ms: not heard
    assert item.audio_ms == 1000.0
    (ev,) = out.take_events()
    assert (ev["type"], ev["audio_end_ms"]) == ("conversation.item.truncated", 1000)
    conv.on_create(user_text("hi"), no_audio)
    with pytest.raises(EventError) as err:  # a user item has no assistant audio to truncate
        conv.on_truncate({"item_id": conv.last_id(), "content_index": 0, "audio_end_ms": 0})
    assert err.value.param == "item_id"


def test_conversation_core_turn_source_waits_for_pending_transcript() -> None:
    conv = Conversation(Outbox())
    assert conv.turn_source(None) == ("start", "", None, None)
    item = conv.add_user_audio("item_u", 800.0, None, transcribe=True)
    assert conv.turn_source(None) == ("user", "", None, "item_u")
    assert conv.set_transcript("item_u", "billing") is item
    assert conv.turn_source(None) == ("user", "billing", None, None)
    assert conv.turn_source([{"type": "function_call_output", "output": "ok"}]) == (
        "tool_output",
        "",
        "ok",
        None,
    )
    with pytest.raises(EventError) as err:
        conv.turn_source([{"type": "item_reference", "id": "nope"}])
    assert err.value.param == "response.input"


def test_conversation_core_beta_part_names() -> None:
    out = Outbox(BETA)
    conv = Conversation(out)
    item = {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "Hi."}]}
    conv.on_create({"type": "conversation.item.create", "item": item}, no_audio)
    stored = conv.get(conv.last_id() or "")
    assert stored is not None
    assert stored.data["content"][0]["type"] == "output_text"  # stored GA-shaped
    (created,) = out.take_events()  # beta has no conversation.item.done
    assert created["type"] == "conversation.item.created"
    assert created["item"]["content"][0]["type"] == "text"
