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
from typing import TYPE_CHECKING, Any

import numpy as np

from bridge.errors import BridgeError
from bridge.media.g711 import FRAME_BYTES_PCM8K, RATE_8K, RATE_16K
from bridge.speech.models import PHONE_CMNINIT, SharedModels, get_shared_models
from bridge.speech.words import DIGIT_WORDS

if TYPE_CHECKING:
    from pocketsphinx import Decoder

GENERAL_SEARCH = "_default"
MAX_GRAMMARS_PER_DECODER = 8
# How often each expected phrase appears in a domain LM's training text (against 1 per garbage word).
PHRASE_REPEATS = 12
DOMAIN_LM_DISCOUNT = 0.5
# Relative weight of the garbage loop against the expected answers in every grammar.
GARBAGE_WEIGHT = 0.3

_DECODE_LOCK = threading.Lock()

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


def build_grammar(
    phrases: Sequence[Sequence[str]], known: set[str] | None = None, *, garbage_loop: bool = False
) -> str:
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
    top = f"/{answer_weight:.3f}/ <answer> | /{GARBAGE_WEIGHT:.3f}/ <garbage>" if garbage_loop else "<answer>"
    lines = [
        "#JSGF V1.0;",
        "grammar expected;",
        f"public <utterance> = {top};",
        "<answer> = [<lead>] (<phrase> | <digits>) [<polite>];",
        "<phrase> = " + " | ".join(_quote(a) for a in answers) + ";",
        "<digits> = (" + " | ".join(digits) + ")+;",
        "<lead> = " + " | ".join(lead or ["uh"]) + ";",
        "<polite> = " + " | ".join(polite or ["please"]) + ";",
    ]
    if garbage_loop:
        lines.append("<garbage> = (" + " | ".join(_quote(w) for w in garbage) + ")+;")
    return "\n".join(lines) + "\n"


def build_domain_corpus(phrases: Sequence[Sequence[str]], known: set[str] | None = None) -> str:
    """Training text for a small bigram LM: the expected phrases (weighted, alone and with
    politeness), yes/no words, digit strings, and every garbage word once, so out-of-domain speech
    has somewhere to go other than an expected phrase."""

    def ok(word: str) -> bool:
        return known is None or word in known

    lines: list[str] = []
    for phrase in phrases:
        text = " ".join(phrase)
        lines += [text] * PHRASE_REPEATS
        lines += [f"{text} please", f"i want {text}", f"uh {text}"]
    lines += [w for w in (*YES_WORDS, *NO_WORDS) if ok(w) for _ in range(PHRASE_REPEATS)]
    lines += ["yes please", "no thanks", "no thank you"]
    digits = [w for w in DIGIT_WORDS if ok(w)]
    lines += [f"{a} {b}" for a in digits for b in digits]  # every digit pair: any digit string
    lines += [" ".join(digits[(i + k) % len(digits)] for k in range(4)) for i in range(len(digits))]
    lines += [w for w in GARBAGE_WORDS if ok(w)]
    return "\n".join(lines) + "\n"


def _quote(words: str) -> str:
    # JSGF tokens with an apostrophe are fine for pocketsphinx; parenthesise multi-word alternatives.
    return f"({words})" if " " in words else words


# ---------------------------------------------------------------------------------------------------
# recognizer


class Recognizer:
    """One per session. Not thread-safe: call it from the session's one worker thread.

    Two pocketsphinx decoders, each created on first use: the general one (full 134k-word dictionary
    plus the process-wide general LM) and one small-dictionary decoder per phrase set (LRU of
    MAX_GRAMMARS_PER_DECODER); a search on a small dictionary builds in milliseconds where adding it
    to the full-dictionary decoder takes seconds. The cepstral mean is carried from turn to turn
    across decoders, so every turn starts adapted to this line.
    """

    def __init__(self, shared: SharedModels | None = None, *, mode: str = "lm") -> None:
        """`mode` picks what expected phrases become: "lm" (a small bigram LM with a garbage vocabulary,
        the default) or "jsgf" (a strict grammar: forces any speech onto a phrase or a digit string)."""
        if mode not in ("lm", "jsgf"):
            raise RecognizerError(f"unknown recognizer mode {mode!r}: expected 'lm' or 'jsgf'")
        self.mode = mode
        self._shared = shared or get_shared_models()
        self._model = self._shared.sphinx()
        self._general: Decoder | None = None
        self._domain: OrderedDict[str, Decoder] = OrderedDict()  # search name -> small decoder
        self._cmn = PHONE_CMNINIT
        self._search = GENERAL_SEARCH
        self._expected: tuple[str, ...] = ()
        self._active: Decoder | None = None
        self._resampler: Any = None  # soxr.ResampleStream between begin() and end()
        self._audio_samples = 0
        self._odd = b""

    # -- configuration ----------------------------------------------------------------------------
    @property
    def search(self) -> str:
        """The search the next (or current) turn uses."""
        return self._search

    @property
    def expected(self) -> tuple[str, ...]:
        """The normalised phrases the current search expects (empty for the general LM)."""
        return self._expected

    def known_word(self, word: str) -> bool:
        return word in self._shared.pronunciations()

    def set_expected(self, phrases: Sequence[str] | None) -> None:
        """None/empty: the general LM. Otherwise a domain LM (or grammar) of these phrases + yes/no +
        digits, built once per phrase set. Takes effect at the next begin(). Words not in the
        dictionary are dropped; phrases left empty are ignored."""
        if self._active is not None:
            raise RecognizerError("set_expected() during a turn: call end() first")
        normalised: list[str] = []
        for phrase in phrases or ():
            words = " ".join(w for w in normalize_phrase(phrase) if self.known_word(w))
            if words and words not in normalised:
                normalised.append(words)
        if not normalised:
            self._search = GENERAL_SEARCH
            self._expected = ()
            return
        key = tuple(sorted(normalised))
        name = self.mode + "-" + hashlib.sha1("|".join(key).encode()).hexdigest()[:12]
        if name in self._domain:
            self._domain.move_to_end(name)
        else:
            self._domain[name] = self._domain_decoder(key)
            while len(self._domain) > MAX_GRAMMARS_PER_DECODER:
                self._domain.popitem(last=False)
        self._search = name
        self._expected = key

    def _new_decoder(self, dict_path: str) -> Decoder:
        from pocketsphinx import Decoder

        return Decoder(
            hmm=self._model.hmm, dict=dict_path, lm=None, cmninit=PHONE_CMNINIT, dither=True, loglevel="FATAL"
        )

    def _general_decoder(self) -> Decoder:
        if self._general is None:
            start = time.perf_counter()
            decoder = self._new_decoder(self._model.dict)
            with _DECODE_LOCK:
                decoder.add_lm(GENERAL_SEARCH, self._model.lm)
                decoder.activate_search(GENERAL_SEARCH)
            self._general = decoder
            self._shared.record_load("pocketsphinx_general_decoder", (time.perf_counter() - start) * 1000.0)
        return self._general

    def _domain_decoder(self, key: tuple[str, ...]) -> Decoder:
        import os
        import tempfile

        prons = self._shared.pronunciations()
        words = sorted({w for w in _HELPER_WORDS if w in prons} | {w for p in key for w in p.split()})
        fd, path = tempfile.mkstemp(suffix=".dict", prefix="ivr-asr-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                for word in words:
                    for i, phones in enumerate(prons[word]):
                        fh.write(f"{word}({i + 1}) {phones}\n" if i else f"{word} {phones}\n")
            decoder = self._new_decoder(path)
        finally:
            os.unlink(path)
        built = _search_for(self.mode, key, set(words))
        with _DECODE_LOCK:
            if isinstance(built, str):
                decoder.add_jsgf_string("expected", built)
            else:
                decoder.add_lm("expected", built)
            decoder.activate_search("expected")
        return decoder

    # -- one turn ---------------------------------------------------------------------------------
    def begin(self) -> None:
        import soxr

        if self._active is not None:
            raise RecognizerError("begin() twice without end()")
        decoder = self._general_decoder() if self._search == GENERAL_SEARCH else self._domain[self._search]
        with _DECODE_LOCK:
            decoder.set_cmn(self._cmn)
            decoder.start_utt()
        self._active = decoder
        self._resampler = soxr.ResampleStream(RATE_8K, RATE_16K, 1, dtype="int16", quality="HQ")
        self._audio_samples = 0
        self._odd = b""

    def feed(self, pcm16_8k: bytes) -> None:
        decoder = self._active
        if decoder is None:
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
        up = self._resampler.resample_chunk(samples)
        if up.size:
            with _DECODE_LOCK:
                decoder.process_raw(up.tobytes(), False, False)

    def partial(self) -> str:
        """The best hypothesis so far (cheap; lags the audio by the resampler's backlog)."""
        decoder = self._active
        if decoder is None:
            return ""
        with _DECODE_LOCK:
            hyp = decoder.hyp()
        return _clean(hyp.hypstr) if hyp is not None else ""

    def end(self) -> Transcript:
        decoder = self._active
        if decoder is None:
            raise RecognizerError("end() without begin()")
        start = time.perf_counter()
        tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        with _DECODE_LOCK:
            if tail.size:
                decoder.process_raw(tail.tobytes(), False, False)
            decoder.end_utt()
            hyp = decoder.hyp()
            if self._audio_samples >= RATE_8K // 4:  # keep the adapted mean for the next turn
                self._cmn = str(decoder.get_cmn())
        self._active = None
        self._resampler = None
        text = _clean(hyp.hypstr) if hyp is not None else ""
        in_grammar = True
        if self._search != GENERAL_SEARCH:
            in_grammar = bool(text) and _matches_answer(text.split(), self._expected)
        return Transcript(
            text=text,
            search=self._search,
            elapsed_ms=(time.perf_counter() - start) * 1000.0,
            in_grammar=in_grammar,
            audio_ms=self._audio_samples * 1000 // RATE_8K,
        )

    def recognize(self, pcm16_8k: bytes, chunk_bytes: int = FRAME_BYTES_PCM8K) -> Transcript:
        """One whole turn in one call (begin, feed in 20 ms chunks, end)."""
        self.begin()
        for i in range(0, len(pcm16_8k), chunk_bytes):
            self.feed(pcm16_8k[i : i + chunk_bytes])
        return self.end()

    def cmn(self) -> str:
        """The cepstral mean the next turn starts from (adapted to this line so far)."""
        return self._cmn


_FILLER = re.compile(r"<[^>]*>|\[[^\]]*\]|\(\d+\)")


def _clean(hypstr: str) -> str:
    return " ".join(_FILLER.sub(" ", hypstr or "").split())


_SHORT_ANSWER_WORDS = frozenset(
    (*YES_WORDS, *NO_WORDS, *DIGIT_WORDS, "oh", "please", "thanks", "thank", "you", "okay", "ok", "uh", "um")
)


def _matches_answer(words: list[str], phrases: tuple[str, ...]) -> bool:
    """True when the words contain one of the expected phrases or a run of 3+ digits, or consist only of
    yes/no, digits and politeness: what a caller answering the question would say."""
    joined = " " + " ".join(words) + " "
    if any(f" {p} " in joined for p in phrases):
        return True
    run = longest = 0
    for w in words:  # a string of three or more digits is an answer (account numbers, extensions)
        run = run + 1 if w in DIGIT_WORDS or w == "oh" else 0
        longest = max(longest, run)
    if longest >= 3:
        return True
    return all(w in _SHORT_ANSWER_WORDS for w in words) and any(w not in ("uh", "um") for w in words)


_HELPER_WORDS = (
    *GARBAGE_WORDS, *YES_WORDS, *NO_WORDS, *DIGIT_WORDS, "oh", "please", "thanks", "thank", "okay", "ok",
    "uh", "um", "i", "want", "said", "it's", "that's",
)  # fmt: skip
_SEARCHES: OrderedDict[tuple[str, tuple[str, ...]], object] = OrderedDict()
_SEARCHES_LOCK = threading.Lock()
_SEARCH_CACHE_ENTRIES = 64


def _search_for(mode: str, key: tuple[str, ...], known: set[str]) -> object:
    """The JSGF text ("jsgf") or the loaded NGramModel ("lm") for a phrase set, built once per process.
    A cached NGramModel is shared by every decoder that uses the phrase set (under _DECODE_LOCK)."""
    with _SEARCHES_LOCK:
        found = _SEARCHES.get((mode, key))
        if found is not None:
            _SEARCHES.move_to_end((mode, key))
            return found
    phrases = [tuple(p.split()) for p in key]
    built: object
    if mode == "jsgf":
        built = build_grammar(phrases, known)
    else:
        built = _load_domain_lm(build_domain_corpus(phrases, known))
    with _SEARCHES_LOCK:
        _SEARCHES[(mode, key)] = built
        while len(_SEARCHES) > _SEARCH_CACHE_ENTRIES:
            _SEARCHES.popitem(last=False)
    return built


def _load_domain_lm(corpus: str) -> object:
    import io
    import os
    import tempfile

    from pocketsphinx import Config, LogMath, NGramModel
    from pocketsphinx.lm import ArpaBoLM

    builder = ArpaBoLM(text=corpus, add_start=True, discount_mass=DOMAIN_LM_DISCOUNT)
    builder.compute()
    arpa = io.StringIO()
    builder.write(arpa)
    fd, path = tempfile.mkstemp(suffix=".arpa", prefix="ivr-lm-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(arpa.getvalue())
        return NGramModel(Config(loglevel="FATAL"), LogMath(), path)
    finally:
        os.unlink(path)
