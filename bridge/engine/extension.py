"""The extension object an agent step hands to the embedded (`local`) engine.

The real Realtime API rejects unknown session keys, so only the local provider receives this: the
bridge puts it under `session[EXTENSION_KEY]` in `session.update` (documented in docs/engine.md).

```json
{"type": "realtime",
 "local_engine": {
   "greeting": "Thanks for calling Acme. How can I help?",
   "intents": [{"name": "billing", "phrases": ["billing", "my bill"], "reply": "Connecting you to billing.",
                "tool": "transfer", "arguments": {"target": "billing"}}],
   "faq": [{"questions": ["what are your opening hours"], "answer": "We are open nine to five."}],
   "expected": ["yes", "no"],
   "fallback_reply": "Sorry, could you repeat that? I can also transfer you to a person.",
   "no_input_reply": "Are you still there?",
   "chat_completions": "chat_1f0c2d9a8b7e6f50"}}
```

`chat_completions` is the id of a backend the operator configured (bridge/engine/backends.py), never
a URL or a key: a session must not decide where the engine sends requests or which key it sends.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bridge.engine.backends import OPERATOR_ONLY, EgressNotAllowed
from bridge.errors import ConfigError

EXTENSION_KEY = "local_engine"

DEFAULT_FALLBACK_REPLY = "Sorry, could you repeat that? If you prefer, I can transfer you to a person."
DEFAULT_NO_INPUT_REPLY = "Are you still there? How can I help?"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Intent(_Strict):
    """A caller intent: any of `phrases` heard selects it; it answers `reply` and/or calls `tool`."""

    name: str = Field(min_length=1)
    phrases: tuple[str, ...] = Field(min_length=1)
    reply: str | None = None
    tool: str | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _needs_an_effect(self) -> Intent:
        if not self.reply and not self.tool:
            raise ValueError(f"intent {self.name!r} needs a reply, a tool, or both")
        return self


class FaqEntry(_Strict):
    """A question (or several wordings of it) and the answer spoken when the caller asks it."""

    questions: tuple[str, ...] = Field(min_length=1)
    answer: str = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _accept_single_question(cls, data: Any) -> Any:
        if isinstance(data, dict) and "question" in data:
            data = dict(data)
            question = data.pop("question")
            data["questions"] = [question, *data.get("questions", [])]
        return data


class EngineExtension(_Strict):
    """What the local engine knows about the agent step beyond the standard session config."""

    greeting: str | None = None
    intents: tuple[Intent, ...] = ()
    faq: tuple[FaqEntry, ...] = ()
    expected: tuple[str, ...] = ()
    fallback_reply: str = DEFAULT_FALLBACK_REPLY
    no_input_reply: str = DEFAULT_NO_INPUT_REPLY
    chat_completions: str | None = Field(None, min_length=1, max_length=100)  # a backend id

    def expected_phrases(self) -> list[str]:
        """Everything the caller is likely to say this turn: the recogniser's grammar / small LM."""
        phrases: list[str] = []
        for intent in self.intents:
            phrases.extend(intent.phrases)
        for entry in self.faq:
            phrases.extend(entry.questions)
        phrases.extend(self.expected)
        seen: set[str] = set()
        unique: list[str] = []
        for phrase in phrases:
            key = phrase.strip().lower()
            if key and key not in seen:
                seen.add(key)
                unique.append(phrase.strip())
        return unique


def parse_extension(raw: object) -> EngineExtension:
    """Validate the raw extension object from a session config; ConfigError names the bad field."""
    if raw is None:
        return EngineExtension()
    chat = raw.get("chat_completions") if isinstance(raw, dict) else None
    if chat is not None and not isinstance(chat, str):  # a URL or a key from a session: never
        raise EgressNotAllowed(f"session.{EXTENSION_KEY}.chat_completions: {OPERATOR_ONLY}")
    try:
        return EngineExtension.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"])
        path = f"{EXTENSION_KEY}.{where}" if where else EXTENSION_KEY
        raise ConfigError(f"session.{path}: {err['msg']}") from exc
