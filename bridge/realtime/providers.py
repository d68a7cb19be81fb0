"""Where a realtime session connects (`resolve_endpoint`) and what it asks for (`session_config`).

- `local`: `ws://127.0.0.1:<port>/v1/realtime?model=M` (the embedded engine),
  `Authorization: Bearer $BRIDGE_ENGINE_TOKEN` (create_app generates one when it is unset)
- `openai`: `wss://api.openai.com/v1/realtime?model=M`, `Authorization: Bearer $OPENAI_API_KEY`
- `azure`: `wss://<AZURE_OPENAI_ENDPOINT host>/openai/v1/realtime?model=<deployment>`,
  `api-key: $AZURE_OPENAI_API_KEY`
- `url` (with `url=`), or a URL as the provider: used as is (`http(s)://` becomes `ws(s)://`), with
  the named provider's key when known, else a dummy bearer

`BRIDGE_REALTIME_URL` (`settings.realtime_url`), when set, replaces the URL of every session.
URLs and keys come only from settings and the dialplan's agent step (operator configuration); nothing
a caller or a session sends reaches this module. No I/O here: this only builds strings and dicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args
from urllib.parse import quote, urlsplit

from bridge.errors import ConfigError
from bridge.media.g711 import UpstreamFormat
from bridge.realtime.dialect import PCM24K, PCMA, PCMU
from bridge.settings import Settings

OPENAI_REALTIME_URL = "wss://api.openai.com/v1/realtime"
LOCAL_BEARER = "local"  # a dummy bearer for `url` providers (and a local engine without a token set)
Provider = Literal["local", "openai", "azure", "url"]
PROVIDERS: tuple[Provider, ...] = get_args(Provider)
_WS_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}


# GA server_vad defaults (reference 3.3), spelled out so the session is explicit on the wire.
SERVER_VAD_DEFAULTS: dict[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "create_response": True,
    "interrupt_response": True,
}
SEMANTIC_VAD_DEFAULTS: dict[str, Any] = {
    "type": "semantic_vad",
    "eagerness": "auto",
    "create_response": True,
    "interrupt_response": True,
}

AUDIO_FORMATS: dict[UpstreamFormat, dict[str, Any]] = {"pcm24k": PCM24K, "pcmu": PCMU, "pcma": PCMA}


@dataclass(frozen=True, slots=True, repr=False)
class Endpoint:
    """A websocket URL and the handshake headers that authenticate it."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # never print credentials
        return f"Endpoint(url={self.url!r}, headers={sorted(self.headers)!r})"


def _ws_url(url: str, what: str) -> str:
    """`url` unchanged, except http:// -> ws:// and https:// -> wss:// (as the openai SDK maps them)."""
    parts = urlsplit(url)
    scheme = _WS_SCHEMES.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ConfigError(f"{what}: expected a ws://, wss://, http:// or https:// URL, got {url!r}")
    return scheme + url[len(parts.scheme) :]


def _is_url(text: str) -> bool:
    return text.startswith(("ws://", "wss://", "http://", "https://"))


def _model_query(model: str) -> str:
    return "?model=" + quote(model, safe="")


def _local_host(settings: Settings) -> str:
    host = settings.host
    if host in ("", "0.0.0.0", "::", "localhost"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _azure_host(settings: Settings) -> str:
    endpoint = settings.azure_endpoint
    if not endpoint:
        raise ConfigError(
            "provider azure: AZURE_OPENAI_ENDPOINT is not set (https://<resource>.openai.azure.com)"
        )
    parts = urlsplit(endpoint if "//" in endpoint else "https://" + endpoint)
    if not parts.hostname:
        raise ConfigError(f"provider azure: AZURE_OPENAI_ENDPOINT has no host: {endpoint!r}")
    return parts.netloc


def _headers(provider: str, settings: Settings, *, required: bool) -> dict[str, str]:
    """Auth headers for `provider`. With `required`, a missing key is a ConfigError."""
    if provider == "openai":
        if settings.openai_api_key:
            return {"Authorization": "Bearer " + settings.openai_api_key}
        if required:
            raise ConfigError("provider openai: OPENAI_API_KEY is not set")
    elif provider == "azure":
        if settings.azure_api_key:
            return {"api-key": settings.azure_api_key}
        if required:
            raise ConfigError("provider azure: AZURE_OPENAI_API_KEY is not set")
    elif provider == "local" and settings.engine_token:
        return {"Authorization": "Bearer " + settings.engine_token}
    return {"Authorization": "Bearer " + LOCAL_BEARER}


def resolve_endpoint(
    provider: str, *, settings: Settings, model: str | None = None, url: str | None = None
) -> Endpoint:
    """The URL and headers for one agent session.

    `provider` is "local", "openai", "azure", "url" (needs `url`) or a URL; `url` (a dialplan's
    `url:`) and then `settings.realtime_url` (BRIDGE_REALTIME_URL) override the URL. Overridden URLs are
    used as is; the named provider's key is sent when there is one (a proxy in front of the real
    API), otherwise a dummy bearer. `model` defaults to `settings.realtime_model`; for azure it
    is the deployment name.
    """
    if _is_url(provider):
        if url is None:
            url = provider
        provider = "url"
    elif provider not in PROVIDERS:
        raise ConfigError(
            f"unknown realtime provider {provider!r}: expected one of {PROVIDERS} or a ws(s):// URL"
        )
    if provider == "url" and not url and not settings.realtime_url:
        raise ConfigError("provider url needs a url (ws:// or wss://)")
    model = model or settings.realtime_model
    if not model:
        raise ConfigError(f"provider {provider}: no model given")

    override = settings.realtime_url or url
    if override:
        what = "BRIDGE_REALTIME_URL" if settings.realtime_url else "realtime url"
        return Endpoint(_ws_url(override, what), _headers(provider, settings, required=False))

    if provider == "openai":
        return Endpoint(
            OPENAI_REALTIME_URL + _model_query(model), _headers(provider, settings, required=True)
        )
    if provider == "azure":
        host = _azure_host(settings)
        headers = _headers(provider, settings, required=True)
        return Endpoint(f"wss://{host}/openai/v1/realtime" + _model_query(model), headers)
    local = f"ws://{_local_host(settings)}:{settings.port}/v1/realtime" + _model_query(model)
    return Endpoint(local, _headers("local", settings, required=False))


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        current = base.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            base[key] = _deep_merge(dict(current), value)
        else:
            base[key] = value
    return base


def _tool(spec: Mapping[str, Any] | str) -> dict[str, Any]:
    if isinstance(spec, str):
        spec = {"name": spec}
    tool = {"type": "function", **spec}
    kind = tool["type"]
    if kind != "function":
        return tool  # MCP and future tool types pass through untouched
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"function tool without a name: {dict(spec)!r}")
    tool.setdefault("description", "")
    tool.setdefault("parameters", {"type": "object", "properties": {}})
    return tool


def _turn_detection(value: Mapping[str, Any] | Literal[False] | None) -> dict[str, Any] | None:
    if value is False:
        return None  # manual turn-taking: the client commits and asks for responses
    if value is None:
        return dict(SERVER_VAD_DEFAULTS)
    kind = value.get("type", "server_vad")
    if kind == "semantic_vad":
        return {**SEMANTIC_VAD_DEFAULTS, **value}
    if kind == "server_vad":
        return {**SERVER_VAD_DEFAULTS, **value}
    raise ConfigError(f"turn_detection.type must be server_vad or semantic_vad, got {kind!r}")


def session_config(
    fmt: UpstreamFormat,
    *,
    instructions: str | None = None,
    voice: str | None = None,
    tools: Sequence[Mapping[str, Any] | str] | None = None,
    turn_detection: Mapping[str, Any] | Literal[False] | None = None,
    transcription: Mapping[str, Any] | str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The GA `session` object for `session.update`.

    `fmt` sets both audio directions: "pcm24k" (`audio/pcm` at 24 kHz), "pcmu" or "pcma" (G.711
    passed straight through). `turn_detection`: None gives server_vad with the GA defaults, a
    mapping is merged over the defaults of its `type`, False turns it off (manual turns).
    `tools`: function tools as `{name, description, parameters}` (`type` added) or bare names.
    `transcription`: a model name or `{model, language, prompt}` to get user transcripts.
    `extra` is deep-merged in last as top-level session keys (the embedded engine's extension
    object travels this way; keep it empty for openai/azure, which may reject unknown keys).
    """
    try:
        audio_format = AUDIO_FORMATS[fmt]
    except KeyError:
        raise ConfigError(
            f"unknown session audio format {fmt!r}: expected one of {sorted(AUDIO_FORMATS)}"
        ) from None
    audio_input: dict[str, Any] = {
        "format": dict(audio_format),
        "turn_detection": _turn_detection(turn_detection),
    }
    if transcription is not None:
        audio_input["transcription"] = (
            {"model": transcription} if isinstance(transcription, str) else dict(transcription)
        )
    audio_output: dict[str, Any] = {"format": dict(audio_format)}
    if voice:
        audio_output["voice"] = voice
    session: dict[str, Any] = {"type": "realtime", "audio": {"input": audio_input, "output": audio_output}}
    if instructions is not None:
        session["instructions"] = instructions
    if tools is not None:
        session["tools"] = [_tool(t) for t in tools]
    if extra:
        _deep_merge(session, extra)
    return session
