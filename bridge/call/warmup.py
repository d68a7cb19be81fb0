"""Start the local speech a dialplan needs, and only that (docs/speech.md, "Lazy start").

`SpeechWarmup.prepare(plan)` (blocking: run it on a thread) reads the plan's `SpeechNeeds`
(bridge/dialplan/needs.py) and starts what is not running yet, each service once per process:

- `vad`: the Silero session (every call's barge-in detector);
- `engine`: the embedded engine's models (`engine_preload`: Silero, Piper, the recognizer workers);
- `recognizer`: the pocketsphinx worker processes (speech menus, spoken digits);
- `synthesizer`: Piper in this process (texts with `{variables}`);
- the plan's fixed texts and the bridge's own lines (hold, drain): rendered in a child process
  (bridge/speech/prerender.py) when Piper is not loaded here, so only their audio stays; with Piper
  loaded, `prewarm_prompts` renders them in the background as before.

The app runs `prepare` before serving the first plan and the dialplan store runs it before swapping a
reloaded plan in (`DialplanStore.prepare`): calls keep the old plan until what the new one needs is
ready, so no call waits for a model. Services are never stopped by a reload to a lighter plan (a
call of the old plan may still use them; the memory of a loaded model is not given back anyway).
A service that fails to start is logged and left to its lazy path (the first use tries again).
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable

from bridge.call.prompts import prompt_voice
from bridge.dialplan.needs import SpeechNeeds, speech_needs
from bridge.dialplan.schema import Dialplan
from bridge.errors import BridgeError
from bridge.speech.prerender import render_in_child

log = logging.getLogger(__name__)


def _malloc_trim() -> None:
    """glibc's malloc_trim(0): return freed heap pages (every arena) to the system. No-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class SpeechWarmup:
    def __init__(
        self,
        engine_preload: Callable[[], dict[str, float]],
        own_lines: tuple[str, ...] = (),
    ) -> None:
        self._engine_preload = engine_preload
        self.own_lines = tuple(t for t in own_lines if t)
        self.started: set[str] = set()  # "vad", "engine", "recognizer", "synthesizer"
        self.report: dict[str, float] = {}  # load times (ms) by model, for /healthz
        self._lock = threading.Lock()

    def prepare(self, plan: Dialplan) -> SpeechNeeds:
        """Start what `plan` needs and is not running yet (blocking). Returns the needs."""
        needs = speech_needs(plan)
        with self._lock:
            t0 = time.perf_counter()
            before = set(self.started)
            if needs.vad and "vad" not in self.started:
                self._start_vad()
            if needs.engine and "engine" not in self.started:
                self.report.update(self._engine_preload())  # Silero, Piper, the recognizer workers
                self.started |= {"engine", "vad", "recognizer"}
            if needs.recognizer and "recognizer" not in self.started:
                self._start_recognizer()
            if needs.synthesizer and "synthesizer" not in self.started:
                prompt_voice().load()  # after the engine's preload: the same Piper voice, shared
                self.started.add("synthesizer")
            rendered = self._prerender(needs)
            new = sorted(self.started - before)
            if new or rendered:
                _malloc_trim()  # loading a model frees its parse buffers; give those pages back

            log.info(
                "dialplan v%d needs %s: started %s%s in %.2f s",
                plan.version,
                "+".join(needs.names()),
                "+".join(new) or "nothing new",
                f", {rendered} prompts rendered in a child process" if rendered else "",
                time.perf_counter() - t0,
            )
        return needs

    def _start_vad(self) -> None:
        from bridge.media.model_files import silero_load_ms, silero_session

        try:
            silero_session()
        except BridgeError as exc:  # each call falls back to webrtcvad (bridge/media/vad.py)
            log.warning("Silero VAD not loaded: %s", exc)
            return
        self.started.add("vad")
        self.report["silero_vad"] = silero_load_ms() or 0.0

    def _start_recognizer(self) -> None:
        from bridge.speech.asr_pool import get_asr_pool

        try:
            report = get_asr_pool().start()
        except BridgeError as exc:
            log.error("speech workers not started (the first speech turn tries again): %s", exc)
            return
        self.started.add("recognizer")
        self.report.update({f"asr_worker_{k}": v for k, v in report.items()})

    def _prerender(self, needs: SpeechNeeds) -> int:
        """Render the fixed texts in a child process when Piper is not loaded here. Returns how many."""
        voice = prompt_voice()
        if voice.loaded:
            return 0  # `prewarm_prompts` renders them in this process, in the background
        texts = [t for t in dict.fromkeys((*needs.prompts, *self.own_lines)) if not voice.prepared(t)]
        if not texts:
            return 0
        t0 = time.perf_counter()
        try:
            voice.prepare(render_in_child(texts))
        except (BridgeError, OSError, subprocess.TimeoutExpired) as exc:
            log.warning(
                "prompts not rendered in a child process (%s): they load Piper here when first used", exc
            )
            return 0
        self.report["prompts_child"] = (time.perf_counter() - t0) * 1000.0
        return len(texts)
