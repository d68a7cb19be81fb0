"""The response lifecycle of one engine session. No I/O.

At most one response runs at a time (`active`). `create` announces it (`response.created`) and asks the
responder for a reply (`GenerateReply`) as soon as the user's transcript is there; `reply_ready` opens the
assistant message and asks for speech (`Synthesize`), or streams text; `audio_chunk` turns synthesized
speech into `response.output_audio.delta` events of at most DELTA_MS each (G.711 encoded here), with
their transcript deltas; `synthesis_done` closes the message, adds the tool call if the reply has one and
ends with `response.done`. `cancel` ends it early with `status_details.reason` `turn_detected` or
`client_cancelled`; `work_failed` with `failed`. Results for a response that is no longer active are
dropped.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from bridge.engine.commands import CancelWork, GenerateReply, Synthesize
from bridge.engine.conversation import Conversation, Item
from bridge.engine.outbox import Outbox
from bridge.engine.responder import Reply, ToolCall, Turn, TurnKind
from bridge.media import g711
from bridge.realtime.events import (
    ResponseContentPartAdded,
    ResponseContentPartDone,
    ResponseCreated,
    ResponseDone,
    ResponseFunctionCallArgumentsDelta,
    ResponseFunctionCallArgumentsDone,
    ResponseOutputAudioDone,
    ResponseOutputAudioTranscriptDelta,
    ResponseOutputAudioTranscriptDone,
    ResponseOutputItemAdded,
    ResponseOutputItemDone,
    ResponseOutputTextDelta,
    ResponseOutputTextDone,
)
from bridge.realtime.local_engine import ChatBackend, EngineExtension

DELTA_MS = 200  # audio per response.output_audio.delta
CancelReason = Literal["turn_detected", "client_cancelled"]


@dataclass(frozen=True, slots=True)
class ReplyContext:
    """What a reply needs from the session when it starts."""

    instructions: str
    tools: tuple[dict[str, Any], ...]
    extension: EngineExtension
    chat: ChatBackend | None


class ResponseHost(Protocol):
    def reply_context(self) -> ReplyContext: ...

    def reply_needs_text(self) -> bool:
        """Does a reply to the caller's words depend on them (else it starts without the transcript)?"""

    def response_started(self) -> None: ...

    def response_completed(self, played_until_ms: float) -> None: ...


@dataclass(slots=True)
class Response:
    id: str
    out_of_band: bool
    modalities: list[str]
    out_format: dict[str, Any]
    voice: Any
    max_output_tokens: Any
    metadata: Any
    turn_kind: TurnKind
    instructions: str | None
    user_text: str
    tool_output: str | None
    wait_item: str | None  # user item whose transcript the reply needs
    tool_choice: Any = "auto"
    output: list[Item] = field(default_factory=list)
    message: Item | None = None  # assistant message being streamed
    pending_tool: ToolCall | None = None
    started: bool = False  # GenerateReply issued
    first_audio_at_ms: float | None = None
    audio_ms: float = 0.0

    def locator(self, item: Item) -> tuple[str, str, int, int]:
        """(response_id, item_id, output_index, content_index) of the item's first content part."""
        return self.id, item.data["id"], self.output.index(item), 0


class Responses:
    def __init__(self, out: Outbox, conversation: Conversation, host: ResponseHost) -> None:
        self._out = out
        self._conv = conversation
        self._host = host
        self.conversation_id = "conv_" + out.rand
        self.active: Response | None = None
        self.audio_produced = False  # any audio sent this session (the voice is then fixed)

    # -- lifecycle ---------------------------------------------------------------------------------

    def create(self, p: dict[str, Any], *, kind_override: TurnKind | None = None) -> Response:
        """Start a response with resolved parameters `p` (session_config.response_params)."""
        kind, user_text, tool_output, wait_item = self._conv.turn_source(p["input"])
        if wait_item is not None and not self._host.reply_needs_text():
            wait_item = None  # nothing to understand: the reply (the fallback) starts at once
        resp = Response(
            id=self._out.new_id("resp_"),
            out_of_band=p["conversation"] == "none",
            modalities=p["modalities"],
            out_format=p["format"],
            voice=p["voice"],
            max_output_tokens=p["max_output_tokens"],
            metadata=p["metadata"],
            turn_kind=kind if kind_override is None else kind_override,
            instructions=p["instructions"],
            user_text=user_text,
            tool_output=tool_output,
            wait_item=wait_item if kind_override is None else None,
            tool_choice=p["tool_choice"],
        )
        self.active = resp
        self._host.response_started()
        self._out.emit(ResponseCreated(self._wire(resp, "in_progress")))
        if resp.wait_item is None:
            self._start_reply(resp)
        return resp

    def transcript_settled(self, item_id: str, text: str | None) -> None:
        """The user item's transcript arrived (None: it will not): a reply waiting for it starts."""
        resp = self.active
        if resp is not None and resp.wait_item == item_id and not resp.started:
            if text is not None:
                resp.user_text = text
            resp.wait_item = None
            self._start_reply(resp)

    def _start_reply(self, resp: Response) -> None:
        resp.started = True
        ctx = self._host.reply_context()
        turn = Turn(
            kind=resp.turn_kind,
            user_text=resp.user_text,
            instructions=resp.instructions,
            session_instructions=ctx.instructions,
            history=() if resp.out_of_band else self._conv.history(),
            tools=ctx.tools,
            allow_tools=resp.tool_choice != "none",
            tool_output=resp.tool_output,
            extension=ctx.extension,
            chat=ctx.chat,
        )
        self._out.command(GenerateReply(resp.id, turn))

    def reply_ready(self, response_id: str, reply: Reply, now_ms: float) -> None:
        resp = self.active
        if resp is None or resp.id != response_id:
            return
        resp.pending_tool = reply.tool
        if not reply.text:
            self._finish_outputs(resp, now_ms)
            return
        audio = resp.modalities == ["audio"]
        data: dict[str, Any] = {
            "id": self._out.new_id("item_"),
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        item = self._open_item(resp, data)
        resp.message = item
        part = {"type": "audio", "transcript": ""} if audio else {"type": "text", "text": ""}
        self._out.emit(ResponseContentPartAdded(*resp.locator(item), part))
        if audio:
            data["content"] = [{"type": "output_audio", "transcript": ""}]
            rate = g711.RATE_24K if resp.out_format["type"] == "audio/pcm" else g711.RATE_8K
            self._out.command(Synthesize(resp.id, data["id"], reply.text, rate, reply.source != "chat"))
            return
        data["content"] = [{"type": "output_text", "text": reply.text}]
        loc = resp.locator(item)
        self._out.emit(ResponseOutputTextDelta(*loc, reply.text))
        self._out.emit(ResponseOutputTextDone(*loc, reply.text))
        self._out.emit(ResponseContentPartDone(*loc, {"type": "text", "text": reply.text}))
        self._close_item(resp, item, "completed")
        resp.message = None
        self._finish_outputs(resp, now_ms)

    def audio_chunk(self, response_id: str, sentence: str, pcm16: bytes, now_ms: float) -> None:
        """One synthesized sentence (PCM16 at the rate Synthesize asked for)."""
        resp = self.active
        if resp is None or resp.id != response_id or resp.message is None:
            return
        item = resp.message
        loc = resp.locator(item)
        part = item.data["content"][0]
        text = sentence if not part["transcript"] else " " + sentence
        part["transcript"] += text
        item.sentences.append((item.audio_ms, sentence))
        emit = self._out.emit
        emit(ResponseOutputAudioTranscriptDelta(*loc, text))
        fmt = resp.out_format["type"]
        if fmt == "audio/pcm":
            payload, bytes_per_ms = pcm16, 48
        else:
            payload = g711.encode(pcm16[: len(pcm16) & ~1], "pcmu" if fmt == "audio/pcmu" else "pcma")
            bytes_per_ms = 8
        if resp.first_audio_at_ms is None and payload:
            resp.first_audio_at_ms = now_ms
        self.audio_produced = True
        step = DELTA_MS * bytes_per_ms
        b64 = base64.b64encode
        audio_delta = self._out.audio_delta  # ResponseOutputAudioDelta, built without the object
        for i in range(0, len(payload), step):
            chunk = payload[i : i + step]
            audio_delta(*loc, b64(chunk).decode("ascii"))
            item.audio_ms += len(chunk) / bytes_per_ms
        resp.audio_ms = item.audio_ms

    def synthesis_done(self, response_id: str, now_ms: float) -> None:
        resp = self.active
        if resp is None or resp.id != response_id or resp.message is None:
            return
        self._close_message(resp, "completed")
        self._finish_outputs(resp, now_ms)

    def cancel(self, reason: CancelReason) -> None:
        """End the active response as cancelled (the caller checks there is one)."""
        resp = self.active
        assert resp is not None
        self._out.command(CancelWork(resp.id))
        self._close_message(resp, "incomplete")
        self.active = None
        self._out.emit(ResponseDone(self._wire(resp, "cancelled", {"type": "cancelled", "reason": reason})))

    def work_failed(self, response_id: str, message: str, now_ms: float) -> None:
        resp = self.active
        if resp is None or resp.id != response_id:
            return
        self._close_message(resp, "incomplete")
        error = {"type": "server_error", "code": "engine_error", "message": message}
        self._end(resp, "failed", {"type": "failed", "error": error}, now_ms)

    # -- internals ---------------------------------------------------------------------------------

    def _open_item(self, resp: Response, data: dict[str, Any]) -> Item:
        item = Item(data)
        previous = self._conv.last_id()
        resp.output.append(item)
        self._out.emit(ResponseOutputItemAdded(resp.id, len(resp.output) - 1, self._conv.wire_item(data)))
        if not resp.out_of_band:
            self._conv.open(item, previous)
        return item

    def _close_item(self, resp: Response, item: Item, status: str) -> None:
        item.data["status"] = status
        wire = self._conv.close(item) if not resp.out_of_band else self._conv.wire_item(item.data)
        self._out.emit(ResponseOutputItemDone(resp.id, resp.output.index(item), wire))

    def _close_message(self, resp: Response, status: str) -> None:
        item = resp.message
        if item is None:
            return
        resp.message = None
        loc = resp.locator(item)
        part = item.data["content"][0] if item.data["content"] else {"type": "output_audio", "transcript": ""}
        if part["type"] == "output_audio":
            self._out.emit(ResponseOutputAudioDone(*loc))
            self._out.emit(ResponseOutputAudioTranscriptDone(*loc, part["transcript"]))
            self._out.emit(ResponseContentPartDone(*loc, {"type": "audio", "transcript": part["transcript"]}))
        else:
            text = part.get("text", "")
            self._out.emit(ResponseOutputTextDone(*loc, text))
            self._out.emit(ResponseContentPartDone(*loc, {"type": "text", "text": text}))
        self._close_item(resp, item, status)

    def _finish_outputs(self, resp: Response, now_ms: float) -> None:
        tool = resp.pending_tool
        if tool is not None:
            call_id = self._out.new_id("call_")
            data = {
                "id": self._out.new_id("item_"),
                "object": "realtime.item",
                "type": "function_call",
                "status": "in_progress",
                "name": tool.name,
                "call_id": call_id,
                "arguments": "",
            }
            item = self._open_item(resp, data)
            index = resp.output.index(item)
            self._out.emit(
                ResponseFunctionCallArgumentsDelta(resp.id, data["id"], index, call_id, tool.arguments)
            )
            data["arguments"] = tool.arguments
            self._out.emit(
                ResponseFunctionCallArgumentsDone(
                    resp.id, data["id"], index, call_id, tool.name, tool.arguments
                )
            )
            self._close_item(resp, item, "completed")
        self._end(resp, "completed", {"type": "completed", "reason": None}, now_ms)

    def _end(self, resp: Response, status: str, details: dict[str, Any], now_ms: float) -> None:
        self.active = None
        self._out.emit(ResponseDone(self._wire(resp, status, details)))
        if status == "completed":
            played_until = now_ms
            if resp.first_audio_at_ms is not None:
                played_until = max(now_ms, resp.first_audio_at_ms + resp.audio_ms)
            self._host.response_completed(played_until)

    def _wire(self, resp: Response, status: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
        out = {
            "id": resp.id,
            "object": "realtime.response",
            "status": status,
            "status_details": details,
            "output": [self._conv.wire_item(i.data) for i in resp.output],
            "conversation_id": None if resp.out_of_band else self.conversation_id,
            "metadata": resp.metadata,
            "usage": None if status == "in_progress" else _usage(),
        }
        out.update(self._out.dialect.response_shape(resp.modalities, resp.out_format, resp.voice))
        out["max_output_tokens"] = resp.max_output_tokens
        return out


def _usage() -> dict[str, Any]:
    """Token usage of a finished response (the engine counts none)."""
    return {
        "total_tokens": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "input_token_details": {"text_tokens": 0, "audio_tokens": 0, "cached_tokens": 0},
        "output_token_details": {"text_tokens": 0, "audio_tokens": 0},
    }
