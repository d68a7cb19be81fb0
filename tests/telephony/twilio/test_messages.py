"""Twilio Media Streams messages: parsing, golden round-trips, builders (per-socket rules: test_stream.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import ProtocolError
from bridge.telephony.twilio.messages import (
    MAX_MESSAGE_BYTES,
    Connected,
    DtmfMessage,
    Mark,
    Media,
    MediaFormat,
    Start,
    Stop,
    TwilioProtocolError,
    UnknownTwilioEvent,
    clear_message,
    mark_message,
    media_message,
    parse_message,
)

DATA = Path(__file__).resolve().parents[2] / "data"
SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
ACCOUNT = "AC25e16e9a716a4a1786a7c83f58e30482"
CALL = "CA8d4d3c4bd0a7ef6b0a44acb94ad2a2c5"


def lines(name: str) -> list[str]:
    return [line for line in (DATA / name).read_text().splitlines() if line.strip()]


def start_obj(**body_overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "accountSid": ACCOUNT,
        "streamSid": SID,
        "callSid": CALL,
        "tracks": ["inbound"],
        "customParameters": {"caller": "+15551234567", "called": "+15550100"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    body.update(body_overrides)
    return {"event": "start", "sequenceNumber": "1", "streamSid": SID, "start": body}


def media_obj(payload: bytes = b"\xff" * 160, track: str = "inbound", sid: str = SID) -> dict[str, Any]:
    return {
        "event": "media",
        "sequenceNumber": "2",
        "streamSid": sid,
        "media": {
            "track": track,
            "chunk": "1",
            "timestamp": "20",
            "payload": base64.b64encode(payload).decode(),
        },
    }


def dumps(obj: Any) -> str:
    return json.dumps(obj)


# ---------------------------------------------------------------- goldens


@pytest.mark.parametrize("name", ["twilio_call.jsonl", "twilio_extras.jsonl"])
def test_inbound_goldens_round_trip_exactly(name: str) -> None:
    for line in lines(name):
        original = json.loads(line)
        msg = parse_message(line)
        assert msg.to_json() == original
        # And the typed form survives a second trip.
        assert parse_message(json.dumps(msg.to_json())) == msg


def test_golden_call_parses_to_the_expected_types() -> None:
    msgs = [parse_message(line) for line in lines("twilio_call.jsonl")]
    kinds = [type(m).__name__ for m in msgs]
    assert kinds[0] == "Connected"
    assert kinds[1] == "Start"
    assert kinds[-1] == "Stop"
    assert {"Media", "Mark", "DtmfMessage"} <= set(kinds)
    start = msgs[1]
    assert isinstance(start, Start)
    assert start.media_format == MediaFormat("audio/x-mulaw", 8000, 1)
    assert start.custom_parameters["caller"] == "+15551234567"
    media = msgs[2]
    assert isinstance(media, Media)
    assert media.sequence_number == 2
    assert media.chunk == 1
    assert media.timestamp_ms == 0
    assert len(media.payload) == 160


def test_golden_extras_keeps_unknown_keys() -> None:
    msgs = [parse_message(line) for line in lines("twilio_extras.jsonl")]
    connected, start, _, inbound, mark, dtmf, stop = msgs
    assert isinstance(connected, Connected)
    assert connected.extra == {"region": "us1"}
    assert isinstance(start, Start)
    assert start.extra == {"timestamp": "1767225600123"}
    assert start.body_extra == {"streamName": "bridge"}
    assert start.media_format.extra == {"bitDepth": 8}
    assert isinstance(inbound, Media)
    assert inbound.body_extra == {"ssrc": "1234"}
    assert isinstance(mark, Mark)
    assert mark.body_extra == {"played": True}
    assert isinstance(dtmf, DtmfMessage)
    assert dtmf.digit == "*"
    assert isinstance(stop, Stop)
    assert stop.body_extra == {"reason": "callEnded"}
    assert stop.extra == {"tag": "x"}


# ---------------------------------------------------------------- builders


def test_builders_match_outbound_golden() -> None:
    golden = [json.loads(line) for line in lines("twilio_outbound.jsonl")]
    built: list[str] = []
    for obj in golden:
        sid = obj["streamSid"]
        if obj["event"] == "media":
            built.append(media_message(sid, base64.b64decode(obj["media"]["payload"])))
        elif obj["event"] == "mark":
            built.append(mark_message(sid, obj["mark"]["name"]))
        else:
            built.append(clear_message(sid))
    assert [json.loads(text) for text in built] == golden


@pytest.mark.parametrize("name", ['quote " and \\ backslash', "new\nline", "ünïcode ☎", "", "\x00\x1f"])
def test_mark_names_are_escaped(name: str) -> None:
    assert json.loads(mark_message(SID, name)) == {"event": "mark", "streamSid": SID, "mark": {"name": name}}


def test_media_message_empty_payload_is_valid_json() -> None:
    assert json.loads(media_message(SID, b"")) == {
        "event": "media",
        "streamSid": SID,
        "media": {"payload": ""},
    }


@pytest.mark.parametrize("sid", ["", "MZ-1", 'MZ"', "MZ 1", "MZ\n", "MZé"])
def test_builders_reject_bad_stream_sids(sid: str) -> None:
    with pytest.raises(TwilioProtocolError, match="streamSid"):
        media_message(sid, b"\xff")
    with pytest.raises(TwilioProtocolError, match="streamSid"):
        mark_message(sid, "m")
    with pytest.raises(TwilioProtocolError, match="streamSid"):
        clear_message(sid)


def test_builders_output_parses_back_as_json_for_many_payloads() -> None:
    for size in (0, 1, 2, 3, 159, 160, 161, 320):
        payload = bytes((i * 37) & 0xFF for i in range(size))
        obj = json.loads(media_message(SID, payload))
        assert base64.b64decode(obj["media"]["payload"]) == payload


# ---------------------------------------------------------------- parse errors


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("not json", "not JSON"),
        ("{", "not JSON"),
        ("", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('"media"', "JSON object"),
        ("null", "JSON object"),
        ("{}", "no 'event'"),
        ('{"sequenceNumber": "1"}', "no 'event'"),
        ('{"event": 5}', "'event' must be a string"),
        ('{"event": "connected", "version": "1.0.0"}', "missing field 'protocol'"),
        ('{"event": "connected", "protocol": 1, "version": "1.0.0"}', "'protocol' must be a string"),
    ],
)
def test_parse_errors_name_the_defect(text: str, needle: str) -> None:
    with pytest.raises(TwilioProtocolError, match=needle) as info:
        parse_message(text)
    assert isinstance(info.value, ProtocolError)


def test_unknown_event_is_a_distinct_error() -> None:
    with pytest.raises(UnknownTwilioEvent) as info:
        parse_message('{"event": "heartbeat"}')
    assert info.value.event == "heartbeat"
    assert isinstance(info.value, TwilioProtocolError)


def mutate(obj: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    obj = json.loads(json.dumps(obj))
    target = obj
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return obj


DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (("media",), DELETE, "missing field 'media'"),
        (("media",), "x", "'media' must be an object"),
        (("streamSid",), DELETE, "missing field 'streamSid'"),
        (("streamSid",), 7, "'streamSid' must be a string"),
        (("sequenceNumber",), DELETE, "missing field 'sequenceNumber'"),
        (("sequenceNumber",), "two", "'sequenceNumber' must be a decimal string"),
        (("sequenceNumber",), "-1", "'sequenceNumber' must be a decimal string"),
        (("sequenceNumber",), 1.5, "'sequenceNumber' must be a decimal string"),
        (("sequenceNumber",), True, "'sequenceNumber' must be a decimal string"),
        (("media", "chunk"), DELETE, "missing field media.'chunk'"),
        (("media", "chunk"), None, "media.'chunk' must be a decimal string"),
        (("media", "timestamp"), "1e3", "media.'timestamp' must be a decimal string"),
        (("media", "track"), DELETE, "missing field media.'track'"),
        (("media", "payload"), DELETE, "missing field media.'payload'"),
        (("media", "payload"), 123, "media.'payload' must be a string"),
        (("media", "payload"), "!!!notbase64", "not valid base64"),
        (("media", "payload"), "AAA", "not valid base64"),
        (("media", "payload"), "AA\nAA==", "not valid base64"),
    ],
)
def test_media_field_errors(path: tuple[str, ...], value: Any, needle: str) -> None:
    with pytest.raises(TwilioProtocolError, match=needle):
        parse_message(dumps(mutate(media_obj(), path, value)))


def test_numbers_from_clones_are_accepted_and_written_back_as_strings() -> None:
    obj = media_obj()
    obj["sequenceNumber"] = 2
    obj["media"]["chunk"] = 1
    obj["media"]["timestamp"] = 20
    msg = parse_message(dumps(obj))
    assert isinstance(msg, Media)
    assert (msg.sequence_number, msg.chunk, msg.timestamp_ms) == (2, 1, 20)
    assert msg.to_json() == media_obj()


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (("start",), DELETE, "missing field 'start'"),
        (("start", "callSid"), DELETE, "missing field start.'callSid'"),
        (("start", "accountSid"), 1, "start.'accountSid' must be a string"),
        (("start", "streamSid"), "MZother", "differs from streamSid"),
        (("start", "mediaFormat"), DELETE, "missing field start.'mediaFormat'"),
        (("start", "mediaFormat", "encoding"), DELETE, "missing field start.mediaFormat.'encoding'"),
        (("start", "mediaFormat", "sampleRate"), "8000", "'sampleRate' must be an integer"),
        (("start", "mediaFormat", "channels"), 1.0, "'channels' must be an integer"),
        (("start", "customParameters"), ["a"], "'customParameters' must be an object"),
        (("start", "customParameters"), {"n": 1}, r"customParameters\['n'\] must be a string"),
        (("start", "tracks"), "inbound", "'tracks' must be a list of strings"),
    ],
)
def test_start_field_errors(path: tuple[str, ...], value: Any, needle: str) -> None:
    with pytest.raises(TwilioProtocolError, match=needle):
        parse_message(dumps(mutate(start_obj(), path, value)))


def test_dtmf_mark_stop_field_errors() -> None:
    dtmf = {"event": "dtmf", "sequenceNumber": "3", "streamSid": SID, "dtmf": {"track": "inbound_track"}}
    with pytest.raises(TwilioProtocolError, match=r"missing field dtmf\.'digit'"):
        parse_message(dumps(dtmf))
    for bad in ("12", "x", "", "e"):
        dtmf["dtmf"] = {"track": "inbound_track", "digit": bad}
        with pytest.raises(TwilioProtocolError, match=r"dtmf\.digit must be one of"):
            parse_message(dumps(dtmf))
    mark = {"event": "mark", "sequenceNumber": "3", "streamSid": SID, "mark": {}}
    with pytest.raises(TwilioProtocolError, match=r"missing field mark\.'name'"):
        parse_message(dumps(mark))
    stop = {"event": "stop", "sequenceNumber": "3", "streamSid": SID, "stop": {"accountSid": ACCOUNT}}
    with pytest.raises(TwilioProtocolError, match=r"missing field stop\.'callSid'"):
        parse_message(dumps(stop))


def test_oversized_message_is_rejected() -> None:
    big = media_obj(payload=b"\x00" * 60000)  # base64 grows it past 64 KiB
    text = dumps(big)
    assert len(text) > MAX_MESSAGE_BYTES
    with pytest.raises(TwilioProtocolError, match="larger than 65536"):
        parse_message(text)
    # Multi-byte characters count as bytes, not characters.
    params = {"k": "☎" * 22000}  # 22000 chars, 66000 UTF-8 bytes
    text = json.dumps(start_obj(customParameters=params), ensure_ascii=False)
    assert len(text) < MAX_MESSAGE_BYTES < len(text.encode())
    with pytest.raises(TwilioProtocolError, match="larger than"):
        parse_message(text)
    # Just under the limit is fine.
    ok = media_obj(payload=b"\x00" * 48000)
    assert len(dumps(ok)) < MAX_MESSAGE_BYTES
    assert isinstance(parse_message(dumps(ok)), Media)
