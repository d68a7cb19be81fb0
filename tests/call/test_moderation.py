"""bridge/call/moderation.py (no I/O): sentences, the blocklist, transcript anchoring, what was heard."""

from __future__ import annotations

import pytest

from bridge.call.moderation import Blocklist, BlocklistError, BotLines, Sentence, heard_text, split_sentences


@pytest.mark.parametrize(
    ("text", "sentences", "rest"),
    [
        ("Hello there. How are", ["Hello there."], " How are"),
        ("Stop! Really? Yes.", ["Stop!", "Really?", "Yes."], ""),
        ("It costs 3.50 dollars. Ok", ["It costs 3.50 dollars."], " Ok"),
        ("Call Mr. Smith. Now", ["Call Mr.", "Smith."], " Now"),  # good enough for a blocklist
        ("no end yet", [], "no end yet"),
        ('He said "go." Then', ['He said "go."'], " Then"),
        ("", [], ""),
    ],
)
def test_split_sentences(text: str, sentences: list[str], rest: str) -> None:
    assert split_sentences(text) == (sentences, rest)


def test_blocklist_matches_case_insensitively_and_names_the_pattern() -> None:
    blocklist = Blocklist([r"\bsecret code\b", r"free (money|cash)"])
    assert blocklist.match("The SECRET code is here.") == r"\bsecret code\b"
    assert blocklist.match("You win free cash!") == "free (money|cash)"
    assert blocklist.match("Secretcode words.") is None
    assert not Blocklist([])
    with pytest.raises(BlocklistError, match=r"pattern '\(unclosed' is not a regular expression"):
        Blocklist(["(unclosed"])


def test_bot_lines_anchor_sentences_at_the_audio_received_when_their_words_came() -> None:
    lines = BotLines()
    # The local engine's shape: a sentence's text, then its audio.
    assert lines.add("i1", "First sentence here.", 0) == [Sentence("i1", "First sentence here.", 0)]
    assert lines.add("i1", " Second one", 1500) == []
    assert lines.add("i1", " goes on.", 1500) == [Sentence("i1", "Second one goes on.", 1500)]
    assert lines.add("i1", " Unfinished", 2600) == []
    assert lines.finish("i1", None, 3000) == [Sentence("i1", "Unfinished", 2600)]
    assert lines.text("i1") == "First sentence here. Second one goes on. Unfinished"
    assert lines.add("i1", "late.", 3000) == []  # after done: ignored


def test_bot_lines_done_transcript_fills_in_missing_deltas() -> None:
    lines = BotLines()
    assert lines.finish("i2", "Only the done event. Two sentences", 800) == [
        Sentence("i2", "Only the done event.", 0),
        Sentence("i2", "Two sentences", 0),
    ]
    lines.add("i3", "Partial", 0)
    assert lines.finish("i3", "Partial text.", 400) == [Sentence("i3", "Partial text.", 0)]
    assert lines.text("i3") == "Partial text."


def test_heard_text_one_piece_is_proportional() -> None:
    pieces = [(0, "one two three four five six seven eight nine ten")]
    # "keep the words whose proportional position is <= heard/received": 50% -> the first five words
    # (character offsets: "five" ends at 23 of 49 chars -> 47%, "six" at 27 -> 55%).
    assert heard_text(pieces, 1000, 500) == "one two three four five"
    assert heard_text(pieces, 1000, 0) == ""
    assert heard_text(pieces, 1000, 1000) == "one two three four five six seven eight nine ten"


def test_heard_text_follows_sentence_anchors() -> None:
    pieces = [(0, "We are open nine to five."), (2000, " On Saturday we open late and close early.")]
    assert heard_text(pieces, 5000, 2000) == "We are open nine to five."
    assert heard_text(pieces, 5000, 1900) == "We are open nine to"
    assert heard_text(pieces, 5000, 2300) == "We are open nine to five. On"
    # Pieces that came with the same audio position share one span (text ahead of the audio).
    ahead = [(0, "Alpha beta"), (0, " gamma delta.")]
    assert heard_text(ahead, 1000, 500) == "Alpha beta"
