"""Keeping one agent conversation alive across realtime sessions: the parts with no I/O.

An agent step's upstream session can drop (a network error, a server restart), stall, or reach its
provider's session cap. `bridge.call.upstream` then opens another session (the same provider, its
fallback, or a planned rollover) and seeds it from what is here:

- `Backoff`: when to try again (exponential, with jitter, bounded in attempts and in total time);
- `ConversationLog`: the conversation so far as items to replay (what the caller said, what the
  assistant said *as far as the caller heard it*, tool calls and their results), bounded;
- `GapBuffer`: the caller's audio while no session takes it, bounded, sent once a session is back,
  minus what has become too old to be worth answering (counted, and logged once by the shell).

Time is an input (`now_ms`), randomness too (`rand` in [0, 1)): tests drive all of it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

# -- backoff -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: attempt 1 at once, then base, base*factor, ... up to
    `max_delay_s`, each delay shortened by up to `jitter` of itself (so many calls that lost the
    same server do not come back in step), within `max_attempts` and `max_total_s`."""

    base_s: float = 0.1
    factor: float = 2.0
    max_delay_s: float = 1.0
    jitter: float = 0.5
    max_attempts: int = 12
    max_total_s: float = 10.0

    def delay_s(self, attempt: int, elapsed_s: float, rand: float) -> float | None:
        """How long to wait before attempt `attempt` (1-based), `elapsed_s` after the failure; None:
        give up (no attempts left, or the attempt would start after `max_total_s`)."""
        if attempt < 1 or attempt > self.max_attempts:
            return None
        if attempt == 1:
            delay = 0.0
        else:
            cap = min(self.max_delay_s, self.base_s * self.factor ** (attempt - 2))
            delay = cap * (1.0 - self.jitter * min(max(rand, 0.0), 1.0))
        if elapsed_s + delay > self.max_total_s:
            return None
        return delay

    def schedule(self, rands: list[float]) -> list[float]:
        """Every delay this policy would wait if every attempt failed at once (for docs and tests)."""
        out: list[float] = []
        elapsed = 0.0
        for attempt in range(1, self.max_attempts + 1):
            delay = self.delay_s(attempt, elapsed, rands[(attempt - 1) % len(rands)] if rands else 0.0)
            if delay is None:
                break
            out.append(delay)
            elapsed += delay
        return out


# -- the conversation to replay --------------------------------------------------------------------

ItemKind = Literal["user", "assistant", "function_call", "function_call_output"]
INTERRUPTED_OUTPUT = '{"status": "interrupted"}'  # a tool call whose result never came


@dataclass(slots=True)
class LogItem:
    kind: ItemKind
    item_id: str
    text: str = ""
    done: bool = False  # the text is complete (a transcript's `done`, a user transcript)
    audio_ms: float = 0.0  # assistant: audio received for the item
    heard_ms: int | None = None  # assistant: the caller heard only this much (a barge-in); None: all
    call_id: str = ""
    name: str = ""
    arguments: str = ""
    output: str | None = None


def heard_text(text: str, audio_ms: float, heard_ms: int | None) -> str:
    """The part of an assistant transcript the caller heard: the words in proportion to the audio
    heard (transcripts carry no word timings), never a partial word."""
    if heard_ms is None or audio_ms <= 0 or heard_ms >= audio_ms:
        return text.strip()
    if heard_ms <= 0:
        return ""
    words = text.split()
    keep = int(len(words) * heard_ms / audio_ms)
    return " ".join(words[:keep])


@dataclass(slots=True)
class ConversationLog:
    """What was said in one agent conversation, across sessions, as replayable items.

    The shell feeds it the server's facts (items added, transcripts, audio received, tool calls) and
    the bridge's own (barge-in truncations, text it sent, tool results). Bounded: beyond
    `max_items` or `max_chars` the oldest items go first."""

    max_items: int = 60
    max_chars: int = 24_000
    items: dict[str, LogItem] = field(default_factory=dict)  # insertion order = conversation order
    _seq: int = 0

    def _item(self, item_id: str, kind: ItemKind) -> LogItem:
        item = self.items.get(item_id)
        if item is None:
            item = self.items[item_id] = LogItem(kind, item_id)
            self._bound()
        return item

    def _bound(self) -> None:
        while len(self.items) > self.max_items:
            self.items.pop(next(iter(self.items)))
        while len(self.items) > 1 and sum(len(i.text) + len(i.arguments) for i in self.items.values()) > (
            self.max_chars
        ):
            self.items.pop(next(iter(self.items)))

    def _local_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}{self._seq}"

    # -- facts from the session ------------------------------------------------------------------

    def item_added(self, item_id: str, item_type: str | None, role: str | None) -> None:
        """A session announced an item: its place in the conversation (its text may come later)."""
        if item_type == "message" and role in ("user", "assistant"):
            self._item(item_id, "user" if role == "user" else "assistant")
        elif item_type == "function_call":
            self._item(item_id, "function_call")

    def user_said(self, item_id: str, text: str) -> None:
        item = self._item(item_id, "user")
        item.text, item.done = text.strip(), True
        self._bound()

    def assistant_delta(self, item_id: str, delta: str) -> None:
        item = self._item(item_id, "assistant")
        if not item.done:
            item.text += delta

    def assistant_done(self, item_id: str, transcript: str) -> None:
        item = self._item(item_id, "assistant")
        item.text, item.done = transcript, True
        self._bound()

    def assistant_audio(self, item_id: str, ms: float) -> None:
        self._item(item_id, "assistant").audio_ms += ms

    def tool_call(self, item_id: str, call_id: str, name: str, arguments: str) -> None:
        item = self._item(item_id or self._local_id("call_"), "function_call")
        item.call_id, item.name, item.arguments, item.done = call_id, name, arguments, True
        self._bound()

    # -- facts from the bridge -------------------------------------------------------------------

    def heard(self, item_id: str, heard_ms: int) -> None:
        """A barge-in cut the item: the caller heard `heard_ms` of it."""
        item = self.items.get(item_id)
        if item is not None and item.kind == "assistant":
            item.heard_ms = heard_ms if item.heard_ms is None else min(item.heard_ms, heard_ms)

    def user_text(self, text: str) -> None:
        """Text the bridge itself added as the caller's (DTMF digits during an agent step)."""
        self.user_said(self._local_id("bridge_user_"), text)

    def tool_result(self, call_id: str, output: str) -> None:
        item = self._item(self._local_id("bridge_out_"), "function_call_output")
        item.call_id, item.output, item.done = call_id, output, True

    # -- what to replay --------------------------------------------------------------------------

    def replay_items(self) -> list[dict[str, Any]]:
        """`conversation.item.create` payloads (GA shapes) that rebuild the conversation in a fresh
        session: empty items left out, assistant text cut at what was heard, every tool call
        followed by its result (an "interrupted" one when none came)."""
        out: list[dict[str, Any]] = []
        answered = {i.call_id for i in self.items.values() if i.kind == "function_call_output"}
        for item in self.items.values():
            if item.kind == "user" and item.text:
                out.append(_message("user", "input_text", item.text))
            elif item.kind == "assistant":
                text = heard_text(item.text, item.audio_ms, item.heard_ms)
                if text:
                    out.append(_message("assistant", "output_text", text))
            elif item.kind == "function_call" and item.call_id and item.name:
                out.append(
                    {
                        "type": "function_call",
                        "call_id": item.call_id,
                        "name": item.name,
                        "arguments": item.arguments or "{}",
                    }
                )
                if item.call_id not in answered:
                    out.append(_output(item.call_id, INTERRUPTED_OUTPUT))
            elif item.kind == "function_call_output" and item.output is not None:
                out.append(_output(item.call_id, item.output))
        return out


def _message(role: str, part: str, text: str) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": [{"type": part, "text": text}]}


def _output(call_id: str, output: str) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


# -- the caller's audio while no session takes it ------------------------------------------------------


@dataclass(slots=True)
class GapBuffer:
    """Caller audio messages (pre-encoded `input_audio_buffer.append`) held while the upstream is
    away. At most `max_ms` are held (the oldest go first); when the session is back, what is older
    than `max_age_ms` is dropped rather than sent (a caller answered about something said seconds
    ago hears a non sequitur). `dropped` counts both kinds."""

    max_ms: int = 4000
    max_age_ms: int = 2500
    frame_ms: int = 20
    _frames: deque[tuple[float, str]] = field(default_factory=deque)
    dropped: int = 0

    @property
    def held_ms(self) -> int:
        return len(self._frames) * self.frame_ms

    def push(self, message: str, now_ms: float) -> None:
        self._frames.append((now_ms, message))
        while len(self._frames) * self.frame_ms > self.max_ms:
            self._frames.popleft()
            self.dropped += 1

    def take(self, now_ms: float) -> list[str]:
        """The messages still worth sending, oldest first; the buffer is emptied."""
        fresh = [m for t, m in self._frames if now_ms - t <= self.max_age_ms]
        self.dropped += len(self._frames) - len(fresh)
        self._frames.clear()
        return fresh

    def recent(self, ms: int) -> list[str]:
        """The newest `ms` of messages, without taking them (a rollover's pre-roll)."""
        n = max(0, ms // self.frame_ms)
        return [m for _, m in list(self._frames)[-n:]] if n else []

    def clear(self) -> None:
        self._frames.clear()


# -- rollover ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RolloverPlan:
    """When to prepare the next session and by when to switch, for a provider cap of `max_session_s`.

    The new session is opened `lead_s` before the cap (at most a fifth of the cap, so a short test
    cap works too) and the switch waits for a turn boundary until `force_margin_s` before the cap."""

    max_session_s: float
    lead_s: float = 120.0
    force_margin_s: float = 10.0

    @property
    def prepare_at_s(self) -> float:
        return self.max_session_s - min(self.lead_s, self.max_session_s / 5)

    @property
    def force_at_s(self) -> float:
        return self.max_session_s - min(self.force_margin_s, self.max_session_s / 20)

    def should_switch(self, age_s: float, *, at_boundary: bool) -> bool:
        """Switch now? At a turn boundary once prepared; at the force deadline regardless."""
        if age_s >= self.force_at_s:
            return True
        return at_boundary and age_s >= self.prepare_at_s
