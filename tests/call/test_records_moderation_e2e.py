"""Moderation and redaction end to end: the real app under uvicorn, a stand-in realtime server
(BRIDGE_REALTIME_URL) that scripts the model, a stand-in moderation endpoint (BRIDGE_MODERATION_URL),
calls placed the way Twilio places them; records read back over HTTP from the admin API (SQLite).

The scripted reply says three sentences, each with its own tone as audio (400 Hz, 1000 Hz, 600 Hz),
the transcript of each sentence just before its audio, four times faster than real time (as models
produce). The second sentence is the flagged one: the caller must never hear 1000 Hz.
"""

from __future__ import annotations

import asyncio
import base64
import json
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest

from bridge.app import create_app
from bridge.media import g711
from bridge.settings import Settings
from tests.helpers.e2e import Caller, live_call, place_call, wait_until
from tests.helpers.realtime_standin import StandinRealtime, StandinSession
from tests.helpers.servers import serve
from tests.helpers.signals import pcm, tone

pytestmark = pytest.mark.slow

TOKEN = "records-moderation-admin-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
API_KEY = "sk-test-moderation-key-0123456789"
SAFE = "Sorry, I can't share that."
CHECKED, SECURE = "+15550202", "+15550201"
SENTENCES = ["Here is some help.", "The secret code is 4242.", "Have a nice day."]
TONES_HZ = [400.0, 1000.0, 600.0]
SPOKEN_CARD = "my card number is four one one one one one one one one one one one one one one one"

PLAN = textwrap.dedent(
    f"""
    defaults:
      record: true
      moderation: {{blocklist: ["secret\\\\s+code"], safe_line: "{SAFE}"}}
    numbers: {{default: main, "{CHECKED}": checked, "{SECURE}": secure}}
    flows:
      main:
        - agent: {{provider: openai, instructions: "Help."}}
      checked:
        - agent:
            provider: openai
            instructions: "Help."
            moderation: {{endpoint: true, safe_line: "{SAFE}"}}
      secure:
        - collect: {{variable: pin, digits: 4, prompt: "Enter your PIN.", sensitive: true, timeout: 20s}}
        - agent: {{provider: openai, instructions: "Help."}}
    """
)


@dataclass
class ModerationStandin:
    """OpenAI's POST /v1/moderations shape: flags any input that says "secret"."""

    requests: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/moderations"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
                body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))))
                self.requests.append((headers, body))
                flagged = "secret" in body["input"].lower()
                result = {"flagged": flagged, "categories": {"illicit": flagged, "violence": False}}
                out = json.dumps({"id": "modr-1", "model": body["model"], "results": [result]}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                    + str(len(out)).encode()
                    + b"\r\n\r\n"
                    + out
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def standins() -> AsyncIterator[tuple[StandinRealtime, ModerationStandin, str]]:
    realtime, moderation = StandinRealtime(), ModerationStandin()
    await realtime.start()
    moderation_url = await moderation.start()
    try:
        yield realtime, moderation, moderation_url
    finally:
        await realtime.stop()
        await moderation.stop()


@pytest.fixture
def bridge(
    tmp_path: Any, standins: tuple[StandinRealtime, ModerationStandin, str]
) -> Iterator[tuple[str, Any]]:
    realtime, _, moderation_url = standins
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "main.yaml").write_text(PLAN)

    def make(port: int) -> Any:
        settings = Settings(
            port=port,
            dialplans=tmp_path / "plans",
            data_dir=tmp_path / "data",
            admin_token=TOKEN,
            realtime_url=realtime.url,
            openai_api_key=API_KEY,
            moderation_url=moderation_url,
        )
        return create_app(settings, preload_models=False)

    with serve(make) as (url, app):
        yield url, app


async def scripted_reply(session: StandinSession, *, speed: float = 4.0) -> tuple[str, float]:
    """The three sentences, transcript then audio each, `speed` times real time. Returns (item id,
    time of the flagged sentence's transcript delta)."""
    rid, iid = f"resp_mod_{time.monotonic_ns()}", f"item_mod_{time.monotonic_ns()}"
    session.active_response = rid
    session.cancel_event.clear()
    item = {"id": iid, "object": "realtime.item", "type": "message", "role": "assistant", "content": []}
    loc = {"response_id": rid, "item_id": iid, "output_index": 0, "content_index": 0}
    await session.send({"type": "response.created", "response": {"id": rid, "status": "in_progress"}})
    await session.send(
        {"type": "response.output_item.added", "response_id": rid, "output_index": 0, "item": item}
    )
    flagged_at = 0.0
    sent_ms = 0
    text = ""
    for index, (sentence, hz) in enumerate(zip(SENTENCES, TONES_HZ, strict=True)):
        if session.cancel_event.is_set():
            break
        delta = sentence if index == 0 else " " + sentence
        text += delta
        if index == 1:
            flagged_at = time.monotonic()
        await session.send({"type": "response.output_audio_transcript.delta", **loc, "delta": delta})
        audio = pcm(tone(hz, 1.0, 24000, dbfs=-12.0))
        for i in range(0, len(audio), 4800):  # 100 ms chunks
            if session.cancel_event.is_set():
                break
            chunk = audio[i : i + 4800]
            await session.send(
                {"type": "response.output_audio.delta", **loc, "delta": base64.b64encode(chunk).decode()}
            )
            sent_ms += 100
            session.item_audio_ms[iid] = sent_ms
            await asyncio.sleep(0.1 / speed)
    cancelled = session.cancel_event.is_set()
    if not cancelled:
        await session.send({"type": "response.output_audio.done", **loc})
    await session.send({"type": "response.output_audio_transcript.done", **loc, "transcript": text})
    session.active_response = None
    status = "cancelled" if cancelled else "completed"
    await session.send({"type": "response.done", "response": {"id": rid, "status": status, "output": [item]}})
    return iid, flagged_at


def tone_frames(caller: Caller, hz: float, after: float) -> list[float]:
    """When the caller heard frames of a pure tone of `hz` (90% of the power in its 50 Hz bin)."""
    times = []
    for p in list(caller.twilio.played):
        if p.at < after:
            continue
        x = np.frombuffer(g711.decode(p.payload, "pcmu"), dtype="<i2").astype(np.float64)
        power = np.abs(np.fft.rfft(x)) ** 2
        total = float(power[1:].sum())
        if total > 160 * 300.0**2 and power[round(hz / 50)] > 0.9 * total:
            times.append(p.at)
    return times


async def get_record(url: str, call_id: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
        while True:
            r = await http.get(f"/api/calls/{call_id}")
            if r.status_code == 200 and r.json().get("ended_at"):
                record: dict[str, Any] = r.json()
                return record
            if time.monotonic() > deadline:
                raise TimeoutError(f"no finished record of {call_id}: {r.status_code} {r.text[:300]}")
            await asyncio.sleep(0.2)


def events(record: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in record["events"] if e["kind"] == kind]


@pytest.mark.parametrize(("called", "source"), [("+15557650000", "blocklist"), (CHECKED, "endpoint")])
async def test_flagged_sentence_is_cut_before_the_caller_hears_it(
    bridge: tuple[str, Any],
    standins: tuple[StandinRealtime, ModerationStandin, str],
    called: str,
    source: str,
) -> None:
    url, app = bridge
    realtime, moderation, _ = standins
    caller = await place_call(url, called=called)
    session = await realtime.next_session(timeout=10)
    await asyncio.wait_for(session.updated.wait(), 5)
    # The provider transcribes the caller's words: a card number said aloud.
    await session.send(
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "item_caller_1",
            "content_index": 0,
            "transcript": SPOKEN_CARD,
        }
    )
    started = time.monotonic()
    item_id, _ = await scripted_reply(session)
    call = live_call(app, caller.call_sid)
    assert call is not None
    await wait_until(lambda: call.stats.moderation_cuts >= 1, 5, "moderation cut")
    await asyncio.sleep(2.5)  # the safe line plays
    heard_400 = tone_frames(caller, 400.0, started)
    heard_1000 = tone_frames(caller, 1000.0, started)
    heard_600 = tone_frames(caller, 600.0, started)
    assert heard_400  # the first sentence started playing ...
    assert heard_1000 == []  # ... the flagged one never did
    assert heard_600 == []
    assert session.truncates or session.client_events("response.cancel")  # told like a barge-in
    await caller.hang_up()

    record = await get_record(url, caller.call_sid)
    (flag,) = events(record, "moderation")
    assert flag["data"]["source"] == source
    assert flag["data"]["rule"] == ("secret\\s+code" if source == "blocklist" else "illicit")
    assert flag["data"]["item_id"] == item_id
    assert flag["data"]["sentence_start_ms"] == 1000  # the flagged words came with 1 s of audio in
    assert flag["data"]["cut_before_heard"] is True
    assert flag["data"]["heard_ms"] < 1000
    barge = events(record, "barge_in")
    assert [b["data"]["source"] for b in barge] == ["moderation"]
    assert any(e["data"]["text"] == SAFE for e in events(record, "prompt_played"))
    bot = [line for line in record["transcript"] if line["speaker"] == "bot"]
    assert len(bot) == 1
    assert bot[0]["heard_ms"] == flag["data"]["heard_ms"]
    assert "secret" not in bot[0]["text"]
    assert "Here is some help.".startswith(bot[0]["text"])
    # The caller's transcript: the spoken card number is masked before it was stored.
    (said,) = [line["text"] for line in record["transcript"] if line["speaker"] == "caller"]
    assert said == "my card number is [card ****1111]"
    if source == "endpoint":
        headers, body = moderation.requests[0]
        assert headers["authorization"] == f"Bearer {API_KEY}"
        assert body["model"] == "omni-moderation-latest"
        assert [b["input"] for _, b in moderation.requests[:2]] == SENTENCES[:2]
    else:
        assert moderation.requests == []
    margin = flag["data"]["sentence_start_ms"] - flag["data"]["heard_ms"]
    print(f"\nmoderation ({source}): cut with {margin} ms of audio to spare before the flagged words")


async def test_sensitive_collect_keeps_the_keys_masked(
    bridge: tuple[str, Any], standins: tuple[StandinRealtime, ModerationStandin, str]
) -> None:
    url, app = bridge
    realtime, _, _ = standins
    caller = await place_call(url, called=SECURE)
    call = await wait_until(lambda: live_call(app, caller.call_sid), 10, "call started")
    await wait_until(lambda: call.runner is not None and call.runner.state.value == "collect", 10, "collect")
    for digit in "1234":
        await caller.press(digit)
        await asyncio.sleep(0.1)
    await realtime.next_session(timeout=10)  # the collect step is done: the agent took over
    await caller.hang_up()
    record = await get_record(url, caller.call_sid)
    dtmf = events(record, "dtmf")
    assert [e["data"] for e in dtmf] == [{"digits": "*", "sensitive": True}] * 4
    (collected,) = events(record, "collected")
    assert collected["data"] == {"variable": "pin", "digits": "****", "sensitive": True}
    assert "1234" not in json.dumps(record)


async def test_database_down_the_call_goes_on(
    tmp_path: Any, standins: tuple[StandinRealtime, ModerationStandin, str]
) -> None:
    """Records on a database nobody answers: the call runs as usual (rows queue and are retried)."""
    realtime, _, _ = standins
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "main.yaml").write_text(PLAN.replace("blocklist: [", "blocklist: [nothing, "))

    def make(port: int) -> Any:
        settings = Settings(
            port=port,
            dialplans=tmp_path / "plans",
            data_dir=tmp_path / "data",
            database_url="postgresql+asyncpg://nobody:pw@127.0.0.1:1/none",
            realtime_url=realtime.url,
            openai_api_key=API_KEY,
        )
        return create_app(settings, preload_models=False)

    with serve(make) as (url, app):
        caller = await place_call(url)
        session = await realtime.next_session(timeout=10)
        await asyncio.wait_for(session.updated.wait(), 5)
        started = time.monotonic()
        await scripted_reply(session)
        await asyncio.sleep(0.5)
        assert tone_frames(caller, 400.0, started)  # the reply is heard while the database is down
        call = live_call(app, caller.call_sid)
        assert call is not None
        assert call.observer is not None
        assert call.observer.recorder is not None  # a record was opened; its rows wait in the queue
        await caller.hang_up()
        await wait_until(lambda: live_call(app, caller.call_sid) is None, 5, "call over")
        assert call.stats.ended_reason == "stop"  # the caller hung up; nothing failed
        assert app.state.records.writer.pending > 0  # its rows are held for the database, not lost
