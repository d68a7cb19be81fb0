"""Conformance with the official `openai` SDK as the client (GA and beta realtime clients).

Every event the engine emits must parse into its own SDK class: the SDK falls back to the union's
first member (`ConversationCreatedEvent`) for unknown types, so that class name means a wrong name.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from openai import AsyncOpenAI

from bridge.engine.server import EngineServices, mount_engine
from bridge.media import g711
from bridge.media.resample import Upsampler
from bridge.settings import Settings
from tests.engine.test_server import INTENTS, fast_services
from tests.helpers.engine_session import quiet, tone
from tests.helpers.servers import serve

FALLBACK = "ConversationCreatedEvent"


def _serve(services: EngineServices) -> Any:
    def make(_port: int) -> FastAPI:
        app = FastAPI()
        mount_engine(app, Settings(), services)
        return app

    return serve(make)


@pytest.fixture
def fast_engine() -> Iterator[tuple[str, EngineServices]]:
    services = fast_services(["billing please", "when are you open"])
    with _serve(services) as (base, _app):
        yield base, services


def _b64_pcmu(pcm8k: bytes) -> list[str]:
    return [
        base64.b64encode(g711.encode(pcm8k[i : i + 320], "pcmu")).decode() for i in range(0, len(pcm8k), 320)
    ]


async def _until(conn: Any, etype: str, seen: list[Any], timeout: float = 30.0) -> Any:
    while True:
        event = await asyncio.wait_for(conn.recv(), timeout)
        seen.append(event)
        if event.type == etype:
            return event


def _assert_own_classes(seen: list[Any]) -> None:
    wrong = [
        (e.type, type(e).__name__)
        for e in seen
        if type(e).__name__ == FALLBACK and e.type != "conversation.created"
    ]
    assert not wrong, wrong


async def test_ga_client_full_session(fast_engine: tuple[str, EngineServices]) -> None:
    base, services = fast_engine
    client = AsyncOpenAI(api_key=services.token, base_url=base + "/v1")
    seen: list[Any] = []
    async with client.realtime.connect(model="gpt-realtime") as conn:
        created = await _until(conn, "session.created", seen)
        assert created.session.id.startswith("sess_")
        await conn.session.update(
            session={
                "type": "realtime",
                "audio": {
                    "input": {"format": {"type": "audio/pcmu"}, "transcription": {"model": "whisper-1"}},
                    "output": {"format": {"type": "audio/pcmu"}},
                },
                "local_engine": INTENTS,  # type: ignore[typeddict-unknown-key]
            }
        )
        await _until(conn, "session.updated", seen)
        for chunk in _b64_pcmu(quiet(600) + tone(700) + quiet(800)):
            await conn.input_audio_buffer.append(audio=chunk)
        done = await _until(conn, "response.done", seen)
        assert done.response.status == "completed"
        transcript = next(
            e for e in seen if e.type == "conversation.item.input_audio_transcription.completed"
        )
        assert transcript.transcript == "billing please"
        call = next(e for e in seen if e.type == "response.function_call_arguments.done")
        assert call.name == "transfer"
        message_id = next(e.item_id for e in seen if e.type == "response.output_audio.delta")
        # the rest of the surface, each answered with its own event class
        await conn.conversation.item.truncate(item_id=message_id, content_index=0, audio_end_ms=200)
        await _until(conn, "conversation.item.truncated", seen)
        await conn.conversation.item.retrieve(item_id=message_id)
        await _until(conn, "conversation.item.retrieved", seen)
        await conn.conversation.item.delete(item_id=message_id)
        await _until(conn, "conversation.item.deleted", seen)
        await conn.input_audio_buffer.clear()
        await _until(conn, "input_audio_buffer.cleared", seen)
        await conn.send({"type": "no.such.event", "event_id": "evt_custom_1"})  # type: ignore[arg-type]
        err = await _until(conn, "error", seen)
        assert err.error.event_id == "evt_custom_1"
        await conn.response.create(
            response={"output_modalities": ["text"], "instructions": "Say exactly: Hi."}
        )
        await _until(conn, "response.done", seen)
        assert any(e.type == "response.output_text.done" and e.text == "Hi." for e in seen)
        long_text = " ".join(f"Part {i} of a long answer." for i in range(20))
        await conn.response.create(response={"instructions": "Say exactly: " + long_text})
        await _until(conn, "response.output_audio.delta", seen)
        await conn.response.cancel()
        cancelled = await _until(conn, "response.done", seen)
        assert cancelled.response.status == "cancelled"
        assert cancelled.response.status_details.reason == "client_cancelled"
        await conn.session.update(
            session={
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 200}}},
            }
        )
        await conn.response.create(response={"instructions": "Say exactly: Anything else?"})
        await _until(conn, "input_audio_buffer.timeout_triggered", seen)
        await _until(conn, "response.done", seen)
        # the server closes with 1000: iteration ends cleanly, no exception
        (engine_conn,) = list(services.sessions)
        asyncio.run_coroutine_threadsafe(services.close_all(), engine_conn.loop)
        async for event in conn:
            seen.append(event)
    kinds = {e.type for e in seen}
    assert {
        "input_audio_buffer.speech_started",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "response.output_audio_transcript.delta",
        "response.content_part.done",
    } <= kinds
    _assert_own_classes(seen)


async def test_beta_client_with_websocket_base_url(fast_engine: tuple[str, EngineServices]) -> None:
    base, services = fast_engine
    ws_base = base.replace("http://", "ws://") + "/v1"
    client = AsyncOpenAI(api_key=services.token, base_url=base + "/v1", websocket_base_url=ws_base)
    seen: list[Any] = []
    async with client.beta.realtime.connect(model="gpt-4o-realtime-preview") as conn:
        created = await _until(conn, "session.created", seen)
        assert created.session.input_audio_format == "pcm16"
        await conn.session.update(
            session={
                "input_audio_format": "g711_ulaw",
                "output_audio_format": "g711_ulaw",
                "input_audio_transcription": {"model": "whisper-1"},
                "local_engine": INTENTS,
            }  # type: ignore[typeddict-unknown-key]
        )
        updated = await _until(conn, "session.updated", seen)
        assert updated.session.output_audio_format == "g711_ulaw"
        for chunk in _b64_pcmu(quiet(600) + tone(700) + quiet(800)):
            await conn.input_audio_buffer.append(audio=chunk)
        done = await _until(conn, "response.done", seen)
        assert done.response.status == "completed"
    kinds = {e.type for e in seen}
    assert {"response.audio.delta", "response.audio_transcript.done", "conversation.item.created"} <= kinds
    _assert_own_classes(seen)


@pytest.mark.slow
async def test_ga_client_real_speech_in_and_out() -> None:
    """Real models: a spoken utterance (Piper through a telephone chain, sent as 24 kHz PCM) is
    recognised, matched to its intent and answered with synthesized audio."""
    from tests.helpers.speech import phone_speech

    services = EngineServices(Settings())
    await asyncio.get_running_loop().run_in_executor(None, services.preload)
    utterance = phone_speech("Technical support, please.")
    up = Upsampler()
    pcm24 = up.process(quiet(500) + utterance + quiet(1200))
    with _serve(services) as (base, _app):
        client = AsyncOpenAI(api_key=services.token, base_url=base + "/v1")
        seen: list[Any] = []
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.session.update(
                session={
                    "type": "realtime",
                    "audio": {"input": {"transcription": {"model": "whisper-1"}}},
                    "local_engine": {  # type: ignore[typeddict-unknown-key]
                        "intents": [
                            {
                                "name": "support",
                                "phrases": ["technical support", "support"],
                                "reply": "Connecting you to technical support.",
                            },
                            {"name": "billing", "phrases": ["billing"], "reply": "Billing it is."},
                        ]
                    },
                }
            )
            for i in range(0, len(pcm24), 960):
                await conn.input_audio_buffer.append(audio=base64.b64encode(pcm24[i : i + 960]).decode())
            done = await _until(conn, "response.done", seen, timeout=120)
            kind = "conversation.item.input_audio_transcription.completed"
            if not any(e.type == kind for e in seen):  # Whisper's text comes from the record lane
                await _until(conn, kind, seen, timeout=60)
        transcript = next(e for e in seen if e.type == kind)
        assert "support" in transcript.transcript.lower()
        assert done.response.status == "completed"
        said = next(e for e in seen if e.type == "response.output_audio_transcript.done")
        assert said.transcript == "Connecting you to technical support."
        audio = b"".join(base64.b64decode(e.delta) for e in seen if e.type == "response.output_audio.delta")
        assert len(audio) > 48000  # more than a second of 24 kHz PCM16
        _assert_own_classes(seen)
