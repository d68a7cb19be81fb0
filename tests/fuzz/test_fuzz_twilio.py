"""Twilio Media Streams messages: any text gets events or `TwilioProtocolError`, nothing else."""

from __future__ import annotations

import base64
import contextlib
import json

from hypothesis import given
from hypothesis import strategies as st

from bridge.telephony.twilio.messages import TwilioProtocolError, parse_message
from bridge.telephony.twilio.stream import TwilioStream
from tests.fuzz.strategies import JSON, dumps, mutated_object

SID = "MZ00000000000000000000000000000001"
START = {
    "event": "start",
    "sequenceNumber": "1",
    "streamSid": SID,
    "start": {
        "streamSid": SID,
        "accountSid": "AC00000000000000000000000000000001",
        "callSid": "CA00000000000000000000000000000001",
        "tracks": ["inbound"],
        "customParameters": {"caller": "+15551230000"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    },
}
MESSAGES = [
    {"event": "connected", "protocol": "Call", "version": "1.0.0"},
    START,
    {
        "event": "media",
        "sequenceNumber": "2",
        "streamSid": SID,
        "media": {
            "track": "inbound",
            "chunk": "1",
            "timestamp": "0",
            "payload": base64.b64encode(b"\xff" * 160).decode(),
        },
    },
    {"event": "mark", "sequenceNumber": "3", "streamSid": SID, "mark": {"name": "7"}},
    {
        "event": "dtmf",
        "sequenceNumber": "4",
        "streamSid": SID,
        "dtmf": {"track": "inbound_track", "digit": "5"},
    },
    {
        "event": "stop",
        "sequenceNumber": "5",
        "streamSid": SID,
        "stop": {"accountSid": "AC1", "callSid": "CA1"},
    },
]


def feed(stream: TwilioStream, text: str) -> None:
    with contextlib.suppress(TwilioProtocolError):
        stream.receive(text)


@given(st.text(max_size=300))
def test_any_text(text: str) -> None:
    feed(TwilioStream(), text)
    with contextlib.suppress(TwilioProtocolError):
        parse_message(text)


@given(JSON)
def test_any_json(value: object) -> None:
    feed(TwilioStream(), json.dumps(value))


@given(st.sampled_from(MESSAGES).flatmap(mutated_object), st.booleans())
def test_mutated_messages_after_a_valid_start(message: dict[str, object], started: bool) -> None:
    stream = TwilioStream()
    if started:
        stream.receive(dumps(START))
    feed(stream, dumps(message))


@given(st.lists(st.sampled_from(MESSAGES).flatmap(mutated_object) | st.sampled_from(MESSAGES), max_size=8))
def test_sequences_end_cleanly(messages: list[dict[str, object]]) -> None:
    stream = TwilioStream()
    for message in messages:
        try:
            events = stream.receive(dumps(message))
        except TwilioProtocolError:
            return  # the leg closes the stream on the first protocol error
        assert isinstance(events, list)
