"""End to end through the real app on the Twilio path, with the embedded engine (no stand-ins).

Every call is placed the way Twilio places it (POST /twilio/voice, then the media stream with the
TwiML's parameters) against the bridge serving a copy of `dialplans/` (plus one extra file with
flows reached by their own called numbers). Caller speech is real generated phone speech; what the
caller heard is what the Twilio emulator played, in real time, recognised back with pocketsphinx
where it comes from the engine, and compared byte for byte where it is a cached local prompt.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.app import create_app
from bridge.call.prompts import prompt_voice, read_wav_8k
from bridge.dialplan.runner import GOODBYE
from bridge.media import g711
from bridge.settings import Settings
from tests.helpers.e2e import (
    EngineTap,
    healthz,
    live_call,
    overlap,
    place_call,
    post_form,
    recognise,
    trim_silence,
    wait_position,
    wait_until,
)
from tests.helpers.servers import serve
from tests.helpers.speech import phone_speech, silence

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ASSISTANT_GREETING = (
    "I'm the Acme assistant. Ask me about our opening hours or our address, or say operator."
)
HOURS_ANSWER = "We're open Monday to Friday, nine to five, and Saturday from ten to two."
LONG_ANSWER = (
    "Our shop has a long history. It opened in nineteen eighty as a small hardware store on Main Street. "
    "Over the years it grew into the biggest store in Springfield, with a garden centre, a workshop "
    "and a cafe. Today we sell tools, paint, plants and everything you need for your home. "
    "Our staff are happy to help you choose the right product for every job."
)
LONG_NUMBER = "+15550123"
DEAD_NUMBER = "+15550124"


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def extra_plan(dead_port: int) -> str:
    return textwrap.dedent(
        f"""
        numbers:
          "{LONG_NUMBER}": long_reply
          "{DEAD_NUMBER}": dead_upstream
        flows:
          long_reply:
            - agent:
                provider: local
                instructions: "Tell the shop's story when asked."
                faq:
                  - question: [tell me about the shop, tell me about your shop, the story]
                    answer: "{LONG_ANSWER}"
          dead_upstream:
            - agent:
                provider: url
                url: ws://127.0.0.1:{dead_port}/v1/realtime
                instructions: "Never reached."
        """
    )


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """The real app (models preloaded) serving a copy of dialplans/ plus the extra flows."""
    plans = tmp_path_factory.mktemp("dialplans")
    shutil.copy(REPO / "dialplans" / "default.yaml", plans / "default.yaml")
    shutil.copytree(REPO / "dialplans" / "audio", plans / "audio")
    (plans / "e2e-extra.yaml").write_text(extra_plan(closed_port()))

    def make(port: int) -> Any:
        return create_app(Settings(port=port, dialplans=plans), preload_models=True)

    with serve(make) as (url, app):
        yield url, app


def ulaw_of_prompt(text: str) -> bytes:
    """The exact µ-law bytes the bridge plays for a cached local prompt (same process, same cache)."""
    return g711.encode(prompt_voice().render(text, True), "pcmu")


def heard_ulaw(caller: Any) -> bytes:
    return b"".join(p.payload for p in list(caller.twilio.played))


def played_whole(caller: Any, text: str) -> bool:
    """Did the caller hear this cached prompt, every byte, in order? (the last partial frame is
    padded with silence by the playout, so it is left out of the comparison)"""
    want = ulaw_of_prompt(text)
    want = want[: len(want) - len(want) % 160]
    return want in heard_ulaw(caller)


async def reach_menu(url: str, app: Any, **kw: Any) -> Any:
    """A call to the default number, once the greeting has played and the menu prompt is heard."""
    caller = await place_call(url, **kw)
    await wait_position(app, caller.call_sid, "main", 1)  # the greeting played
    await caller.wait_speech(time.monotonic(), timeout=10)  # the menu prompt is being heard
    return caller


# -- 1. DTMF at the default menu (1: the assistant, with 3. its FAQ answer and goodbye; 0: operator) ------


async def test_digit_1_reaches_the_assistant_which_answers_and_hangs_up_on_goodbye(
    bridge: tuple[str, Any],
) -> None:
    url, app = bridge
    question, goodbye = await asyncio.gather(
        asyncio.to_thread(phone_speech, "What are your opening hours?"),
        asyncio.to_thread(phone_speech, "Goodbye."),
    )
    caller = await reach_menu(url, app)
    assert played_whole(caller, "Thanks for calling Acme.")
    pressed = await caller.press("1")
    call = await wait_position(app, caller.call_sid, "assistant", 0)
    await wait_until(lambda: call.agent is not None, 5, "agent started")
    # The assistant's greeting, spoken by the engine, is heard whole.
    first, last = await caller.wait_quiet(pressed + 0.3, quiet_s=0.8, timeout=30)
    assert last - first > 3.0
    # Recognised among everything the assistant can say (Piper's synthesis varies run to run,
    # the open language model would make this check a coin toss).
    lines = [
        DEFAULT_ASSISTANT_GREETING,
        HOURS_ANSWER,
        "Thanks for calling Acme. Goodbye.",
        "Connecting you to an operator.",
    ]
    heard_greeting = trim_silence(caller.heard(first - 0.1, last + 0.1))
    greeting = await asyncio.to_thread(recognise, heard_greeting, lines)
    assert overlap(DEFAULT_ASSISTANT_GREETING, greeting) >= 0.4, greeting
    # 3. A spoken FAQ question: the answer the caller hears, recognised back, is the FAQ's.
    _, asked = await caller.say(question, tail_s=1.0)
    first, last = await caller.wait_quiet(asked, quiet_s=1.0, timeout=30)
    answer = await asyncio.to_thread(recognise, trim_silence(caller.heard(first - 0.1, last + 0.1)), lines)
    assert overlap(HOURS_ANSWER, answer) >= 0.4, answer
    # "Goodbye" is an intent with the hang_up tool: the reply is heard, then the call ends.
    _, said = await caller.say(goodbye, tail_s=0.5)
    closed_at = await caller.wait_closed(timeout=30)
    assert caller.twilio.close_code == 1000
    first, last = await caller.wait_quiet(said, quiet_s=0.1, timeout=5)
    assert last < closed_at
    assert last - first > 1.5  # the whole "Thanks for calling Acme. Goodbye.", not a clipped start
    heard = trim_silence(caller.heard(first - 0.1, last + 0.1))
    # Among the assistant's possible lines (a small LM with a garbage loop), it was the goodbye.
    reply = await asyncio.to_thread(recognise, heard, lines)
    assert overlap("Thanks for calling Acme. Goodbye.", reply) >= 0.4, reply
    assert "goodbye" in reply.split(), reply
    await caller.close()


async def test_digit_0_transfers_via_the_connect_action(bridge: tuple[str, Any]) -> None:
    url, app = bridge
    caller = await reach_menu(url, app)
    await caller.press("0")
    closed_at = await caller.wait_closed(timeout=30)
    assert caller.twilio.close_code == 1000
    # The chime (byte for byte) and then the announcement were played before the stream closed.
    chime = g711.encode(read_wav_8k(REPO / "dialplans" / "audio" / "chime.wav"), "pcmu")
    heard = heard_ulaw(caller)
    chime_at = heard.find(chime[: len(chime) - len(chime) % 160])
    assert chime_at >= 0
    after_chime = caller.twilio.played[(chime_at + len(chime)) // 160].at
    first, last = await caller.wait_quiet(after_chime, quiet_s=0.2)
    assert last < closed_at
    announce = "Please hold while I connect you to an operator."
    text = await asyncio.to_thread(recognise, trim_silence(caller.heard(first - 0.1, last + 0.1)))
    assert overlap(announce, text) >= 0.4, text
    assert not [p for p in caller.twilio.played if p.at > closed_at]
    # Twilio then asks the <Connect action> what to do: dial the operator.
    r = await post_form(url, "/twilio/continue", {"CallSid": caller.call_sid})
    assert r.status_code == 200
    assert "<Dial" in r.text, r.text
    assert "+15550100" in r.text, r.text
    await caller.close()


async def test_agent_transfer_tool_speaks_then_dials_the_operator(bridge: tuple[str, Any]) -> None:
    """Issue 5: an agent's `transfer` tool ends the stream after its words were heard, and the call
    continues with <Dial> to the dialplan's target."""
    url, app = bridge
    ask = await asyncio.to_thread(phone_speech, "Operator, please.")
    caller = await reach_menu(url, app)
    pressed = await caller.press("1")
    call = await wait_position(app, caller.call_sid, "assistant", 0)
    await wait_until(lambda: call.agent is not None, 5, "agent started")
    await caller.wait_quiet(pressed + 0.3, quiet_s=0.8, timeout=30)  # the assistant's greeting
    _, said = await caller.say(ask, tail_s=0.5)
    closed_at = await caller.wait_closed(timeout=30)
    assert caller.twilio.close_code == 1000
    first, last = await caller.wait_quiet(said, quiet_s=0.1, timeout=5)
    assert last < closed_at  # "Connecting you to an operator." was played before the stream ended
    reply = await asyncio.to_thread(recognise, trim_silence(caller.heard(first - 0.1, last + 0.1)))
    assert overlap("Connecting you to an operator.", reply) >= 0.4, reply
    r = await post_form(url, "/twilio/continue", {"CallSid": caller.call_sid})
    assert r.status_code == 200
    assert "<Dial" in r.text, r.text
    assert "+15550100" in r.text, r.text
    await caller.close()


# -- 2. spoken menu words ------------------------------------------------------------------------------


async def wait_flow(app: Any, call_sid: str, flow: str, timeout: float = 15.0) -> Any:
    def there() -> Any:
        call = live_call(app, call_sid)
        return call if call is not None and call.runner is not None and call.runner.flow == flow else None

    return await wait_until(there, timeout, f"call {call_sid} in flow {flow}")


@pytest.mark.parametrize(
    ("sentence", "voice", "flow"),
    [("I have a question.", "piper", "assistant"), ("Operator.", "espeak", "operator")],
)
async def test_spoken_menu_word_reaches_its_step(
    bridge: tuple[str, Any], sentence: str, voice: str, flow: str
) -> None:
    url, app = bridge
    speech = await asyncio.to_thread(phone_speech, sentence, voice)
    caller = await reach_menu(url, app)
    await asyncio.sleep(0.3)  # the caller answers over the menu prompt (barge-in is allowed)
    await caller.say(silence(200) + speech, tail_s=0.8)
    call = await wait_flow(app, caller.call_sid, flow, timeout=10)
    assert call.runner.position[0] == flow
    if flow == "assistant":
        await wait_until(lambda: call.agent is not None, 5, "agent started")
    else:
        await caller.wait_closed(timeout=30)  # the operator flow transfers
    await caller.hang_up()


# -- 4. barge-in with the real engine ----------------------------------------------------------------


async def test_caller_talking_over_a_long_reply_clears_and_truncates(bridge: tuple[str, Any]) -> None:
    url, app = bridge
    ask, interrupt = await asyncio.gather(
        asyncio.to_thread(phone_speech, "Tell me about the shop."),
        asyncio.to_thread(phone_speech, "Wait, wait. Stop please."),
    )
    caller = await place_call(url, called=LONG_NUMBER)
    call = await wait_flow(app, caller.call_sid, "long_reply")
    await wait_until(lambda: call.agent is not None, 5, "agent started")
    tap = EngineTap(app)
    await wait_until(tap.poll, 5, "engine session open")
    _, asked = await caller.say(ask, tail_s=0.2)
    started = await caller.wait_speech(asked, timeout=20)
    await asyncio.sleep(1.5)
    talk_at, _ = await caller.say(interrupt, tail_s=0.5)
    await caller.twilio.wait_for(lambda: bool(caller.twilio.clears), timeout=3)
    clear_at = caller.twilio.clears[0]
    assert clear_at - talk_at < 1.0
    truncated = await wait_until(lambda: tap.of_type("conversation.item.truncated"), 5, "engine truncated")
    heard_ms = sum(1 for p in caller.twilio.played if p.at < clear_at) * 20
    assert heard_ms >= 1400
    assert clear_at - started >= 1.4
    assert abs(truncated[0]["audio_end_ms"] - heard_ms) <= 40
    deltas = tap.of_type("response.output_audio.delta")
    assert truncated[0]["item_id"] == deltas[0]["item_id"]  # the long answer's item was cut
    # The engine synthesizes faster than real time: the answer was either complete before the
    # caller cut in, or it was cancelled by the barge-in.
    done_at, _, done = next((t, s, e) for t, s, e in tap.events if e["type"] == "response.done")
    assert done_at < clear_at or done["response"]["status"] == "cancelled"
    # Nothing more of the cut answer was played after the clear.
    await asyncio.sleep(0.3)
    late = [p for p in caller.speech_frames(clear_at + 0.15)]
    assert late == [] or late[0].at > clear_at + 0.5  # (the answer to the interruption may follow)
    assert call.stats.barge_ins >= 1 or (call.agent is not None and call.agent.barge_ins >= 1)
    await caller.hang_up()


# -- 6. the upstream is down: a fallback line, then on_error (apologise and hang up) -----------------


async def test_dead_upstream_falls_back_to_apology_and_hang_up(bridge: tuple[str, Any]) -> None:
    url, _app = bridge
    caller = await place_call(url, called=DEAD_NUMBER)
    closed_at = await caller.wait_closed(timeout=20)
    assert caller.twilio.close_code == 1000
    line = "Sorry, I'm having trouble right now. " + GOODBYE
    assert played_whole(caller, line)
    first = caller.speech_frames()[0].at
    assert first - caller.started_at < 2.0  # no dead air: the apology comes at once
    assert caller.speech_frames()[-1].at < closed_at
    await caller.close()


# -- 5. hot reload under a live call -------------------------------------------------------------------

RELOAD_PLAN = """
numbers: {default: main}
flows:
  main:
    - say: "Welcome to version VERSION."
    - menu:
        prompt: "Press 1 to hear the end."
        options:
          "1": ending
        timeout: 30s
        no_input: hang_up
  ending:
    - say: "This is the end of version VERSION."
    - hang_up
"""


@pytest.fixture
def reload_bridge(tmp_path: Path) -> Iterator[tuple[str, Any, Path]]:
    """Its own app: this test edits the dialplan files under it."""
    plan = tmp_path / "main.yaml"
    plan.write_text(RELOAD_PLAN.replace("VERSION", "one"))

    def make(port: int) -> Any:
        return create_app(Settings(port=port, dialplans=tmp_path), preload_models=False)

    with serve(make) as (url, app):
        yield url, app, plan


async def wait_version(url: str, version: int, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        health = await healthz(url)
        if health["dialplan_version"] == version:
            return health
        if time.monotonic() > deadline:
            raise TimeoutError(f"dialplan v{version} not loaded: {health}")
        await asyncio.sleep(0.1)


async def test_hot_reload_new_calls_get_the_new_plan_live_call_keeps_its_own(
    reload_bridge: tuple[str, Any, Path],
) -> None:
    url, app, plan = reload_bridge
    live = await place_call(url)
    call = await wait_position(app, live.call_sid, "main", 1)
    assert played_whole(live, "Welcome to version one.")
    assert call.plan.version == 1

    plan.write_text(RELOAD_PLAN.replace("VERSION", "two"))
    health = await wait_version(url, 2)
    assert health["dialplan_errors"] == []
    fresh = await place_call(url)
    await wait_position(app, fresh.call_sid, "main", 1)
    assert played_whole(fresh, "Welcome to version two.")
    await fresh.hang_up()

    # The live call still runs version one to its end.
    pressed = await live.press("1")
    await live.wait_closed(timeout=15)
    assert live.twilio.close_code == 1000
    assert played_whole(live, "This is the end of version one.")
    assert not played_whole(live, "This is the end of version two.")
    assert live.speech_frames(pressed)

    # A broken edit is rejected; version two keeps serving.
    plan.write_text(RELOAD_PLAN.replace("VERSION", "three").replace('"1": ending', '"1": nowhere'))
    deadline = time.monotonic() + 10
    while not (health := await healthz(url))["dialplan_errors"]:
        assert time.monotonic() < deadline, health
        await asyncio.sleep(0.1)
    assert health["dialplan_version"] == 2
    assert any("nowhere" in e for e in health["dialplan_errors"]), health
    after = await place_call(url)
    await wait_position(app, after.call_sid, "main", 1)
    assert played_whole(after, "Welcome to version two.")
    await after.hang_up()
    await live.close()
