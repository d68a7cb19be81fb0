"""The response lifecycle (create, deltas, cancel, done): through the session, and the core alone."""

from __future__ import annotations

import base64
import json
from typing import Any

from bridge.engine.commands import (
    CancelWork,
    GenerateReply,
    Synthesize,
    WhisperTranscribe,
)
from bridge.engine.conversation import Conversation
from bridge.engine.outbox import Outbox
from bridge.engine.responder import Reply, ToolCall
from bridge.engine.responses import DELTA_MS, ReplyContext, Responses
from bridge.realtime.dialect import BETA, GA, Dialect
from bridge.realtime.events import ResponseOutputAudioDelta
from bridge.realtime.local_engine import EngineExtension
from tests.helpers.engine_session import Harness, pcmu_session, speak_turn, start_reply, tone


def test_response_waits_for_transcript_then_streams_full_sequence() -> None:
    h = pcmu_session()
    h.update(local_engine={"intents": [{"name": "billing", "phrases": ["billing"], "reply": "x"}]})
    speak_turn(h)
    item_id = h.of("input_audio_buffer.committed")[0]["item_id"]
    h.s.transcript_done(item_id, "billing please", h.now)
    h.collect()
    # an in-grammar answer: the reply starts from pocketsphinx's text; the transcript event (whisper-1)
    # waits for Whisper, which runs in the record lane
    (job,) = h.take(WhisperTranscribe)
    assert (job.item_id, job.priority) == (item_id, "record")
    assert not h.of("conversation.item.input_audio_transcription.completed")
    h.s.whisper_done(item_id, "Billing, please.", h.now)
    h.collect()
    assert (
        h.of("conversation.item.input_audio_transcription.completed")[0]["transcript"] == "Billing, please."
    )
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


# --------------------------------------------------------------------------------------------------
# the Responses core alone (a conversation, an outbox and a recording host)


class Host:
    def __init__(self) -> None:
        self.started = 0
        self.completed: list[float] = []

    def reply_context(self) -> ReplyContext:
        return ReplyContext("Be brief.", ({"type": "function", "name": "transfer"},), EngineExtension(), None)

    def reply_needs_text(self) -> bool:
        return True

    def response_started(self) -> None:
        self.started += 1

    def response_completed(self, played_until_ms: float) -> None:
        self.completed.append(played_until_ms)


def params(**over: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "modalities": ["audio"],
        "format": {"type": "audio/pcm", "rate": 24000},
        "voice": "alloy",
        "max_output_tokens": "inf",
        "instructions": None,
        "conversation": "auto",
        "metadata": None,
        "input": None,
        "tool_choice": "auto",
    }
    return {**p, **over}


def core(dialect: Dialect = GA) -> tuple[Responses, Conversation, Outbox, Host]:
    out, host = Outbox(dialect), Host()
    conv = Conversation(out)
    return Responses(out, conv, host), conv, out, host


def test_responses_core_audio_lifecycle_and_deltas() -> None:
    resp, conv, out, host = core()
    r = resp.create(params())
    assert host.started == 1
    (gen,) = out.take_commands()
    assert isinstance(gen, GenerateReply)
    assert gen.turn.session_instructions == "Be brief."
    assert gen.turn.tools == ({"type": "function", "name": "transfer"},)
    resp.reply_ready(r.id, Reply("Hello there."), 0.0)
    (syn,) = out.take_commands()
    assert isinstance(syn, Synthesize)
    assert syn.rate_hz == 24000
    out.take_events()
    pcm = bytes(48 * 450)  # 450 ms at 24 kHz
    resp.audio_chunk(r.id, "Hello there.", pcm, 1000.0)
    deltas = [e for e in out.take_events() if e["type"] == "response.output_audio.delta"]
    assert [len(base64.b64decode(d["delta"])) for d in deltas] == [9600, 9600, 2400]  # DELTA_MS each
    assert all(d["response_id"] == r.id and d["item_id"] == syn.item_id for d in deltas)
    assert resp.audio_produced
    resp.synthesis_done(r.id, 1100.0)
    assert resp.active is None
    assert host.completed == [1450.0]  # first audio at 1000 ms + 450 ms of audio
    done = out.take_events()[-1]
    assert done["type"] == "response.done"
    assert done["response"]["status"] == "completed"
    assert done["response"]["output"][0]["content"][0]["transcript"] == "Hello there."
    assert conv.get(syn.item_id) is not None
    # late results for a finished response are dropped
    resp.audio_chunk(r.id, "Late.", pcm, 2000.0)
    resp.work_failed(r.id, "late", 2000.0)
    assert out.take_events() == []


def test_responses_core_cancel_and_failure() -> None:
    resp, _conv, out, host = core()
    r = resp.create(params())
    resp.reply_ready(r.id, Reply("Hi."), 0.0)
    out.take_commands()
    resp.cancel("turn_detected")
    assert [type(c) for c in out.take_commands()] == [CancelWork]
    done = out.take_events()[-1]["response"]
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert done["output"][0]["status"] == "incomplete"
    assert host.completed == []  # no idle timer after a cancelled response
    r2 = resp.create(params(modalities=["text"]))
    resp.work_failed(r2.id, "responder crashed", 5.0)
    failed = out.take_events()[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["status_details"]["error"]["message"] == "responder crashed"
    assert failed["output_modalities"] == ["text"]


def test_responses_core_waits_for_transcript() -> None:
    resp, conv, out, _host = core()
    conv.add_user_audio("item_u", 500.0, None, transcribe=True)
    r = resp.create(params())
    assert r.wait_item == "item_u"
    assert out.take_commands() == []
    resp.transcript_settled("item_other", "x")
    assert out.take_commands() == []
    resp.transcript_settled("item_u", "opening hours")
    (gen,) = out.take_commands()
    assert isinstance(gen, GenerateReply)
    assert gen.turn.user_text == "opening hours"


def test_responses_core_beta_shape() -> None:
    resp, _conv, out, _host = core(BETA)
    r = resp.create(params(format={"type": "audio/pcmu"}))
    resp.reply_ready(r.id, Reply("Hi.", ToolCall("hang_up", "{}")), 0.0)
    resp.audio_chunk(r.id, "Hi.", bytes(1600), 0.0)
    resp.synthesis_done(r.id, 0.0)
    events = out.take_events()
    types = [e["type"] for e in events]
    assert "response.audio.delta" in types
    assert not any(t.startswith("response.output_audio") for t in types)
    (args,) = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert "name" not in args
    done = events[-1]["response"]
    assert done["output_audio_format"] == "g711_ulaw"
    assert done["modalities"] == ["text", "audio"]


def test_audio_delta_builder_matches_the_typed_event() -> None:
    for dialect in (GA, BETA):
        out = Outbox(dialect)
        out.audio_delta("resp_1", "item_1", 0, 0, "AAAA")
        out.emit(ResponseOutputAudioDelta("resp_1", "item_1", 0, 0, "AAAA"))
        fast, typed = out.take_events()
        assert fast.pop("event_id") != typed.pop("event_id")
        assert fast == typed
        assert fast["type"] == ("response.audio.delta" if dialect.beta else "response.output_audio.delta")
