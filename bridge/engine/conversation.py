"""The conversation of one engine session: its items and the client events on them. No I/O.

Items are kept GA-shaped (never with audio bytes) in conversation order. `Conversation` validates
`conversation.item.create` / `.truncate` / `.delete` / `.retrieve` and answers with their server events
on the shared `Outbox`; other cores add items through it (a committed user turn, a response's output).
Truncation behaves as on the real API: past the item's audio is an `invalid_value` error on
`audio_end_ms`; otherwise the item keeps that much audio and the sentences that had started by then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.engine.commands import AsrBegin, AsrEnd
from bridge.engine.outbox import Outbox
from bridge.engine.responder import TurnKind
from bridge.engine.session_config import EventError, require
from bridge.realtime.dialect import BETA_TO_GA_PART
from bridge.realtime.events import (
    ConversationItemAdded,
    ConversationItemDeleted,
    ConversationItemDone,
    ConversationItemRetrieved,
    ConversationItemTruncated,
)

HISTORY_TURNS = 20  # conversation items a reply sees

# Content part types a message of each role may carry (beta names accepted for assistant parts).
_PARTS_BY_ROLE = {
    "user": {"input_text", "input_audio", "input_image"},
    "system": {"input_text"},
    "assistant": {"output_text", "output_audio", "text", "audio"},
}


@dataclass(slots=True)
class Item:
    data: dict[str, Any]  # GA item, as sent (never with audio bytes)
    audio_ms: float = 0.0  # user audio committed, or assistant audio produced (kept after truncation)
    sentences: list[tuple[float, str]] = field(default_factory=list)  # (start_ms, text) of assistant audio
    transcript_pending: bool = False


def message_text(data: dict[str, Any]) -> str:
    """The text of a message item: its text parts and audio transcripts."""
    texts = []
    for part in data.get("content", ()):
        text = (
            part.get("text") if part.get("type") in ("input_text", "output_text") else part.get("transcript")
        )
        if isinstance(text, str) and text:
            texts.append(text)
    return " ".join(texts)


def _missing(param: str) -> EventError:
    return EventError(
        f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param
    )


class Conversation:
    def __init__(self, out: Outbox) -> None:
        self._out = out
        self._items: dict[str, Item] = {}
        self._order: list[str] = []

    # -- reading -----------------------------------------------------------------------------------

    def get(self, item_id: str) -> Item | None:
        return self._items.get(item_id)

    def last_id(self) -> str | None:
        return self._order[-1] if self._order else None

    def ids(self) -> list[str]:
        return list(self._order)

    def wire_item(self, data: dict[str, Any]) -> dict[str, Any]:
        """A snapshot of an item for an event (later changes to the item must not reach queued events)."""
        out = dict(data)
        if data.get("type") != "message":
            return out
        if self._out.dialect.beta:
            part_type = self._out.dialect.part_type
            out["content"] = [{**p, "type": part_type(p.get("type", ""))} for p in data.get("content", ())]
        else:
            out["content"] = [dict(p) for p in data.get("content", ())]
        return out

    def history(self) -> tuple[tuple[str, str], ...]:
        """(role, text) of the latest user and assistant messages, oldest first."""
        out = []
        for item_id in self._order[-HISTORY_TURNS:]:
            data = self._items[item_id].data
            if data.get("type") == "message" and data.get("role") in ("user", "assistant"):
                text = message_text(data)
                if text:
                    out.append((data["role"], text))
        return tuple(out)

    def turn_source(self, inputs: list[Any] | None) -> tuple[TurnKind, str, str | None, str | None]:
        """(kind, user_text, tool_output, item the reply must wait for) from the input items.

        `inputs` is a response's `input` (items or item references), None for the whole conversation.
        """
        if inputs is not None:
            candidates: list[dict[str, Any]] = []
            for entry in inputs:
                if isinstance(entry, dict) and entry.get("type") == "item_reference":
                    ref = self._items.get(entry.get("id", ""))
                    if ref is None:
                        raise EventError(
                            f"Item with id '{entry.get('id')}' not found.", param="response.input"
                        )
                    candidates.append(ref.data)
                elif isinstance(entry, dict):
                    candidates.append(entry)
        else:
            candidates = [self._items[i].data for i in self._order]
        for data in reversed(candidates):
            if data.get("type") == "function_call_output":
                return "tool_output", "", str(data.get("output", "")), None
            if data.get("type") == "message" and data.get("role") == "user":
                item = self._items.get(data.get("id", ""))
                if item is not None and item.transcript_pending:
                    return "user", "", None, data["id"]
                return "user", message_text(data), None, None
        return "start", "", None, None

    # -- adding ------------------------------------------------------------------------------------

    def add(self, item: Item, previous: str | None, *, at: int | None = None) -> None:
        """A complete item (`conversation.item.added` + `.done`), after `previous` (at index `at`)."""
        item_id = item.data["id"]
        self._items[item_id] = item
        if at is None:
            self._order.append(item_id)
        else:
            self._order.insert(at, item_id)
        wire = self.wire_item(item.data)
        self._out.emit(ConversationItemAdded(wire, previous))
        self._out.emit(ConversationItemDone(wire, previous))

    def add_user_audio(
        self, item_id: str, audio_ms: float, previous: str | None, *, transcribe: bool
    ) -> Item:
        """A committed user turn; its transcript follows (`set_transcript`) when `transcribe`."""
        data = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        item = Item(data, audio_ms=audio_ms)
        self.add(item, previous)
        item.transcript_pending = transcribe
        return item

    def open(self, item: Item, previous: str | None) -> None:
        """An item a response starts streaming (`conversation.item.added`; `.done` comes from `close`)."""
        self._items[item.data["id"]] = item
        self._order.append(item.data["id"])
        self._out.emit(ConversationItemAdded(self.wire_item(item.data), previous))

    def close(self, item: Item) -> dict[str, Any]:
        """`conversation.item.done` for an item a response finished; returns the item's wire snapshot."""
        wire = self.wire_item(item.data)
        item_id = item.data["id"]
        index = self._order.index(item_id) if item_id in self._order else 0
        self._out.emit(ConversationItemDone(wire, self._order[index - 1] if index > 0 else None))
        return wire

    def set_transcript(self, item_id: str, text: str) -> Item | None:
        item = self._items.get(item_id)
        if item is not None:
            item.transcript_pending = False
            for part in item.data["content"]:
                if part.get("type") == "input_audio":
                    part["transcript"] = text
        return item

    def transcript_settled(self, item_id: str) -> None:
        """The item's transcript will not come (failed or dropped)."""
        item = self._items.get(item_id)
        if item is not None:
            item.transcript_pending = False

    # -- client events -----------------------------------------------------------------------------

    def on_create(
        self, msg: dict[str, Any], decode_audio: Callable[[Any], bytes]
    ) -> tuple[str, bytes] | None:
        """`conversation.item.create`; user audio (decoded by `decode_audio`) is sent to the recogniser.
        Returns (item id, 8 kHz PCM16) of a user audio item whose transcript is to come, else None."""
        data = self.validate(require(msg, "item", dict))
        if data["id"] in self._items:
            raise EventError(f"Item with id '{data['id']}' already exists.", param="item.id")
        previous = msg.get("previous_item_id")
        at: int | None = None
        if previous is None:
            previous = self.last_id()
        elif previous == "root":
            at, previous = 0, None
        elif previous in self._items:
            at = self._order.index(previous) + 1
        else:
            raise EventError(f"Previous item with id '{previous}' not found.", param="previous_item_id")
        item = Item(data)
        audio_parts = [
            p for p in data.get("content", ()) if p.get("type") == "input_audio" and p.get("audio")
        ]
        pcm = decode_audio(audio_parts[0]["audio"]) if audio_parts else b""
        for part in audio_parts:
            del part["audio"]  # the engine never stores or echoes audio bytes
        self.add(item, previous, at=at)
        if audio_parts and not audio_parts[0].get("transcript"):
            item.transcript_pending = True
            self._out.command(AsrBegin(data["id"], pcm))
            self._out.command(AsrEnd(data["id"]))
            return data["id"], pcm
        return None

    def validate(self, raw: dict[str, Any]) -> dict[str, Any]:
        """A client's item as the GA item the engine stores (ids filled in, beta part types renamed)."""
        kind = raw.get("type")
        item_id = raw.get("id") or self._out.new_id("item_")
        if not isinstance(item_id, str):
            raise EventError("Invalid type for 'item.id'.", code="invalid_type", param="item.id")
        base = {"id": item_id, "object": "realtime.item", "type": kind, "status": "completed"}
        if kind == "message":
            role = raw.get("role")
            allowed = _PARTS_BY_ROLE.get(role if isinstance(role, str) else "")
            if allowed is None:
                raise EventError(f"Invalid value for 'item.role': {role!r}.", param="item.role")
            content = raw.get("content")
            if not isinstance(content, list):
                raise _missing("item.content")
            parts = []
            for i, part in enumerate(content):
                ptype = part.get("type") if isinstance(part, dict) else None
                if ptype not in allowed:
                    raise EventError(
                        f"Invalid value for 'item.content[{i}].type': {ptype!r} in a {role} message.",
                        param=f"item.content[{i}].type",
                    )
                assert isinstance(part, dict)
                part = dict(part)
                part["type"] = BETA_TO_GA_PART.get(part["type"], part["type"])
                if part["type"] in ("input_text", "output_text") and not isinstance(part.get("text"), str):
                    raise _missing(f"item.content[{i}].text")
                parts.append(part)
            return {**base, "role": role, "content": parts}
        if kind == "function_call_output":
            for key in ("call_id", "output"):
                if not isinstance(raw.get(key), str):
                    raise _missing(f"item.{key}")
            return {**base, "call_id": raw["call_id"], "output": raw["output"]}
        if kind == "function_call":
            for key in ("name", "arguments"):
                if not isinstance(raw.get(key), str):
                    raise _missing(f"item.{key}")
            call_id = raw.get("call_id") or self._out.new_id("call_")
            return {**base, "name": raw["name"], "arguments": raw["arguments"], "call_id": call_id}
        raise EventError(
            f"Invalid value for 'item.type': {kind!r}. "
            "Expected message, function_call or function_call_output.",
            param="item.type",
        )

    def _item_or_error(self, msg: dict[str, Any]) -> tuple[str, Item]:
        item_id = require(msg, "item_id", str)
        item = self._items.get(item_id)
        if item is None:
            raise EventError(f"Item with item_id '{item_id}' not found.", param="item_id")
        return item_id, item

    def on_truncate(self, msg: dict[str, Any]) -> Item:
        """`conversation.item.truncate`; returns the truncated item (its response may need cancelling)."""
        require(msg, "item_id", str)
        content_index = require(msg, "content_index", int)
        audio_end_ms = require(msg, "audio_end_ms", int)
        item_id, item = self._item_or_error(msg)
        data = item.data
        if data.get("role") != "assistant" or not any(
            p.get("type") == "output_audio" for p in data["content"]
        ):
            raise EventError(f"Item '{item_id}' is not an assistant message with audio.", param="item_id")
        if content_index != 0:
            raise EventError("Invalid 'content_index': must be 0.", param="content_index")
        if audio_end_ms < 0 or audio_end_ms > item.audio_ms + 0.5:
            raise EventError(
                f"Audio content of {int(item.audio_ms)}ms is shorter than {audio_end_ms}ms.",
                param="audio_end_ms",
            )
        item.audio_ms = float(audio_end_ms)
        kept = [text for start, text in item.sentences if start < audio_end_ms]
        item.sentences = [(s, t) for s, t in item.sentences if s < audio_end_ms]
        for part in data["content"]:
            if part.get("type") == "output_audio":
                part["transcript"] = " ".join(kept)
        self._out.emit(ConversationItemTruncated(item_id, content_index, audio_end_ms))
        return item

    def on_delete(self, msg: dict[str, Any]) -> None:
        item_id, _item = self._item_or_error(msg)
        del self._items[item_id]
        self._order.remove(item_id)
        self._out.emit(ConversationItemDeleted(item_id))

    def on_retrieve(self, msg: dict[str, Any]) -> None:
        _item_id, item = self._item_or_error(msg)
        self._out.emit(ConversationItemRetrieved(self.wire_item(item.data)))
