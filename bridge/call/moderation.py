"""Moderation of the bot's words before the caller hears them, and what the caller heard of a cut line.

No I/O, no clock. The realtime session sends the output transcript (`response.output_audio_transcript
.delta`) ahead of, or with, the audio that the bridge then paces out in real time, so a sentence can
be checked while its audio still waits in the playout. `BotLines` keeps, per assistant item, the
transcript as it arrived, each piece anchored at how much of the item's audio had been received
when it came (`audio_ms`): text that arrives before its audio is spoken from that point on.

- `split_sentences(text)` -> (complete sentences, the unfinished rest);
- `Blocklist(patterns)` -> `.match(sentence)`: the first regular expression that matches (case-
  insensitive), or None;
- `BotLines.add(item_id, delta, audio_ms)` -> the sentences completed by this delta, each with the
  item audio position where it starts (`Sentence.start_ms`); `.finish(item_id, transcript, audio_ms)`
  -> the rest (the `done` event's full transcript wins over the deltas);
- `heard_text(pieces, received_ms, heard_ms)`: the words the caller heard of a cut line. Each piece
  spans the item's audio from its anchor to the next piece's anchor (the last one to `received_ms`);
  inside a piece a word's position is proportional to its character offset; a word is kept when its
  end position is <= `heard_ms` (pieces that came with the same audio position are one piece). Text
  that runs ahead of its audio is anchored early, so this errs toward keeping a word. With one
  piece anchored at 0 this is "keep the words whose
  proportional position in the item's audio is <= heard_ms / received_ms".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

# A sentence ends at . ! ? (or …) followed by space or the end, not after a single capital initial
# or a digit group separator ("3.5", "U.S." stay whole enough for a blocklist).
_SENTENCE_END = re.compile(r"(?<![A-Z])(?<!\d)[.!?…]+[\"')\]]*(?=\s|$)|(?<=\d)[.!?…]+(?=\s+[A-Z]|$)")
_WORD = re.compile(r"\S+")


def split_sentences(text: str) -> tuple[list[str], str]:
    """The complete sentences in `text` (stripped) and the unfinished rest (not stripped)."""
    sentences: list[str] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        sentence = text[start : m.end()].strip()
        if sentence:
            sentences.append(sentence)
        start = m.end()
    return sentences, text[start:]


class BlocklistError(ValueError):
    """A blocklist pattern is not a valid regular expression."""


class Blocklist:
    """Regular expressions the bot must not say (matched case-insensitively, anywhere in a sentence)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        compiled: list[re.Pattern[str]] = []
        for pattern in self.patterns:
            try:
                compiled.append(re.compile(pattern, re.IGNORECASE))
            except re.error as exc:
                raise BlocklistError(f"pattern {pattern!r} is not a regular expression: {exc}") from None
        self._compiled = tuple(compiled)

    def __bool__(self) -> bool:
        return bool(self._compiled)

    def match(self, sentence: str) -> str | None:
        """The first pattern that matches `sentence`, or None."""
        for pattern, rx in zip(self.patterns, self._compiled, strict=True):
            if rx.search(sentence):
                return pattern
        return None


@dataclass(frozen=True, slots=True)
class Sentence:
    item_id: str
    text: str
    start_ms: int  # where its audio starts in the item (the audio received when its first words came)


@dataclass(slots=True)
class _Line:
    pieces: list[tuple[int, str]] = field(default_factory=list)  # (audio ms when it arrived, text)
    pending: str = ""  # text of the unfinished sentence
    pending_ms: int | None = None  # audio position where the unfinished sentence began
    done: bool = False


class BotLines:
    """The output transcript of each assistant item, anchored to its audio (one per call)."""

    def __init__(self) -> None:
        self._lines: dict[str, _Line] = {}

    def add(self, item_id: str, delta: str, audio_ms: int) -> list[Sentence]:
        line = self._lines.setdefault(item_id, _Line())
        if line.done or not delta:
            return []
        line.pieces.append((audio_ms, delta))
        if line.pending_ms is None or not line.pending.strip():
            line.pending_ms = audio_ms
        sentences, rest = split_sentences(line.pending + delta)
        out = [Sentence(item_id, s, line.pending_ms) for s in sentences]
        if sentences:
            line.pending_ms = audio_ms
        line.pending = rest
        return out

    def finish(self, item_id: str, transcript: str | None, audio_ms: int) -> list[Sentence]:
        """The item's transcript is complete: the unfinished rest as a last sentence. A `transcript`
        (from `...transcript.done`) replaces the deltas when they were missing or differ."""
        line = self._lines.setdefault(item_id, _Line())
        if line.done:
            return []
        line.done = True
        if transcript is not None and transcript.strip() != self.text(item_id).strip():
            if not line.pieces:
                line.pieces = [(0, transcript)]
                sentences, rest = split_sentences(transcript)
                return [Sentence(item_id, s, 0) for s in [*sentences, rest.strip()] if s]
            seen = "".join(t for _, t in line.pieces)
            if transcript.startswith(seen):
                extra = transcript[len(seen) :]
                line.pieces.append((audio_ms, extra))
                line.pending += extra
        rest = line.pending.strip()
        line.pending = ""
        return [Sentence(item_id, rest, line.pending_ms or 0)] if rest else []

    def text(self, item_id: str) -> str:
        line = self._lines.get(item_id)
        return "".join(t for _, t in line.pieces).strip() if line else ""

    def pieces(self, item_id: str) -> list[tuple[int, str]]:
        line = self._lines.get(item_id)
        return list(line.pieces) if line else []

    def forget(self, item_id: str) -> None:
        self._lines.pop(item_id, None)

    def items(self) -> list[str]:
        return list(self._lines)


def heard_text(pieces: list[tuple[int, str]], received_ms: int, heard_ms: int) -> str:
    """The words of a line the caller heard when it was cut at `heard_ms` of `received_ms` (see the
    module docstring for how words are placed on the item's audio)."""
    if heard_ms >= received_ms:
        return "".join(t for _, t in pieces).strip()
    merged: list[tuple[int, str]] = []  # pieces that came with the same audio share its span
    for start_ms, text in pieces:
        if merged and start_ms <= merged[-1][0]:
            merged[-1] = (merged[-1][0], merged[-1][1] + text)
        else:
            merged.append((start_ms, text))
    pieces = merged
    kept: list[str] = []
    for index, (start_ms, text) in enumerate(pieces):
        end_ms = pieces[index + 1][0] if index + 1 < len(pieces) else received_ms
        end_ms = max(min(end_ms, received_ms), start_ms)
        if start_ms >= heard_ms:
            break
        length = len(text.rstrip())
        if length == 0:
            continue
        span = end_ms - start_ms
        for m in _WORD.finditer(text):
            position = start_ms + span * m.end() / length
            if position > heard_ms:
                return " ".join(kept)
            kept.append(m.group(0))
    return " ".join(kept)
