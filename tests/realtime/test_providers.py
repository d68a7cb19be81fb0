"""Provider endpoints and the GA session object (checked against the SDK's models)."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.errors import ConfigError
from bridge.realtime import events as rt
from bridge.realtime.providers import (
    SERVER_VAD_DEFAULTS,
    Endpoint,
    resolve_endpoint,
    session_config,
)
from bridge.settings import Settings
from tests.helpers.realtime_schema import validate_client_event


def settings(**kw: Any) -> Settings:
    return Settings(**kw)


# ---------------------------------------------------------------- resolve_endpoint


def test_openai() -> None:
    ep = resolve_endpoint("openai", settings=settings(openai_api_key="sk-abc"), model="gpt-realtime-mini")
    assert ep == Endpoint(
        "wss://api.openai.com/v1/realtime?model=gpt-realtime-mini", {"Authorization": "Bearer sk-abc"}
    )


def test_openai_default_model_comes_from_settings() -> None:
    ep = resolve_endpoint("openai", settings=settings(openai_api_key="k", realtime_model="gpt-realtime-2"))
    assert ep.url == "wss://api.openai.com/v1/realtime?model=gpt-realtime-2"


def test_openai_without_key_is_config_error() -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        resolve_endpoint("openai", settings=settings())


def test_model_is_query_escaped() -> None:
    ep = resolve_endpoint("openai", settings=settings(openai_api_key="k"), model="a b&c=d")
    assert ep.url == "wss://api.openai.com/v1/realtime?model=a%20b%26c%3Dd"


@pytest.mark.parametrize(
    "endpoint",
    ["https://acme-rt.openai.azure.com/", "https://acme-rt.openai.azure.com", "acme-rt.openai.azure.com"],
)
def test_azure(endpoint: str) -> None:
    s = settings(azure_endpoint=endpoint, azure_api_key="az-key")
    ep = resolve_endpoint("azure", settings=s, model="my-realtime-deployment")
    assert ep.url == "wss://acme-rt.openai.azure.com/openai/v1/realtime?model=my-realtime-deployment"
    assert ep.headers == {"api-key": "az-key"}


def test_azure_missing_settings() -> None:
    with pytest.raises(ConfigError, match="AZURE_OPENAI_ENDPOINT"):
        resolve_endpoint("azure", settings=settings(azure_api_key="k"), model="d")
    with pytest.raises(ConfigError, match="AZURE_OPENAI_API_KEY"):
        resolve_endpoint("azure", settings=settings(azure_endpoint="https://x.openai.azure.com"), model="d")


def test_local() -> None:
    ep = resolve_endpoint("local", settings=settings(port=9090), model="gpt-realtime")
    assert ep == Endpoint(
        "ws://127.0.0.1:9090/v1/realtime?model=gpt-realtime", {"Authorization": "Bearer local"}
    )


def test_local_sends_the_engine_token_and_only_local_does() -> None:
    s = settings(port=9090, engine_token="eng-tok", openai_api_key="sk-abc", azure_api_key="az",
                 azure_endpoint="https://x.openai.azure.com")  # fmt: skip
    assert resolve_endpoint("local", settings=s).headers == {"Authorization": "Bearer eng-tok"}
    assert resolve_endpoint("openai", settings=s).headers == {"Authorization": "Bearer sk-abc"}
    assert resolve_endpoint("azure", settings=s, model="d").headers == {"api-key": "az"}
    stranger = resolve_endpoint("wss://rt.example.com/realtime", settings=s)
    assert stranger.headers == {"Authorization": "Bearer local"}  # the engine token never goes to a URL
    assert "eng-tok" not in repr(resolve_endpoint("local", settings=s))


@pytest.mark.parametrize(
    ("host", "netloc"),
    [("0.0.0.0", "127.0.0.1"), ("::", "127.0.0.1"), ("10.1.2.3", "10.1.2.3"), ("::1", "[::1]")],
)
def test_local_uses_a_reachable_host(host: str, netloc: str) -> None:
    ep = resolve_endpoint("local", settings=settings(host=host, port=8080))
    assert ep.url.startswith(f"ws://{netloc}:8080/v1/realtime?model=")


@pytest.mark.parametrize("url", ["ws://10.0.0.5:9000/v1/realtime?model=x", "wss://rt.example.com/realtime"])
def test_url_as_provider_is_used_as_is(url: str) -> None:
    ep = resolve_endpoint(url, settings=settings(openai_api_key="sk-secret"))
    assert ep.url == url
    assert ep.headers == {"Authorization": "Bearer local"}  # never leak the OpenAI key to a stranger


def test_url_argument_overrides_provider_url_and_keeps_its_key() -> None:
    s = settings(openai_api_key="sk-abc")
    ep = resolve_endpoint("openai", settings=s, url="wss://proxy.example.com/v1/realtime?model=m")
    assert ep.url == "wss://proxy.example.com/v1/realtime?model=m"
    assert ep.headers == {"Authorization": "Bearer sk-abc"}
    # A URL override needs no key at all (a local stand-in).
    ep = resolve_endpoint("openai", settings=settings(), url="ws://127.0.0.1:1/v1/realtime")
    assert ep.headers == {"Authorization": "Bearer local"}


@pytest.mark.parametrize("provider", ["local", "openai", "azure", "ws://elsewhere:1/x"])
def test_bridge_realtime_url_overrides_every_provider(provider: str) -> None:
    s = settings(realtime_url="ws://127.0.0.1:4567/v1/realtime", openai_api_key="k")
    ep = resolve_endpoint(provider, settings=s, model="m", url="ws://other:2/v1/realtime")
    assert ep.url == "ws://127.0.0.1:4567/v1/realtime"


def test_realtime_url_from_environment() -> None:
    s = Settings.from_env({"BRIDGE_REALTIME_URL": "ws://127.0.0.1:7777/v1/realtime?model=x"})
    assert resolve_endpoint("openai", settings=s).url == "ws://127.0.0.1:7777/v1/realtime?model=x"


@pytest.mark.parametrize(
    ("provider", "kw", "needle"),
    [
        ("anthropic", {}, "unknown realtime provider"),
        ("", {}, "unknown realtime provider"),
        ("local", {"url": "ftp://127.0.0.1/v1/realtime"}, "expected a ws://"),
        ("local", {"url": "ws://"}, "expected a ws://"),
        ("url", {}, "provider url needs a url"),
    ],
)
def test_bad_providers_and_urls(provider: str, kw: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        resolve_endpoint(provider, settings=settings(), **kw)


def test_bad_bridge_realtime_url_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="BRIDGE_REALTIME_URL"):
        resolve_endpoint("local", settings=settings(realtime_url="ftp://x/v1/realtime"))


# ---------------------------------------------------------------- session_config


def check(session: dict[str, Any]) -> dict[str, Any]:
    validate_client_event(rt.SessionUpdate(session=session).to_dict())
    return session


def test_pcm24k_defaults() -> None:
    s = check(session_config("pcm24k"))
    assert s == {
        "type": "realtime",
        "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": SERVER_VAD_DEFAULTS},
            "output": {"format": {"type": "audio/pcm", "rate": 24000}},
        },
    }
    assert SERVER_VAD_DEFAULTS == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "create_response": True,
        "interrupt_response": True,
    }


@pytest.mark.parametrize(
    ("fmt", "wire"), [("pcmu", {"type": "audio/pcmu"}), ("pcma", {"type": "audio/pcma"})]
)
def test_g711_passthrough(fmt: Any, wire: dict[str, str]) -> None:
    s = check(session_config(fmt, voice="marin", instructions="Hi."))
    assert s["audio"]["input"]["format"] == wire
    assert s["audio"]["output"] == {"format": wire, "voice": "marin"}
    assert s["instructions"] == "Hi."


def test_unknown_format() -> None:
    with pytest.raises(ConfigError, match="format"):
        session_config("pcm16k")  # type: ignore[arg-type]


def test_turn_detection_overrides_merge_over_defaults() -> None:
    s = check(session_config("pcmu", turn_detection={"silence_duration_ms": 800, "idle_timeout_ms": 6000}))
    td = s["audio"]["input"]["turn_detection"]
    assert td == {**SERVER_VAD_DEFAULTS, "silence_duration_ms": 800, "idle_timeout_ms": 6000}


def test_semantic_vad_and_manual_turns() -> None:
    s = check(session_config("pcmu", turn_detection={"type": "semantic_vad", "eagerness": "high"}))
    assert s["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": "high",
        "create_response": True,
        "interrupt_response": True,
    }
    s = check(session_config("pcmu", turn_detection=False))
    assert s["audio"]["input"]["turn_detection"] is None
    with pytest.raises(ConfigError, match=r"turn_detection\.type"):
        session_config("pcmu", turn_detection={"type": "push_to_talk"})


def test_tools() -> None:
    tools = [
        {
            "name": "transfer",
            "description": "Transfer the call.",
            "parameters": {"type": "object", "properties": {"to": {"type": "string"}}, "required": ["to"]},
        },
        "hang_up",
        {"type": "mcp", "server_label": "crm", "server_url": "https://crm.example.com/mcp"},
    ]
    s = check(session_config("pcm24k", tools=tools))
    assert s["tools"][0] == {"type": "function", **tools[0]}  # type: ignore[dict-item]
    assert s["tools"][1] == {
        "type": "function",
        "name": "hang_up",
        "description": "",
        "parameters": {"type": "object", "properties": {}},
    }
    assert s["tools"][2] == tools[2]
    assert check(session_config("pcm24k", tools=[]))["tools"] == []  # clears the tools
    with pytest.raises(ConfigError, match="without a name"):
        session_config("pcm24k", tools=[{"description": "nameless"}])


def test_transcription() -> None:
    s = check(session_config("pcmu", transcription="gpt-4o-mini-transcribe"))
    assert s["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe"}
    s = check(session_config("pcmu", transcription={"model": "whisper-1", "language": "en"}))
    assert s["audio"]["input"]["transcription"] == {"model": "whisper-1", "language": "en"}


def test_extra_is_merged_as_top_level_keys() -> None:
    extension = {"x_ivr_bridge": {"intents": [{"name": "billing", "phrases": ["bill", "invoice"]}]}}
    s = check(session_config("pcmu", instructions="a", extra=extension))
    assert s["x_ivr_bridge"] == extension["x_ivr_bridge"]
    # Known keys in `extra` deep-merge rather than clobber the audio config.
    s = check(
        session_config(
            "pcmu", voice="alloy", extra={"audio": {"output": {"speed": 1.2}}, "instructions": "b"}
        )
    )
    assert s["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "alloy", "speed": 1.2}
    assert s["instructions"] == "b"


def test_sdk_validator_rejects_what_the_real_api_would() -> None:
    # The validator is strict: these are the mistakes session_config exists to prevent.
    with pytest.raises(AssertionError, match="24000"):
        check({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 8000}}}})
    with pytest.raises(AssertionError, match="does not know"):
        check(
            {
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_ms": 1}}},
            }
        )
    with pytest.raises(AssertionError, match=r"session\.type"):
        check({"instructions": "beta shape without type"})


@pytest.mark.parametrize(
    ("given", "wire"),
    [
        ("http://127.0.0.1:9000/v1/realtime?model=m", "ws://127.0.0.1:9000/v1/realtime?model=m"),
        ("https://rt.example.com/v1/realtime", "wss://rt.example.com/v1/realtime"),
        ("wss://rt.example.com/v1/realtime", "wss://rt.example.com/v1/realtime"),
    ],
)
def test_provider_url_as_the_dialplan_gives_it(given: str, wire: str) -> None:
    # The dialplan normalises `provider: <URL>` to provider "url" + url, and allows http(s).
    assert resolve_endpoint("url", settings=settings(), url=given).url == wire
    assert resolve_endpoint(given, settings=settings()).url == wire
