"""Synthesizer: phone level, sentence streaming, cancel, cache, espeak fallback, and a round trip
TTS -> telephone chain -> ASR that must recover the words."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from bridge.errors import ConfigError
from bridge.speech.asr import Recognizer
from bridge.speech.tts import PromptCache, Synthesizer, split_sentences
from tests.helpers.speech import active_rms, silence, telephone_chain

REPLY = "Thanks for calling. Your order has shipped. It will arrive on Monday."


def test_split_sentences() -> None:
    assert split_sentences("Hello there. How are you? Fine!") == ["Hello there.", "How are you?", "Fine!"]
    long_first = "Thanks for calling Acme Widgets, the best widget company in the whole wide world. Bye."
    parts = split_sentences(long_first)
    assert parts[0] == "Thanks for calling Acme Widgets,"
    assert parts[1:] == ["the best widget company in the whole wide world.", "Bye."]
    no_comma = " ".join(["word"] * 20) + "."
    assert len(split_sentences(no_comma)[0].split()) == 12
    assert split_sentences("   ") == []


def test_bad_rate_rejected() -> None:
    with pytest.raises(ConfigError):
        Synthesizer(out_rate=44100, engine="espeak")


@pytest.fixture(scope="module")
def piper_8k() -> Synthesizer:
    return Synthesizer(out_rate=8000)


def level_dbfs(audio: np.ndarray) -> float:
    return 20 * np.log10(active_rms(audio.astype(np.float64) / 32768.0))


@pytest.mark.slow
@pytest.mark.parametrize("rate", [8000, 24000])
def test_phone_level_audio(rate: int) -> None:
    synth = Synthesizer(out_rate=rate)
    assert synth.voice == "piper:joe"
    audio = synth.synthesize("Hello, thanks for calling. How can I help you today?")
    assert audio.dtype == np.int16
    assert 1.5 < len(audio) / rate < 6.0
    assert np.max(np.abs(audio.astype(np.int32))) < 32767 * 0.95  # no full-scale, no clipping
    assert -22.0 < level_dbfs(audio) < -12.0


@pytest.mark.slow
def test_streams_one_sentence_at_a_time(piper_8k: Synthesizer) -> None:
    parts = list(piper_8k.stream(REPLY))
    assert [text for text, _ in parts] == split_sentences(REPLY)
    assert all(len(audio) > 0.4 * 8000 for _, audio in parts)


@pytest.mark.slow
def test_cancel_stops_between_sentences(piper_8k: Synthesizer) -> None:
    cancel = threading.Event()
    got = []
    for text, _audio in piper_8k.stream(REPLY, cancel):
        got.append(text)
        cancel.set()
    assert got == ["Thanks for calling."]
    cancel_first = threading.Event()
    cancel_first.set()
    assert list(piper_8k.stream(REPLY, cancel_first)) == []


@pytest.mark.slow
def test_prompt_cache_is_bounded_lru() -> None:
    cache = PromptCache(max_entries=2)
    synth = Synthesizer(out_rate=8000, cache=cache)
    first = synth.cached("Welcome.")
    assert synth.cached("Welcome.") is first
    synth.cached("Goodbye.")
    synth.cached("Please hold.")
    assert len(cache) == 2
    assert synth.cached("Welcome.") is not first  # evicted, synthesized again
    assert not first.flags.writeable


def test_espeak_fallback_in_process() -> None:
    synth = Synthesizer(out_rate=8000, engine="espeak")
    assert synth.voice.startswith("espeak")
    audio = synth.synthesize("Hello. Goodbye.")
    assert len(audio) > 0.5 * 8000
    assert np.max(np.abs(audio.astype(np.int32))) < 32767 * 0.95
    assert -22.0 < level_dbfs(audio) < -12.0


@pytest.mark.slow
def test_round_trip_tts_telephone_asr() -> None:
    synth = Synthesizer(out_rate=16000)
    audio = synth.synthesize("I would like to pay my bill.")
    pcm = silence(300) + telephone_chain(audio.astype(np.float64) / 32768.0, 16000) + silence(300)
    recognizer = Recognizer()
    recognizer.set_expected(["pay my bill", "talk to an agent", "check my order"])
    result = recognizer.recognize(pcm)
    assert "pay my bill" in result.text, result
    assert result.in_grammar
    recognizer.set_expected(None)
    general = recognizer.recognize(pcm)
    assert {"pay", "my", "bill"} & set(general.text.split()), general
