"""The response lifecycle (create, deltas, cancel, done): through the session, and the core alone."""

from __future__ import annotations

import base64
import json

from bridge.engine.commands import (
    CancelWork,
    GenerateReply,
    Synthesize,
)
from bridge.engine.responder import Reply, ToolCall
from bridge.engine.responses import DELTA_MS
from tests.helpers.engine_session import Harness, pcmu_session, speak_turn, start_reply, tone


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


def test_truncate_during_synthesis_stops_it() -> None:
    h = pcmu_session()
    syn = start_reply(h)
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
    syn = start_reply(h)
    new = h.send({"type": "response.cancel", "response_id": syn.response_id})
    assert new[-1]["type"] == "response.done"
    assert new[-1]["response"]["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert h.send({"type": "response.cancel"})[0]["error"]["code"] == "response_cancel_not_active"


def test_second_response_while_active_is_an_error() -> None:
    h = pcmu_session()
    h.send({"type": "response.create"})
    err = h.send({"type": "response.create", "event_id": "r2"})
    assert err[0]["error"]["code"] == "conversation_already_has_active_response"


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
