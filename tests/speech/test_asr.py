"""pocketsphinx Recognizer on Piper speech through the telephone chain: grammar turns, general LM,
out-of-grammar rejection, turn mechanics."""

from __future__ import annotations

import pytest

from bridge.speech.asr import (
    GENERAL_SEARCH,
    Recognizer,
    RecognizerError,
    build_domain_corpus,
    build_grammar,
    normalize_phrase,
)
from tests.helpers.speech import chunks, phone_speech, silence

MENU = ["billing", "sales", "technical support", "operator", "cancel my account"]


def test_normalize_phrase_spells_digits_and_drops_punctuation() -> None:
    assert normalize_phrase("Press 1, or say: Billing!") == ["press", "one", "or", "say", "billing"]
    assert normalize_phrase("24/7 & 305") == ["twenty", "four", "seven", "and", "three", "zero", "five"]
    assert normalize_phrase("I'm 15") == ["i'm", "fifteen"]


def test_grammar_and_corpus_contain_the_phrases() -> None:
    grammar = build_grammar([("billing",), ("technical", "support")])
    assert "(technical support)" in grammar
    assert "yes" in grammar
    assert "zero" in grammar
    corpus = build_domain_corpus([("billing",)]).splitlines()
    assert corpus.count("billing") > corpus.count("about")


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer()


def say(text: str) -> bytes:
    return silence(300) + phone_speech(text) + silence(250)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spoken", "expected"),
    [
        ("Billing.", "billing"),
        ("Technical support.", "technical support"),
        ("Operator.", "operator"),
        ("I want to cancel my account.", "cancel my account"),
        ("Yes.", ("yes", "yeah", "yep", "yup")),
        ("No.", ("no", "nope")),
    ],
)
def test_in_grammar_answers(recognizer: Recognizer, spoken: str, expected: str | tuple[str, ...]) -> None:
    recognizer.set_expected(MENU)
    result = recognizer.recognize(say(spoken))
    words = f" {result.text} "
    options = (expected,) if isinstance(expected, str) else expected
    assert any(f" {o} " in words for o in options), result
    assert result.in_grammar
    assert result.search != GENERAL_SEARCH


@pytest.mark.slow
def test_digit_string(recognizer: Recognizer) -> None:
    # Band-limited "six" (its /s/ is mostly above 3.4 kHz) is the digit most often lost: allow one miss.
    recognizer.set_expected(MENU)
    result = recognizer.recognize(say("Four five six seven."))
    digits = [w for w in result.text.split() if w in ("four", "five", "six", "seven")]
    assert len(digits) >= 3, result
    assert digits == sorted(digits, key=["four", "five", "six", "seven"].index)


@pytest.mark.slow
def test_out_of_grammar_speech_is_flagged(recognizer: Recognizer) -> None:
    recognizer.set_expected(MENU)
    sentences = [
        "What time do you close today?",
        "My dog ate my homework yesterday.",
        "The weather is really nice this morning.",
    ]
    flagged = [not recognizer.recognize(say(s)).in_grammar for s in sentences]
    assert sum(flagged) >= 2, flagged


@pytest.mark.slow
def test_general_lm_gives_a_reasonable_transcript(recognizer: Recognizer) -> None:
    recognizer.set_expected(None)
    assert recognizer.search == GENERAL_SEARCH
    result = recognizer.recognize(say("I have a question about my last payment."))
    reference = ["i", "have", "a", "question", "about", "my", "last", "payment"]
    hits = sum(1 for w in reference if w in result.text.split())
    assert hits >= len(reference) // 2, result
    assert result.search == GENERAL_SEARCH
    assert result.audio_ms > 1000


@pytest.mark.slow
def test_streaming_partials_and_switching_searches(recognizer: Recognizer) -> None:
    recognizer.set_expected(["billing", "sales"])
    recognizer.begin()
    partials = []
    for chunk in chunks(say("Billing, please."), 20):
        recognizer.feed(chunk)
        partials.append(recognizer.partial())
    result = recognizer.end()
    assert any(partials)
    assert "billing" in result.text
    # switch back and forth: each phrase set's search is kept
    recognizer.set_expected(None)
    recognizer.set_expected(["billing", "sales"])
    assert "sales" in recognizer.recognize(say("Sales.")).text


@pytest.mark.slow
def test_turn_order_is_enforced(recognizer: Recognizer) -> None:
    with pytest.raises(RecognizerError):
        recognizer.feed(silence(20))
    with pytest.raises(RecognizerError):
        recognizer.end()
    recognizer.begin()
    with pytest.raises(RecognizerError):
        recognizer.set_expected(["x"])
    recognizer.feed(b"\x00")  # odd byte counts are carried over
    recognizer.feed(silence(200) + b"\x00")
    result = recognizer.end()
    assert result.text == ""
    assert result.audio_ms == 200


@pytest.mark.slow
def test_unknown_words_are_dropped(recognizer: Recognizer) -> None:
    recognizer.set_expected(["zzxqy", "billing"])
    assert recognizer.expected == ("billing",)
    recognizer.set_expected(["zzxqy"])
    assert recognizer.search == GENERAL_SEARCH
