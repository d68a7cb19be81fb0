"""GA and beta Realtime naming, in one place. No I/O.

The GA protocol is what the bridge speaks; the beta protocol (`OpenAI-Beta: realtime=v1`) is what the
embedded engine still answers for older clients, and what the bridge's parser still accepts for audio.
The differences:

- server event names (`GA_TO_BETA_EVENT`): `response.output_audio.delta` is `response.audio.delta`,
  `conversation.item.added` is `conversation.item.created`, and a few GA events do not exist in beta;
- content part types inside items (`output_audio` / `audio`, `output_text` / `text`);
- the session shape: GA nests `audio.input` / `audio.output` with format objects, beta is flat with
  format names (`pcm16`, `g711_ulaw`, `g711_alaw`) and `modalities` of `["text", "audio"]`;
- the response shape: beta `response.done` carries `modalities`, `voice`, `output_audio_format`;
- `response.function_call_arguments.done` names the function in GA only.

`GA` and `BETA` are the two `Dialect`s; a server renders each outgoing event with `dialect.wire(...)`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Final

from bridge.errors import ProtocolError
from bridge.media.g711 import RATE_24K


class ClientEventError(ProtocolError):
    """A client event a server cannot honour: answered with an `error` event naming `param` (and
    echoing the client's `event_id`); the session goes on."""

    def __init__(self, message: str, *, code: str = "invalid_value", param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


# GA server event name -> beta name (only the names that differ; None: beta has no such event).
GA_TO_BETA_EVENT: Final[dict[str, str | None]] = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
    "conversation.item.done": None,
    "input_audio_buffer.timeout_triggered": None,
}
BETA_TO_GA_EVENT: Final[dict[str, str]] = {b: g for g, b in GA_TO_BETA_EVENT.items() if b is not None}

GA_TO_BETA_PART: Final[dict[str, str]] = {"output_audio": "audio", "output_text": "text"}
BETA_TO_GA_PART: Final[dict[str, str]] = {b: g for g, b in GA_TO_BETA_PART.items()}

PCM24K: Final[dict[str, Any]] = {"type": "audio/pcm", "rate": RATE_24K}
PCMU: Final[dict[str, Any]] = {"type": "audio/pcmu"}
PCMA: Final[dict[str, Any]] = {"type": "audio/pcma"}
BETA_FORMATS: Final[dict[str, dict[str, Any]]] = {"pcm16": PCM24K, "g711_ulaw": PCMU, "g711_alaw": PCMA}
GA_TO_BETA_FORMAT: Final[dict[str, str]] = {
    "audio/pcm": "pcm16",
    "audio/pcmu": "g711_ulaw",
    "audio/pcma": "g711_alaw",
}


def beta_modalities(ga_modalities: list[str]) -> list[str]:
    """GA `output_modalities` (one of audio or text) as beta `modalities` (audio always comes with text)."""
    return ["text", "audio"] if ga_modalities == ["audio"] else ["text"]


def ga_modalities(value: Any, param: str) -> list[str]:
    """Beta `modalities` as GA `output_modalities`; raises ClientEventError(param) if malformed."""
    if not isinstance(value, list) or not value or any(m not in ("text", "audio") for m in value):
        raise _bad(param, f"expected a subset of ['text', 'audio'], got {value!r}")
    return ["audio"] if "audio" in value else ["text"]


def _bad(param: str, message: str) -> ClientEventError:
    return ClientEventError(f"Invalid value for '{param}': {message}", code="invalid_value", param=param)


class Dialect:
    """How one protocol version names things on the wire. Use the module's `GA` and `BETA`."""

    __slots__ = ("_names", "beta")

    def __init__(self, *, beta: bool) -> None:
        self.beta = beta
        self._names: dict[str, str | None] = GA_TO_BETA_EVENT if beta else {}

    def __repr__(self) -> str:
        return "BETA" if self.beta else "GA"

    def event_type(self, ga_type: str) -> str | None:
        """The wire name of a GA server event type (None: this dialect has no such event)."""
        return self._names.get(ga_type, ga_type)

    def wire(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """A GA server event dict renamed (and reshaped) in place for this dialect; None: not sent."""
        if not self.beta:
            return event
        etype = event["type"]
        if etype in self._names:
            name = self._names[etype]
            if name is None:
                return None
            event["type"] = name
        elif etype == "response.function_call_arguments.done":
            event.pop("name", None)  # beta names the function only in response.output_item.done
        return event

    def part_type(self, ga_part_type: str) -> str:
        """A content part's type as this dialect writes it in items."""
        return GA_TO_BETA_PART.get(ga_part_type, ga_part_type) if self.beta else ga_part_type

    def session(self, config: dict[str, Any], extra_keys: Collection[str] = ()) -> dict[str, Any]:
        """A GA session config as this dialect sends it in `session.created` / `session.updated`."""
        return session_to_beta(config, extra_keys) if self.beta else config

    def session_patch(self, patch: Any, extra_keys: Collection[str] = ()) -> Any:
        """A client's `session.update` payload in GA shape (validated afterwards by the server)."""
        return beta_patch_to_ga(patch, extra_keys) if self.beta else patch

    def response_shape(self, modalities: list[str], fmt: dict[str, Any], voice: Any) -> dict[str, Any]:
        """The output fields of a `response` object (in `response.created` / `response.done`)."""
        if self.beta:
            return {
                "modalities": beta_modalities(modalities),
                "voice": voice,
                "output_audio_format": GA_TO_BETA_FORMAT.get(fmt["type"], "g711_alaw"),
            }
        return {"output_modalities": modalities, "audio": {"output": {"format": fmt, "voice": voice}}}


GA: Final = Dialect(beta=False)
BETA: Final = Dialect(beta=True)


# --------------------------------------------------------------------------------------------------
# session shape


def beta_patch_to_ga(patch: Any, extra_keys: Collection[str] = ()) -> dict[str, Any]:
    """A beta `session.update` payload in GA shape. `extra_keys` (server extensions) pass through."""
    if not isinstance(patch, dict):
        raise _bad("session", f"expected an object, got {type(patch).__name__}")
    out: dict[str, Any] = {"type": "realtime"}
    audio_in: dict[str, Any] = {}
    audio_out: dict[str, Any] = {}
    for key, value in patch.items():
        if (
            key in ("instructions", "tools", "tool_choice", "tracing", "model", "id", "object")
            or key in extra_keys
        ):
            out[key] = value
        elif key == "modalities":
            out["output_modalities"] = ga_modalities(value, "session.modalities")
        elif key in ("input_audio_format", "output_audio_format"):
            if value not in BETA_FORMATS:
                raise _bad(f"session.{key}", f"expected 'pcm16', 'g711_ulaw' or 'g711_alaw', got {value!r}")
            (audio_in if key.startswith("input") else audio_out)["format"] = dict(BETA_FORMATS[value])
        elif key == "voice":
            audio_out["voice"] = value
        elif key == "speed":
            audio_out["speed"] = value
        elif key == "turn_detection":
            if isinstance(value, dict) and "type" not in value:
                value = {"type": "server_vad", **value}
            audio_in["turn_detection"] = value
        elif key == "input_audio_transcription":
            audio_in["transcription"] = value
        elif key == "input_audio_noise_reduction":
            audio_in["noise_reduction"] = value
        elif key == "max_response_output_tokens":
            out["max_output_tokens"] = value
        elif key in ("temperature", "expires_at", "client_secret"):
            continue  # beta-only knobs with no GA counterpart
        else:
            raise ClientEventError(
                f"Unknown parameter: 'session.{key}'.", code="unknown_parameter", param=f"session.{key}"
            )
    audio: dict[str, Any] = {}
    if audio_in:
        audio["input"] = audio_in
    if audio_out:
        audio["output"] = audio_out
    if audio:
        out["audio"] = audio
    return out


def session_to_beta(config: dict[str, Any], extra_keys: Collection[str] = ()) -> dict[str, Any]:
    """The beta (flat) rendering of a GA session config. `extra_keys` (server extensions) are copied."""
    audio_in = config["audio"]["input"]
    audio_out = config["audio"]["output"]
    td = audio_in["turn_detection"]
    voice = audio_out["voice"]
    out = {
        "id": config["id"],
        "object": "realtime.session",
        "model": config["model"],
        "modalities": beta_modalities(config["output_modalities"]),
        "instructions": config["instructions"],
        "voice": voice if isinstance(voice, str) else voice.get("id"),
        "input_audio_format": GA_TO_BETA_FORMAT[audio_in["format"]["type"]],
        "output_audio_format": GA_TO_BETA_FORMAT[audio_out["format"]["type"]],
        "input_audio_transcription": audio_in["transcription"],
        "input_audio_noise_reduction": audio_in["noise_reduction"],
        "turn_detection": None if td is None else {k: v for k, v in td.items() if k != "idle_timeout_ms"},
        "tools": config["tools"],
        "tool_choice": config["tool_choice"] if isinstance(config["tool_choice"], str) else "auto",
        "temperature": 0.8,
        "max_response_output_tokens": config["max_output_tokens"],
        "speed": audio_out["speed"],
        "tracing": config["tracing"],
        "expires_at": config["expires_at"],
    }
    for key in extra_keys:
        out[key] = config.get(key)
    return out


def beta_response_params(params: dict[str, Any]) -> dict[str, Any]:
    """Beta `response.create` overrides renamed to GA keys, each with the beta param name for errors.

    Returns {ga_key: (value, beta_param)} for the keys present: `output_modalities`, `format`, `voice`,
    `max_output_tokens`. Modalities are checked here (their beta form differs); the rest by the server.
    """
    out: dict[str, Any] = {}
    if "modalities" in params:
        mods = params["modalities"]
        if not isinstance(mods, list) or any(m not in ("text", "audio") for m in mods) or not mods:
            raise ClientEventError("Invalid value for 'response.modalities'.", param="response.modalities")
        out["output_modalities"] = (["audio"] if "audio" in mods else ["text"], "response.modalities")
    if "output_audio_format" in params:
        fmt = BETA_FORMATS.get(params["output_audio_format"], {"type": "?"})
        out["format"] = ({"type": fmt["type"]}, "response.output_audio_format")
    if "voice" in params:
        out["voice"] = (params["voice"], "response.voice")
    if "max_response_output_tokens" in params:
        out["max_output_tokens"] = (
            params["max_response_output_tokens"],
            "response.max_response_output_tokens",
        )
    return out
