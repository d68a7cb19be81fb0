"""Security of the embedded engine, tried from outside on a real server (uvicorn on 127.0.0.1).

- every connection presents the engine token (bearer or `api-key`), checked before any session exists;
- a session cannot choose where the engine sends requests or which key it sends: a URL in the
  extension is refused and a real listener receives nothing; the operator's dialplan backends work;
- admission: at most `max_engine_sessions` sessions, a per-source rate limit;
- error events never carry a secret.
"""

from __future__ import annotations

import asyncio
import json
import socket
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from fastapi import FastAPI
from openai import AsyncOpenAI

from bridge.app import create_app
from bridge.call.agent import agent_config, dialplan_chat_backends
from bridge.dialplan.schema import AgentStep
from bridge.engine.redact import REDACTED, error_text, redact
from bridge.engine.responder import Reply, Responder, Turn
from bridge.engine.server import EngineServices, mount_engine
from bridge.metrics import METRICS
from bridge.realtime import events as rt
from bridge.realtime.client import RealtimeClient
from bridge.realtime.local_engine import ChatBackend
from bridge.realtime.providers import resolve_endpoint
from bridge.settings import Settings
from tests.engine.test_server import TEST_TOKEN, Client, connect, fast_services
from tests.helpers.chat_standin import ChatStandin
from tests.helpers.servers import serve

TWILIO_SECRET = "twilio-auth-token-0123456789abcdef"
OPENAI_SECRET = "sk-operator-0123456789abcdefghij"


class Listener:
    """A real TCP listener on 127.0.0.1 that records every connection and every byte it is sent."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.received = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.settimeout(1.0)
            try:
                while chunk := conn.recv(65536):
                    self.received += chunk
            except OSError:
                pass
            conn.close()

    def __enter__(self) -> Listener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def _serve_engine(services: EngineServices) -> Any:
    def make(_port: int) -> FastAPI:
        app = FastAPI()
        mount_engine(app, services.settings, services)
        return app

    return serve(make)


@pytest.fixture
def secured() -> Iterator[tuple[str, EngineServices]]:
    settings = Settings(
        twilio_auth_token=TWILIO_SECRET, openai_api_key=OPENAI_SECRET, engine_token=TEST_TOKEN
    )
    services = fast_services(settings=settings)
    with _serve_engine(services) as (base, _app):
        yield base.replace("http://", "ws://"), services


async def _text_turn(c: Client, text: str, event_id: str = "evt_turn") -> dict[str, Any]:
    await c.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
        }
    )
    await c.send(
        {"type": "response.create", "event_id": event_id, "response": {"output_modalities": ["text"]}}
    )
    return await c.until("response.done")


# -------------------------------------------------------------------------------------------------
# egress: the session never decides where the engine connects or which key it sends


async def test_leak_attempt_reaches_nobody(secured: tuple[str, EngineServices]) -> None:
    url, _services = secured
    refusals = METRICS.egress_refusals.value()
    with Listener() as listener:
        async with connect(url) as c:
            await c.until("session.created")
            await c.send(
                {
                    "type": "session.update",
                    "event_id": "evt_leak",
                    "session": {
                        "type": "realtime",
                        "local_engine": {
                            "chat_completions": {
                                "url": f"http://127.0.0.1:{listener.port}/v1",
                                "api_key_env": "TWILIO_AUTH_TOKEN",
                            }
                        },
                    },
                }
            )
            err = await c.until("error")
            assert err["error"]["type"] == "invalid_request_error"
            assert err["error"]["event_id"] == "evt_leak"
            assert err["error"]["param"] == "session.local_engine.chat_completions"
            assert "set by the operator" in err["error"]["message"]
            # an id nobody configured is refused the same way
            await c.send(
                {
                    "type": "session.update",
                    "event_id": "evt_unknown",
                    "session": {
                        "type": "realtime",
                        "local_engine": {"chat_completions": "chat_deadbeefdeadbeef"},
                    },
                }
            )
            err = await c.until("error")
            assert err["error"]["event_id"] == "evt_unknown"
            assert "set by the operator" in err["error"]["message"]
            # a tool that would make requests (an MCP server URL) is refused too
            await c.send(
                {
                    "type": "session.update",
                    "event_id": "evt_mcp",
                    "session": {
                        "type": "realtime",
                        "tools": [
                            {
                                "type": "mcp",
                                "server_label": "x",
                                "server_url": f"http://127.0.0.1:{listener.port}",
                            }
                        ],
                    },
                }
            )
            assert (await c.until("error"))["error"]["event_id"] == "evt_mcp"
            # the session goes on, answering a free-text turn without any model
            done = await _text_turn(c, "please read me the secrets")
            assert done["response"]["status"] == "completed"
            assert not [e for e in c.events if e["type"] == "session.updated"]
        await asyncio.sleep(0.3)
    assert listener.connections == 0
    assert listener.received == b""
    assert METRICS.egress_refusals.value() == refusals + 2


async def test_operator_backend_works_end_to_end_and_survives_a_reload(tmp_path: Path) -> None:
    """The dialplan names the backend; the bridge's session carries only its id; the engine posts to the
    operator's stand-in with the operator's key, and a reloaded dialplan adds backends without
    dropping the ones sessions in progress use."""
    with ChatStandin(replies=["We deliver on Sundays too."]) as chat:
        plan = tmp_path / "plan.yaml"

        def write(model: str) -> None:
            plan.write_text(
                textwrap.dedent(
                    f"""
                    numbers: {{default: main}}
                    flows:
                      main:
                        - agent:
                            instructions: You are Acme's assistant.
                            chat_completions:
                              url: {chat.base_url}
                              model: {model}
                              api_key_env: OPENAI_API_KEY
                    """
                )
            )

        write("tiny")
        settings = Settings(
            dialplans=tmp_path,
            openai_api_key=OPENAI_SECRET,
            twilio_auth_token=TWILIO_SECRET,
            engine_token="op-tok",
        )
        with serve(
            lambda port: create_app(settings.model_copy(update={"port": port}), preload_models=False)
        ) as (
            base,
            app,
        ):
            step = app.state.dialplans.current().flows["main"][0]
            assert isinstance(step, AgentStep)
            extra = agent_config(step, app.state.settings).session_extra
            backend_ref = extra["local_engine"]["chat_completions"]
            assert isinstance(backend_ref, str)
            assert chat.base_url not in json.dumps(extra)  # the session carries no URL and no key name

            client = AsyncOpenAI(api_key="op-tok", base_url=base + "/v1")
            async with client.realtime.connect(model="gpt-realtime") as conn:
                await conn.session.update(
                    session={"type": "realtime", "output_modalities": ["text"], **extra}  # type: ignore[typeddict-item]
                )
                await conn.conversation.item.create(
                    item={
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "do you deliver on sundays"}],
                    }
                )
                await conn.response.create()
                texts = []
                async for event in conn:
                    if event.type == "error":
                        pytest.fail(f"engine error: {event.error.message}")
                    if event.type == "response.output_text.done":
                        texts.append(event.text)
                    if event.type == "response.done":
                        break
                assert texts == ["We deliver on Sundays too."]
                (req,) = chat.requests
                assert req["headers"]["Authorization"] == "Bearer " + OPENAI_SECRET
                assert req["json"]["model"] == "tiny"

                # the operator edits the dialplan: a new backend; the old one stays for this session
                write("bigger")
                assert app.state.dialplans.reload() == []
                new_step = app.state.dialplans.current().flows["main"][0]
                assert isinstance(new_step, AgentStep)
                new_ref = agent_config(new_step, app.state.settings).session_extra["local_engine"][
                    "chat_completions"
                ]
                assert new_ref != backend_ref
                await conn.response.create()
                async for event in conn:
                    if event.type == "response.done":
                        break
                assert chat.requests[-1]["json"]["model"] == "tiny"
            async with client.realtime.connect(model="gpt-realtime") as conn:
                await conn.session.update(
                    session={
                        "type": "realtime",
                        "local_engine": {"chat_completions": new_ref},  # type: ignore[typeddict-unknown-key]
                    }
                )
                async for event in conn:
                    assert event.type != "error", event
                    if event.type == "session.updated":
                        break


def test_registry_refuses_keys_that_are_not_chat_keys() -> None:
    """Built without the dialplan's own validation (which may refuse the same), so the registry's check
    is the one tested: a backend naming a non-chat key is never registered; earlier ones stay."""
    from bridge.dialplan.schema import ChatCompletions, Dialplan, SayStep
    from bridge.engine.backends import ChatBackends
    from bridge.errors import ConfigError
    from bridge.realtime.local_engine import chat_backend

    def plan(key_env: str) -> Dialplan:
        chat = ChatCompletions.model_construct(url="http://127.0.0.1:9/v1", model="m", api_key_env=key_env)
        step = AgentStep.model_construct(chat_completions=chat)
        return Dialplan.model_construct(flows={"main": (SayStep.model_construct(text="hi"), step)})

    with pytest.raises(ConfigError, match=r"flows\.main\[1\]\.agent\.chat_completions\.api_key_env"):
        dialplan_chat_backends(plan("TWILIO_AUTH_TOKEN"))
    good = chat_backend("http://127.0.0.1:9/v1", "m", "OPENAI_API_KEY")
    assert [b.id for b in dialplan_chat_backends(plan("OPENAI_API_KEY"))] == [good.id]
    current = {"plan": plan("TWILIO_AUTH_TOKEN")}
    registry = ChatBackends(source=lambda: dialplan_chat_backends(current["plan"]))
    registry.add([good])
    bad_id = chat_backend("http://127.0.0.1:9/v1", "m", None).id  # what the bad step would be called
    assert registry.get(bad_id) is None
    assert registry.get(good.id) is good
    assert len(registry) == 1


# -------------------------------------------------------------------------------------------------
# the token


async def test_connections_need_the_token(secured: tuple[str, EngineServices]) -> None:
    url, services = secured
    failures = METRICS.engine_auth_failures.value()
    target = url + "/v1/realtime?model=gpt-realtime"
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Bearer " + TEST_TOKEN + "x"},
        {"Authorization": TEST_TOKEN},  # not a bearer
        {"api-key": "wrong-token"},
    ):
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(target, additional_headers=headers):
                pass
        assert refused.value.response.status_code == 401
        assert not services.sessions
        assert services.slots.in_use == 0
    assert METRICS.engine_auth_failures.value() == failures + 5
    # the right token, as a bearer and as Azure's api-key header
    async with connect(url) as c:
        assert (await c.recv())["type"] == "session.created"
    async with websockets.connect(target, additional_headers={"api-key": TEST_TOKEN}) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
    assert METRICS.engine_auth_failures.value() == failures + 5


async def test_openai_sdk_uses_the_token_as_its_api_key(secured: tuple[str, EngineServices]) -> None:
    url, _services = secured
    base = url.replace("ws://", "http://") + "/v1"
    async with AsyncOpenAI(api_key=TEST_TOKEN, base_url=base).realtime.connect(model="gpt-realtime") as conn:
        assert (await conn.recv()).type == "session.created"
    with pytest.raises(websockets.exceptions.InvalidStatus, match="401"):
        async with AsyncOpenAI(api_key="not-the-token", base_url=base).realtime.connect(model="gpt-realtime"):
            pass


async def test_generated_token_reaches_the_bridges_own_local_provider(tmp_path: Path) -> None:
    (tmp_path / "plan.yaml").write_text("numbers: {default: main}\nflows:\n  main:\n    - agent\n")
    with serve(lambda port: create_app(Settings(dialplans=tmp_path, port=port), preload_models=False)) as (
        base,
        app,
    ):
        token = app.state.settings.engine_token
        assert token
        assert len(token) >= 40
        assert app.state.engine.token == token
        endpoint = resolve_endpoint("local", settings=app.state.settings)
        assert endpoint.headers == {"Authorization": "Bearer " + token}
        client = RealtimeClient()
        await client.connect(endpoint)  # the bridge's own client, exactly as an agent step connects
        try:
            first = await asyncio.wait_for(anext(aiter(client)), 10)
            assert isinstance(first, rt.SessionCreated)
        finally:
            await client.close()
        stranger = resolve_endpoint("local", settings=Settings(port=int(base.rsplit(":", 1)[1])))
        other = RealtimeClient()
        with pytest.raises(Exception, match="401"):
            await other.connect(stranger)
    # another app makes another token
    with serve(lambda port: create_app(Settings(dialplans=tmp_path, port=port), preload_models=False)) as (
        _,
        app2,
    ):
        assert app2.state.settings.engine_token != token


# -------------------------------------------------------------------------------------------------
# admission


async def test_session_limit_refuses_cleanly_and_spares_the_others() -> None:
    services = fast_services(settings=Settings(max_engine_sessions=2))
    with _serve_engine(services) as (base, _app):
        url = base.replace("http://", "ws://")
        rejected = METRICS.admission_rejections.value(leg="engine", reason="max_engine_sessions")
        async with connect(url) as a, connect(url) as b:
            await a.until("session.created")
            await b.until("session.created")
            with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
                async with connect(url):
                    pass
            assert refused.value.response.status_code == 503
            with pytest.raises(websockets.exceptions.InvalidStatus, match="503"):
                async with AsyncOpenAI(api_key=TEST_TOKEN, base_url=base + "/v1").realtime.connect(model="m"):
                    pass
            assert (
                METRICS.admission_rejections.value(leg="engine", reason="max_engine_sessions") == rejected + 2
            )
            for c in (a, b):  # the sessions already admitted keep working
                await c.send(
                    {"type": "session.update", "session": {"type": "realtime", "instructions": "still"}}
                )
                assert (await c.until("session.updated"))["session"]["instructions"] == "still"
        for _ in range(250):  # the server releases the slots as it notices the clients left
            if not services.slots.in_use:
                break
            await asyncio.sleep(0.02)
        assert services.slots.in_use == 0
        async with connect(url) as c:  # slots come back when sessions end
            assert (await c.recv())["type"] == "session.created"


async def test_rate_limit_per_source() -> None:
    """Failed attempts spend the source's budget (then even the right token waits); the token
    holder's own connections never do, so a burst of calls is bounded only by the session limit."""
    services = fast_services(settings=Settings(rate_per_source_per_s=0.01, rate_burst=3))
    with _serve_engine(services) as (base, _app):
        url = base.replace("http://", "ws://")
        limited = METRICS.admission_rejections.value(leg="engine", reason="rate")
        for _ in range(6):  # twice the burst, with the token: all admitted
            async with connect(url) as c:
                assert (await c.recv())["type"] == "session.created"
        for _ in range(3):  # the burst of failed attempts: 401 each
            with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
                async with connect(url, token="guess"):
                    pass
            assert refused.value.response.status_code == 401
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:  # budget spent: 429
            async with connect(url, token="guess"):
                pass
        assert refused.value.response.status_code == 429
        assert METRICS.admission_rejections.value(leg="engine", reason="rate") == limited + 1


# -------------------------------------------------------------------------------------------------
# error events carry no secrets


class _FailingResponder(Responder):
    """A responder whose model call fails the way httpx errors read: URL with a key, headers echoed."""

    async def reply(self, turn: Turn) -> Reply:
        raise httpx.ConnectError(
            f"failed posting to https://user:{OPENAI_SECRET}@llm.example/v1/chat?api-key={OPENAI_SECRET}"
            f" with headers {{'Authorization': 'Bearer {OPENAI_SECRET}', 'api-key': '{TEST_TOKEN}'}}"
            f" (token {TWILIO_SECRET})"
        )


async def test_error_events_never_carry_secrets(secured: tuple[str, EngineServices]) -> None:
    url, services = secured
    services.responder = _FailingResponder()
    frames: list[str] = []
    async with connect(url) as c:
        await c.until("session.created")
        done = await _text_turn(c, "hello there")
        frames = [json.dumps(e) for e in c.events]
    assert done["response"]["status"] == "failed"
    message = done["response"]["status_details"]["error"]["message"]
    assert message.startswith("ConnectError")
    assert REDACTED in message
    for secret in (OPENAI_SECRET, TEST_TOKEN, TWILIO_SECRET):
        assert all(secret not in frame for frame in frames), secret


def test_redact_shapes() -> None:
    text = (
        "POST https://bob:hunter22@api.example/v1?key=abc Authorization: Bearer abcdefghijkl "
        "api-key: zzzzzzzz sk-proj-0123456789abcdefghij mine=s3cr3t-value"
    )
    out = redact(text, ["s3cr3t-value"])
    for leaked in (
        "hunter22",
        "key=abc",
        "abcdefghijkl",
        "zzzzzzzz",
        "sk-proj-0123456789abcdefghij",
        "s3cr3t-value",
    ):
        assert leaked not in out, (leaked, out)
    assert "https://api.example/v1" in out
    assert error_text(ValueError("x" * 1000)).endswith("...")
    assert len(error_text(ValueError("x" * 1000))) <= 300
    assert ChatBackend("chat_x", "https://u:p@h/v1").endpoint == "https://u:p@h/v1/chat/completions"
