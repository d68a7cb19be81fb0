"""Which words a user turn ends up with: pocketsphinx's, Whisper's, or both. No I/O.

Every committed turn is recognised by pocketsphinx as the caller speaks (cheap, streaming; with a grammar
of the expected phrases on closed turns). Whisper (bridge/speech/whisper_pool.py) hears free speech far
better but costs 0.3-1 s of CPU per turn, so it runs only where its text matters:

- **the reply** waits for Whisper when the session has something to understand (intents, FAQ, a chat
  backend) and the turn is open (no expected phrases) or pocketsphinx's grammar says the answer was out
  of grammar (`in_grammar=False`, which includes hearing nothing) or its words select no intent or FAQ
  entry with confidence (a phrase word among garbage words). In-grammar answers that do keep the fast
  path: the reply starts from pocketsphinx's text at once. Such a Whisper job runs in the `live` lane.
- **the transcript events** (`conversation.item.input_audio_transcription.delta/.completed`) carry
  Whisper's text when the session's `input_audio_transcription.model` is one of the transcription
  models (`whisper-1`, `gpt-4o-transcribe`, `gpt-4o-mini-transcribe`); when no reply needs it, that job
  runs in the low-priority `record` lane and is promoted to `live` if a reply turns out to need it.
- Whenever Whisper cannot answer (busy, package missing, worker died), pocketsphinx's text is used.

The conversation item's transcript (what `history` and the chat backend see) is the reply's text as
soon as the reply settles, then the final text (Whisper's when it ran) once that is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from bridge.engine.commands import WhisperTranscribe
from bridge.engine.outbox import Outbox

WhisperState = Literal["none", "record", "live", "done", "failed"]


class TranscriptHost(Protocol):
    def final_transcript(self, item_id: str, text: str | None, audio_s: float, message: str) -> None:
        """The item's final text (None: no recogniser produced one; `message` says why)."""

    def reply_text(self, item_id: str, text: str | None) -> None:
        """The text a reply waiting on this item should use (None: it will get none)."""

    def confident_match(self, text: str) -> bool:
        """Does this text select an intent or FAQ entry with enough confidence?"""


@dataclass(slots=True)
class TurnText:
    pcm: bytes
    audio_ms: float
    understand: bool  # the reply depends on the words
    open_turn: bool  # no expected phrases: pocketsphinx used its general model
    whisper_events: bool  # the transcript events should carry Whisper's text
    asr_done: bool = False
    asr: str | None = None
    asr_error: str = ""
    in_grammar: bool = True
    whisper: str | None = None
    whisper_error: str = ""
    whisper_state: WhisperState = "none"
    reply_settled: bool = False
    final_settled: bool = False


class Transcripts:
    def __init__(self, out: Outbox, host: TranscriptHost) -> None:
        self._out = out
        self._host = host
        self._turns: dict[str, TurnText] = {}

    def tracking(self, item_id: str) -> bool:
        return item_id in self._turns

    def committed(
        self,
        item_id: str,
        pcm16_8k: bytes,
        audio_ms: float,
        *,
        understand: bool,
        open_turn: bool,
        whisper_events: bool,
    ) -> None:
        """A user turn was committed; pocketsphinx's answer follows (`asr_done` / `asr_failed`)."""
        st = TurnText(pcm16_8k, audio_ms, understand, open_turn, whisper_events)
        self._turns[item_id] = st
        if understand and open_turn:
            self._whisper(item_id, st, "live")
        elif whisper_events:
            self._whisper(item_id, st, "record")

    def asr_done(self, item_id: str, text: str, *, in_grammar: bool, audio_s: float) -> None:
        st = self._turns.get(item_id)
        if st is None:
            return
        st.asr_done, st.asr, st.in_grammar = True, text, in_grammar and bool(text)
        if audio_s:
            st.audio_ms = audio_s * 1000.0
        self._progress(item_id, st)

    def asr_failed(self, item_id: str, message: str) -> None:
        st = self._turns.get(item_id)
        if st is None:
            return
        st.asr_done, st.asr, st.asr_error, st.in_grammar = True, None, message, False
        self._progress(item_id, st)

    def whisper_done(self, item_id: str, text: str) -> None:
        st = self._turns.get(item_id)
        if st is None or st.whisper_state in ("done", "failed"):
            return
        st.whisper_state, st.whisper = "done", text
        self._progress(item_id, st)

    def whisper_failed(self, item_id: str, message: str) -> None:
        st = self._turns.get(item_id)
        if st is None or st.whisper_state in ("done", "failed"):
            return
        st.whisper_state, st.whisper_error = "failed", message
        self._progress(item_id, st)

    def forget(self, item_id: str) -> None:
        self._turns.pop(item_id, None)

    # -- internals ---------------------------------------------------------------------------------

    def _whisper(self, item_id: str, st: TurnText, priority: Literal["live", "record"]) -> None:
        st.whisper_state = priority
        self._out.command(WhisperTranscribe(item_id, st.pcm, priority))

    def _progress(self, item_id: str, st: TurnText) -> None:
        if not st.reply_settled:
            self._settle_reply(item_id, st)
        if not st.final_settled:
            self._settle_final(item_id, st)
        if st.reply_settled and st.final_settled:
            del self._turns[item_id]

    def _settle_reply(self, item_id: str, st: TurnText) -> None:
        text: str | None
        if st.whisper_state == "done" and (st.understand or not st.asr_done):
            text = st.whisper
        elif not st.asr_done:
            return  # pocketsphinx decides whether Whisper is needed
        elif not st.understand or (
            st.in_grammar and not st.open_turn and self._host.confident_match(st.asr or "")
        ):
            text = st.asr  # nothing to understand, or an in-grammar answer that selects something
        elif st.whisper_state in ("none", "record"):
            self._whisper(item_id, st, "live")  # out of grammar: decide on Whisper's words
            return
        elif st.whisper_state == "live":
            return
        else:  # Whisper failed: pocketsphinx's words are all there is
            text = st.asr
        st.reply_settled = True
        self._host.reply_text(item_id, text)

    def _settle_final(self, item_id: str, st: TurnText) -> None:
        if st.whisper_state == "done":
            text, message = st.whisper, ""
        elif st.whisper_state in ("live", "record") or not st.asr_done:
            return
        else:
            text, message = st.asr, st.asr_error
            if text is None and st.whisper_error:
                message = f"{message}; whisper: {st.whisper_error}" if message else st.whisper_error
        st.final_settled = True
        self._host.final_transcript(item_id, text, st.audio_ms / 1000.0, message)
