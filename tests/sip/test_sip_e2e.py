"""End to end over SIP: real SIP peers call the REAL bridge app, which runs the dialplan with the
embedded engine answering; nothing in the bridge is replaced.

The app is `create_app(settings)` under uvicorn on 127.0.0.1 (models preloaded, SIP in trunk mode on a
free port, the dialplan below). Callers are SIPp (signalling, recorded speech through `rtp_stream`,
RFC 2833 DTMF from SIPp's own pcap) and baresip (headless: aufile source, sndfile recording what it
heard). What the caller heard is recorded on the wire (the `RtpPeer` is the caller's SDP media port)
or by baresip, and recognised back with pocketsphinx or matched bit-exactly against the prompt the
bridge synthesized. The app is observed read-only (`AppObserver`: live calls' runner positions,
actions and truncates; the engine's assistant items).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bridge.media import g711
from tests.helpers.speech import phone_speech, silence, speech_span_ms
from tests.helpers.sysdeps import require_binary, require_file
from tests.sip.conftest import Kamailio, dtmf_pcap, free_udp_port, render, run_sipp
from tests.sip.e2e_helpers import (
    BridgeApp,
    RtpPeer,
    barge_in_call,
    bridge_app,
    read_wav_pcm8k,
    recognise,
    sipp_caller,
    stream_action,
    trim_silence,
    ulaw_to_pcm,
    word_overlap,
    write_wav,
)

pytestmark = [pytest.mark.sip, pytest.mark.slow]

BARESIP_MODULES = Path("/usr/lib/baresip/modules")

HOURS_QUESTION = "What are your opening hours?"
HOURS_ANSWER = "We are open Monday to Friday, from nine in the morning until five in the evening. Goodbye."
ADDRESS_ANSWER = "We are at one hundred Main Street, next to the post office."
SALES_PROMPT = "You have reached the sales team."
SUPPORT_PROMPT = "You have reached technical support."
LONG_GREETING = (
    "Welcome to the Acme assistant. I can tell you about our opening hours, our address, our delivery "
    "service and our returns policy. I can also connect you to a person at any time. "
    "Please tell me what you would like to know."
)

# from dialplans/default.yaml
ASSISTANT_GREETING = "I'm the Acme assistant. Ask me about our opening hours or our address, or say operator."
ASSISTANT_GOODBYE = "Thanks for calling Acme. Goodbye."

# One dialplan, one flow per called SIP user (SIPp's -s / baresip's dial URI picks it).
DIALPLAN = f"""
defaults:
  provider: local
  transfer_to: "+15550100"
numbers:
  answer: answer
  menu: menu
  barge: barge
  default: answer
flows:
  answer:
    - agent:
        instructions: "You are Acme's phone assistant. Be brief."
        tools: [hang_up]
        intents:
          - name: hours
            phrases: [what are your opening hours, opening hours, when are you open]
            reply: "{HOURS_ANSWER}"
            tool: hang_up
        faq:
          - question: [where are you, what is your address]
            answer: "{ADDRESS_ANSWER}"
  menu:
    - menu:
        prompt: "For sales, press 1. For technical support, press 2. For anything else, stay on the line."
        options:
          "1": sales
          "2": support
        timeout: 10s
        retries: 0
    - hang_up: "Goodbye."
  sales:
    - say: "{SALES_PROMPT}"
    - hang_up: {{}}
  support:
    - say: "{SUPPORT_PROMPT}"
    - hang_up: {{}}
  barge:
    - agent:
        greeting: "{LONG_GREETING}"
        barge_in: {{min_speech_ms: 200}}
        tools: [hang_up]
        intents:
          - name: hours
            phrases: [what are your opening hours, opening hours, when are you open]
            reply: "{HOURS_ANSWER}"
            tool: hang_up
"""


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeApp]:
    require_binary("sipp")
    plans = tmp_path_factory.mktemp("dialplans")
    (plans / "e2e.yaml").write_text(DIALPLAN)
    with bridge_app(plans) as app:
        yield app


async def no_calls_left(bridge: BridgeApp) -> None:
    gone = await bridge.observer.wait_for(lambda: not bridge.app.state.calls, 3)
    assert gone, "a call is still running in the bridge"


# What the caller could have heard: the recogniser's language model holds all of these, so it must
# pick the right one from the audio (the open model is 3-4x slower on this machine for the same verdict).
CANDIDATES = [
    HOURS_ANSWER,
    ADDRESS_ANSWER,
    SALES_PROMPT,
    LONG_GREETING,
    ASSISTANT_GREETING,
    ASSISTANT_GOODBYE,
    "Connecting you to an operator.",
    "Sorry, I didn't get that.",
]


def dtmf_action(pause_ms: int) -> str:
    """SIPp actions: after `pause_ms`, play SIPp's own RFC 2833 capture of the digit 1."""
    return (
        f'<pause milliseconds="{pause_ms}"/>\n'
        f'  <nop><action><exec play_pcap_audio="{dtmf_pcap()}"/></action></nop>'
    )


def voiced_span(ulaw: bytes) -> bytes:
    """Whole frames of a prompt from its first to its last non-silent frame (its leading and trailing
    digital silence cannot be told from the bridge's comfort silence on the wire)."""
    frames = [ulaw[i : i + 160] for i in range(0, len(ulaw) // 160 * 160, 160)]
    voiced = [i for i, f in enumerate(frames) if f != b"\xff" * 160]
    return b"".join(frames[voiced[0] : voiced[-1] + 1])


async def assert_heard(pcm8k: bytes, expected: str) -> None:
    text = await asyncio.get_running_loop().run_in_executor(None, recognise, pcm8k, CANDIDATES)
    scores = {c: word_overlap(c, text) for c in CANDIDATES}
    assert scores[expected] >= 0.7, (text, scores)
    assert max(scores, key=scores.__getitem__) == expected, (text, scores)


# ---------------------------------------------------------------------------------------------------
# 0. Registered with Kamailio, the shipped default dialplan: DTMF to the assistant, "goodbye" ends it
#
# First in the file on purpose: this test has its own app, and an app's shutdown stops the process-wide
# speech worker pool; running it before the module's shared app starts keeps the two from overlapping.


DEFAULT_DIALPLANS = Path(__file__).resolve().parents[2] / "dialplans"


@pytest.fixture
def registered_bridge(kamailio: Kamailio) -> Iterator[BridgeApp]:
    require_binary("sipp")
    registrar = {"sip_port": kamailio.port, "sip_user": "acme-e2e", "sip_password": "secret"}
    with bridge_app(DEFAULT_DIALPLANS, **registrar) as app:
        yield app


async def test_registered_bridge_runs_the_default_dialplan_through_kamailio(
    registered_bridge: BridgeApp, kamailio: Kamailio, tmp_path: Path
) -> None:
    bridge = registered_bridge
    async with httpx.AsyncClient(base_url=bridge.base_url) as http:
        registered = False
        for _ in range(50):
            sip = (await http.get("/healthz")).json()["sip"]
            if sip.get("registration") == "registered":
                registered = True
                break
            await asyncio.sleep(0.1)
        assert registered, sip
    # the caller presses 1 during the menu (SIPp's RFC 2833 pcap), hears the assistant's greeting,
    # then says goodbye: the assistant says goodbye and hangs up, its BYE routed back through Kamailio
    actions = dtmf_action(3000)
    async with RtpPeer() as peer:
        scen = sipp_caller(tmp_path, peer.port, actions, wait_bye_ms=30_000)
        sipp = asyncio.create_task(
            run_sipp(scen, kamailio.port, service="acme-e2e", workdir=tmp_path, timeout_s=40)
        )
        await peer.wait_media()
        observer = bridge.observer

        def in_assistant() -> bool:
            view = observer.call_for("acme-e2e")
            return view is not None and any(flow == "assistant" for _, flow, _ in view.positions)

        assert await observer.wait_for(in_assistant, 12), observer.calls
        entered = time.monotonic()
        # the greeting plays, then stops: the caller answers
        greeted = await observer.wait_for(
            lambda: (
                bool(peer.voiced(since=entered))
                and peer.silence_from(peer.voiced(since=entered)[0].at) is not None
            ),
            15,
        )
        assert greeted, "the assistant's greeting was not heard"
        greeting_end = peer.silence_from(peer.voiced(since=entered)[0].at)
        assert greeting_end is not None
        await peer.send_pcm(phone_speech("Goodbye.") + silence(1200))
        res = await sipp
    assert res.returncode == 0, res.errors or res.stderr
    await no_calls_left(bridge)
    view = observer.call_for("acme-e2e")
    assert view is not None
    flows = [flow for _, flow, _ in view.positions]
    assert flows[0] == "main"
    assert "assistant" in flows
    assert "operator" not in flows
    assert "HangUp" in view.actions, view.actions
    greeting = ulaw_to_pcm(trim_silence(peer.heard_ulaw(entered, greeting_end.at)))
    goodbye = ulaw_to_pcm(trim_silence(peer.heard_ulaw(since=greeting_end.at + 0.5)))
    await assert_heard(greeting, ASSISTANT_GREETING)
    await assert_heard(goodbye, ASSISTANT_GOODBYE)


# ---------------------------------------------------------------------------------------------------
# 1. SIPp streams a spoken question; the embedded engine's answer is heard and recognised back


async def test_sipp_caller_asks_and_hears_the_engine_answer(bridge: BridgeApp, tmp_path: Path) -> None:
    question = silence(300) + phone_speech(HOURS_QUESTION) + silence(1200)
    wav = write_wav(tmp_path / "question_ulaw.wav", question, ulaw=True)
    async with RtpPeer() as peer:
        scen = sipp_caller(tmp_path, peer.port, stream_action(wav, 300), wait_bye_ms=25_000)
        res = await run_sipp(scen, bridge.sip_port, service="answer", workdir=tmp_path, timeout_s=35)
    # SIPp exits 0 only if the bridge hung up with a BYE it could answer (the intent's hang_up tool)
    assert res.returncode == 0, res.errors or res.stderr
    await no_calls_left(bridge)
    view = bridge.observer.call_for("answer")
    assert view is not None
    assert "StartAgent" in view.actions, view.actions
    assert "HangUp" in view.actions, view.actions
    heard = ulaw_to_pcm(trim_silence(peer.heard_ulaw()))
    assert len(heard) > 2 * 8000 * 3, "the caller heard less than 3 s of answer"
    await assert_heard(heard, HOURS_ANSWER)


# ---------------------------------------------------------------------------------------------------
# 2. RFC 2833 DTMF (SIPp's pcap, digit 1) reaches a menu: the call moves to the option's flow


async def test_sipp_dtmf_reaches_the_menu_and_the_option_plays(bridge: BridgeApp, tmp_path: Path) -> None:
    actions = dtmf_action(1500)
    async with RtpPeer() as peer:
        scen = sipp_caller(tmp_path, peer.port, actions, wait_bye_ms=20_000)
        res = await run_sipp(scen, bridge.sip_port, service="menu", workdir=tmp_path, timeout_s=30)
    assert res.returncode == 0, res.errors or res.stderr
    await no_calls_left(bridge)
    view = bridge.observer.call_for("menu")
    assert view is not None
    flows = [flow for _, flow, _ in view.positions]
    assert flows[0] == "menu"
    assert "sales" in flows, view.positions
    assert "support" not in flows, view.positions
    # what the caller heard: the menu prompt (cut by the digit), then the sales prompt, bit-exact:
    # the bridge's cached local synthesis of it, G.711-encoded, every frame in order
    from bridge.call import prompt_voice

    sales = voiced_span(g711.encode(prompt_voice().render(SALES_PROMPT, True), "pcmu"))
    assert len(sales) > 8000, "the sales prompt is not speech"
    assert sales in peer.heard_ulaw(), "the sales prompt did not reach the caller intact"
    heard = trim_silence(peer.heard_ulaw())
    support = trim_silence(g711.encode(prompt_voice().render(SUPPORT_PROMPT, True), "pcmu"))
    assert support[:1600] not in heard
    menu_audio = heard[: heard.find(sales)]
    assert 0 < len(menu_audio) < 8000 * 5, "the menu prompt was not cut when the digit arrived"


async def test_ten_concurrent_sipp_calls_each_reach_their_option(bridge: BridgeApp, tmp_path: Path) -> None:
    actions = dtmf_action(1500)
    before = set(bridge.observer.calls)
    async with RtpPeer() as peer:  # every call's SDP names this one port: streams told apart by SSRC
        scen = sipp_caller(tmp_path, peer.port, actions, wait_bye_ms=25_000)
        res = await run_sipp(
            scen, bridge.sip_port, service="menu", calls=10, rate=20, workdir=tmp_path, timeout_s=35
        )
    assert res.returncode == 0, res.errors or res.stderr  # all ten got the bridge's BYE
    await no_calls_left(bridge)
    views = [v for key, v in bridge.observer.calls.items() if key not in before]
    assert len(views) == 10
    for view in views:
        assert [flow for _, flow, _ in view.positions][:1] == ["menu"], view.positions
        assert "sales" in [flow for _, flow, _ in view.positions], view.positions
    from bridge.call import prompt_voice

    sales = voiced_span(g711.encode(prompt_voice().render(SALES_PROMPT, True), "pcmu"))
    streams = peer.streams()
    assert len(streams) == 10
    for ssrc in streams:  # each call's own stream carries its prompt intact, nothing of another call in it
        assert peer.heard_ulaw(ssrc=ssrc).count(sales) == 1, ssrc


async def test_pbx_qualify_options_gets_200_from_the_app(bridge: BridgeApp, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=bridge.base_url) as http:
        before = (await http.get("/healthz")).json()["sip"]["options"]
        res = await run_sipp(
            render("uac_options.xml", tmp_path / "options.xml"),
            bridge.sip_port,
            workdir=tmp_path,
            timeout_s=10,
        )
        assert res.returncode == 0, res.errors or res.stderr
        health = (await http.get("/healthz")).json()
    assert health["sip"]["options"] == before + 1
    assert health["sip"]["mode"] == "trunk"


# ---------------------------------------------------------------------------------------------------
# 3. Barge-in: the caller talks over the agent; RTP goes silent, the engine gets the truncate


async def test_barge_in_over_sip_silences_rtp_and_truncates(bridge: BridgeApp, tmp_path: Path) -> None:
    call = await barge_in_call(bridge, tmp_path, phone_speech(HOURS_QUESTION), talk_after_ms=1500)
    assert call.sipp.returncode == 0, call.sipp.errors or call.sipp.stderr
    await no_calls_left(bridge)
    view = call.view
    assert view is not None, "the agent's greeting never reached the caller"
    assert view.barge_ins >= 1
    # RTP fell silent (and stayed silent) soon after the caller started talking
    assert call.cut is not None, "the greeting was never cut"
    assert 0 < call.onset_to_silence_ms < 800, call.onset_to_silence_ms
    # the bridge told the model what was heard ...
    assert view.truncates, "the bridge sent no truncate"
    item_id, audio_end_ms = view.truncates[0]
    # ... which is what went out on the wire: RTP stopped within a few frames of the clear. (With the
    # backchannel pause, heard is taken when the bot pauses and RTP stops at the leg's clear; under
    # load a full-suite run measured 65 ms once, idle runs stay within 20 ms: see the issue 16 note.)
    assert abs(audio_end_ms - call.heard_ms) <= 80, (audio_end_ms, call.heard_ms)
    # the engine received it: its item was cut to exactly that length
    engine_item = bridge.observer.engine_items[item_id]
    assert engine_item.max_audio_ms > audio_end_ms + 1000
    assert engine_item.audio_ms == audio_end_ms
    assert LONG_GREETING.startswith(engine_item.transcript)
    # the interruption was then understood and answered (and the agent hung up)
    answer = ulaw_to_pcm(trim_silence(call.peer.heard_ulaw(since=call.cut.at + 0.3)))
    assert "HangUp" in view.actions
    await assert_heard(answer, HOURS_ANSWER)


# ---------------------------------------------------------------------------------------------------
# 4. baresip as the caller: a whole call, what it heard recorded by its sndfile module


def need_baresip() -> str:
    binary = require_binary("baresip")
    for module in ("sndfile", "aufile", "g711", "alsa"):
        require_file(BARESIP_MODULES / f"{module}.so")
    return binary


async def test_baresip_caller_completes_a_call(bridge: BridgeApp, tmp_path: Path) -> None:
    binary = need_baresip()
    question = silence(1000) + phone_speech(HOURS_QUESTION) + silence(8000)
    wav = write_wav(tmp_path / "question.wav", question)
    home = tmp_path / "baresip"
    dumps = tmp_path / "dumps"
    home.mkdir()
    dumps.mkdir()
    sip_port = free_udp_port()
    render("baresip/e2e.config.in", home / "config", SIP_PORT=sip_port, CALLER_WAV=wav, DUMP_DIR=dumps)
    render("baresip/e2e.accounts.in", home / "accounts", CALLER_WAV=wav)
    log_path = tmp_path / "baresip.log"
    log = log_path.open("wb")
    # headless: dial the bridge's "answer" flow at start, quit by itself after 40 s at the latest
    proc = await asyncio.create_subprocess_exec(
        binary,
        "-f",
        str(home),
        "-e",
        f"/dial sip:answer@127.0.0.1:{bridge.sip_port}",
        "-t",
        "40",
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=str(tmp_path),
    )

    def baresip_says(text: str) -> bool:
        return text in log_path.read_text(errors="replace")

    try:
        assert await bridge.observer.wait_for(lambda: baresip_says("Call established"), 10), (
            f"baresip's call was not answered: {log_path.read_text(errors='replace')[-2000:]}"
        )
        # the bridge hangs up (the agent's hang_up tool after the answer): baresip reports the BYE
        assert await bridge.observer.wait_for(lambda: baresip_says("terminated (duration"), 30), (
            f"the call did not end: {log_path.read_text(errors='replace')[-2000:]}"
        )
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()
    await no_calls_left(bridge)
    view = bridge.observer.call_for("answer")
    assert view is not None
    assert "HangUp" in view.actions, view.actions
    heard_files = sorted(dumps.glob("*-dec.wav"))
    assert heard_files, f"baresip recorded nothing: {sorted(dumps.iterdir())}"
    heard = read_wav_pcm8k(heard_files[0])
    start_ms, end_ms = speech_span_ms(heard)  # baresip's recording of silence is not digital zero
    await assert_heard(heard[max(0, start_ms - 200) * 16 : (end_ms + 200) * 16], HOURS_ANSWER)
