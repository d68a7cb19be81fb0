"""The transcripts core through the session (no I/O): which recogniser's words a reply and the
transcript events get (bridge/engine/transcripts.py)."""

from __future__ import annotations

from bridge.engine.commands import GenerateReply, WarmWhisper, WhisperTranscribe
from tests.helpers.engine_session import Harness, pcmu_session, speak_turn

EXTENSION = {
    "intents": [
        {"name": "sales", "phrases": ["sales"], "reply": "Sales."},
        {"name": "yes", "phrases": ["yes"], "reply": "Great."},
    ]
}
COMPLETED = "conversation.item.input_audio_transcription.completed"


def _turn(extension: dict | None = EXTENSION) -> tuple[Harness, str]:
    h = pcmu_session()
    if extension is not None:
        h.update(local_engine=extension)
    speak_turn(h)
    return h, h.of("input_audio_buffer.committed")[0]["item_id"]


def test_in_grammar_answer_replies_from_pocketsphinx_and_transcript_waits_for_whisper() -> None:
    h, item = _turn()
    assert {w.priority for w in h.take(WarmWhisper)} == {"live", "record"}
    (job,) = h.take(WhisperTranscribe)
    assert job.priority == "record"
    assert len(job.pcm16_8k) > 800 * 16
    h.s.transcript_done(item, "sales please", h.now, in_grammar=True)
    h.collect()
    (gen,) = h.take(GenerateReply)
    assert gen.turn.user_text == "sales please"
    assert not h.of(COMPLETED)
    assert not h.take(WhisperTranscribe)
    h.s.whisper_done(item, "Sales, please.", h.now)
    h.collect()
    assert [e["transcript"] for e in h.of(COMPLETED)] == ["Sales, please."]


def test_out_of_grammar_answer_waits_for_whisper_in_the_live_lane() -> None:
    h, item = _turn()
    h.take(WhisperTranscribe)
    h.s.transcript_done(item, "when can yup are sure buy my all", h.now, in_grammar=False)
    h.collect()
    assert not h.take(GenerateReply)
    (job,) = h.take(WhisperTranscribe)
    assert (job.item_id, job.priority) == (item, "live")
    h.s.whisper_done(item, "Please send me a brochure by mail.", h.now)
    h.collect()
    (gen,) = h.take(GenerateReply)
    assert gen.turn.user_text == "Please send me a brochure by mail."
    assert h.of(COMPLETED)[0]["transcript"] == "Please send me a brochure by mail."


def test_phrase_word_among_garbage_is_not_trusted() -> None:
    h, item = _turn()
    h.take(WhisperTranscribe)
    h.s.transcript_done(item, "way technical sure buy sales", h.now, in_grammar=True)
    h.collect()
    assert not h.take(GenerateReply)
    assert [j.priority for j in h.take(WhisperTranscribe)] == ["live"]


def test_whisper_failure_falls_back_to_pocketsphinx() -> None:
    h, item = _turn()
    h.take(WhisperTranscribe)
    h.s.transcript_done(item, "yup sure", h.now, in_grammar=False)
    h.s.whisper_failed(item, "WhisperBusyError: expected wait 2.0 s", h.now)
    h.collect()
    (gen,) = h.take(GenerateReply)
    assert gen.turn.user_text == "yup sure"
    assert h.of(COMPLETED)[0]["transcript"] == "yup sure"


def test_no_extension_replies_at_once_and_transcript_is_whisper() -> None:
    h, item = _turn(None)
    assert [g.turn.kind for g in h.take(GenerateReply)] == ["user"]  # before any transcript
    assert [j.priority for j in h.take(WhisperTranscribe)] == ["record"]
    h.s.transcript_done(item, "i would like to talk to them what about the old", h.now)
    h.s.whisper_done(item, "I would like to talk to someone about my bill.", h.now)
    h.collect()
    assert [e["transcript"] for e in h.of(COMPLETED)] == ["I would like to talk to someone about my bill."]


def test_without_a_transcription_model_whisper_runs_only_for_understanding() -> None:
    h = pcmu_session()
    h.update(audio={"input": {"transcription": None}}, local_engine=EXTENSION)
    speak_turn(h)
    item = h.of("input_audio_buffer.committed")[0]["item_id"]
    assert not h.take(WhisperTranscribe)
    h.s.transcript_done(item, "yes", h.now, in_grammar=True)
    h.collect()
    assert h.take(GenerateReply)
    assert not h.take(WhisperTranscribe)
