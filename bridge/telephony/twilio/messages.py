"""Twilio Media Streams messages, sans I/O: typed inbound messages, their parser, outbound builders.

`parse_message` turns one text frame into a typed message (`Connected`, `Start`, `Media`, `Mark`,
`DtmfMessage`, `Stop`); `media_message`, `mark_message` and `clear_message` build what goes back to
Twilio. The per-socket rules (what may come when) live in `stream.TwilioStream`. Nothing here
touches a socket or a clock.

Wire facts (reference section 10): every frame is one JSON object with an `event` discriminator;
`sequenceNumber`, `chunk` and `timestamp` are decimal *strings*; `mediaFormat.sampleRate` and
`channels` are numbers; DTMF `track` is `inbound_track` while media `track` is `inbound`.
Unknown keys Twilio may add are kept (`extra` at the top level, `body_extra` inside the event's own
object) so that `to_json()` gives back exactly the object that was parsed.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from bridge.errors import ProtocolError
from bridge.media.g711 import Encoding

MAX_MESSAGE_BYTES = 65536

# Twilio mediaFormat.encoding -> leg encoding.
ENCODINGS: dict[str, Encoding] = {"audio/x-mulaw": "pcmu", "audio/x-alaw": "pcma"}

_SID_RE = re.compile(r"[A-Za-z0-9]+")
_DIGITS = frozenset("0123456789*#ABCD")


class TwilioProtocolError(ProtocolError):
    """A Media Streams frame that breaks the protocol (bad JSON, missing field, wrong state...)."""


class UnknownTwilioEvent(TwilioProtocolError):
    """A well-formed frame whose `event` this module does not know. `TwilioStream` ignores these."""

    def __init__(self, event: str) -> None:
        super().__init__(f"twilio: unknown event {event!r}")
        self.event = event


# --------------------------------------------------------------------------- inbound messages


@dataclass(frozen=True, slots=True)
class MediaFormat:
    encoding: str  # "audio/x-mulaw" (default), "audio/x-alaw"
    sample_rate: int
    channels: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"encoding": self.encoding, "sampleRate": self.sample_rate}
        out["channels"] = self.channels
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str
    version: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": "connected", "protocol": self.protocol, "version": self.version}
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class Start:
    sequence_number: int
    stream_sid: str
    account_sid: str
    call_sid: str
    tracks: list[str]
    custom_parameters: dict[str, str]
    media_format: MediaFormat
    extra: dict[str, Any] = field(default_factory=dict)
    body_extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "streamSid": self.stream_sid,
            "accountSid": self.account_sid,
            "callSid": self.call_sid,
            "tracks": list(self.tracks),
            "customParameters": dict(self.custom_parameters),
            "mediaFormat": self.media_format.to_json(),
        }
        body.update(self.body_extra)
        return _envelope("start", self.sequence_number, self.stream_sid, body, self.extra)


@dataclass(frozen=True, slots=True)
class Media:
    sequence_number: int
    stream_sid: str
    track: str  # "inbound" or "outbound"
    chunk: int
    timestamp_ms: int
    payload: bytes
    extra: dict[str, Any] = field(default_factory=dict)
    body_extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "track": self.track,
            "chunk": str(self.chunk),
            "timestamp": str(self.timestamp_ms),
            "payload": base64.b64encode(self.payload).decode("ascii"),
        }
        body.update(self.body_extra)
        return _envelope("media", self.sequence_number, self.stream_sid, body, self.extra)


@dataclass(frozen=True, slots=True)
class Mark:
    sequence_number: int
    stream_sid: str
    name: str
    extra: dict[str, Any] = field(default_factory=dict)
    body_extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name}
        body.update(self.body_extra)
        return _envelope("mark", self.sequence_number, self.stream_sid, body, self.extra)


@dataclass(frozen=True, slots=True)
class DtmfMessage:
    sequence_number: int
    stream_sid: str
    track: str  # "inbound_track"
    digit: str
    extra: dict[str, Any] = field(default_factory=dict)
    body_extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"track": self.track, "digit": self.digit}
        body.update(self.body_extra)
        return _envelope("dtmf", self.sequence_number, self.stream_sid, body, self.extra)


@dataclass(frozen=True, slots=True)
class Stop:
    sequence_number: int
    stream_sid: str
    account_sid: str
    call_sid: str
    extra: dict[str, Any] = field(default_factory=dict)
    body_extra: dict[str, Any] = field(default_factory=dict)  # e.g. `reason` from some clones

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"accountSid": self.account_sid, "callSid": self.call_sid}
        body.update(self.body_extra)
        return _envelope("stop", self.sequence_number, self.stream_sid, body, self.extra)


TwilioMessage = Connected | Start | Media | Mark | DtmfMessage | Stop


def _envelope(
    event: str, sequence_number: int, stream_sid: str, body: dict[str, Any], extra: Mapping[str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {"event": event, "sequenceNumber": str(sequence_number), "streamSid": stream_sid}
    out[event] = body
    out.update(extra)
    return out


# --------------------------------------------------------------------------- parsing


def _fail(event: str, what: str) -> TwilioProtocolError:
    return TwilioProtocolError(f"twilio {event}: {what}")


def _get_str(obj: Mapping[str, Any], key: str, event: str, where: str = "") -> str:
    try:
        value = obj[key]
    except KeyError:
        raise _fail(event, f"missing field {where}{key!r}") from None
    if not isinstance(value, str):
        raise _fail(event, f"field {where}{key!r} must be a string, got {type(value).__name__}")
    return value


def _get_obj(obj: Mapping[str, Any], key: str, event: str, where: str = "") -> dict[str, Any]:
    try:
        value = obj[key]
    except KeyError:
        raise _fail(event, f"missing field {where}{key!r}") from None
    if not isinstance(value, dict):
        raise _fail(event, f"field {where}{key!r} must be an object, got {type(value).__name__}")
    return value


def _get_uint(obj: Mapping[str, Any], key: str, event: str, where: str = "") -> int:
    """A non-negative integer sent as a decimal string (Twilio) or, from some clones, a JSON number."""
    try:
        value = obj[key]
    except KeyError:
        raise _fail(event, f"missing field {where}{key!r}") from None
    if isinstance(value, str):
        if value.isascii() and value.isdigit():
            return int(value)
        raise _fail(event, f"field {where}{key!r} must be a decimal string, got {value[:20]!r}")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _fail(event, f"field {where}{key!r} must be a decimal string, got {type(value).__name__}")


def _get_int_number(obj: Mapping[str, Any], key: str, event: str, where: str) -> int:
    try:
        value = obj[key]
    except KeyError:
        raise _fail(event, f"missing field {where}{key!r}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _fail(event, f"field {where}{key!r} must be an integer, got {type(value).__name__}")


def _rest(obj: Mapping[str, Any], known: frozenset[str]) -> dict[str, Any]:
    """Keys of `obj` that this module does not model, kept so that `to_json()` round-trips."""
    if known.issuperset(obj):
        return {}
    return {k: v for k, v in obj.items() if k not in known}


_CONNECTED_KEYS = frozenset({"event", "protocol", "version"})
_START_KEYS = frozenset({"event", "sequenceNumber", "streamSid", "start"})
_START_BODY_KEYS = frozenset(
    {"streamSid", "accountSid", "callSid", "tracks", "customParameters", "mediaFormat"}
)
_FORMAT_KEYS = frozenset({"encoding", "sampleRate", "channels"})
_MEDIA_KEYS = frozenset({"event", "sequenceNumber", "streamSid", "media"})
_MEDIA_BODY_KEYS = frozenset({"track", "chunk", "timestamp", "payload"})
_MARK_KEYS = frozenset({"event", "sequenceNumber", "streamSid", "mark"})
_MARK_BODY_KEYS = frozenset({"name"})
_DTMF_KEYS = frozenset({"event", "sequenceNumber", "streamSid", "dtmf"})
_DTMF_BODY_KEYS = frozenset({"track", "digit"})
_STOP_KEYS = frozenset({"event", "sequenceNumber", "streamSid", "stop"})
_STOP_BODY_KEYS = frozenset({"accountSid", "callSid"})


def _parse_connected(obj: dict[str, Any]) -> Connected:
    return Connected(
        protocol=_get_str(obj, "protocol", "connected"),
        version=_get_str(obj, "version", "connected"),
        extra=_rest(obj, _CONNECTED_KEYS),
    )


def _parse_start(obj: dict[str, Any]) -> Start:
    ev = "start"
    body = _get_obj(obj, "start", ev)
    tracks = body.get("tracks", ["inbound"])
    if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
        raise _fail(ev, "field start.'tracks' must be a list of strings")
    params = body.get("customParameters", {})
    if not isinstance(params, dict):
        raise _fail(ev, f"field start.'customParameters' must be an object, got {type(params).__name__}")
    for key, value in params.items():
        if not isinstance(value, str):
            raise _fail(ev, f"customParameters[{key!r}] must be a string, got {type(value).__name__}")
    fmt = _get_obj(body, "mediaFormat", ev, "start.")
    media_format = MediaFormat(
        encoding=_get_str(fmt, "encoding", ev, "start.mediaFormat."),
        sample_rate=_get_int_number(fmt, "sampleRate", ev, "start.mediaFormat."),
        channels=_get_int_number(fmt, "channels", ev, "start.mediaFormat."),
        extra=_rest(fmt, _FORMAT_KEYS),
    )
    stream_sid = _get_str(obj, "streamSid", ev)
    inner_sid = _get_str(body, "streamSid", ev, "start.")
    if inner_sid != stream_sid:
        raise _fail(ev, f"start.streamSid {inner_sid!r} differs from streamSid {stream_sid!r}")
    return Start(
        sequence_number=_get_uint(obj, "sequenceNumber", ev),
        stream_sid=stream_sid,
        account_sid=_get_str(body, "accountSid", ev, "start."),
        call_sid=_get_str(body, "callSid", ev, "start."),
        tracks=tracks,
        custom_parameters=params,
        media_format=media_format,
        extra=_rest(obj, _START_KEYS),
        body_extra=_rest(body, _START_BODY_KEYS),
    )


def decode_payload(text: str) -> bytes:
    """A media payload's G.711 bytes from its base64 text."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _fail("media", f"media.payload is not valid base64 ({exc})") from exc


def _parse_media(obj: dict[str, Any]) -> Media:
    ev = "media"
    body = _get_obj(obj, "media", ev)
    return Media(
        sequence_number=_get_uint(obj, "sequenceNumber", ev),
        stream_sid=_get_str(obj, "streamSid", ev),
        track=_get_str(body, "track", ev, "media."),
        chunk=_get_uint(body, "chunk", ev, "media."),
        timestamp_ms=_get_uint(body, "timestamp", ev, "media."),
        payload=decode_payload(_get_str(body, "payload", ev, "media.")),
        extra=_rest(obj, _MEDIA_KEYS),
        body_extra=_rest(body, _MEDIA_BODY_KEYS),
    )


def _parse_mark(obj: dict[str, Any]) -> Mark:
    ev = "mark"
    body = _get_obj(obj, "mark", ev)
    return Mark(
        sequence_number=_get_uint(obj, "sequenceNumber", ev),
        stream_sid=_get_str(obj, "streamSid", ev),
        name=_get_str(body, "name", ev, "mark."),
        extra=_rest(obj, _MARK_KEYS),
        body_extra=_rest(body, _MARK_BODY_KEYS),
    )


def _parse_dtmf(obj: dict[str, Any]) -> DtmfMessage:
    ev = "dtmf"
    body = _get_obj(obj, "dtmf", ev)
    digit = _get_str(body, "digit", ev, "dtmf.")
    if len(digit) != 1 or digit not in _DIGITS:
        raise _fail(ev, f"dtmf.digit must be one of 0-9 * # A-D, got {digit[:10]!r}")
    return DtmfMessage(
        sequence_number=_get_uint(obj, "sequenceNumber", ev),
        stream_sid=_get_str(obj, "streamSid", ev),
        track=_get_str(body, "track", ev, "dtmf."),
        digit=digit,
        extra=_rest(obj, _DTMF_KEYS),
        body_extra=_rest(body, _DTMF_BODY_KEYS),
    )


def _parse_stop(obj: dict[str, Any]) -> Stop:
    ev = "stop"
    body = _get_obj(obj, "stop", ev)
    return Stop(
        sequence_number=_get_uint(obj, "sequenceNumber", ev),
        stream_sid=_get_str(obj, "streamSid", ev),
        account_sid=_get_str(body, "accountSid", ev, "stop."),
        call_sid=_get_str(body, "callSid", ev, "stop."),
        extra=_rest(obj, _STOP_KEYS),
        body_extra=_rest(body, _STOP_BODY_KEYS),
    )


_PARSERS: dict[str, Callable[[dict[str, Any]], TwilioMessage]] = {
    "media": _parse_media,
    "mark": _parse_mark,
    "dtmf": _parse_dtmf,
    "start": _parse_start,
    "stop": _parse_stop,
    "connected": _parse_connected,
}


def _check_size(text: str) -> None:
    size = len(text)
    # len(str) <= len(utf-8 bytes) <= 4 * len(str): encode only when the answer is not obvious.
    if size > MAX_MESSAGE_BYTES or (size * 4 > MAX_MESSAGE_BYTES and len(text.encode()) > MAX_MESSAGE_BYTES):
        raise TwilioProtocolError(f"twilio: message larger than {MAX_MESSAGE_BYTES} bytes")


def load_frame(text: str) -> dict[str, Any]:
    """One text frame as a JSON object (size and JSON checked, fields not yet)."""
    _check_size(text)
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise TwilioProtocolError(f"twilio: message is not JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise TwilioProtocolError(f"twilio: message must be a JSON object, got {type(obj).__name__}")
    return obj


def parse_object(obj: dict[str, Any]) -> TwilioMessage:
    """The typed message for a frame `load_frame` returned; `UnknownTwilioEvent` for other events."""
    event = obj.get("event")
    if event is None:
        raise TwilioProtocolError("twilio: message has no 'event'")
    if not isinstance(event, str):
        raise TwilioProtocolError(f"twilio: 'event' must be a string, got {type(event).__name__}")
    parser = _PARSERS.get(event)
    if parser is None:
        raise UnknownTwilioEvent(event)
    return parser(obj)


def parse_message(text: str) -> TwilioMessage:
    """Parse one Media Streams text frame. Raises `TwilioProtocolError` naming the defect."""
    return parse_object(load_frame(text))


# --------------------------------------------------------------------------- outbound builders


def _check_sid(stream_sid: str) -> str:
    if not isinstance(stream_sid, str) or _SID_RE.fullmatch(stream_sid) is None:
        raise TwilioProtocolError(f"twilio: streamSid must be [A-Za-z0-9]+, got {stream_sid!r}")
    return stream_sid


@lru_cache(maxsize=4096)
def media_prefix(stream_sid: str) -> str:
    """A media message up to its payload. Validated once per streamSid; later calls are a cache hit."""
    return '{"event":"media","streamSid":"' + _check_sid(stream_sid) + '","media":{"payload":"'


def media_message(stream_sid: str, payload: bytes) -> str:
    """`{"event":"media","streamSid":...,"media":{"payload":<base64>}}` for one chunk of G.711."""
    return media_prefix(stream_sid) + base64.b64encode(payload).decode("ascii") + '"}}'


def mark_message(stream_sid: str, name: str) -> str:
    """`{"event":"mark","streamSid":...,"mark":{"name":...}}`; `name` is JSON-escaped."""
    if not isinstance(name, str):
        raise TypeError("mark name must be a string")
    return (
        '{"event":"mark","streamSid":"'
        + _check_sid(stream_sid)
        + '","mark":{"name":'
        + json.dumps(name)
        + "}}"
    )


def clear_message(stream_sid: str) -> str:
    """`{"event":"clear","streamSid":...}`: Twilio drops every queued outbound frame."""
    return '{"event":"clear","streamSid":"' + _check_sid(stream_sid) + '"}'
