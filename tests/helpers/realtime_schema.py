"""Validate Realtime GA events against the official openai SDK's pydantic models.

`validate_client_event(data)` checks one client event dict (what the bridge sends) against the
model that the SDK's `RealtimeClientEvent` union picks for its `type`, in pydantic *strict* JSON
mode: required fields present, literal values known (`audio/pcm` rate 24000, `server_vad`, ...),
no `"5"` where an integer belongs. Keys the SDK does not model are reported too, except directly
inside `session` (where `session_config(extra=...)` puts extension objects by design) or under
paths the caller lists in `allow_extra`.

`validate_server_event(data)` checks a server event the same way against `RealtimeServerEvent`
and also that the SDK's own lenient parser maps it to its class, not to the union's fallback.

Both raise AssertionError naming the problem, so they read well inside tests.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Collection, Iterator
from functools import cache
from typing import Any

import pydantic
from openai._models import construct_type_unchecked
from openai.types.realtime import realtime_client_event, realtime_server_event

__all__ = [
    "DEFAULT_ALLOWED_EXTRA",
    "client_event_types",
    "server_event_types",
    "validate_client_event",
    "validate_server_event",
]

# Dotted paths whose *direct* unknown keys are accepted. "session" = extension keys in session.update.
DEFAULT_ALLOWED_EXTRA: frozenset[str] = frozenset({"session"})


def _union_members(alias: Any) -> tuple[type[pydantic.BaseModel], ...]:
    # Annotated[Union[...], PropertyInfo(discriminator="type")]
    union = typing.get_args(alias)[0]
    return typing.get_args(union)


def _type_literal(cls: type[pydantic.BaseModel]) -> str:
    (value,) = typing.get_args(cls.model_fields["type"].annotation)
    return str(value)


@cache
def _client_models() -> dict[str, type[pydantic.BaseModel]]:
    return {_type_literal(c): c for c in _union_members(realtime_client_event.RealtimeClientEvent)}


@cache
def _server_models() -> dict[str, type[pydantic.BaseModel]]:
    return {_type_literal(c): c for c in _union_members(realtime_server_event.RealtimeServerEvent)}


@cache
def _adapter(cls: type[pydantic.BaseModel]) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(cls)


def client_event_types() -> frozenset[str]:
    return frozenset(_client_models())


def server_event_types() -> frozenset[str]:
    return frozenset(_server_models())


def _format_errors(exc: pydantic.ValidationError, limit: int = 8) -> str:
    lines = []
    for err in exc.errors()[:limit]:
        # Drop union-member class names from the location: keep the wire path.
        loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p[:1].isupper()))
        lines.append(f"  {loc or '<root>'}: {err['msg']} (got {err.get('input')!r:.80})")
    more = len(exc.errors()) - limit
    if more > 0:
        lines.append(f"  ... and {more} more")
    return "\n".join(lines)


def _extras(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, pydantic.BaseModel):
        for key in value.model_extra or {}:
            yield f"{path}.{key}" if path else key
        for name in type(value).model_fields:
            yield from _extras(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _extras(item, f"{path}[{i}]")


def _validate(
    data: Any, models: dict[str, type[pydantic.BaseModel]], side: str, allow_extra: Collection[str]
) -> pydantic.BaseModel:
    if not isinstance(data, dict):
        raise AssertionError(f"{side} event must be a dict, got {type(data).__name__}")
    etype = data.get("type")
    if not isinstance(etype, str):
        raise AssertionError(f"{side} event has no string 'type': {data!r:.200}")
    cls = models.get(etype)
    if cls is None:
        raise AssertionError(f"{side} event type {etype!r} is not in the SDK's GA union")
    try:
        text = json.dumps(data)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{side} event {etype!r} is not JSON-serialisable: {exc}") from exc
    try:
        model = _adapter(cls).validate_json(text, strict=True)
    except pydantic.ValidationError as exc:
        raise AssertionError(
            f"{side} event {etype!r} does not match the SDK model {cls.__name__}:\n{_format_errors(exc)}"
        ) from None
    unknown = []
    for path in _extras(model, ""):
        parent = path.rpartition(".")[0]
        if parent not in allow_extra and path not in allow_extra:
            unknown.append(path)
    if unknown:
        raise AssertionError(f"{side} event {etype!r} has keys the SDK model does not know: {unknown}")
    return model


def validate_client_event(
    data: dict[str, Any], *, allow_extra: Collection[str] = DEFAULT_ALLOWED_EXTRA
) -> None:
    """AssertionError unless `data` is a GA client event the SDK's models accept strictly."""
    _validate(data, _client_models(), "client", allow_extra)


def validate_server_event(data: dict[str, Any], *, allow_extra: Collection[str] = ()) -> None:
    """AssertionError unless `data` is a GA server event that the SDK maps to its own class.

    Unknown keys are allowed by default inside objects the real server fills loosely (the session
    in session.created/updated carries `id`, `object`, `expires_at`): pass paths in `allow_extra`
    to allow others, or rely on the default, which reports every unknown key outside `session`.
    """
    etype = data.get("type") if isinstance(data, dict) else None
    _validate(data, _server_models(), "server", {"session", *allow_extra})
    parsed = construct_type_unchecked(value=data, type_=realtime_server_event.RealtimeServerEvent)
    expected = _server_models()[str(etype)]
    if type(parsed) is not expected:
        raise AssertionError(
            f"server event {etype!r}: the SDK parses it as {type(parsed).__name__}, not {expected.__name__}"
        )
