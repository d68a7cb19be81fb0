"""The engine's registry of chat-completions backends: where it may send HTTP requests, with which key.

What a backend is, its id and the rule that a session sends only an id live in the contract shared
with the bridge's agent step (`bridge.realtime.local_engine`: `ChatBackend`, `chat_backend`,
`EgressNotAllowed`). Here is the engine's side: the registry the app fills (`ChatBackends`) and the
key lookup (`chat_key`), which reads only the names in `bridge.settings.CHAT_KEY_ENVS`.
No I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bridge.errors import ConfigError
from bridge.realtime.local_engine import ChatBackend
from bridge.settings import CHAT_KEY_ENVS, ENV_FIELDS, Settings

log = logging.getLogger(__name__)


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


__all__ = ["ChatBackends", "chat_key"]
