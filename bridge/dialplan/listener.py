"""Spoken menu answers, recognised locally while the runner listens (`Listen` / `StopListening`).

The call feeds every inbound PCM16 8 kHz frame to `MenuListener.feed()` (cheap: a VAD step and a
bytearray append). While listening, a speech turn (VAD onset with 300 ms of pre-roll, to VAD offset
or `max_turn_ms`) is decoded by the embedded recognizer with a grammar built from the menu's phrases,
in one worker thread; the recognised text reaches the event loop and `on_text(text)` is called there.
Matching text to options is the runner's job (`Runner.on_speech`), not this shell's. The recognizer
comes from the caller (`recognizer_factory`): the dialplan package does not depend on the engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from bridge.media.g711 import FRAME_BYTES_PCM8K, PCM8K_BYTES_PER_MS
from bridge.media.vad import SpeechDetector, SpeechStart, SpeechStop
from bridge.speech.words import DIGIT_WORDS

log = logging.getLogger(__name__)

FLUSH_BYTES = 5 * FRAME_BYTES_PCM8K  # hand audio to the worker every 100 ms


class TranscriptLike(Protocol):
    @property
    def text(self) -> str: ...


class RecognizerLike(Protocol):
    """A blocking recognizer (`bridge.speech.asr_pool.RemoteRecognizer` in calls); used from one worker
    thread only. It may also have `close()`, called when the listener closes."""

    def set_expected(self, phrases: Sequence[str] | None) -> None: ...
    def begin(self) -> None: ...
    def feed(self, pcm16_8k: bytes) -> None: ...
    def end(self) -> TranscriptLike: ...


class MenuListener:
    def __init__(
        self,
        on_text: Callable[[str], None],
        *,
        recognizer_factory: Callable[[], RecognizerLike],
        loop: asyncio.AbstractEventLoop | None = None,
        detector: SpeechDetector | None = None,
        preroll_ms: int = 300,
        max_turn_ms: int = 8000,
        min_silence_ms: int = 500,
    ) -> None:
        self._on_text = on_text
        self._loop = loop or asyncio.get_running_loop()
        self._factory = recognizer_factory  # called in the worker thread, on first use
        self._detector = detector or SpeechDetector(
            min_speech_ms=120,
            min_silence_ms=min_silence_ms,
            gate_dbfs=None,  # what it hears is recognised
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="menu-asr")
        self._recognizer: RecognizerLike | None = None
        self._preroll: deque[bytes] = deque(maxlen=max(1, preroll_ms // 20))
        self._max_turn_bytes = max_turn_ms * PCM8K_BYTES_PER_MS
        self._listening = False
        self._generation = 0  # bumps on every listen/stop: late results of an old menu are dropped
        self._in_turn = False
        self._turn_bytes = 0
        self._pending = bytearray()
        self._closed = False

    @property
    def listening(self) -> bool:
        return self._listening

    def listen(self, phrases: Sequence[str], digits: bool = False) -> None:
        """Start (or switch) listening for these phrases; `digits` adds spoken digit strings."""
        self._end_turn(deliver=False)
        self._generation += 1
        expected = tuple(phrases) + (DIGIT_WORDS if digits else ())
        self._submit(self._set_expected, expected)
        self._listening = True
        self._detector.reset()
        self._preroll.clear()

    def stop(self) -> None:
        self._end_turn(deliver=False)
        self._generation += 1
        self._listening = False

    def feed(self, pcm16_8k: bytes) -> None:
        """One inbound frame (any length; normally 20 ms). Call it from the event loop."""
        if not self._listening:
            return
        events = self._detector.feed(pcm16_8k)
        if not self._in_turn:
            self._preroll.append(pcm16_8k)
            if any(isinstance(e, SpeechStart) for e in events):
                self._begin_turn()
            return
        self._pending += pcm16_8k
        self._turn_bytes += len(pcm16_8k)
        stopped = any(isinstance(e, SpeechStop) for e in events)
        if stopped or self._turn_bytes >= self._max_turn_bytes:
            self._end_turn(deliver=True)
        elif len(self._pending) >= FLUSH_BYTES:
            self._flush()

    async def aclose(self) -> None:
        self.stop()
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        close = getattr(self._recognizer, "close", None)
        if close is not None:  # RemoteRecognizer: free the session's decoders in the ASR worker now
            close()

    # ------------------------------------------------------------------ internals

    def _submit(self, fn: Callable[..., object], *args: object) -> asyncio.Future[object]:
        return self._loop.run_in_executor(self._executor, fn, *args)

    def _begin_turn(self) -> None:
        self._in_turn = True
        audio = b"".join(self._preroll)
        self._preroll.clear()
        self._turn_bytes = len(audio)
        self._pending = bytearray(audio)
        self._submit(self._begin)

    def _flush(self) -> None:
        if self._pending:
            chunk = bytes(self._pending)
            self._pending.clear()
            self._submit(self._feed, chunk)

    def _end_turn(self, *, deliver: bool) -> None:
        if not self._in_turn:
            return
        self._flush()
        self._in_turn = False
        self._turn_bytes = 0
        generation = self._generation
        future = self._submit(self._end)
        if deliver:
            future.add_done_callback(lambda f: self._deliver(f, generation))
        else:
            future.add_done_callback(_swallow)

    def _deliver(self, future: asyncio.Future[object], generation: int) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            log.warning("menu recognition failed: %s", exc)
            return
        text = getattr(future.result(), "text", "")
        if generation != self._generation or not self._listening or not text:
            return
        self._on_text(text)

    # worker-thread side -------------------------------------------------------------

    def _rec(self) -> RecognizerLike:
        if self._recognizer is None:
            self._recognizer = self._factory()
        return self._recognizer

    def _set_expected(self, phrases: tuple[str, ...]) -> None:
        self._rec().set_expected(phrases or None)

    def _begin(self) -> None:
        self._rec().begin()

    def _feed(self, chunk: bytes) -> None:
        self._rec().feed(chunk)

    def _end(self) -> TranscriptLike:
        return self._rec().end()


def _swallow(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()
