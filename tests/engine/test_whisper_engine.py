"""The engine with Whisper, through the official `openai` SDK and every real model (Silero, pocketsphinx,
Whisper tiny.en, Piper): transcripts carry Whisper's words, out-of-grammar answers are understood from
them, and a reply that needs no understanding does not wait for any transcript."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from openai import AsyncOpenAI

from bridge.engine.server import EngineServices, mount_engine
from bridge.media import g711
from bridge.realtime.local_engine import DEFAULT_FALLBACK_REPLY, chat_backend
from bridge.settings import Settings
from tests.helpers.chat_standin import ChatStandin
from tests.helpers.servers import serve
from tests.helpers.speech import phone_speech, silence
from tests.helpers.wer import word_error_rate

pytestmark = pytest.mark.slow

BILL = "I would like to talk to someone about my bill."
BROCHURE = "Please send me a brochure by mail."
YES_REPLY = "Great."
INTENTS = {  # the extension of bench/engine.py, where pocketsphinx's grammar matched the brochure to "yes"
    "intents": [
        {"name": "billing", "phrases": ["billing", "my bill"], "reply": "I will connect you to billing."},
        {"name": "support", "phrases": ["technical support", "my internet is down"], "reply": "Support."},
        {"name": "sales", "phrases": ["sales", "buy a new phone"], "reply": "Our sales team can help."},
        {"name": "operator", "phrases": ["operator", "talk to a person"], "reply": "One moment."},
        {"name": "cancel", "phrases": ["cancel my account"], "reply": "I can help you cancel."},
        {"name": "yes", "phrases": ["yes"], "reply": YES_REPLY},
        {"name": "no", "phrases": ["no"], "reply": "Okay."},
    ],
    "faq": [
        {"questions": ["what are your opening hours", "when are you open"], "answer": "Nine to five."},
        {"questions": ["where are you located"], "answer": "We are on Main Street, next to the bank."},
    ],
}
TRANSCRIBED = "conversation.item.input_audio_transcription.completed"


@pytest.fixture(scope="module")
def engine() -> Iterator[tuple[str, EngineServices]]:
    services = EngineServices(Settings())
    services.preload()
    lanes = services.lanes()
    assert lanes is not None
    lanes.live.start()
    lanes.record.start()

    def make(_port: int) -> FastAPI:
        app = FastAPI()
        mount_engine(app, Settings(), services)
        return app

    with serve(make) as (base, _app):
        yield base, services


async def _recv_until(conn: Any, seen: list[Any], etype: str, timeout: float = 60.0) -> Any:
    while True:
        event = await asyncio.wait_for(conn.recv(), timeout)
        event.received_at = time.monotonic()
        seen.append(event)
        if event.type == etype:
            return event


async def _say(conn: Any, text: str) -> None:
    pcm = silence(400) + phone_speech(text) + silence(1000)
    for i in range(0, len(pcm), 320):
        chunk = g711.encode(pcm[i : i + 320], "pcmu")
        await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())


async def _session(conn: Any, extension: dict[str, Any] | None) -> None:
    session: dict[str, Any] = {
        "type": "realtime",
        "audio": {
            "input": {"format": {"type": "audio/pcmu"}, "transcription": {"model": "whisper-1"}},
            "output": {"format": {"type": "audio/pcmu"}},
        },
    }
    if extension is not None:
        session["local_engine"] = extension
    await conn.session.update(session=session)


def _spoken(seen: list[Any]) -> str:
    return next(e.transcript for e in seen if e.type == "response.output_audio_transcript.done")


async def test_transcription_completed_carries_whisper_text(engine: tuple[str, EngineServices]) -> None:
    base, services = engine
    client = AsyncOpenAI(api_key=services.token, base_url=base + "/v1")
    seen: list[Any] = []
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await _session(conn, None)
        await _say(conn, BILL)
        done = await _recv_until(conn, seen, TRANSCRIBED, timeout=60)
    errors, words = word_error_rate(BILL, done.transcript)
    # pocketsphinx's open model heard "i would like to talk to them what about the old" (WER ~0.4)
    assert errors / words <= 0.2, done.transcript
    assert "bill" in done.transcript.lower()
    deltas = [e.delta for e in seen if e.type == "conversation.item.input_audio_transcription.delta"]
    assert "".join(deltas) == done.transcript
    assert done.usage.seconds > 1.0


async def test_out_of_grammar_answer_is_understood_from_whisper(engine: tuple[str, EngineServices]) -> None:
    base, services = engine
    client = AsyncOpenAI(api_key=services.token, base_url=base + "/v1")
    seen: list[Any] = []
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await _session(conn, INTENTS)
        await _say(conn, BROCHURE)
        await _recv_until(conn, seen, "response.done", timeout=60)
        if not any(e.type == TRANSCRIBED for e in seen):
            await _recv_until(conn, seen, TRANSCRIBED)
    assert _spoken(seen) != YES_REPLY  # pocketsphinx's grammar forced it onto "... yup are sure ..."
    assert _spoken(seen) == DEFAULT_FALLBACK_REPLY
    assert "brochure" in next(e.transcript for e in seen if e.type == TRANSCRIBED).lower()
    assert not any(e.type == "response.function_call_arguments.done" for e in seen)


async def test_out_of_grammar_answer_goes_to_chat_with_whisper_text(
    engine: tuple[str, EngineServices],
) -> None:
    base, services = engine
    with ChatStandin(replies=["Of course, I will mail you a brochure."]) as chat:
        backend = chat_backend(chat.base_url, "tiny")
        services.chat_backends.add([backend])
        client = AsyncOpenAI(api_key=services.token, base_url=base + "/v1")
        seen: list[Any] = []
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await _session(conn, {**INTENTS, "chat_completions": backend.id})
            await _say(conn, BROCHURE)
            await _recv_until(conn, seen, "response.done", timeout=60)
    assert _spoken(seen) == "Of course, I will mail you a brochure."
    sent = chat.requests[-1]["json"]["messages"][-1]
    assert sent["role"] == "user"
    assert "brochure" in sent["content"].lower()


async def test_fallback_reply_without_extension_does_not_wait(engine: tuple[str, EngineServices]) -> None:
    """No local_engine: the reply is the fallback whatever was said, so it starts at speech_stopped
    (bench/results/whisper.md has the distribution; this bound is generous for a loaded machine)."""
    base, services = engine
    client = AsyncOpenAI(api_key=services.token, base_url=base + "/v1")
    seen: list[Any] = []
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await _session(conn, None)
        await _recv_until(conn, seen, "session.updated")
        await asyncio.sleep(1.0)  # let the prewarm put the fallback in the prompt cache
        await _say(conn, BILL)
        stopped = await _recv_until(conn, seen, "input_audio_buffer.speech_stopped")
        first = await _recv_until(conn, seen, "response.output_audio.delta")
        await _recv_until(conn, seen, TRANSCRIBED)
    latency_ms = (first.received_at - stopped.received_at) * 1000.0
    assert latency_ms < 600, latency_ms
    order = [e.type for e in seen]
    # the answer started before any recogniser had finished the turn
    assert order.index("response.output_audio.delta") < order.index(TRANSCRIBED)
    assert _spoken(seen) == DEFAULT_FALLBACK_REPLY
