"""What local speech a dialplan needs, so the bridge starts only that (docs/speech.md, "Lazy start").

Pure: a `Dialplan` in, a `SpeechNeeds` out (no models touched). `bridge/call/warmup.py` starts what
the answer asks for, at start-up and before a reloaded plan is swapped in.

- `vad`: the local voice activity detector (Silero): every call runs it for barge-in.
- `recognizer`: pocketsphinx in the ASR worker processes: speech menus (an option with words or a
  word key), `collect` steps (spoken digits), and the embedded engine.
- `engine`: an agent step (or its fallback) on the embedded engine (`provider: local`): Silero,
  Piper at 24 and 8 kHz, the recognizer workers.
- `synthesizer`: Piper in this process: the engine, or a spoken text with a `{variable}` (rendered
  per call). Without it, the plan's fixed texts (`prompts`) are rendered once in a short-lived child
  process and only their audio stays here.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.dialplan.matching import spoken_phrases
from bridge.dialplan.schema import AgentStep, CollectStep, Dialplan, MenuStep, spoken_texts


@dataclass(frozen=True, slots=True)
class SpeechNeeds:
    vad: bool = True
    recognizer: bool = False
    engine: bool = False
    synthesizer: bool = False
    prompts: tuple[str, ...] = ()  # every fixed text the bridge speaks with its local voice

    def names(self) -> tuple[str, ...]:
        """The services needed, for log lines: ("vad", "recognizer", ...)."""
        flags = (("vad", self.vad), ("recognizer", self.recognizer), ("engine", self.engine))
        return (*(n for n, on in flags if on), *(("synthesizer",) if self.synthesizer else ()))


def _texts(plan: Dialplan) -> list[str]:
    """Every text the bridge may speak with its local voice (fixed or with {variables})."""
    texts: list[str] = []
    for steps in plan.flows.values():
        for step in steps:
            texts += spoken_texts(step)
            if isinstance(step, AgentStep):
                if step.moderation is not None:
                    texts.append(step.moderation.safe_line)
                texts += [tool.announce for tool in step.tools if tool.announce]
    record = plan.defaults.record
    if record.enabled and record.consent:
        texts.append(record.consent)
    if plan.defaults.moderation is not None:
        texts.append(plan.defaults.moderation.safe_line)
    return [t for t in texts if t]


def speech_needs(plan: Dialplan) -> SpeechNeeds:
    """What `plan` needs started before its calls come (see the module docstring)."""
    engine = False
    recognizer = False
    for steps in plan.flows.values():
        for step in steps:
            if isinstance(step, AgentStep):
                providers = (
                    step.provider or plan.defaults.provider,
                    step.fallback_provider or plan.defaults.fallback_provider,
                )
                engine = engine or "local" in providers
            elif isinstance(step, CollectStep) or (isinstance(step, MenuStep) and spoken_phrases(step)):
                recognizer = True
    texts = _texts(plan)
    dynamic = any("{" in t for t in texts)
    fixed = tuple(dict.fromkeys(t for t in texts if "{" not in t))
    return SpeechNeeds(
        vad=True,
        recognizer=recognizer or engine,
        engine=engine,
        synthesizer=engine or dynamic,
        prompts=fixed,
    )
