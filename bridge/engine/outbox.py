"""Where the engine session's cores put what they produce. No I/O.

One `Outbox` per session, shared by its cores (turns, conversation, responses) and the facade: server
events (typed classes from bridge/realtime/events.py, turned into JSON-ready dicts with a unique
`event_id` and renamed for the session's dialect, GA or beta), commands for the I/O shell
(bridge/engine/commands.py), and the session's ids (`item_...`, `resp_...`, `call_...`).
"""

from __future__ import annotations

import secrets
from typing import Any, Protocol

from bridge.engine.commands import Command
from bridge.realtime.dialect import GA, ClientEventError, Dialect
from bridge.realtime.events import Error, ErrorInfo, ResponseOutputAudioDelta


class ServerEventLike(Protocol):
    """A typed server event (bridge.realtime.events): anything with a GA `type` and `to_dict()`."""

    def to_dict(self) -> dict[str, Any]: ...


class Outbox:
    __slots__ = ("_audio_delta_type", "_counter", "commands", "dialect", "events", "rand")

    def __init__(self, dialect: Dialect = GA, rand: str | None = None) -> None:
        self.dialect = dialect
        self.rand = rand or secrets.token_hex(5)  # makes this session's ids unique
        self._counter = 0
        self.events: list[dict[str, Any]] = []
        self.commands: list[Command] = []
        self._audio_delta_type = dialect.event_type(ResponseOutputAudioDelta.type)

    def new_id(self, prefix: str) -> str:
        self._counter += 1
        return prefix + self.rand + str(self._counter)

    def emit(self, event: ServerEventLike) -> None:
        """Queue a server event (dropped if the dialect has no such event)."""
        out = event.to_dict()
        self._counter += 1
        out["event_id"] = "event_" + self.rand + str(self._counter)
        if self.dialect.beta:
            wired = self.dialect.wire(out)
            if wired is None:
                return
        self.events.append(out)

    def audio_delta(
        self, response_id: str, item_id: str, output_index: int, content_index: int, delta: str
    ) -> None:
        """`emit(ResponseOutputAudioDelta(...))` without the object: the per-frame path (same dict)."""
        self._counter += 1
        self.events.append(
            {
                "type": self._audio_delta_type,
                "event_id": "event_" + self.rand + str(self._counter),
                "response_id": response_id,
                "item_id": item_id,
                "output_index": output_index,
                "content_index": content_index,
                "delta": delta,
            }
        )

    def error(self, exc: ClientEventError, client_event_id: str | None) -> None:
        """An `error` event for a client event the session refused (echoing the client's event_id)."""
        info = ErrorInfo("invalid_request_error", exc.code, exc.message, exc.param, client_event_id)
        self.emit(Error(info))

    def command(self, cmd: Command) -> None:
        self.commands.append(cmd)

    def take_events(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events

    def take_commands(self) -> list[Command]:
        commands, self.commands = self.commands, []
        return commands
