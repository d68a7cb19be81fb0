"""Fixed prompts of a call: spoken by the local synthesizer or read from WAV files, as PCM16 8 kHz.

`PromptVoice` renders a `say`/menu text (through the process-wide prompt cache when the text holds
no variable); `read_wav_8k` reads a `play` file; `prewarm_prompts` synthesizes every fixed prompt of
the current dialplan ahead of the first call that needs it (again after each reload).
"""

from __future__ import annotations

import asyncio
import logging
import time
import wave
from pathlib import Path

import numpy as np

from bridge.dialplan.store import DialplanStore
from bridge.errors import BridgeError
from bridge.media import g711

log = logging.getLogger(__name__)

PREWARM_POLL_S = 1.0


class PromptVoice:
    """Fixed prompts spoken by the local synthesizer at 8 kHz, cached process-wide."""

    def __init__(self) -> None:
        from bridge.speech.tts import Synthesizer

        self._synth = Synthesizer(out_rate=g711.RATE_8K)

    def render(self, text: str, cache: bool) -> bytes:
        audio = self._synth.cached(text) if cache else self._synth.synthesize(text)
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
            texts = [*store.current().fixed_prompts(), *(t for t in extra if t)]
            t0 = time.perf_counter()
            for text in texts:
                try:
                    await loop.run_in_executor(None, prompt_voice().render, text, True)
                except BridgeError as exc:
                    log.warning("prompt %r not prepared: %s", text, exc)
            log.info(
                "dialplan v%d: %d prompts prepared in %.2f s",
                done_version,
                len(texts),
                time.perf_counter() - t0,
            )
        await asyncio.sleep(PREWARM_POLL_S)
