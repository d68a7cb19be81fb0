"""Speech synthesis for the embedded engine: Piper (joe voice) with espeak-ng as the fallback.

One Piper voice per process (from SharedModels, 1 onnxruntime thread), shared by every session.
Text is split into sentences (a long first sentence is split again at a comma or clause so the first
audio comes quickly) and synthesized one sentence at a time; each sentence is resampled from the
voice's 22050 Hz to `out_rate` with soxr and brought to a phone speech level (about -16 dBFS active
RMS, peaks kept below -1 dBFS: never clipped, never normalised to full scale).

Blocking API: the engine server calls it from a worker thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import logging
import re
import shutil
import subprocess
import threading
import wave
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import numpy as np

from bridge.errors import BridgeError, ConfigError
from bridge.media.g711 import RATE_8K, RATE_16K, RATE_24K
from bridge.media.model_files import ModelUnavailableError
from bridge.speech.models import SharedModels, get_shared_models

if TYPE_CHECKING:
    from piper import PiperVoice

log = logging.getLogger(__name__)

SUPPORTED_RATES_HZ = (RATE_8K, RATE_16K, 22050, RATE_24K)  # 22050: the voice's native rate
TARGET_RMS_DBFS = -16.0
PEAK_LIMIT_DBFS = -1.0
FIRST_CHUNK_MAX_WORDS = 12
PROMPT_CACHE_ENTRIES = 256


class SynthesisError(BridgeError):
    """The speech synthesizer failed on a piece of text."""


class _Engine(Protocol):
    name: str
    rate_hz: int

    def render(self, text: str) -> np.ndarray: ...  # float32 mono in [-1, 1] at rate_hz


# ---------------------------------------------------------------------------------------------------
# text


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=\S)")
_CLAUSE_BREAK = re.compile(r"(?<=[,;:])\s+|\s+(?:-|–|—)\s+")


def split_sentences(text: str, first_max_words: int = FIRST_CHUNK_MAX_WORDS) -> list[str]:
    """Sentences of `text`; a first sentence longer than `first_max_words` is split at its last
    comma/clause break that keeps the first piece within the limit (or at the limit if none)."""
    text = " ".join(text.split())
    if not text:
        return []
    parts = [p.strip() for p in _SENTENCE_END.split(text) if p.strip()]
    if not parts:
        return []
    first = parts[0]
    words = first.split()
    if len(words) > first_max_words:
        cut_at: int | None = None
        for match in _CLAUSE_BREAK.finditer(first):
            n_words = len(first[: match.start()].split())
            if 3 <= n_words <= first_max_words:
                cut_at = match.start()
                rest_at = match.end()
        if cut_at is not None:
            head, tail = first[:cut_at].strip(), first[rest_at:].strip()
        else:
            head, tail = " ".join(words[:first_max_words]), " ".join(words[first_max_words:])
        parts[0:1] = [p for p in (head, tail) if p]
    return parts


# ---------------------------------------------------------------------------------------------------
# engines


class PiperEngine:
    """Piper with the shared joe voice. Output is the raw model level (no normalisation)."""

    name = "piper:joe"

    def __init__(self, voice: PiperVoice) -> None:
        from piper import SynthesisConfig

        self._voice = voice
        self.rate_hz = int(voice.config.sample_rate)
        self._config = SynthesisConfig(normalize_audio=False, volume=1.0)

    def render(self, text: str) -> np.ndarray:
        chunks = [c.audio_float_array for c in self._voice.synthesize(text, self._config)]
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)


class EspeakEngine:
    """espeak-ng in process through ctypes on libespeak-ng.so.1 (serialised: the library is global)."""

    name = "espeak:en-us"
    _lock = threading.Lock()
    _lib: ctypes.CDLL | None = None
    _rate_hz = 0
    _chunks: list[np.ndarray]
    _callback: object = None

    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def __init__(self, voice: str = "en-us", words_per_minute: int = 160) -> None:
        cls = type(self)
        with cls._lock:
            if cls._lib is None:
                cls._load()
        self.rate_hz = cls._rate_hz
        self._voice = voice.encode()
        self._wpm = words_per_minute

    @classmethod
    def _load(cls) -> None:
        path = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            raise ModelUnavailableError(f"libespeak-ng not found ({path})") from exc
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        rate = lib.espeak_Initialize(2, 0, None, 0)  # AUDIO_OUTPUT_SYNCHRONOUS
        if rate <= 0:
            raise ModelUnavailableError("espeak_Initialize failed")
        cls._chunks = []

        def on_audio(wav: ctypes._Pointer[ctypes.c_short], n: int, _events: int) -> int:
            if n > 0 and wav:
                cls._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        cls._callback = cls._CALLBACK(on_audio)
        lib.espeak_SetSynthCallback(cls._callback)
        cls._lib, cls._rate_hz = lib, rate

    def render(self, text: str) -> np.ndarray:
        cls = type(self)
        lib = cls._lib
        assert lib is not None
        data = text.encode("utf-8") + b"\0"
        with cls._lock:
            cls._chunks = []
            lib.espeak_SetVoiceByName(self._voice)
            lib.espeak_SetParameter(1, self._wpm, 0)  # espeakRATE
            err = lib.espeak_Synth(data, len(data), 0, 1, 0, 1, None, None)  # POS_CHARACTER, CHARS_UTF8
            chunks, cls._chunks = cls._chunks, []
        if err != 0:
            raise SynthesisError(f"espeak_Synth failed with code {err}")
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32) / 32768.0


class EspeakCliEngine:
    """espeak-ng through its command line (last resort)."""

    name = "espeak-cli:en-us"

    def __init__(self) -> None:
        exe = shutil.which("espeak-ng") or shutil.which("espeak")
        if exe is None:
            raise ModelUnavailableError("neither libespeak-ng nor the espeak-ng command is available")
        self._exe = exe
        self.rate_hz = 22050

    def render(self, text: str) -> np.ndarray:
        proc = subprocess.run(
            [self._exe, "-v", "en-us", "-s", "160", "--stdout", text], capture_output=True, check=False
        )
        if proc.returncode != 0:
            raise SynthesisError(f"espeak-ng exited with {proc.returncode}: {proc.stderr[-200:]!r}")
        with wave.open(io.BytesIO(proc.stdout)) as wav:
            self.rate_hz = wav.getframerate()
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        return pcm.astype(np.float32) / 32768.0


def create_engine(kind: str = "piper", shared: SharedModels | None = None) -> _Engine:
    """ "piper" (falling back to espeak-ng, logged), "espeak" or "espeak-cli"."""
    if kind == "piper":
        try:
            return PiperEngine((shared or get_shared_models()).piper_voice())
        except ModelUnavailableError as exc:
            log.warning("Piper voice unavailable (%s); falling back to espeak-ng", exc)
            kind = "espeak"
    if kind == "espeak":
        try:
            return EspeakEngine()
        except ModelUnavailableError as exc:
            log.warning("libespeak-ng unavailable (%s); using the espeak-ng command", exc)
            kind = "espeak-cli"
    if kind == "espeak-cli":
        return EspeakCliEngine()
    raise ConfigError(f"unknown TTS engine {kind!r}: expected 'piper', 'espeak' or 'espeak-cli'")


# ---------------------------------------------------------------------------------------------------
# level and rate


def phone_level(audio: np.ndarray, target_dbfs: float = TARGET_RMS_DBFS) -> np.ndarray:
    """Scale float audio so its active-speech RMS is about `target_dbfs`, peak at most -1 dBFS."""
    if audio.size == 0:
        return audio
    frame = 160
    n = audio.size // frame
    if n:
        energies = np.mean(np.square(audio[: n * frame].reshape(n, frame), dtype=np.float64), axis=1)
        active = energies[energies >= energies.max() * 1e-3]  # frames within 30 dB of the loudest
        rms = float(np.sqrt(active.mean())) if active.size else 0.0
    else:
        rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    peak = float(np.max(np.abs(audio)))
    if rms < 1e-6 or peak < 1e-6:
        return np.zeros_like(audio)
    gain = min(10.0 ** (target_dbfs / 20.0) / rms, 10.0 ** (PEAK_LIMIT_DBFS / 20.0) / peak)
    return audio * np.float32(gain)


def to_int16(audio: np.ndarray, from_rate_hz: int, to_rate_hz: int) -> np.ndarray:
    if audio.size and from_rate_hz != to_rate_hz:
        import soxr

        audio = soxr.resample(audio, from_rate_hz, to_rate_hz, quality="HQ")
    return np.clip(np.rint(audio * 32768.0), -32768, 32767).astype(np.int16)


# ---------------------------------------------------------------------------------------------------
# prompt cache (process-wide)


class PromptCache:
    """Bounded LRU of synthesized audio keyed by (voice, text, rate). Thread-safe."""

    def __init__(self, max_entries: int = PROMPT_CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[tuple[str, str, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str, int]) -> np.ndarray | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple[str, str, int], value: np.ndarray) -> None:
        value.setflags(write=False)
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


PROMPT_CACHE = PromptCache()


# ---------------------------------------------------------------------------------------------------
# public API


class Synthesizer:
    """Text to int16 mono audio at `out_rate`, sentence by sentence. Cheap to create: the voice is shared."""

    def __init__(
        self,
        *,
        out_rate: int = RATE_24K,
        engine: str = "piper",
        shared: SharedModels | None = None,
        cache: PromptCache | None = None,
    ) -> None:
        if out_rate not in SUPPORTED_RATES_HZ:
            raise ConfigError(f"TTS out_rate must be one of {SUPPORTED_RATES_HZ}, got {out_rate}")
        self.out_rate = out_rate
        self._engine = create_engine(engine, shared)
        self._cache = PROMPT_CACHE if cache is None else cache

    @property
    def voice(self) -> str:
        """Which engine and voice actually speaks ("piper:joe", "espeak:en-us", ...)."""
        return self._engine.name

    def sentences(self, text: str) -> list[str]:
        return split_sentences(text)

    def render_sentence(self, sentence: str) -> np.ndarray:
        """One piece of text to int16 at out_rate, at phone level."""
        audio = self._engine.render(sentence)
        return to_int16(phone_level(audio), self._engine.rate_hz, self.out_rate)

    def stream(self, text: str, cancel: threading.Event | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """(sentence, int16 audio) one sentence at a time; stops before the next sentence once
        `cancel` is set (a sentence already being synthesized finishes, but is not yielded)."""
        for sentence in self.sentences(text):
            if cancel is not None and cancel.is_set():
                return
            audio = self.render_sentence(sentence)
            if cancel is not None and cancel.is_set():
                return
            yield sentence, audio

    def synthesize(self, text: str) -> np.ndarray:
        """The whole text as one int16 array at out_rate."""
        parts = [audio for _, audio in self.stream(text)]
        if not parts:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(parts)

    def cached(self, text: str) -> np.ndarray:
        """Like synthesize, through the process-wide LRU prompt cache (read-only array)."""
        key = (self._engine.name, " ".join(text.split()), self.out_rate)
        audio = self._cache.get(key)
        if audio is None:
            audio = self.synthesize(text)
            self._cache.put(key, audio)
        return audio
