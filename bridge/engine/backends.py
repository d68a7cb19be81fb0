"""The operator's chat-completions backends: where the engine may send HTTP requests, and with which key.

A session never names a URL or a key. The operator configures backends (a dialplan agent step's
`chat_completions: {url, model, api_key_env}`); the app registers them here, each under an id derived
from its configuration (`backend_id`), and the bridge's agent sends only that id in the session's
`local_engine.chat_completions`. The engine looks the id up in this registry; anything else is refused
(`EgressNotAllowed`) and nothing is sent anywhere.

Keys come only from settings, and only from the names in `bridge.settings.CHAT_KEY_ENVS` (keys meant
for language-model endpoints): a backend naming any other setting is refused when it is registered.
No I/O here.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bridge.errors import ConfigError
from bridge.settings import CHAT_KEY_ENVS, ENV_FIELDS, Settings

log = logging.getLogger(__name__)

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


def chat_key(settings: Settings, key_env: str) -> str | None:
    """The value of a chat-completions key setting; None for any name outside CHAT_KEY_ENVS."""
    if key_env not in CHAT_KEY_ENVS:
        return None
    value = getattr(settings, ENV_FIELDS[key_env], None)
    return value if isinstance(value, str) and value else None


@dataclass
class ChatBackends:
    """The registry: every backend the operator configured since start-up, by id.

    Entries are only ever added, so sessions configured from an earlier dialplan keep their backend
    after a reload. `source`, when given, lists the current configuration's backends; it is read again
    (`refresh()`) when an id is not found, so a dialplan reload needs no extra wiring.
    """

    source: Callable[[], Iterable[ChatBackend]] | None = None
    _by_id: dict[str, ChatBackend] = field(default_factory=dict)

    def add(self, backends: Iterable[ChatBackend]) -> None:
        for backend in backends:
            self._by_id.setdefault(backend.id, backend)

    def refresh(self) -> None:
        if self.source is None:
            return
        try:
            self.add(self.source())
        except ConfigError as exc:  # a bad backend is refused; the ones registered before keep working
            log.error("chat-completions backends not refreshed: %s", exc)

    def get(self, backend_id: str) -> ChatBackend | None:
        backend = self._by_id.get(backend_id)
        if backend is None and self.source is not None:
            self.refresh()
            backend = self._by_id.get(backend_id)
        return backend

    def __contains__(self, backend_id: object) -> bool:
        return backend_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)


__all__ = [
    "OPERATOR_ONLY",
    "ChatBackend",
    "ChatBackends",
    "EgressNotAllowed",
    "backend_id",
    "chat_backend",
    "chat_key",
]
