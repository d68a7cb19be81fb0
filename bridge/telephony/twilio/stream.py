"""One Twilio Media Streams websocket, sans I/O: frames in, leg events out.

Feed `TwilioStream.receive()` each text frame of one `/twilio/media` websocket and read back leg
events (`bridge.telephony.leg`). Its `media_message`, `mark_message` and `clear_message` build what
goes back to Twilio with the stream's validated `streamSid`. Nothing here touches a socket or a clock.
"""

from __future__ import annotations

import base64

from bridge.media.g711 import RATE_8K
from bridge.telephony.leg import AudioIn, CallEnded, CallStarted, Dtmf, LegEvent, MarkPlayed
from bridge.telephony.twilio.messages import (
    ENCODINGS,
    DtmfMessage,
    Mark,
    Media,
    Start,
    Stop,
    TwilioProtocolError,
    UnknownTwilioEvent,
    clear_message,
    decode_payload,
    load_frame,
    mark_message,
    media_prefix,
    parse_object,
)


def _is_uint_str(value: object) -> bool:
    return type(value) is str and value.isascii() and value.isdigit()


class TwilioStream:
    """One Media Streams websocket: frames in, leg events out. No I/O.

    Rules: `media`/`mark`/`dtmf`/`stop` before `start` and a second `start` are protocol errors;
    frames naming another streamSid are errors; everything after `stop` is ignored; unknown events
    are counted in `unknown_events` and otherwise ignored; frames over `MAX_MESSAGE_BYTES` are errors.
    Only `inbound` media becomes `AudioIn` (a `<Start>` fork with both tracks also sends outbound).
    """

    __slots__ = ("_media_prefix", "call_sid", "ended", "stream_sid", "unknown_events")

    def __init__(self) -> None:
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.ended = False
        self.unknown_events = 0
        self._media_prefix = ""

    @property
    def started(self) -> bool:
        return self.stream_sid is not None

    def receive(self, text: str) -> list[LegEvent]:
        if self.ended:
            return []
        obj = load_frame(text)
        if obj.get("event") == "media":
            # Fast path for the ~50 inbound frames a second: well-formed inbound media on this
            # stream becomes AudioIn without building a `Media`; anything unusual takes the
            # full parser below, which names the defect.
            body = obj.get("media")
            if type(body) is dict and self.stream_sid is not None and obj.get("streamSid") == self.stream_sid:
                timestamp = body.get("timestamp")
                payload = body.get("payload")
                if (
                    body.get("track") == "inbound"
                    and _is_uint_str(timestamp)
                    and type(payload) is str
                    and _is_uint_str(obj.get("sequenceNumber"))
                    and _is_uint_str(body.get("chunk"))
                ):
                    return [AudioIn(decode_payload(payload), int(timestamp))]  # type: ignore[arg-type]
        try:
            msg = parse_object(obj)
        except UnknownTwilioEvent:
            self.unknown_events += 1
            return []
        if isinstance(msg, Media):
            self._check_stream(msg.stream_sid, "media")
            if msg.track != "inbound":
                return []
            return [AudioIn(msg.payload, msg.timestamp_ms)]
        if isinstance(msg, Mark):
            self._check_stream(msg.stream_sid, "mark")
            return [MarkPlayed(msg.name)]
        if isinstance(msg, DtmfMessage):
            self._check_stream(msg.stream_sid, "dtmf")
            return [Dtmf(msg.digit)]
        if isinstance(msg, Start):
            return [self._start(msg)]
        if isinstance(msg, Stop):
            self._check_stream(msg.stream_sid, "stop")
            self.ended = True
            return [CallEnded("stop")]
        return []  # Connected

    def _check_stream(self, stream_sid: str, event: str) -> None:
        if self.stream_sid is None:
            raise TwilioProtocolError(f"twilio {event}: received before 'start'")
        if stream_sid != self.stream_sid:
            raise TwilioProtocolError(
                f"twilio {event}: streamSid {stream_sid!r} does not match this stream ({self.stream_sid!r})"
            )

    def _start(self, msg: Start) -> CallStarted:
        if self.stream_sid is not None:
            raise TwilioProtocolError("twilio start: a second 'start' on the same stream")
        fmt = msg.media_format
        encoding = ENCODINGS.get(fmt.encoding)
        if encoding is None:
            raise TwilioProtocolError(f"twilio start: unsupported mediaFormat.encoding {fmt.encoding!r}")
        if fmt.sample_rate != RATE_8K or fmt.channels != 1:
            raise TwilioProtocolError(
                f"twilio start: unsupported mediaFormat {fmt.sample_rate} Hz x {fmt.channels} channels "
                f"(expected {RATE_8K} Hz mono)"
            )
        self._media_prefix = media_prefix(msg.stream_sid)  # validates the sid for the builders
        self.stream_sid = msg.stream_sid
        self.call_sid = msg.call_sid
        params = dict(msg.custom_parameters)
        return CallStarted(
            call_id=msg.call_sid,
            stream_id=msg.stream_sid,
            caller=params.get("caller", ""),
            called=params.get("called", ""),
            encoding=encoding,
            params=params,
        )

    # Builders bound to this stream's sid (validated at `start`).

    def _sid(self) -> str:
        if self.stream_sid is None:
            raise TwilioProtocolError("twilio: cannot send before 'start' (no streamSid yet)")
        return self.stream_sid

    def media_message(self, payload: bytes) -> str:
        if not self._media_prefix:
            self._sid()
        return self._media_prefix + base64.b64encode(payload).decode("ascii") + '"}}'

    def mark_message(self, name: str) -> str:
        return mark_message(self._sid(), name)

    def clear_message(self) -> str:
        return clear_message(self._sid())
