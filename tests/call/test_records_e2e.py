"""Call records end to end: the real app under uvicorn with the embedded engine, a call placed the
way Twilio places it, real phone speech; the record read back over HTTP from the admin API.

One call walks a consent line, a menu (DTMF), an agent turn with a long answer, a barge-in
("Operator, please" over the answer, which is also the transfer intent) and the transfer. Its
record's timeline, transcript, turn latencies and two-channel recording are checked against what
the emulator sent and heard, on the same monotonic clock (the bridge's loop time is
`time.monotonic()`; the call clock starts at `CallObserver.t0_ms`). Then the caller's records are
erased (rows and files). SQLite (the PostgreSQL variants of the store are in tests/records).
"""

from __future__ import annotations

import asyncio
import io
import textwrap
import time
import wave
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from bridge.app import create_app
from bridge.media import g711
from bridge.settings import Settings
from tests.helpers.e2e import SPEECH_RMS, live_call, place_call, wait_until
from tests.helpers.servers import serve
from tests.helpers.speech import phone_speech

pytestmark = pytest.mark.slow

TOKEN = "records-e2e-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CALLER = "+15551239876"
LONG_ANSWER = (
    "Our shop has a long history. It opened in nineteen eighty as a small hardware store on Main Street. "
    "Over the years it grew into the biggest store in Springfield, with a garden centre, a workshop "
    "and a cafe. Today we sell tools, paint, plants and everything you need for your home."
)
CONNECT = "Connecting you to an operator."
PLAN = textwrap.dedent(
    f"""
    defaults:
      transfer_to: "+15550100"
      barge_in: {{min_speech_ms: 200}}
      record: {{enabled: true, consent: "This call may be recorded."}}
    numbers: {{default: main}}
    flows:
      main:
        - menu:
            prompt: "For the shop assistant, press 1."
            options: {{"1": assistant}}
            timeout: 30s
      assistant:
        - agent:
            provider: local
            instructions: "Tell the shop's story when asked."
            tools: [transfer, hang_up]
            intents:
              - name: operator
                phrases: [operator, operator please, a person, talk to someone]
                reply: "{CONNECT}"
                tool: transfer
            faq:
              - question: [tell me about the shop, tell me about your shop, the story]
                answer: "{LONG_ANSWER}"
    """
)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any, Settings]]:
    root = tmp_path_factory.mktemp("records-e2e")
    (root / "plans").mkdir()
    (root / "plans" / "main.yaml").write_text(PLAN)
    holder: dict[str, Settings] = {}

    def make(port: int) -> Any:
        settings = Settings(port=port, dialplans=root / "plans", data_dir=root / "data", admin_token=TOKEN)
        holder["settings"] = settings
        return create_app(settings, preload_models=True)

    with serve(make) as (url, app):
        yield url, app, holder["settings"]


async def get_record(url: str, call_id: str, *, timeout: float = 15.0) -> dict[str, Any]:
    """The call's record once it has ended and its recording is final."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
        while True:
            r = await http.get(f"/api/calls/{call_id}")
            if r.status_code == 200:
                record: dict[str, Any] = r.json()
                if record.get("ended_at") and record.get("recording"):
                    rec = await http.get(f"/api/calls/{call_id}/recording")
                    if rec.status_code == 200:
                        record["wav"] = rec.content
                        return record
            if time.monotonic() > deadline:
                raise TimeoutError(f"no finished record of {call_id}: {r.status_code} {r.text[:300]}")
            await asyncio.sleep(0.2)


def speech_span_s(pcm8k: bytes) -> tuple[float, float]:
    """(first, last) loud 20 ms frame of an utterance, in seconds from its start (end of the frame)."""
    x = np.frombuffer(pcm8k, dtype="<i2").astype(np.float64)
    n = len(x) // 160
    rms = np.sqrt(np.mean(x[: n * 160].reshape(n, 160) ** 2, axis=1))
    loud = np.nonzero(rms > SPEECH_RMS)[0]
    return float(loud[0]) * 0.02, float(loud[-1] + 1) * 0.02


def locate(channel: np.ndarray, needle: np.ndarray, expected: int, window: int) -> tuple[int, float]:
    """Where `needle` sits in `channel` near sample `expected` (± window): (offset, normalized corr)."""
    lo = max(0, expected - window)
    hi = min(len(channel) - len(needle), expected + window)
    assert hi > lo, (lo, hi, len(channel), len(needle))
    seg = channel[lo : hi + len(needle)]
    corr = np.correlate(seg, needle, mode="valid")
    best = int(np.argmax(corr))
    part = seg[best : best + len(needle)]
    norm = float(corr[best] / (np.linalg.norm(part) * np.linalg.norm(needle) + 1e-9))
    return lo + best, norm


def kinds(record: dict[str, Any]) -> list[str]:
    return [e["kind"] for e in record["events"]]


def first(record: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(e for e in record["events"] if e["kind"] == kind)


async def test_menu_agent_barge_in_transfer_record(bridge: tuple[str, Any, Settings]) -> None:
    url, app, settings = bridge
    ask, interrupt = await asyncio.gather(
        asyncio.to_thread(phone_speech, "Tell me about the shop."),
        asyncio.to_thread(phone_speech, "Operator, please."),
    )
    caller = await place_call(url, caller=CALLER)
    call = await wait_until(lambda: live_call(app, caller.call_sid), 10, "call started")
    await wait_until(lambda: call.observer is not None, 5, "record opened")
    t0 = call.observer.t0_ms / 1000.0  # the call clock's zero on time.monotonic()
    # The consent line, then the menu prompt; press 1 while the menu plays.
    await wait_until(lambda: call.runner is not None and call.runner.state.value == "menu", 20, "menu")
    await caller.wait_speech(time.monotonic(), timeout=10)
    pressed = await caller.press("1")
    await wait_until(lambda: call.agent is not None, 10, "agent started")
    await asyncio.sleep(0.5)
    asked_at, _ = await caller.say(ask, tail_s=0.2)
    answer_at = await caller.wait_speech(asked_at + 0.3, timeout=20)
    await asyncio.sleep(1.5)
    talk_at, _ = await caller.say(interrupt, tail_s=0.6)
    # (the first clear was the menu prompt's, cut by the key press)
    await caller.twilio.wait_for(lambda: [c for c in caller.twilio.clears if c > talk_at], timeout=5)
    clear_at = next(c for c in caller.twilio.clears if c > talk_at)
    assert clear_at - talk_at < 1.0
    closed_at = await caller.wait_closed(timeout=30)
    heard_ms = sum(1 for p in caller.twilio.played if answer_at <= p.at < clear_at) * 20
    await caller.close()

    record = await get_record(url, caller.call_sid)
    # -- the call row
    assert record["leg"] == "twilio"
    assert record["from"] == CALLER
    assert record["flow"] == "main"
    assert record["dialplan_version"] == 1
    assert record["answered_at"]
    assert record["started_at"] < record["ended_at"]
    assert record["end_reason"] == "transferred to +15550100"
    assert abs(record["duration_ms"] / 1000 - (closed_at - t0)) < 0.5

    # -- the timeline, in order
    order = kinds(record)
    for a, b in [
        ("prompt_played", "dtmf"),
        ("dtmf", "menu_choice"),
        ("menu_choice", "agent_started"),
        ("agent_started", "barge_in"),
        ("barge_in", "tool_call"),
        ("tool_call", "transfer"),
    ]:
        assert order.index(a) < order.index(b), order
    prompts = [e["data"]["text"] for e in record["events"] if e["kind"] == "prompt_played"]
    assert prompts[:2] == ["This call may be recorded.", "For the shop assistant, press 1."]
    dtmf = first(record, "dtmf")
    assert dtmf["data"] == {"digits": "1", "sensitive": False}
    assert abs(dtmf["t_ms"] / 1000 - (pressed - t0)) < 0.2
    assert first(record, "menu_choice")["data"]["choice"] == "1"
    assert first(record, "menu_choice")["data"]["goto"] == "assistant"
    barge = first(record, "barge_in")
    assert barge["data"]["source"] in ("local_vad", "server_vad")
    assert abs(barge["data"]["heard_ms"] - heard_ms) <= 60, (barge, heard_ms)
    assert barge["data"]["truncated_ms"] > 0  # the engine had synthesized more than was heard
    assert abs(barge["t_ms"] / 1000 - (clear_at - t0)) < 0.2
    tool = first(record, "tool_call")
    assert tool["data"]["name"] == "transfer"
    # The transfer target is the operator's configuration, not caller data: kept as it is, while every
    # other string of event data goes through the PII redactor (the caller's number is masked).
    assert tool["data"]["result"] == ["transfer +15550100"]
    assert first(record, "transfer")["data"] == {"target": "+15550100", "ok": True}
    assert CALLER not in str(record["events"])
    assert CALLER not in str(record["transcript"])

    # -- the transcript: the caller's turns (the engine's transcription) and the bot's lines
    lines = record["transcript"]
    caller_lines = [line["text"].lower() for line in lines if line["speaker"] == "caller"]
    assert any("shop" in text for text in caller_lines), lines
    assert any("operator" in text for text in caller_lines), lines
    bot = [line for line in lines if line["speaker"] == "bot"]
    cut_line = next(line for line in bot if line["heard_ms"] is not None)
    assert cut_line["heard_ms"] == barge["data"]["heard_ms"]
    words = cut_line["text"].split()
    assert words
    assert LONG_ANSWER.split()[: len(words)] == words  # a prefix of the answer ...
    assert len(words) < len(LONG_ANSWER.split()) // 2  # ... cut where the caller stopped hearing it
    assert any(line["text"] == CONNECT and line["heard_ms"] is None for line in bot), bot

    # -- the turn latencies: the question's turn matches what the emulator sent and heard
    turn = record["turns"][0]
    start_s, end_s = speech_span_s(ask)
    assert abs(turn["caller_stopped_ms"] / 1000 - (asked_at + end_s - t0)) < 0.2, turn
    assert turn["caller_stopped_ms"] < turn["first_delta_ms"] <= turn["first_played_ms"]
    assert turn["upstream_stopped_ms"] <= turn["first_delta_ms"]
    # The first answer frame played at the emulator; its mark comes back once it has played (20 ms).
    assert abs(turn["first_played_ms"] / 1000 - (answer_at + 0.02 - t0)) < 0.08, turn
    assert turn["total_ms"] == turn["first_played_ms"] - turn["caller_stopped_ms"]
    assert len(record["turns"]) >= 2  # "Operator, please" was a turn too

    # -- the recording: two channels on the call clock
    with wave.open(io.BytesIO(record["wav"])) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 8000, 2)
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2).astype(np.float64)
    caller_ch, bot_ch = frames[:, 0], frames[:, 1]
    # Caller channel: the question, as the emulator sent it (µ-law), where it was sent.
    sent = np.frombuffer(g711.decode(g711.encode(ask, "pcmu"), "pcmu"), dtype="<i2").astype(np.float64)
    a, b = int(start_s * 8000), int(end_s * 8000)
    expected = round((asked_at - t0) * 8000) + a
    at, corr = locate(caller_ch, sent[a:b], expected, 4000)
    assert corr > 0.95, corr
    assert abs(at - expected) <= 0.06 * 8000, (at, expected)
    # Bot channel: what the emulator played of the long answer before the clear, where it played.
    played = caller.heard(answer_at, clear_at)
    needle = np.frombuffer(played, dtype="<i2").astype(np.float64)[:8000]
    expected = round((answer_at - t0) * 8000)
    at, corr = locate(bot_ch, needle, expected, 4000)
    assert corr > 0.95, corr
    assert abs(at - expected) <= 0.06 * 8000, (at, expected)
    # Nothing of the bot on the caller channel, and the bot channel is quiet while the caller asks.
    quiet = bot_ch[round((asked_at - t0) * 8000) + a : round((asked_at - t0) * 8000) + b]
    assert float(np.sqrt(np.mean(quiet**2))) < 50

    # -- erasure by caller number: rows and the recording file are gone
    recordings = list((settings.data_dir / "recordings").rglob(f"{caller.call_sid}*"))
    assert recordings
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as http:
        r = await http.delete("/api/calls", params={"caller": CALLER})
        assert r.status_code == 200, r.text
        deleted = r.json()["deleted"]
        assert (deleted["calls"], deleted["files"]) == (1, 1)
        assert deleted["events"] > 5
        assert (await http.get(f"/api/calls/{caller.call_sid}")).status_code == 404
    assert not [p for p in recordings if p.exists()]
