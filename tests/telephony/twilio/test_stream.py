"""Twilio Media Streams per-socket rules (`TwilioStream`): leg events from frames, state errors,
the stream-bound builders."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from bridge.telephony.leg import AudioIn, CallEnded, CallStarted, Dtmf, MarkPlayed
from bridge.telephony.twilio.messages import TwilioProtocolError, clear_message, mark_message, media_message
from bridge.telephony.twilio.stream import TwilioStream
from tests.telephony.twilio.test_messages import (
    ACCOUNT,
    CALL,
    DELETE,
    SID,
    dumps,
    lines,
    media_obj,
    mutate,
    start_obj,
)

# ---------------------------------------------------------------- goldens through the stream


def test_golden_call_through_stream_gives_leg_events() -> None:
    stream = TwilioStream()
    events = [ev for line in lines("twilio_call.jsonl") for ev in stream.receive(line)]
    started = events[0]
    assert started == CallStarted(
        call_id=CALL,
        stream_id=SID,
        caller="+15551234567",
        called="+15550100",
        encoding="pcmu",
        params={
            "caller": "+15551234567",
            "called": "+15550100",
            "dialplan": "main",
            "token": "v1.1767225600.9f2c0a1b",
        },
    )
    audio = [ev for ev in events if isinstance(ev, AudioIn)]
    assert len(audio) == 7
    assert [a.timestamp_ms for a in audio] == [0, 23, 43, 63, 83, 103, 143]
    assert all(len(a.payload) == 160 for a in audio)
    assert [ev for ev in events if isinstance(ev, Dtmf)] == [Dtmf("1"), Dtmf("#")]
    assert [ev for ev in events if isinstance(ev, MarkPlayed)] == [
        MarkPlayed("r1:0003"),
        MarkPlayed('r1:0004 "end"'),
    ]
    assert events[-1] == CallEnded("stop")
    assert stream.ended
    assert stream.stream_sid == SID
    assert stream.call_sid == CALL


def test_golden_extras_through_stream_alaw_and_outbound_track_skipped() -> None:
    stream = TwilioStream()
    events = [ev for line in lines("twilio_extras.jsonl") for ev in stream.receive(line)]
    assert isinstance(events[0], CallStarted)
    assert events[0].encoding == "pcma"
    assert events[0].caller == ""
    assert events[0].params == {}
    audio = [ev for ev in events if isinstance(ev, AudioIn)]
    assert len(audio) == 1  # the outbound-track frame is not caller audio
    assert audio[0].timestamp_ms == 1
    assert events[-1] == CallEnded("stop")


# ---------------------------------------------------------------- stream-bound builders


def test_stream_builders_match_module_builders() -> None:
    stream = TwilioStream()
    stream.receive(dumps(start_obj()))
    payload = bytes(range(160))
    assert stream.media_message(payload) == media_message(SID, payload)
    assert stream.mark_message("a") == mark_message(SID, "a")
    assert stream.clear_message() == clear_message(SID)
    assert json.loads(stream.media_message(payload)) == {
        "event": "media",
        "streamSid": SID,
        "media": {"payload": base64.b64encode(payload).decode()},
    }


def test_stream_builders_need_start() -> None:
    stream = TwilioStream()
    with pytest.raises(TwilioProtocolError, match="before 'start'"):
        stream.media_message(b"\xff")
    with pytest.raises(TwilioProtocolError, match="before 'start'"):
        stream.mark_message("x")
    with pytest.raises(TwilioProtocolError, match="before 'start'"):
        stream.clear_message()


# ---------------------------------------------------------------- stream state rules


@pytest.mark.parametrize(
    "obj",
    [
        media_obj(),
        {"event": "mark", "sequenceNumber": "2", "streamSid": SID, "mark": {"name": "m"}},
        {
            "event": "dtmf",
            "sequenceNumber": "2",
            "streamSid": SID,
            "dtmf": {"track": "inbound_track", "digit": "5"},
        },
        {
            "event": "stop",
            "sequenceNumber": "2",
            "streamSid": SID,
            "stop": {"accountSid": ACCOUNT, "callSid": CALL},
        },
    ],
)
def test_messages_before_start_are_errors(obj: dict[str, Any]) -> None:
    stream = TwilioStream()
    assert stream.receive('{"event":"connected","protocol":"Call","version":"1.0.0"}') == []
    with pytest.raises(TwilioProtocolError, match="before 'start'"):
        stream.receive(dumps(obj))


def test_second_start_is_an_error() -> None:
    stream = TwilioStream()
    assert isinstance(stream.receive(dumps(start_obj()))[0], CallStarted)
    with pytest.raises(TwilioProtocolError, match="second 'start'"):
        stream.receive(dumps(start_obj()))


def test_media_for_another_stream_is_an_error() -> None:
    stream = TwilioStream()
    stream.receive(dumps(start_obj()))
    with pytest.raises(TwilioProtocolError, match="does not match"):
        stream.receive(dumps(media_obj(sid="MZdifferent")))


def test_everything_after_stop_is_ignored() -> None:
    stream = TwilioStream()
    stream.receive(dumps(start_obj()))
    stop = {
        "event": "stop",
        "sequenceNumber": "3",
        "streamSid": SID,
        "stop": {"accountSid": ACCOUNT, "callSid": CALL},
    }
    assert stream.receive(dumps(stop)) == [CallEnded("stop")]
    assert stream.ended
    assert stream.receive(dumps(media_obj())) == []
    assert stream.receive(dumps(stop)) == []
    assert stream.receive("garbage that is not json") == []
    assert stream.receive(dumps(start_obj())) == []


def test_unknown_events_are_counted_not_fatal() -> None:
    stream = TwilioStream()
    assert stream.receive('{"event":"heartbeat"}') == []
    stream.receive(dumps(start_obj()))
    assert stream.receive('{"event":"somethingNew","streamSid":"x","data":{}}') == []
    assert stream.unknown_events == 2
    assert stream.receive(dumps(media_obj(payload=b"\x7f" * 160))) == [AudioIn(b"\x7f" * 160, 20)]


def test_stream_errors_propagate_for_malformed_frames() -> None:
    stream = TwilioStream()
    stream.receive(dumps(start_obj()))
    with pytest.raises(TwilioProtocolError, match="not JSON"):
        stream.receive("{oops")
    with pytest.raises(TwilioProtocolError, match="larger than"):
        stream.receive(dumps(media_obj(payload=b"\x00" * 60000)))


def test_outbound_track_media_is_not_caller_audio() -> None:
    stream = TwilioStream()
    stream.receive(dumps(start_obj(tracks=["inbound", "outbound"])))
    assert stream.receive(dumps(media_obj(track="outbound"))) == []
    assert len(stream.receive(dumps(media_obj(track="inbound")))) == 1


@pytest.mark.parametrize(
    ("fmt", "needle"),
    [
        ({"encoding": "audio/l16", "sampleRate": 8000, "channels": 1}, "unsupported mediaFormat.encoding"),
        ({"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1}, "16000 Hz"),
        ({"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2}, "2 channels"),
    ],
)
def test_start_with_unusable_media_format(fmt: dict[str, Any], needle: str) -> None:
    stream = TwilioStream()
    with pytest.raises(TwilioProtocolError, match=needle):
        stream.receive(dumps(start_obj(mediaFormat=fmt)))
    assert not stream.started


def test_start_with_unsafe_stream_sid_is_rejected() -> None:
    obj = start_obj(streamSid='MZ"x')
    obj["streamSid"] = 'MZ"x'
    with pytest.raises(TwilioProtocolError, match="streamSid"):
        TwilioStream().receive(dumps(obj))


def test_start_without_custom_parameters() -> None:
    obj = start_obj()
    del obj["start"]["customParameters"]
    [started] = TwilioStream().receive(dumps(obj))
    assert isinstance(started, CallStarted)
    assert started.params == {}
    assert started.caller == ""


def test_stream_fast_and_full_media_paths_agree() -> None:
    stream = TwilioStream()
    stream.receive(dumps(start_obj()))
    payload = bytes(range(160))
    plain = media_obj(payload=payload)
    clone = mutate(mutate(plain, ("media", "timestamp"), 20), ("sequenceNumber",), 2)  # numbers
    extra = mutate(plain, ("media", "ssrc"), "1")
    expected = [AudioIn(payload, 20)]
    for obj in (plain, clone, extra):
        assert stream.receive(dumps(obj)) == expected


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (("media", "payload"), "@@@@", "not valid base64"),
        (("media", "payload"), 5, "must be a string"),
        (("media", "timestamp"), "-5", "decimal string"),
        (("media", "chunk"), DELETE, "missing field media.'chunk'"),
        (("sequenceNumber",), "x", "decimal string"),
        (("media", "track"), 1, "must be a string"),
    ],
)
def test_stream_media_errors(path: tuple[str, ...], value: Any, needle: str) -> None:
    stream = TwilioStream()
    stream.receive(dumps(start_obj()))
    with pytest.raises(TwilioProtocolError, match=needle):
        stream.receive(dumps(mutate(media_obj(), path, value)))
