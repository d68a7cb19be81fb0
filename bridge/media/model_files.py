"""Model files the audio path runs on: checksum-pinned, loaded once per process, lazily, thread-safely.

The Silero VAD onnxruntime session lives here (vendored `bridge/media/models/silero_vad.onnx`,
sha256-pinned, one intra-op thread), with the helpers every pinned onnx model uses
(`verify_sha256`, `single_thread_options`, `ModelUnavailableError`); `bridge.speech.models` builds
the speech models (Piper, pocketsphinx) on the same helpers and reports the VAD's load time.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bridge.errors import ConfigError

if TYPE_CHECKING:
    import onnxruntime

SILERO_VAD_PATH = Path(__file__).resolve().parent / "models" / "silero_vad.onnx"
SILERO_VAD_SHA256 = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"


class ModelUnavailableError(ConfigError):
    """A speech model or its runtime is missing or does not match its pinned checksum."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    if not path.is_file():
        raise ModelUnavailableError(f"model file not found: {path}")
    actual = sha256_file(path)
    if actual != expected:
        raise ModelUnavailableError(f"model file {path} has sha256 {actual}, expected {expected}")


def single_thread_options() -> onnxruntime.SessionOptions:
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return opts


def _load_silero() -> onnxruntime.InferenceSession:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelUnavailableError("onnxruntime is not installed") from exc
    verify_sha256(SILERO_VAD_PATH, SILERO_VAD_SHA256)
    return onnxruntime.InferenceSession(
        str(SILERO_VAD_PATH), sess_options=single_thread_options(), providers=["CPUExecutionProvider"]
    )


_silero: onnxruntime.InferenceSession | None = None
_silero_load_ms: float | None = None
_silero_lock = threading.Lock()


def silero_session() -> onnxruntime.InferenceSession:
    """The one Silero VAD session of the process (1 intra-op thread). Raises ModelUnavailableError."""
    global _silero, _silero_load_ms
    if _silero is None:
        with _silero_lock:
            if _silero is None:
                start = time.perf_counter()
                session = _load_silero()
                _silero_load_ms = (time.perf_counter() - start) * 1000.0
                _silero = session
    return _silero


def silero_load_ms() -> float | None:
    """How long loading the Silero session took (milliseconds); None until it is loaded."""
    return _silero_load_ms
