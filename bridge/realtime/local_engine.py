"""The contract between the bridge's `local` provider and the embedded engine. No I/O.

Both sides import it from here: the bridge's agent step (`bridge.call.agent`) builds the session
with it, the engine (`bridge.engine`) reads the session with it, and neither imports the other.

## The extension object

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

## Chat-completions backends

`chat_completions` is the id of a backend the operator configured, never a URL or a key: a session
must not decide where the engine sends requests or which key it sends. The operator configures
backends (a dialplan agent step's `chat_completions: {url, model, api_key_env}`); `chat_backend`
checks one and derives its id (`backend_id`), the bridge's agent sends only that id, and the app
registers the backends with the engine's registry (`bridge.engine.backends.ChatBackends`), which
looks the id up; anything else is refused (`EgressNotAllowed`) and nothing is sent anywhere.

Keys come only from settings, and only from the names in `bridge.settings.CHAT_KEY_ENVS` (keys meant
for language-model endpoints): a backend naming any other setting is refused when it is made.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bridge.errors import ConfigError
from bridge.settings import CHAT_KEY_ENVS

EXTENSION_KEY = "local_engine"

DEFAULT_TIMEOUT_S = 8.0
DEFAULT_MAX_TOKENS = 150
OPERATOR_ONLY = (
    "chat-completions endpoints and keys are set by the operator (a dialplan agent step's "
    "chat_completions), never by a session: send the id of a configured backend, or nothing"
)


class EgressNotAllowed(ConfigError):
    """A session tried to choose where the engine sends requests (a URL, or an unknown backend id)."""


@dataclass(frozen=True, slots=True, repr=False)
class ChatBackend:
    """One OpenAI-compatible chat-completions endpoint the operator configured."""

    id: str
    url: str  # as configured: the API base (`.../v1`) or the full `.../chat/completions` address
    model: str = "default"
    key_env: str | None = None  # one of CHAT_KEY_ENVS, or None (no Authorization header)
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_tokens: int = DEFAULT_MAX_TOKENS

    @property
    def endpoint(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"

    def __repr__(self) -> str:  # the URL may carry credentials (user:pass@, ?api-key=): never print it
        return f"ChatBackend(id={self.id!r}, model={self.model!r}, key_env={self.key_env!r})"


def backend_id(url: str, model: str, key_env: str | None) -> str:
    """The id a backend is registered under: a short digest of what the operator configured."""
    digest = hashlib.sha256(f"{url}\n{model}\n{key_env or ''}".encode()).hexdigest()
    return "chat_" + digest[:16]


def chat_backend(
    url: str,
    model: str = "default",
    key_env: str | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> ChatBackend:
    """A backend from operator configuration; ConfigError when the URL or the key's name is not allowed."""
    if not re.match(r"^https?://[^/\s]+", url):
        raise ConfigError(f"chat_completions.url: expected an http:// or https:// URL, got {url!r}")
    if key_env is not None and key_env not in CHAT_KEY_ENVS:
        raise ConfigError(
            f"chat_completions.api_key_env: {key_env!r} is not a chat-completions key; "
            f"expected one of {', '.join(CHAT_KEY_ENVS)} (or none)"
        )
    if not 0 < timeout_s <= 60:
        raise ConfigError(f"chat_completions timeout must be in (0, 60] s, got {timeout_s}")
    if not 1 <= max_tokens <= 4096:
        raise ConfigError(f"chat_completions max_tokens must be in [1, 4096], got {max_tokens}")
    return ChatBackend(backend_id(url, model, key_env), url, model, key_env, timeout_s, max_tokens)


# ---------------------------------------------------------------- the extension object

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


__all__ = [
    "DEFAULT_FALLBACK_REPLY",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_NO_INPUT_REPLY",
    "DEFAULT_TIMEOUT_S",
    "EXTENSION_KEY",
    "OPERATOR_ONLY",
    "ChatBackend",
    "EgressNotAllowed",
    "EngineExtension",
    "FaqEntry",
    "Intent",
    "backend_id",
    "chat_backend",
    "parse_extension",
]
