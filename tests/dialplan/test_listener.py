"""MenuListener: caller audio in, recognised words out on the event loop (real VAD, real recognizer)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from bridge.dialplan.listener import MenuListener
from bridge.dialplan.loader import load_dialplan
from bridge.dialplan.matching import match_option, spoken_phrases
from bridge.dialplan.schema import MenuStep
from bridge.media.g711 import FRAME_BYTES_PCM8K
from bridge.speech.asr_pool import RemoteRecognizer
from tests.dialplan.conftest import REPO
from tests.helpers import speech


def frames(pcm: bytes) -> list[bytes]:
    pcm += b"\0" * (-len(pcm) % FRAME_BYTES_PCM8K)
    return [pcm[i : i + FRAME_BYTES_PCM8K] for i in range(0, len(pcm), FRAME_BYTES_PCM8K)]


async def wait_for(cond: object, limit_s: float = 30.0) -> None:
    for _ in range(int(limit_s / 0.02)):
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)


@dataclass
class _Heard:
    text: str
    in_grammar: bool = True


class RecordingRecognizer:
    """Stands in for pocketsphinx to check the shell's turn handling: it 'recognises' the audio length."""

    def __init__(self) -> None:
        self.expected: tuple[str, ...] | None = None
        self.turns: list[int] = []
        self._bytes = 0

    def set_expected(self, phrases: Sequence[str] | None) -> None:
        self.expected = tuple(phrases) if phrases else None

    def begin(self) -> None:
        self._bytes = 0

    def feed(self, pcm16_8k: bytes) -> None:
        self._bytes += len(pcm16_8k)

    def end(self) -> _Heard:
        self.turns.append(self._bytes)
        return _Heard(f"turn of {self._bytes // 16} ms")


async def test_turns_are_cut_by_the_vad_and_delivered_on_the_loop() -> None:
    rec = RecordingRecognizer()
    heard: list[str] = []
    listener = MenuListener(heard.append, recognizer_factory=lambda: rec)
    audio = speech.silence(600) + speech.phone_speech("billing please") + speech.silence(1200)
    for f in frames(audio):
        listener.feed(f)  # not listening yet: ignored
    assert rec.turns == []
    listener.listen(("billing", "sales"), digits=True)
    for f in frames(audio):
        listener.feed(f)
    await wait_for(lambda: heard)
    await listener.aclose()
    assert rec.expected is not None
    assert rec.expected[:2] == ("billing", "sales")
    assert "nine" in rec.expected
    assert len(heard) == 1
    assert len(rec.turns) == 1
    spoken_ms = len(speech.phone_speech("billing please")) // 16
    # the turn holds the speech plus pre-roll, and not the long silences around it
    assert spoken_ms * 0.6 < rec.turns[0] // 16 < spoken_ms + 1200


async def test_stop_drops_a_turn_in_progress() -> None:
    rec = RecordingRecognizer()
    heard: list[str] = []
    listener = MenuListener(heard.append, recognizer_factory=lambda: rec)
    listener.listen(("billing",))
    for f in frames(speech.silence(400) + speech.phone_speech("billing")):
        listener.feed(f)  # speech, but no end of turn yet
    listener.stop()
    for f in frames(speech.silence(1000)):
        listener.feed(f)
    await listener.aclose()
    assert heard == []


@pytest.mark.slow
async def test_spoken_menu_words_reach_the_right_option() -> None:
    """The default menu, answered by voice, through the real recognizer with the menu's grammar."""
    plan = load_dialplan(REPO / "dialplans")
    menu = plan.flows["main"][1]
    assert isinstance(menu, MenuStep)
    heard: list[str] = []
    listener = MenuListener(heard.append, recognizer_factory=RemoteRecognizer)
    listener.listen(spoken_phrases(menu))
    for phrase, key in (("operator", "0"), ("questions", "1")):
        before = len(heard)
        for f in frames(speech.silence(500) + speech.phone_speech(phrase) + speech.silence(1200)):
            listener.feed(f)
        await wait_for(lambda b=before: len(heard) > b)
        assert len(heard) == before + 1, heard
        assert match_option(menu, heard[-1]) == key, heard[-1]
    await listener.aclose()
