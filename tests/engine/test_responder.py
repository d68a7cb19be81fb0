"""Responder: intent / FAQ matching on transcripts, spoken instructions, chat-completions fallback."""

from __future__ import annotations

import json

import pytest

from bridge.engine.backends import chat_key
from bridge.engine.responder import Responder, Turn, match_turn, spoken_instruction
from bridge.errors import ConfigError
from bridge.realtime.local_engine import (
    DEFAULT_FALLBACK_REPLY,
    ChatBackend,
    EgressNotAllowed,
    EngineExtension,
    chat_backend,
    parse_extension,
)
from bridge.settings import Settings
from tests.helpers.chat_standin import ChatStandin

EXT = parse_extension(
    {
        "greeting": "Thanks for calling Acme.",
        "intents": [
            {
                "name": "billing",
                "phrases": ["billing", "my bill", "pay my invoice"],
                "reply": "Connecting you to billing.",
                "tool": "transfer",
                "arguments": {"target": "billing"},
            },
            {
                "name": "support",
                "phrases": ["technical support", "my internet is down"],
                "reply": "Support it is.",
            },
            {"name": "agent", "phrases": ["operator", "talk to a person"], "tool": "transfer"},
            {"name": "bye", "phrases": ["goodbye", "that's all"], "reply": "Goodbye.", "tool": "hang_up"},
            {"name": "yes", "phrases": ["yes"], "reply": "Great."},
        ],
        "faq": [
            {"questions": ["what are your opening hours", "when are you open"], "answer": "Nine to five."},
            {"question": "where are you located", "answer": "Main Street."},
        ],
    }
)


@pytest.mark.parametrize(
    ("text", "kind", "index"),
    [
        ("billing", "intent", 0),
        ("i have a question about my bill", "intent", 0),
        ("uh billing please", "intent", 0),
        ("i want to pay my invoices", "intent", 0),
        ("technical support", "intent", 1),
        ("my internet is down again", "intent", 1),
        ("operator", "intent", 2),
        ("can i talk to a person", "intent", 2),
        ("goodbye", "intent", 3),
        ("yeah", "intent", 4),
        ("what are your opening hours", "faq", 0),
        ("when are you open", "faq", 0),
        ("where are you located", "faq", 1),
    ],
)
def test_matches(text: str, kind: str, index: int) -> None:
    found = match_turn(EXT, text)
    assert found is not None
    assert (found.kind, found.index) == (kind, index)


@pytest.mark.parametrize(
    "text", ["", "um", "i would like to order a pizza", "the weather is nice today", "hello"]
)
def test_no_match(text: str) -> None:
    assert match_turn(EXT, text) is None


@pytest.mark.parametrize(
    ("instructions", "said"),
    [
        ("Say exactly: Thanks for calling.", "Thanks for calling."),
        ('Say "Welcome to Acme."', "Welcome to Acme."),
        ("say the following: Please hold.", "Please hold."),
        ("You are a helpful assistant.", None),
        (None, None),
    ],
)
def test_spoken_instruction(instructions: str | None, said: str | None) -> None:
    assert spoken_instruction(instructions) == said


async def test_reply_kinds() -> None:
    r = Responder()
    reply = await r.reply(Turn("user", "billing please", extension=EXT))
    assert (reply.text, reply.source) == ("Connecting you to billing.", "intent")
    assert reply.tool is not None
    assert reply.tool.name == "transfer"
    assert json.loads(reply.tool.arguments) == {"target": "billing"}
    no_tools = await r.reply(Turn("user", "billing please", extension=EXT, allow_tools=False))
    assert no_tools.tool is None
    tool_only = await r.reply(Turn("user", "operator", extension=EXT))
    assert tool_only.text == ""
    assert tool_only.tool is not None
    assert (await r.reply(Turn("user", "when are you open", extension=EXT))).text == "Nine to five."
    sorry = await r.reply(Turn("user", "i would like a pizza", extension=EXT))
    assert (sorry.text, sorry.source) == (DEFAULT_FALLBACK_REPLY, "fallback")
    assert (await r.reply(Turn("start", extension=EXT))).text == "Thanks for calling Acme."
    assert (await r.reply(Turn("idle", extension=EXT))).source == "no_input"
    said = await r.reply(Turn("user", "billing", instructions="Say exactly: Hold on.", extension=EXT))
    assert said.text == "Hold on."
    assert (
        await r.reply(Turn("tool_output", tool_output='{"message": "Transferred."}'))
    ).text == "Transferred."
    assert (await r.reply(Turn("tool_output", tool_output='{"ok": true}'))).text == ""


def _with_chat(backend: ChatBackend) -> EngineExtension:
    """The extension carries only the backend's id; the turn carries the backend the engine resolved."""
    return parse_extension({**EXT.model_dump(mode="json"), "chat_completions": backend.id})


async def test_chat_completions_fallback_against_standin() -> None:
    with ChatStandin(replies=["We deliver on Sundays too."]) as chat:
        backend = chat_backend(chat.base_url, "tiny", "OPENAI_API_KEY")
        ext = _with_chat(backend)
        settings = Settings(openai_api_key="sk-test", twilio_auth_token="twilio-secret")
        r = Responder(api_key_lookup=lambda name: chat_key(settings, name))
        turn = Turn(
            "user",
            "do you deliver on sundays",
            session_instructions="You are Acme's assistant.",
            history=(("assistant", "Thanks for calling."), ("user", "do you deliver on sundays")),
            tools=({"type": "function", "name": "transfer", "parameters": {"type": "object"}},),
            extension=ext,
            chat=backend,
        )
        reply = await r.reply(turn)
        assert (reply.text, reply.source) == ("We deliver on Sundays too.", "chat")
        (req,) = chat.requests
        assert req["headers"]["Authorization"] == "Bearer sk-test"
        body = req["json"]
        assert body["model"] == "tiny"
        assert body["messages"][0]["role"] == "system"
        assert "Acme" in body["messages"][0]["content"]
        assert body["messages"][-1] == {"role": "user", "content": "do you deliver on sundays"}
        assert body["tools"][0]["function"]["name"] == "transfer"
        # intents still win over the model
        assert (await r.reply(Turn("user", "billing", extension=ext, chat=backend))).source == "intent"
        assert len(chat.requests) == 1
        # the extension alone (an id, no resolved backend) sends nothing anywhere
        assert (await r.reply(Turn("user", "do you deliver", extension=ext))).source == "fallback"
        assert len(chat.requests) == 1


async def test_chat_tool_call_and_failures() -> None:
    with ChatStandin(replies=[{"tool": "transfer", "arguments": {"target": "sales"}}, 500, "unused"]) as chat:
        backend = chat_backend(chat.base_url + "/chat/completions")
        ext = _with_chat(backend)
        r = Responder()
        reply = await r.reply(Turn("user", "i want to buy something", extension=ext, chat=backend))
        assert reply.tool is not None
        assert (reply.tool.name, json.loads(reply.tool.arguments)) == ("transfer", {"target": "sales"})
        failed = await r.reply(Turn("user", "i want to buy something", extension=ext, chat=backend))
        assert failed.source == "fallback"
        assert "Authorization" not in chat.requests[0]["headers"]
    # nothing listening at all: still a polite fallback
    dead = chat_backend("http://127.0.0.1:9/v1", timeout_s=1)
    turn = Turn("user", "anything at all", extension=_with_chat(dead), chat=dead)
    assert (await Responder().reply(turn)).source == "fallback"


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ({"intents": [{"name": "x", "phrases": ["a"]}]}, "intents.0"),
        ({"intents": [{"name": "x", "phrases": [], "reply": "r"}]}, "intents.0.phrases"),
        ({"faq": [{"answer": "a"}]}, "faq.0"),
        ({"chat_completions": {"url": "http://x"}}, "chat_completions"),
        ({"chat_completions": ""}, "chat_completions"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_extension_errors_name_the_field(raw: dict[str, object], where: str) -> None:
    with pytest.raises(ConfigError, match=rf"session\.local_engine\.{where}"):
        parse_extension(raw)


def test_expected_phrases() -> None:
    assert EXT.expected_phrases()[:3] == ["billing", "my bill", "pay my invoice"]
    assert "when are you open" in EXT.expected_phrases()


def test_extension_with_an_endpoint_is_an_egress_refusal() -> None:
    with pytest.raises(EgressNotAllowed, match="set by the operator"):
        parse_extension({"chat_completions": {"url": "http://attacker.example/v1", "api_key_env": "X"}})
    ref = "chat_0123456789abcdef"
    assert parse_extension({"chat_completions": ref}).chat_completions == ref


def test_backends_take_only_chat_keys() -> None:
    with pytest.raises(ConfigError, match=r"TWILIO_AUTH_TOKEN.*OPENAI_API_KEY"):
        chat_backend("http://127.0.0.1:1/v1", "m", "TWILIO_AUTH_TOKEN")
    with pytest.raises(ConfigError, match="http"):
        chat_backend("file:///etc/passwd")
    settings = Settings(openai_api_key="sk-o", azure_api_key="az", twilio_auth_token="tw", sip_password="pw")
    assert chat_key(settings, "OPENAI_API_KEY") == "sk-o"
    assert chat_key(settings, "AZURE_OPENAI_API_KEY") == "az"
    for name in ("TWILIO_AUTH_TOKEN", "SIP_PASSWORD", "BRIDGE_ENGINE_TOKEN"):
        assert chat_key(settings, name) is None
    a, b = chat_backend("http://h/v1", "m", "OPENAI_API_KEY"), chat_backend("http://h/v1", "m", None)
    assert a.id != b.id
    assert a.id == chat_backend("http://h/v1", "m", "OPENAI_API_KEY").id
    assert "http://h" not in repr(a)
