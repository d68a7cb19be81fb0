"""TwiML the bridge answers with, built by the `twilio` library's `VoiceResponse` (escaping included).

- `connect_stream`: the incoming-call answer, a bidirectional `<Connect><Stream>` whose
  `<Parameter>`s carry the call's context and stream token (Twilio strips query strings from the
  stream URL, so the URL itself must have none). With `action_url`, Twilio POSTs there when the
  stream ends and plays the TwiML it gets back: that is how a transfer or hang-up continues.
- `dial`, `hangup`, `say_and_hangup`: the continuations (and the polite refusal).
- `reject_busy`: the answer when the bridge is at its call limit (the caller hears a busy tone and
  the call is never answered, so it is not billed as a connected call).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from twilio.twiml.voice_response import VoiceResponse

from bridge.errors import BridgeError

_E164_RE = re.compile(r"^\+[1-9][0-9]{5,14}$")
_SIP_RE = re.compile(r"^sips?:[^\s<>\"]+@[^\s<>\"]+$", re.IGNORECASE)
_PARAM_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class TwimlError(BridgeError):
    """A value cannot go into TwiML (a stream URL with a query, a target that is not dialable)."""


def _check_stream_url(url: str) -> None:
    if not url.startswith(("wss://", "ws://")):
        raise TwimlError(f"stream URL must be wss:// (ws:// only for local tests), got {url!r}")
    if "?" in url or "#" in url:
        raise TwimlError(f"stream URL must not have a query string or fragment (Twilio drops it): {url!r}")


def is_dialable(target: str) -> bool:
    """E.164 number (`+15550199`) or SIP URI (`sip:agent@pbx.example.com`)."""
    return bool(_E164_RE.match(target) or _SIP_RE.match(target))


def connect_stream(
    stream_url: str,
    parameters: Mapping[str, str],
    action_url: str | None = None,
    status_callback: str | None = None,
) -> str:
    """`<Response><Connect action?><Stream url statusCallback?><Parameter .../>...</Stream></Connect>`."""
    _check_stream_url(stream_url)
    response = VoiceResponse()
    connect = response.connect(action=action_url, method="POST" if action_url else None)
    stream = connect.stream(
        url=stream_url,
        status_callback=status_callback,
        status_callback_method="POST" if status_callback else None,
    )
    for name, value in parameters.items():
        if not _PARAM_NAME_RE.match(name):
            raise TwimlError(f"stream parameter name {name!r} is not a plain identifier")
        stream.parameter(name=name, value=value)
    return str(response)


def dial(target: str, caller_id: str | None = None) -> str:
    """Transfer: `<Dial>` to an E.164 number or a SIP URI (`<Sip>`)."""
    if not is_dialable(target):
        raise TwimlError(f"transfer target {target!r} is neither an E.164 number nor a sip: URI")
    if caller_id is not None and not _E164_RE.match(caller_id):
        raise TwimlError(f"caller id {caller_id!r} is not an E.164 number")
    response = VoiceResponse()
    if target.lower().startswith(("sip:", "sips:")):
        response.dial(caller_id=caller_id).sip(target)
    else:
        response.dial(target, caller_id=caller_id)
    return str(response)


def hangup() -> str:
    response = VoiceResponse()
    response.hangup()
    return str(response)


def say_and_hangup(text: str) -> str:
    """Polite refusal (unknown number, bridge not ready): say `text`, then hang up."""
    response = VoiceResponse()
    response.say(text)
    response.hangup()
    return str(response)


def reject_busy() -> str:
    """`<Response><Reject reason="busy"/></Response>`."""
    response = VoiceResponse()
    response.reject(reason="busy")
    return str(response)


def redirect(url: str) -> str:
    """`<Redirect>` the call to another TwiML URL (a draining bridge hands new calls to another)."""
    if not url.startswith(("https://", "http://")):
        raise TwimlError(f"redirect URL {url!r} is not an http(s) URL")
    response = VoiceResponse()
    response.redirect(url, method="POST")
    return str(response)
