"""Real speech in, real speech out, with every model the engine ships (Silero VAD, pocketsphinx, Piper).

Caller utterances are synthesized and pushed through a telephone chain (band-limit, 8 kHz, µ-law;
tests/helpers/speech.py), sent as `audio/pcmu`; the engine's answer audio is decoded and recognised
back with a separate pocketsphinx decoder, and must say the expected reply.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI

from bridge.engine.responder import tokens
from bridge.engine.server import EngineServices, mount_engine
from bridge.media import g711
from bridge.settings import Settings
from tests.engine.test_server import TEST_TOKEN, Client, connect
from tests.helpers.servers import serve
from tests.helpers.speech import phone_speech, silence

pytestmark = pytest.mark.slow

BILLING_REPLY = "I will connect you to billing."
HOURS_ANSWER = "We are open from nine in the morning until five in the evening, Monday to Friday."
LONG_ANSWER = (
    "Our store is on Main Street, next to the bank. There is parking behind the building. "
    "You can also take the number twelve bus, which stops right outside. "
    "On weekends the entrance is around the corner. We look forward to seeing you."
)
EXTENSION = {
    "intents": [
        {
            "name": "billing",
            "phrases": ["billing", "my bill"],
            "reply": BILLING_REPLY,
            "tool": "transfer",
            "arguments": {"target": "billing"},
        },
        {
            "name": "operator",
            "phrases": ["operator", "a person"],
            "reply": "Let me get someone.",
            "tool": "transfer",
            "arguments": {"target": "operator"},
        },
    ],
    "faq": [
        {"questions": ["what are your opening hours", "when are you open"], "answer": HOURS_ANSWER},
        {"questions": ["where are you located", "where is your store"], "answer": LONG_ANSWER},
    ],
}


@pytest.fixture(scope="module")
def real_engine() -> Iterator[tuple[str, EngineServices]]:
    services = EngineServices(Settings(), token=TEST_TOKEN)
    services.preload()

    def make(_port: int) -> FastAPI:
        app = FastAPI()
        mount_engine(app, Settings(), services)
        return app

    with serve(make) as (base, _app):
        yield base.replace("http://", "ws://"), services


async def _setup(c: Client) -> None:
    await c.recv()
    await c.send(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {
                    "input": {"format": {"type": "audio/pcmu"}, "transcription": {"model": "whisper-1"}},
                    "output": {"format": {"type": "audio/pcmu"}},
                },
                "local_engine": EXTENSION,
            },
        }
    )
    await c.until("session.updated")


async def _say(c: Client, text: str) -> None:
    await c.append_pcmu(silence(400) + phone_speech(text) + silence(900))


def _answer_audio(events: list[dict[str, Any]], response_id: str) -> bytes:
    mulaw = b"".join(
        base64.b64decode(e["delta"])
        for e in events
        if e["type"] == "response.output_audio.delta" and e["response_id"] == response_id
    )
    return g711.decode(mulaw, "pcmu")


def _recognise_back(pcm8k: bytes) -> str:
    from bridge.speech.asr import Recognizer

    rec = Recognizer()
    rec.set_expected(None)  # the open language model: nothing forces the expected words
    rec.recognize(pcm8k)  # warm the decoder's cepstral mean on this voice
    return rec.recognize(pcm8k).text


def _overlap(expected: str, heard: str) -> float:
    want = set(tokens(expected))
    return len(want & set(tokens(heard))) / len(want)


async def test_spoken_turns_are_recognised_and_answered(real_engine: tuple[str, EngineServices]) -> None:
    url, _ = real_engine
    async with connect(url) as c:
        await _setup(c)
        await _say(c, "Billing, please.")
        first = await c.until("response.done", timeout=120)
        await _say(c, "What are your opening hours?")
        second = await c.until("response.done", timeout=120)
        kind = "conversation.item.input_audio_transcription.completed"
        while sum(e["type"] == kind for e in c.events) < 2:  # Whisper's text comes from the record lane
            await c.until(kind, timeout=60)
    transcripts = [e["transcript"].lower() for e in c.events if e["type"] == kind]
    assert "billing" in transcripts[0]
    assert "hours" in transcripts[1]
    assert first["response"]["status"] == "completed"
    assert [o["type"] for o in first["response"]["output"]] == ["message", "function_call"]
    assert first["response"]["output"][1]["name"] == "transfer"
    assert first["response"]["output"][0]["content"][0]["transcript"] == BILLING_REPLY
    assert second["response"]["output"][0]["content"][0]["transcript"] == HOURS_ANSWER
    loop = asyncio.get_running_loop()
    for done, reply in ((first, BILLING_REPLY), (second, HOURS_ANSWER)):
        heard = await loop.run_in_executor(
            None, _recognise_back, _answer_audio(c.events, done["response"]["id"])
        )
        assert _overlap(reply, heard) >= 0.5, (reply, heard)


async def test_barge_in_with_real_speech(real_engine: tuple[str, EngineServices]) -> None:
    url, services = real_engine
    services.cache_replies = False  # a cached answer would be complete before the caller interrupts
    async with connect(url) as c:
        await _setup(c)
        await _say(c, "Where is your store?")
        first_delta = await c.until("response.output_audio.delta", timeout=120)
        await _say(c, "Operator.")  # talks over the long answer
        cancelled = await c.until("response.done", timeout=60)
        assert cancelled["response"]["status"] == "cancelled"
        assert cancelled["response"]["status_details"]["reason"] == "turn_detected"
        kinds = [e["type"] for e in c.events]
        assert kinds.index(
            "input_audio_buffer.speech_started", kinds.index("response.output_audio.delta")
        ) < (kinds.index("response.done"))
        item_id = first_delta["item_id"]
        received_ms = len(_answer_audio(c.events, first_delta["response_id"])) // 16
        assert 0 < received_ms < 15000
        await c.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": received_ms + 1000,
                "event_id": "past",
            }
        )
        assert (await c.until("error"))["error"]["event_id"] == "past"
        heard_ms = min(received_ms, 800)
        await c.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": heard_ms,
            }
        )
        assert (await c.until("conversation.item.truncated"))["audio_end_ms"] == heard_ms
        while sum(e["type"] == "response.done" for e in c.events) < 2:  # the interruption is answered
            await c.recv(timeout=120)
        answered = [e for e in c.events if e["type"] == "response.done"][1]
        assert answered["response"]["output"][-1]["name"] == "transfer"
        await c.send({"type": "conversation.item.retrieve", "item_id": item_id})
        item = (await c.until("conversation.item.retrieved"))["item"]
        assert item["status"] == "incomplete"
        assert LONG_ANSWER.startswith(item["content"][0]["transcript"])
        assert len(item["content"][0]["transcript"]) < len(LONG_ANSWER)
