"""Speech recognition for the embedded engine: pocketsphinx 5.1.1 with its bundled en-us model.

One `Recognizer` per session, kept warm across turns (its cepstral mean keeps adapting to the line),
started with a phone `cmninit` so the first turn is not garbage. Input is PCM16 at 8 kHz, upsampled to
16 kHz with a per-turn soxr HQ stream (its 40-75 ms backlog only delays partials; `end()` flushes it).

Searches:
- "_default": the general English trigram LM, loaded once per process (SharedModels) and added to each
  decoder lazily, on the first open turn.
- per phrase set: a JSGF grammar of the expected phrases, yes/no words and digit strings, plus a
  weighted "garbage" loop of common words (none of them in the phrases) that absorbs out-of-grammar
  speech instead of forcing it onto a phrase. `Transcript.in_grammar` says which path won.

Blocking API, called from one worker thread per session. pocketsphinx 5.1.1 holds the GIL while it
decodes, and the shared LM has a mutable score cache, so decoding calls go through one process-wide
lock: this costs nothing today (the GIL serialises them anyway) and stays correct if that changes.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bridge.engine.models import PHONE_CMNINIT, ModelUnavailableError, SharedModels, get_shared_models
from bridge.errors import BridgeError

if TYPE_CHECKING:
    from pocketsphinx import Decoder

GENERAL_SEARCH = "_default"
IN_RATE_HZ = 8000
DECODER_RATE_HZ = 16000
MAX_GRAMMARS_PER_DECODER = 8
# Relative weight of the garbage loop against the expected answers in every grammar.
GARBAGE_WEIGHT = 0.3

_DECODE_LOCK = threading.Lock()

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
YES_WORDS = ("yes", "yeah", "yep", "yup", "sure", "correct", "right")
NO_WORDS = ("no", "nope", "nah")
POLITE_WORDS = ("please", "thanks", "thank you", "okay", "ok")
_TEENS = (
    "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")

# Common English words that soak up out-of-grammar speech. Words that occur in the expected phrases
# (or yes/no/digits) are removed from this loop per grammar.
_GARBAGE_TEXT = """
    a about after again all also am an and any are as ask at back be because been but by call can
    could day did do does don't for from get give go going good got had has have he hello help her
    here hi him his how i i'd i'm i've if in is it it's just know like look make me might more my
    need new not now of off on one only or other our out over people really said say see she should
    so some something still take talk tell than that that's the their them then there they thing
    think this time to today too up us use very want was way we well were what when where which who
    why will with work would you you're your um uh hmm
"""
GARBAGE_WORDS = tuple(_GARBAGE_TEXT.split())


class RecognizerError(BridgeError):
    """The recognizer was used out of order (feed before begin, ...) or pocketsphinx failed."""


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str  # lowercase words, no fillers; "" when nothing was recognised
    search: str  # "_default" or the grammar's search name
    elapsed_ms: float  # time spent in end(): flush + final search passes
    in_grammar: bool = True  # False when a grammar turn matched its garbage loop (out-of-grammar speech)
    audio_ms: int = 0  # length of the turn's audio


# ---------------------------------------------------------------------------------------------------
# phrases -> grammar


def number_words(token: str) -> list[str]:
    """Digits as words: numbers below 100 the way people say them, longer strings digit by digit."""
    if len(token) <= 2 and token.isdigit():
        value = int(token)
        if value < 10:
            return [DIGIT_WORDS[value]]
        if value < 20:
            return [_TEENS[value - 10]]
        tens, ones = divmod(value, 10)
        return [_TENS[tens]] + ([DIGIT_WORDS[ones]] if ones else [])
    return [DIGIT_WORDS[int(ch)] for ch in token if ch.isdigit()]


_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def normalize_phrase(phrase: str) -> list[str]:
    """Lowercase words of a phrase: punctuation dropped, digits spelled out."""
    words: list[str] = []
    for token in _TOKEN.findall(phrase.lower().replace("&", " and ")):
        if token.isdigit():
            words.extend(number_words(token))
        elif any(ch.isdigit() for ch in token):
            for part in re.findall(r"[a-z']+|[0-9]+", token):
                words.extend(number_words(part) if part.isdigit() else [part])
        else:
            words.append(token)
    return words


def build_grammar(phrases: Sequence[Sequence[str]], known: set[str] | None = None) -> str:
    """A JSGF grammar: expected phrases | yes/no | digit strings, with optional politeness around
    them, weighted against a garbage loop of common words. `phrases` are already-normalised words
    that are all in the dictionary; `known` (if given) filters the garbage and helper words."""

    def ok(word: str) -> bool:
        return known is None or word in known

    answer_words = {w for p in phrases for w in p}
    answers = [" ".join(p) for p in phrases if p]
    answers += [w for w in (*YES_WORDS, *NO_WORDS) if ok(w) and w not in answers]
    polite = [p for p in POLITE_WORDS if all(ok(w) for w in p.split())]
    lead = [w for w in ("uh", "um", "i", "said", "it's", "that's") if ok(w)]
    digits = [w for w in (*DIGIT_WORDS, "oh") if ok(w)]
    covered = answer_words | set(YES_WORDS) | set(NO_WORDS) | set(DIGIT_WORDS) | {"oh"}
    garbage = [w for w in GARBAGE_WORDS if ok(w) and w not in covered]
    answer_weight = 1.0 - GARBAGE_WEIGHT
    lines = [
        "#JSGF V1.0;",
        "grammar expected;",
        f"public <utterance> = /{answer_weight:.3f}/ <answer> | /{GARBAGE_WEIGHT:.3f}/ <garbage>;",
        "<answer> = [<lead>] (<phrase> | <digits>) [<polite>];",
        "<phrase> = " + " | ".join(_quote(a) for a in answers) + ";",
        "<digits> = (" + " | ".join(digits) + ")+;",
        "<lead> = " + " | ".join(lead or ["uh"]) + ";",
        "<polite> = " + " | ".join(polite or ["please"]) + ";",
        "<garbage> = (" + " | ".join(_quote(w) for w in garbage) + ")+;",
    ]
    return "\n".join(lines) + "\n"


def _quote(words: str) -> str:
    # JSGF tokens with an apostrophe are fine for pocketsphinx; parenthesise multi-word alternatives.
    return f"({words})" if " " in words else words


# ---------------------------------------------------------------------------------------------------
# recognizer


class Recognizer:
    """One per session. Not thread-safe: call it from the session's one worker thread."""

    def __init__(self, shared: SharedModels | None = None) -> None:
        self._shared = shared or get_shared_models()
        self._model = self._shared.sphinx()
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:  # pragma: no cover - sphinx() already imported it
            raise ModelUnavailableError("pocketsphinx is not installed") from exc
        start = time.perf_counter()
        self._decoder: Decoder = Decoder(
            hmm=self._model.hmm,
            dict=self._model.dict,
            lm=None,
            cmninit=PHONE_CMNINIT,
            dither=True,
            loglevel="FATAL",
        )
        self._shared.record_load("pocketsphinx_decoder", (time.perf_counter() - start) * 1000.0)
        self._grammars: OrderedDict[str, tuple[str, ...]] = OrderedDict()  # search name -> phrases
        self._has_general = False
        self._search = GENERAL_SEARCH
        self._expected: tuple[str, ...] = ()
        self._resampler: object | None = None
        self._in_utt = False
        self._audio_samples = 0
        self._odd = b""

    # -- configuration ----------------------------------------------------------------------------
    @property
    def search(self) -> str:
        """The search the next (or current) turn uses."""
        return self._search

    def known_word(self, word: str) -> bool:
        return self._decoder.lookup_word(word) is not None

    def set_expected(self, phrases: Sequence[str] | None) -> None:
        """None/empty: the general LM. Otherwise a grammar of these phrases + yes/no + digits (built once
        per phrase set and kept on this decoder). Takes effect at the next begin()."""
        if self._in_utt:
            raise RecognizerError("set_expected() during a turn: call end() first")
        if not phrases:
            self._search = GENERAL_SEARCH
            self._expected = ()
            return
        normalised: list[tuple[str, ...]] = []
        for phrase in phrases:
            words = tuple(w for w in normalize_phrase(phrase) if self.known_word(w))
            if words and words not in normalised:
                normalised.append(words)
        key = tuple(sorted(" ".join(p) for p in normalised))
        name = "g" + hashlib.sha1("|".join(key).encode()).hexdigest()[:12]
        if name not in self._grammars:
            grammar = _grammar_cache(key, self)
            with _DECODE_LOCK:
                self._decoder.add_jsgf_string(name, grammar)
            self._grammars[name] = key
            while len(self._grammars) > MAX_GRAMMARS_PER_DECODER:
                old, _ = self._grammars.popitem(last=False)
                with _DECODE_LOCK:
                    self._decoder.remove_search(old)
        else:
            self._grammars.move_to_end(name)
        self._search = name
        self._expected = key

    @property
    def expected(self) -> tuple[str, ...]:
        """The normalised phrases the current grammar expects (empty for the general LM)."""
        return self._expected

    # -- one turn ---------------------------------------------------------------------------------
    def begin(self) -> None:
        import soxr

        if self._in_utt:
            raise RecognizerError("begin() twice without end()")
        with _DECODE_LOCK:
            if self._search == GENERAL_SEARCH and not self._has_general:
                self._decoder.add_lm(GENERAL_SEARCH, self._model.lm)
                self._has_general = True
            self._decoder.activate_search(self._search)
            self._decoder.start_utt()
        self._resampler = soxr.ResampleStream(IN_RATE_HZ, DECODER_RATE_HZ, 1, dtype="int16", quality="HQ")
        self._in_utt = True
        self._audio_samples = 0
        self._odd = b""

    def feed(self, pcm16_8k: bytes) -> None:
        if not self._in_utt:
            raise RecognizerError("feed() outside a turn: call begin() first")
        if self._odd:
            pcm16_8k = self._odd + pcm16_8k
            self._odd = b""
        if len(pcm16_8k) & 1:
            self._odd, pcm16_8k = pcm16_8k[-1:], pcm16_8k[:-1]
        samples = np.frombuffer(pcm16_8k, dtype=np.int16)
        if samples.size == 0:
            return
        self._audio_samples += samples.size
        up = self._resampler.resample_chunk(samples)  # type: ignore[attr-defined]
        if up.size:
            with _DECODE_LOCK:
                self._decoder.process_raw(up.tobytes(), False, False)

    def partial(self) -> str:
        """The best hypothesis so far (cheap; lags the audio by the resampler's backlog)."""
        if not self._in_utt:
            return ""
        hyp = self._decoder.hyp()
        return _clean(hyp.hypstr) if hyp is not None else ""

    def end(self) -> Transcript:
        if not self._in_utt:
            raise RecognizerError("end() without begin()")
        start = time.perf_counter()
        tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)  # type: ignore[attr-defined]
        with _DECODE_LOCK:
            if tail.size:
                self._decoder.process_raw(tail.tobytes(), False, False)
            self._decoder.end_utt()
            hyp = self._decoder.hyp()
        self._in_utt = False
        self._resampler = None
        text = _clean(hyp.hypstr) if hyp is not None else ""
        in_grammar = True
        if self._search != GENERAL_SEARCH and text:
            in_grammar = _matches_answer(text.split(), self._expected)
        return Transcript(
            text=text,
            search=self._search,
            elapsed_ms=(time.perf_counter() - start) * 1000.0,
            in_grammar=in_grammar,
            audio_ms=self._audio_samples * 1000 // IN_RATE_HZ,
        )

    def recognize(self, pcm16_8k: bytes, chunk_bytes: int = 320) -> Transcript:
        """One whole turn in one call (begin, feed in 20 ms chunks, end)."""
        self.begin()
        for i in range(0, len(pcm16_8k), chunk_bytes):
            self.feed(pcm16_8k[i : i + chunk_bytes])
        return self.end()

    def cmn(self) -> str:
        """The decoder's current cepstral mean (adapted to this line so far)."""
        return str(self._decoder.get_cmn())


_FILLER = re.compile(r"<[^>]*>|\[[^\]]*\]|\(\d+\)")


def _clean(hypstr: str) -> str:
    return " ".join(_FILLER.sub(" ", hypstr or "").split())


def _matches_answer(words: list[str], phrases: tuple[str, ...]) -> bool:
    """True when the decoded grammar path is an answer, not the garbage loop. The garbage loop never
    contains an answer word (phrase words, yes/no, digits), so one such word means the answer path."""
    answer = {w for p in phrases for w in p.split()} | set(YES_WORDS) | set(NO_WORDS) | set(DIGIT_WORDS)
    answer.add("oh")
    return any(w in answer for w in words)


_GRAMMARS: OrderedDict[tuple[str, ...], str] = OrderedDict()
_GRAMMARS_LOCK = threading.Lock()


def _grammar_cache(key: tuple[str, ...], rec: Recognizer) -> str:
    with _GRAMMARS_LOCK:
        grammar = _GRAMMARS.get(key)
        if grammar is not None:
            _GRAMMARS.move_to_end(key)
            return grammar
    helper_words = {
        w
        for w in (*GARBAGE_WORDS, *YES_WORDS, *NO_WORDS, *DIGIT_WORDS, "oh", "please", "thanks", "thank",
                  "okay", "ok", "uh", "um", "i", "said", "it's", "that's")
        if rec.known_word(w)
    } | {w for p in key for w in p.split()}  # fmt: skip
    grammar = build_grammar([tuple(p.split()) for p in key], helper_words)
    with _GRAMMARS_LOCK:
        _GRAMMARS[key] = grammar
        while len(_GRAMMARS) > 256:
            _GRAMMARS.popitem(last=False)
    return grammar
