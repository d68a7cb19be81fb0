"""TwiML builders: parsed back as XML, never compared as loose strings."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from bridge.telephony.twilio.twiml import (
    TwimlError,
    connect_stream,
    dial,
    hangup,
    is_dialable,
    say_and_hangup,
)


def _parse(twiml: str) -> ET.Element:
    assert twiml.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(twiml)
    assert root.tag == "Response"
    return root


def test_connect_stream_with_parameters_action_and_status_callback() -> None:
    twiml = connect_stream(
        "wss://b.example.com/twilio/media",
        {
            "caller": "+15551234567",
            "called": "+15550100",
            "flow": "main & more <x>",
            "bridge_token": "v1.a.b",
        },
        action_url="https://b.example.com/twilio/continue",
        status_callback="https://b.example.com/twilio/status",
    )
    root = _parse(twiml)
    (connect,) = list(root)
    assert connect.tag == "Connect"
    assert connect.attrib == {"action": "https://b.example.com/twilio/continue", "method": "POST"}
    (stream,) = list(connect)
    assert stream.tag == "Stream"
    assert stream.attrib["url"] == "wss://b.example.com/twilio/media"
    assert stream.attrib["statusCallback"] == "https://b.example.com/twilio/status"
    assert stream.attrib["statusCallbackMethod"] == "POST"
    params = {p.attrib["name"]: p.attrib["value"] for p in stream}
    assert params == {
        "caller": "+15551234567",
        "called": "+15550100",
        "flow": "main & more <x>",  # escaped in the XML, intact once parsed
        "bridge_token": "v1.a.b",
    }


def test_connect_stream_minimal() -> None:
    root = _parse(connect_stream("wss://b.example.com/twilio/media", {}))
    connect = root.find("Connect")
    assert connect is not None
    assert connect.attrib == {}
    stream = connect.find("Stream")
    assert stream is not None
    assert stream.attrib == {"url": "wss://b.example.com/twilio/media"}


@pytest.mark.parametrize(
    "url",
    [
        "https://b.example.com/twilio/media",
        "wss://b.example.com/twilio/media?token=x",
        "wss://b/x#f",
        "media",
    ],
)
def test_connect_stream_refuses_bad_urls(url: str) -> None:
    with pytest.raises(TwimlError):
        connect_stream(url, {})


def test_connect_stream_refuses_odd_parameter_names() -> None:
    with pytest.raises(TwimlError):
        connect_stream("wss://b.example.com/twilio/media", {"bad name": "x"})


def test_dial_number_and_sip() -> None:
    root = _parse(dial("+15550199"))
    number_dial = root.find("Dial")
    assert number_dial is not None
    assert number_dial.text == "+15550199"
    root = _parse(dial("sip:agent@pbx.example.com", caller_id="+15550100"))
    sip_dial = root.find("Dial")
    assert sip_dial is not None
    assert sip_dial.attrib == {"callerId": "+15550100"}
    sip = sip_dial.find("Sip")
    assert sip is not None
    assert sip.text == "sip:agent@pbx.example.com"


@pytest.mark.parametrize(
    "target", ["5550199", "+0123456", "+1555<Hangup/>", "tel:+15550199", "sip:nohost", ""]
)
def test_dial_refuses_undialable_targets(target: str) -> None:
    assert not is_dialable(target)
    with pytest.raises(TwimlError):
        dial(target)


def test_dial_refuses_bad_caller_id() -> None:
    with pytest.raises(TwimlError):
        dial("+15550199", caller_id="Acme")


def test_hangup_and_say_and_hangup() -> None:
    root = _parse(hangup())
    assert [el.tag for el in root] == ["Hangup"]
    root = _parse(say_and_hangup("Sorry, this number is not in service. <Goodbye> & thanks."))
    assert [el.tag for el in root] == ["Say", "Hangup"]
    say = root.find("Say")
    assert say is not None
    assert say.text == "Sorry, this number is not in service. <Goodbye> & thanks."
