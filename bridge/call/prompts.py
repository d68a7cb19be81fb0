"""Fixed prompts of a call: spoken by the local synthesizer or read from WAV files, as PCM16 8 kHz.

`PromptVoice` renders a `say`/menu text (through the process-wide prompt cache when the text holds
no variable); texts rendered elsewhere (`prepare`: a child process, bridge/speech/prerender.py) are
served from their audio without loading the synthesizer here, which loads only for a text nobody
prepared. `read_wav_8k` reads a `play` file; `prewarm_prompts` synthesizes every fixed prompt of the
current dialplan not prepared yet, ahead of the first call that needs it (again after each reload).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import wave
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bridge.dialplan.store import DialplanStore
from bridge.errors import BridgeError
from bridge.media import g711
from bridge.speech.prerender import normalized

if TYPE_CHECKING:
    from bridge.speech.tts import Synthesizer

log = logging.getLogger(__name__)

PREWARM_POLL_S = 1.0


class PromptVoice:
    """Fixed prompts spoken by the local synthesizer at 8 kHz, cached process-wide.

    The synthesizer (Piper: ~110 MB once loaded) is created on the first text that was not
    `prepare`d; `load()` creates it ahead of time (a plan with texts only known per call).
    """

    def __init__(self) -> None:
        self._synth: Synthesizer | None = None
        self._lock = threading.Lock()
        self._prepared: dict[str, bytes] = {}  # normalized text -> PCM16 8 kHz rendered elsewhere

    @property
    def loaded(self) -> bool:
        """Is the synthesizer loaded in this process?"""
        return self._synth is not None

    def load(self) -> None:
        self._synthesizer()

    def _synthesizer(self) -> Synthesizer:
        if self._synth is None:
            with self._lock:
                if self._synth is None:
                    from bridge.speech.tts import Synthesizer  # Piper + onnxruntime: only when needed

                    self._synth = Synthesizer(out_rate=g711.RATE_8K)
        return self._synth

    def prepare(self, rendered: dict[str, bytes]) -> None:
        """Keep audio rendered elsewhere ({normalized text: PCM16 8 kHz}); it is served as is."""
        self._prepared.update(rendered)

    def prepared(self, text: str) -> bool:
        return normalized(text) in self._prepared

    def render(self, text: str, cache: bool) -> bytes:
        pcm = self._prepared.get(normalized(text))
        if pcm is not None:
            return pcm
        synth = self._synthesizer()
        audio = synth.cached(text) if cache else synth.synthesize(text)
        return np.asarray(audio, dtype="<i2").tobytes()


_prompt_voice: PromptVoice | None = None


def prompt_voice() -> PromptVoice:
    """The process-wide prompt voice (created on first use)."""
    global _prompt_voice
    if _prompt_voice is None:
        _prompt_voice = PromptVoice()
    return _prompt_voice


def read_wav_8k(path: Path) -> bytes:
    """A prompt file as PCM16 8 kHz mono (other rates are resampled)."""
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2:
            raise BridgeError(f"{path}: expected 16-bit PCM, got {8 * w.getsampwidth()}-bit")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        if w.getnchannels() > 1:
            data = data.reshape(-1, w.getnchannels()).mean(axis=1).astype(np.int16)
        rate = w.getframerate()
    if rate != g711.RATE_8K:
        import soxr

        data = soxr.resample(data, rate, g711.RATE_8K).astype(np.int16)
    return data.astype("<i2").tobytes()


async def prewarm_prompts(store: DialplanStore, extra: tuple[str, ...] = ()) -> None:
    """Synthesize every fixed prompt of the current dialplan (again after each reload), so
    callers never wait for speech synthesis of a greeting or a menu (nor of the bridge's own `extra`
    lines: the hold line, the drain line). Runs until cancelled."""
    loop = asyncio.get_running_loop()
    done_version = 0
    while True:
        if store.version != done_version:
            done_version = store.version
            voice = prompt_voice()
            texts = [*store.current().fixed_prompts(), *(t for t in extra if t)]
            texts = [t for t in texts if not voice.prepared(t)]  # rendered by a child process already
            if not texts:
                await asyncio.sleep(PREWARM_POLL_S)
                continue
            t0 = time.perf_counter()
            for text in texts:
                try:
                    await loop.run_in_executor(None, voice.render, text, True)
                except BridgeError as exc:
                    log.warning("prompt %r not prepared: %s", text, exc)
            log.info(
                "dialplan v%d: %d prompts prepared in %.2f s",
                done_version,
                len(texts),
                time.perf_counter() - t0,
            )
        await asyncio.sleep(PREWARM_POLL_S)
