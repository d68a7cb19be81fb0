"""Session configuration of the embedded engine: defaults, validation, partial-update merge, beta shape.

The engine keeps one GA-shaped session dict (what `session.created` / `session.updated` carry).
`merge_session_update(current, patch)` validates a client's partial update and returns the new full
config, or raises `EventError` naming the offending parameter (`session.audio.input.format.rate`).
`response_params` does the same for a `response.create`'s per-response overrides. The beta (flat) shapes
are converted in bridge/realtime/dialect.py, the one place that knows them.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from bridge.errors import ConfigError
from bridge.media.g711 import RATE_8K, RATE_24K
from bridge.realtime.dialect import PCM24K, ClientEventError, beta_response_params
from bridge.realtime.local_engine import EXTENSION_KEY, EgressNotAllowed, parse_extension

SESSION_TTL_S = 3600

_SERVER_VAD_DEFAULTS: dict[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "idle_timeout_ms": None,
    "create_response": True,
    "interrupt_response": True,
}
_SEMANTIC_VAD_DEFAULTS: dict[str, Any] = {
    "type": "semantic_vad",
    "eagerness": "auto",
    "create_response": True,
    "interrupt_response": True,
}
# semantic_vad is approximated by server VAD with a silence that follows the eagerness.
SEMANTIC_SILENCE_MS = {"low": 1200, "medium": 700, "auto": 700, "high": 400}

_TOP_KEYS = frozenset(
    {
        "type", "model", "instructions", "output_modalities", "audio", "tools", "tool_choice",
        "parallel_tool_calls", "reasoning", "max_output_tokens", "truncation", "tracing", "prompt",
        "include", EXTENSION_KEY,
        # echoed back by clients that copy session.created into session.update: accepted, ignored
        "id", "object", "expires_at",
    }
)  # fmt: skip
_TRANSCRIPTION_KEYS = frozenset({"model", "language", "languages", "prompt", "keywords", "delay"})


# A client event the engine cannot honour; becomes an `error` event, the session goes on.
EventError = ClientEventError


class EgressError(EventError):
    """A client event that tried to choose where the engine sends requests or which key it sends."""


def default_session(session_id: str, model: str, now_s: float | None = None) -> dict[str, Any]:
    """The full GA session config a new connection starts with (sent in `session.created`)."""
    now = int(time.time() if now_s is None else now_s)
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "",
        "audio": {
            "input": {
                "format": dict(PCM24K),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": dict(_SERVER_VAD_DEFAULTS),
            },
            "output": {"format": dict(PCM24K), "voice": "alloy", "speed": 1.0},
        },
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "truncation": "auto",
        "tracing": None,
        "prompt": None,
        "include": None,
        "expires_at": now + SESSION_TTL_S,
        EXTENSION_KEY: None,
    }


# --------------------------------------------------------------------------------------------------
# validators: each returns the normalised value or raises EventError(param=...)


def _bad(param: str, message: str) -> EventError:
    return EventError(f"Invalid value for '{param}': {message}", code="invalid_value", param=param)


def _number(value: Any, param: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise _bad(param, f"expected a number between {lo} and {hi}, got {value!r}")
    return value


def _int(value: Any, param: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(param, f"expected an integer between {lo} and {hi}, got {value!r}")
    return value


def _bool(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(param, f"expected true or false, got {value!r}")
    return value


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(param, f"expected an object, got {type(value).__name__}")
    return value


def _unknown(obj: dict[str, Any], allowed: frozenset[str] | set[str], param: str) -> None:
    for key in obj:
        if key not in allowed:
            raise EventError(
                f"Unknown parameter: '{param}.{key}'.", code="unknown_parameter", param=f"{param}.{key}"
            )


def audio_format(value: Any, param: str) -> dict[str, Any]:
    obj = _object(value, param)
    _unknown(obj, {"type", "rate"}, param)
    kind = obj.get("type")
    if kind == "audio/pcm":
        rate = obj.get("rate", RATE_24K)
        if rate != RATE_24K:
            raise _bad(f"{param}.rate", f"audio/pcm supports only {RATE_24K} Hz, got {rate!r}")
        return dict(PCM24K)
    if kind in ("audio/pcmu", "audio/pcma"):
        if "rate" in obj and obj["rate"] != RATE_8K:
            raise _bad(f"{param}.rate", f"{kind} is {RATE_8K} Hz, got {obj['rate']!r}")
        return {"type": kind}
    raise _bad(f"{param}.type", f"expected 'audio/pcm', 'audio/pcmu' or 'audio/pcma', got {kind!r}")


def turn_detection(value: Any, param: str) -> dict[str, Any] | None:
    if value is None:
        return None
    obj = _object(value, param)
    kind = obj.get("type", "server_vad")
    if kind == "server_vad":
        out = dict(_SERVER_VAD_DEFAULTS)
        _unknown(obj, set(out), param)
        if "threshold" in obj:
            out["threshold"] = _number(obj["threshold"], f"{param}.threshold", 0.0, 1.0)
        if "prefix_padding_ms" in obj:
            out["prefix_padding_ms"] = _int(obj["prefix_padding_ms"], f"{param}.prefix_padding_ms", 0, 10_000)
        if "silence_duration_ms" in obj:
            out["silence_duration_ms"] = _int(
                obj["silence_duration_ms"], f"{param}.silence_duration_ms", 0, 10_000
            )
        if obj.get("idle_timeout_ms") is not None:
            out["idle_timeout_ms"] = _int(obj["idle_timeout_ms"], f"{param}.idle_timeout_ms", 1, 3_600_000)
    elif kind == "semantic_vad":
        out = dict(_SEMANTIC_VAD_DEFAULTS)
        _unknown(obj, set(out), param)
        if "eagerness" in obj:
            if obj["eagerness"] not in SEMANTIC_SILENCE_MS:
                raise _bad(
                    f"{param}.eagerness", f"expected low, medium, high or auto, got {obj['eagerness']!r}"
                )
            out["eagerness"] = obj["eagerness"]
    else:
        raise _bad(f"{param}.type", f"expected 'server_vad' or 'semantic_vad', got {kind!r}")
    for key in ("create_response", "interrupt_response"):
        if key in obj:
            out[key] = _bool(obj[key], f"{param}.{key}")
    return out


def _transcription(value: Any, param: str) -> dict[str, Any] | None:
    if value is None:
        return None
    obj = _object(value, param)
    _unknown(obj, _TRANSCRIPTION_KEYS, param)
    return dict(obj)


def _noise_reduction(value: Any, param: str) -> dict[str, Any] | None:
    if value is None:
        return None
    obj = _object(value, param)
    _unknown(obj, {"type", "strength"}, param)
    if obj.get("type") not in ("near_field", "far_field"):
        raise _bad(f"{param}.type", f"expected 'near_field' or 'far_field', got {obj.get('type')!r}")
    return dict(obj)


def _voice(value: Any, param: str) -> str | dict[str, Any]:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return {"id": value["id"]}
    raise _bad(param, f"expected a voice name or {{'id': ...}}, got {value!r}")


def _tools(value: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _bad(param, "expected an array of tools")
    out = []
    for i, tool in enumerate(value):
        obj = _object(tool, f"{param}[{i}]")
        if obj.get("type", "function") != "function":
            raise _bad(
                f"{param}[{i}].type", f"the local engine supports only function tools, got {obj['type']!r}"
            )
        if not isinstance(obj.get("name"), str) or not obj["name"]:
            raise EventError(
                f"Missing required parameter: '{param}[{i}].name'.", code="missing_required_parameter",
                param=f"{param}[{i}].name",
            )  # fmt: skip
        out.append({"type": "function", **{k: v for k, v in obj.items() if k != "type"}})
    return out


def tool_choice(value: Any, param: str) -> str | dict[str, Any]:
    if value in ("auto", "none", "required"):
        return str(value)
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("name"), str):
        return {"type": "function", "name": value["name"]}
    raise _bad(param, f"expected 'auto', 'none', 'required' or {{type: function, name}}, got {value!r}")


def output_modalities(value: Any, param: str) -> list[str]:
    if value == ["audio"] or value == ["text"]:
        return list(value)
    raise _bad(param, f"expected ['audio'] or ['text'], got {value!r}")


def max_output_tokens(value: Any, param: str) -> int | str:
    if value == "inf":
        return "inf"
    return _int(value, param, 1, 4096)


def _merge_audio(current: dict[str, Any], patch: Any) -> dict[str, Any]:
    audio = copy.deepcopy(current)
    obj = _object(patch, "session.audio")
    _unknown(obj, {"input", "output"}, "session.audio")
    if "input" in obj:
        inp = _object(obj["input"], "session.audio.input")
        p = "session.audio.input"
        _unknown(inp, {"format", "transcription", "noise_reduction", "turn_detection"}, p)
        if "format" in inp:
            audio["input"]["format"] = audio_format(inp["format"], f"{p}.format")
        if "transcription" in inp:
            audio["input"]["transcription"] = _transcription(inp["transcription"], f"{p}.transcription")
        if "noise_reduction" in inp:
            audio["input"]["noise_reduction"] = _noise_reduction(
                inp["noise_reduction"], f"{p}.noise_reduction"
            )
        if "turn_detection" in inp:
            audio["input"]["turn_detection"] = turn_detection(inp["turn_detection"], f"{p}.turn_detection")
    if "output" in obj:
        out = _object(obj["output"], "session.audio.output")
        p = "session.audio.output"
        _unknown(out, {"format", "voice", "speed"}, p)
        if "format" in out:
            audio["output"]["format"] = audio_format(out["format"], f"{p}.format")
        if "voice" in out:
            audio["output"]["voice"] = _voice(out["voice"], f"{p}.voice")
        if "speed" in out:
            audio["output"]["speed"] = _number(out["speed"], f"{p}.speed", 0.25, 1.5)
    return audio


def merge_session_update(current: dict[str, Any], patch: Any) -> dict[str, Any]:
    """Validate a GA `session.update` payload and return the merged full config (current untouched)."""
    obj = _object(patch, "session")
    _unknown(obj, _TOP_KEYS, "session")
    if "type" not in obj:
        raise EventError(
            "Missing required parameter: 'session.type'.",
            code="missing_required_parameter",
            param="session.type",
        )
    if obj["type"] != "realtime":
        raise _bad("session.type", f"the local engine serves only 'realtime' sessions, got {obj['type']!r}")
    new = copy.deepcopy(current)
    if "model" in obj:
        if not isinstance(obj["model"], str) or not obj["model"]:
            raise _bad("session.model", "expected a model name")
        new["model"] = obj["model"]
    if "instructions" in obj:
        if not isinstance(obj["instructions"], str):
            raise _bad("session.instructions", "expected a string")
        new["instructions"] = obj["instructions"]
    if "output_modalities" in obj:
        new["output_modalities"] = output_modalities(obj["output_modalities"], "session.output_modalities")
    if "audio" in obj:
        new["audio"] = _merge_audio(current["audio"], obj["audio"])
    if "tools" in obj:
        new["tools"] = _tools(obj["tools"], "session.tools")
    if "tool_choice" in obj:
        new["tool_choice"] = tool_choice(obj["tool_choice"], "session.tool_choice")
    if "max_output_tokens" in obj:
        new["max_output_tokens"] = max_output_tokens(obj["max_output_tokens"], "session.max_output_tokens")
    if "parallel_tool_calls" in obj:
        new["parallel_tool_calls"] = _bool(obj["parallel_tool_calls"], "session.parallel_tool_calls")
    for key in ("truncation", "tracing", "prompt", "include", "reasoning"):
        if key in obj:
            new[key] = copy.deepcopy(obj[key])
    if EXTENSION_KEY in obj:
        try:
            ext = parse_extension(obj[EXTENSION_KEY])
        except EgressNotAllowed as exc:
            param = f"session.{EXTENSION_KEY}.chat_completions"
            raise EgressError(str(exc), code="invalid_value", param=param) from exc
        except ConfigError as exc:
            raise EventError(str(exc), code="invalid_value", param=f"session.{EXTENSION_KEY}") from exc
        del ext  # validated; the config echoes what the client sent
        new[EXTENSION_KEY] = copy.deepcopy(obj[EXTENSION_KEY])
    return new


# --------------------------------------------------------------------------------------------------
# response.create overrides


def response_params(config: dict[str, Any], params: dict[str, Any], *, beta: bool) -> dict[str, Any]:
    """The settings of one response: the session's, overridden by `response.create`'s `params`.

    Keys: modalities, format, voice, max_output_tokens, instructions, conversation, metadata, input,
    tool_choice. Raises EventError naming the offending `response.*` parameter.
    """
    out: dict[str, Any] = {
        "modalities": config["output_modalities"],
        "format": config["audio"]["output"]["format"],
        "voice": config["audio"]["output"]["voice"],
        "max_output_tokens": config["max_output_tokens"],
        "instructions": None,
        "conversation": "auto",
        "metadata": params.get("metadata"),
        "input": None,
        "tool_choice": config["tool_choice"],
    }
    if beta:
        renamed = beta_response_params(params)
        if "output_modalities" in renamed:
            out["modalities"] = renamed["output_modalities"][0]
        if "format" in renamed:
            out["format"] = audio_format(*renamed["format"])
        if "voice" in renamed:
            out["voice"] = renamed["voice"][0]
        if "max_output_tokens" in renamed:
            out["max_output_tokens"] = max_output_tokens(*renamed["max_output_tokens"])
    else:
        if "output_modalities" in params:
            out["modalities"] = output_modalities(params["output_modalities"], "response.output_modalities")
        audio = params.get("audio")
        if audio is not None:
            output = audio.get("output", {}) if isinstance(audio, dict) else None
            if not isinstance(output, dict):
                raise EventError(
                    "Invalid type for 'response.audio'.", code="invalid_type", param="response.audio"
                )
            if "format" in output:
                out["format"] = audio_format(output["format"], "response.audio.output.format")
            if "voice" in output:
                out["voice"] = output["voice"]
        if "max_output_tokens" in params:
            out["max_output_tokens"] = max_output_tokens(
                params["max_output_tokens"], "response.max_output_tokens"
            )
    if "instructions" in params:
        if not isinstance(params["instructions"], str):
            raise EventError(
                "Invalid type for 'response.instructions'.",
                code="invalid_type",
                param="response.instructions",
            )
        out["instructions"] = params["instructions"]
    if "conversation" in params:
        if params["conversation"] not in ("auto", "none"):
            raise EventError(
                "Invalid value for 'response.conversation': expected 'auto' or 'none'.",
                param="response.conversation",
            )
        out["conversation"] = params["conversation"]
    if "tool_choice" in params:
        out["tool_choice"] = tool_choice(params["tool_choice"], "response.tool_choice")
    if "input" in params:
        if not isinstance(params["input"], list):
            raise EventError(
                "Invalid type for 'response.input'.", code="invalid_type", param="response.input"
            )
        out["input"] = params["input"]
    return out


def require(msg: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """`msg[key]`, which a client event must carry with this type (bool is not an int here)."""
    if key not in msg:
        raise EventError(
            f"Missing required parameter: '{key}'.", code="missing_required_parameter", param=key
        )
    value = msg[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise EventError(f"Invalid type for '{key}'.", code="invalid_type", param=key)
    return value
