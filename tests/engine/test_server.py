"""The engine's websocket shell on a real uvicorn server (127.0.0.1, ephemeral port), raw websockets client.

Fast: turn detection uses the real SpeechDetector over an energy VAD (tones as speech), the
recogniser is scripted, speech synthesis is real espeak-ng. The model-backed path (Silero,
pocketsphinx, Piper) is in test_sdk.py and test_e2e_speech.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets
from fastapi import FastAPI

from bridge.engine.server import EngineServices, mount_engine
from bridge.media import g711
from bridge.settings import Settings
from bridge.speech.asr import Transcript
from bridge.speech.tts import PromptCache, Synthesizer
from tests.helpers.engine_session import energy_detector, quiet, tone
from tests.helpers.servers import serve


class ScriptedRecognizer:
    """Stands in for pocketsphinx in the fast tests: each turn 'recognises' the next scripted text."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.expected: Any = None
        self.fed = 0

    def set_expected(self, phrases: Any) -> None:
        self.expected = phrases

    def begin(self) -> None:
        self.fed = 0

    def feed(self, pcm16_8k: bytes) -> None:
        self.fed += len(pcm16_8k)

    def end(self) -> Transcript:
        text = self.texts.pop(0) if len(self.texts) > 1 else self.texts[0]
        return Transcript(text=text, search="scripted", elapsed_ms=0.0, audio_ms=self.fed // 16)


TEST_TOKEN = "test-engine-token"  # the engine token every test client presents


def fast_services(
    texts: list[str] | None = None,
    token: str = TEST_TOKEN,
    cache_replies: bool = False,
    settings: Settings | None = None,
) -> EngineServices:
    """Fixed replies are not cached by default here, so a long answer is still being synthesized when
    the test barges in or cancels (with the cache it would be complete within milliseconds)."""
    return EngineServices(
        settings or Settings(),
        detector_factory=energy_detector,
        recognizer_factory=lambda: ScriptedRecognizer(list(texts or ["billing please"])),
        synthesizer_factory=lambda rate: Synthesizer(out_rate=rate, engine="espeak", cache=PromptCache()),
        token=token,
        cache_replies=cache_replies,
    )


@pytest.fixture
def engine_url() -> Iterator[tuple[str, EngineServices]]:
    services = fast_services()

    def make(_port: int) -> FastAPI:
        app = FastAPI()
        mount_engine(app, Settings(), services)
        return app

    with serve(make) as (base, _app):
        yield base.replace("http://", "ws://"), services


INTENTS = {
    "intents": [
        {
            "name": "billing",
            "phrases": ["billing"],
            "reply": "Connecting you to billing.",
            "tool": "transfer",
            "arguments": {"target": "billing"},
        },
    ],
    "faq": [
        {
            "question": "when are you open",
            "answer": " ".join(f"Answer part {i} of the hours." for i in range(12)),
        }
    ],
}


class Client:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any] | str) -> None:
        await self.ws.send(event if isinstance(event, str) else json.dumps(event))

    async def recv(self, timeout: float = 20.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        event = json.loads(raw)
        assert isinstance(event, dict)
        self.events.append(event)
        return event

    async def until(self, etype: str, timeout: float = 30.0) -> dict[str, Any]:
        while True:
            event = await self.recv(timeout)
            if event["type"] == etype:
                return event

    async def append_pcmu(self, pcm: bytes, frame_ms: int = 20) -> None:
        step = frame_ms * 16
        for i in range(0, len(pcm), step):
            payload = base64.b64encode(g711.encode(pcm[i : i + step], "pcmu")).decode()
            await self.send({"type": "input_audio_buffer.append", "audio": payload})


@asynccontextmanager
async def connect(url: str, *, beta: bool = False, token: str = TEST_TOKEN) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"}
    if beta:
        headers["OpenAI-Beta"] = "realtime=v1"
    async with websockets.connect(url + "/v1/realtime?model=gpt-realtime", additional_headers=headers) as ws:
        yield Client(ws)


async def configure_pcmu(c: Client, **extra: Any) -> dict[str, Any]:
    await c.send(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {
                    "input": {"format": {"type": "audio/pcmu"}, "transcription": {"model": "whisper-1"}},
                    "output": {"format": {"type": "audio/pcmu"}},
                },
                "local_engine": INTENTS,
                **extra,
            },
        }
    )
    return await c.until("session.updated")


async def test_session_created_first_and_turn_with_tool_call(engine_url: tuple[str, EngineServices]) -> None:
    url, _ = engine_url
    async with connect(url) as c:
        first = await c.recv()
        assert first["type"] == "session.created"
        assert first["session"]["id"].startswith("sess_")
        assert first["session"]["model"] == "gpt-realtime"
        await configure_pcmu(c)
        await c.append_pcmu(quiet(600) + tone(700) + quiet(800))
        done = await c.until("response.done")
        kinds = [e["type"] for e in c.events]
        assert kinds.index("input_audio_buffer.speech_started") < kinds.index(
            "input_audio_buffer.speech_stopped"
        )
        completed = [e for e in c.events if e["type"].endswith("input_audio_transcription.completed")]
        assert completed[0]["transcript"] == "billing please"
        audio = b"".join(
            base64.b64decode(e["delta"]) for e in c.events if e["type"] == "response.output_audio.delta"
        )
        assert len(audio) > 8000 * 0.5  # at least half a second of µ-law speech
        assert done["response"]["status"] == "completed"
        call = next(e for e in c.events if e["type"] == "response.function_call_arguments.done")
        assert call["name"] == "transfer"
        assert json.loads(call["arguments"]) == {"target": "billing"}
        ids = [e["event_id"] for e in c.events]
        assert len(set(ids)) == len(ids)


async def test_bad_frames_over_the_wire(engine_url: tuple[str, EngineServices]) -> None:
    url, _ = engine_url
    async with connect(url) as c:
        await c.recv()
        await c.send("{not json")
        assert (await c.recv())["error"]["code"] == "invalid_json"
        await c.ws.send(b"\x00\x01binary")
        assert (await c.recv())["type"] == "error"
        await c.send({"type": "input_audio_buffer.append", "audio": "***", "event_id": "bad-audio"})
        err = await c.recv()
        assert err["error"]["event_id"] == "bad-audio"
        await c.send(
            {"type": "session.update", "session": {"type": "realtime", "instructions": "still alive"}}
        )
        assert (await c.recv())["session"]["instructions"] == "still alive"


async def test_barge_in_and_truncate(engine_url: tuple[str, EngineServices]) -> None:
    url, services = engine_url
    services.recognizer_factory = lambda: ScriptedRecognizer(["when are you open", "billing"])
    async with connect(url) as c:
        await c.recv()
        await configure_pcmu(c)
        await c.append_pcmu(quiet(600) + tone(700) + quiet(800))
        first_delta = await c.until("response.output_audio.delta")
        item_id = first_delta["item_id"]
        await c.append_pcmu(tone(600) + quiet(800))  # the caller talks over the long answer
        cancelled = await c.until("response.done")
        assert cancelled["response"]["status"] == "cancelled"
        assert cancelled["response"]["status_details"]["reason"] == "turn_detected"
        heard_ms = sum(
            len(base64.b64decode(e["delta"])) // 8
            for e in c.events
            if e["type"] == "response.output_audio.delta" and e["item_id"] == item_id
        )
        await c.send(
            {
                "type": "conversation.item.truncate",
                "event_id": "too-far",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": heard_ms + 500,
            }
        )
        err = await c.until("error")
        assert err["error"]["event_id"] == "too-far"
        await c.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": min(300, heard_ms),
            }
        )
        truncated = await c.until("conversation.item.truncated")
        assert truncated["audio_end_ms"] == min(300, heard_ms)
        while sum(e["type"] == "response.done" for e in c.events) < 2:  # the interrupting turn is answered
            await c.recv()
        second = [e for e in c.events if e["type"] == "response.done"][1]
        assert second["response"]["status"] == "completed"


async def test_response_cancel_stops_synthesis(engine_url: tuple[str, EngineServices]) -> None:
    url, _ = engine_url
    async with connect(url) as c:
        await c.recv()
        await configure_pcmu(c)
        long_text = " ".join(f"This is sentence number {i} of a long answer." for i in range(30))
        await c.send({"type": "response.create", "response": {"instructions": f"Say exactly: {long_text}"}})
        await c.until("response.output_audio.delta")
        await c.send({"type": "response.cancel"})
        done = await c.until("response.done")
        assert done["response"]["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        n_audio = sum(1 for e in c.events if e["type"] == "response.output_audio.delta")
        await c.send({"type": "session.update", "session": {"type": "realtime"}})
        await c.until("session.updated")
        assert sum(1 for e in c.events if e["type"] == "response.output_audio.delta") == n_audio
        assert n_audio < 30 * 2 * 1000 // 200  # far fewer deltas than the whole text


async def test_beta_header_selects_beta_names(engine_url: tuple[str, EngineServices]) -> None:
    url, _ = engine_url
    async with connect(url, beta=True) as c:
        created = await c.recv()
        assert created["session"]["input_audio_format"] == "pcm16"
        await c.send({"type": "response.create", "response": {"instructions": "Say exactly: Hello there."}})
        await c.until("response.done")
        kinds = {e["type"] for e in c.events}
        assert {
            "response.audio.delta",
            "response.audio_transcript.delta",
            "conversation.item.created",
        } <= kinds
        assert not any(k.startswith("response.output_audio") for k in kinds)


async def test_configured_token_is_enforced() -> None:
    services = fast_services(token="secret")

    def make(_port: int) -> FastAPI:
        app = FastAPI()
        mount_engine(app, Settings(), services)
        return app

    with serve(make) as (base, _app):
        url = base.replace("http://", "ws://")
        with pytest.raises(websockets.exceptions.InvalidStatus):
            async with connect(url, token="wrong"):
                pass
        async with connect(url, token="secret") as c:
            assert (await c.recv())["type"] == "session.created"


async def test_sessions_are_isolated(engine_url: tuple[str, EngineServices]) -> None:
    url, _ = engine_url
    async with connect(url) as a, connect(url) as b:
        await a.recv()
        await b.recv()
        await a.send("garbage")
        await a.ws.close(code=4001)  # one client goes away abruptly
        await configure_pcmu(b)
        await b.send({"type": "response.create", "response": {"instructions": "Say exactly: Still here."}})
        done = await b.until("response.done")
        assert done["response"]["status"] == "completed"
        assert done["response"]["output"][0]["content"][0]["transcript"] == "Still here."


async def test_shutdown_closes_with_1000(engine_url: tuple[str, EngineServices]) -> None:
    url, services = engine_url
    async with connect(url) as c:
        await c.recv()
        (conn,) = list(services.sessions)
        asyncio.run_coroutine_threadsafe(services.close_all(), conn.loop).result(5)
        with pytest.raises(websockets.exceptions.ConnectionClosedOK):
            await c.ws.recv()
        assert c.ws.close_code == 1000


async def test_idle_timeout_over_the_wire(engine_url: tuple[str, EngineServices]) -> None:
    url, _ = engine_url
    async with connect(url) as c:
        await c.recv()
        await c.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "output_modalities": ["text"],
                    "audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 300}}},
                    "local_engine": {"no_input_reply": "Hello? Are you there?"},
                },
            }
        )
        await c.send(
            {"type": "response.create", "response": {"instructions": "Say exactly: How can I help?"}}
        )
        await c.until("response.done")
        timeout = await c.until("input_audio_buffer.timeout_triggered", timeout=10)
        assert timeout["item_id"]
        done = await c.until("response.done")
        assert done["response"]["output"][0]["content"][0]["text"] == "Hello? Are you there?"


class SlowRecognizer(ScriptedRecognizer):
    def end(self) -> Transcript:
        import time

        time.sleep(1.5)
        return super().end()


async def test_slow_recognition_is_answered_as_not_understood() -> None:
    services = fast_services()
    services.recognizer_factory = lambda: SlowRecognizer(["billing"])
    services.asr_timeout_s = 0.3

    def make(_port: int) -> FastAPI:
        app = FastAPI()
        mount_engine(app, Settings(), services)
        return app

    with serve(make) as (base, _app):
        async with connect(base.replace("http://", "ws://")) as c:
            await c.recv()
            await configure_pcmu(c, output_modalities=["text"])
            await c.append_pcmu(quiet(600) + tone(700) + quiet(800))
            done = await c.until("response.done")
            assert any(e["type"].endswith("input_audio_transcription.failed") for e in c.events)
            text = done["response"]["output"][0]["content"][0]["text"]
            assert text.startswith("Sorry")
            await asyncio.sleep(1.5)  # the late transcript is dropped, the session goes on
            await c.send({"type": "session.update", "session": {"type": "realtime"}})
            assert (await c.until("session.updated"))["type"] == "session.updated"
            assert not any(e["type"].endswith("transcription.completed") for e in c.events)


async def test_fixed_replies_are_prewarmed_and_cached() -> None:
    services = fast_services(cache_replies=True)
    synth_cache = PromptCache()
    services.synthesizer_factory = lambda rate: Synthesizer(out_rate=rate, engine="espeak", cache=synth_cache)

    def make(_port: int) -> FastAPI:
        app = FastAPI()
        mount_engine(app, Settings(), services)
        return app

    with serve(make) as (base, _app):
        async with connect(base.replace("http://", "ws://")) as c:
            await c.recv()
            await configure_pcmu(c)
            misses = -1
            for _ in range(100):  # the prewarm runs on the session's synthesis thread: wait until it is done
                await asyncio.sleep(0.2)
                if synth_cache.misses == misses:
                    break
                misses = synth_cache.misses
            assert len(synth_cache) >= 15  # greeting, intent reply, FAQ answer sentences, fallback, no-input
            await c.append_pcmu(quiet(600) + tone(700) + quiet(800))
            done = await c.until("response.done")
            assert done["response"]["output"][0]["content"][0]["transcript"] == "Connecting you to billing."
            assert synth_cache.misses == misses  # answered from the cache
            assert synth_cache.hits >= 1
