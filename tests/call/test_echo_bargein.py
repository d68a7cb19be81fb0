"""Barge-in with the caller on speakerphone, end to end: real bridge server, the Twilio emulator mixing
the bot's played audio back into the caller's audio (150 ms later, 10 dB quieter), the stand-in
realtime server. The bot speaks real speech (Piper), so its echo is what a VAD would take for a caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.signal import resample_poly

from bridge.app import create_app
from bridge.media import g711
from tests.helpers.realtime_standin import AGENT_ONLY, StandinRealtime, StandinSession
from tests.helpers.servers import serve
from tests.helpers.speech import phone_speech, speech_span_ms
from tests.helpers.twilio_emulator import FRAME_BYTES, FRAME_S, TwilioEmulator

pytestmark = pytest.mark.slow

BOT_LINES = (
    "Thanks for calling. I can help you with billing, orders, or technical support. "
    "Your order number four two seven one shipped yesterday and should arrive on Friday."
)
SILENT = b"\xff" * FRAME_BYTES


@contextlib.contextmanager
def bridge(standin: StandinRealtime, tmp_path: Path, **settings: Any) -> Iterator[str]:
    from bridge.settings import Settings

    (tmp_path / "main.yaml").write_text(AGENT_ONLY)

    def make(port: int) -> object:
        s = Settings(port=port, realtime_url=standin.url, dialplans=tmp_path, **settings)
        return create_app(s, preload_models=False)

    with serve(make) as (url, _app):
        yield url.replace("http://", "ws://") + "/twilio/media"


@pytest.fixture(scope="module")
def bot_reply() -> bytes:
    """The bot's reply as the model sends it: 24 kHz PCM16."""
    x = np.frombuffer(phone_speech(BOT_LINES), dtype="<i2").astype(np.float64)
    return np.clip(np.rint(resample_poly(x, 3, 1)), -32768, 32767).astype("<i2").tobytes()


def caller_clip(text: str, voice: str, max_ms: int | None = None) -> bytes:
    """Caller speech (8 kHz PCM16) from its true onset; cut to `max_ms` with a 20 ms fade."""
    pcm = phone_speech(text, voice=voice)
    a, b = speech_span_ms(pcm)
    x = np.frombuffer(pcm, dtype="<i2")[a * 8 : b * 8].astype(np.float64)
    if max_ms is not None:
        x = x[: max_ms * 8]
        x[-160:] *= np.linspace(1.0, 0.0, 160)
    return np.rint(x).astype("<i2").tobytes()


async def call(url: str, standin: StandinRealtime) -> tuple[TwilioEmulator, StandinSession]:
    twilio = TwilioEmulator(url, echo_delay_s=0.15, echo_erl_db=10.0)
    await twilio.open()
    await twilio.start()
    session = await standin.next_session()
    await asyncio.wait_for(session.updated.wait(), 5)
    return twilio, session


async def speak_over_the_bot(
    twilio: TwilioEmulator, session: StandinSession, reply: bytes, caller: bytes | None, at_s: float
) -> tuple[float | None, asyncio.Task[Any]]:
    """Caller audio flows (silence + the bot's echo) while the bot replies; `caller` (8 kHz PCM16)
    starts `at_s` after the bot's first frame played. Returns (true onset time, the reply task)."""
    t0 = time.monotonic()
    lead = g711.encode(bytes(int(0.4 * 16000)), "pcmu")  # the caller line is open before the reply
    reply_task = asyncio.create_task(session.reply_audio(reply, realtime=1.5))
    await twilio.stream_audio(lead, start_at=t0)
    await twilio.wait_for(lambda: any(p.payload != SILENT for p in twilio.played), timeout=5)
    first = next(p.at for p in twilio.played if p.payload != SILENT)
    start = t0 + len(lead) // FRAME_BYTES * FRAME_S
    offset_s = first + at_s - start
    n = int(offset_s * 8000)
    total_s = len(reply) / 48000 + 1.5
    audio = bytearray(bytes(int(total_s * 16000)))
    onset = None
    if caller is not None:
        audio[n * 2 : n * 2 + len(caller)] = caller
        onset = start + n / 8000
    await twilio.stream_audio(g711.encode(bytes(audio), "pcmu"), start_at=start)
    return onset, reply_task


def bot_frames_played(twilio: TwilioEmulator, before: float | None = None) -> int:
    """Frames of the reply played (the bridge sends nothing else; its pauses are silent frames too)."""
    return sum(1 for p in twilio.played if before is None or p.at < before)


@pytest.mark.parametrize("echo_cancel", [True, False])
async def test_echo_alone_never_cuts_the_bot(
    standin: StandinRealtime, tmp_path: Path, bot_reply: bytes, echo_cancel: bool
) -> None:
    with bridge(standin, tmp_path, echo_cancel=echo_cancel) as url:
        twilio, session = await call(url, standin)
        _, reply = await speak_over_the_bot(twilio, session, bot_reply, None, 0.0)
        await reply
        if echo_cancel:
            assert not twilio.clears, "the bot's own echo paused or cut it"
            assert not session.truncates
            assert not session.client_events("response.cancel")
            assert bot_frames_played(twilio) >= len(bot_reply) // 960  # the reply played to its end
        else:  # the control: this echo does trigger the bare detector
            assert twilio.clears
        await twilio.stop()
        await twilio.close()


async def test_caller_interrupting_over_the_echo_stops_the_bot_and_truncates_at_heard(
    standin: StandinRealtime, tmp_path: Path, bot_reply: bytes
) -> None:
    caller = caller_clip("Wait, I need to talk to a person.", "piper")
    with bridge(standin, tmp_path) as url:
        twilio, session = await call(url, standin)
        onset, reply = await speak_over_the_bot(twilio, session, bot_reply, caller, 2.5)
        await reply
        await twilio.wait_for(lambda: bool(session.truncates), timeout=3)
        assert onset is not None
        assert twilio.clears
        stop_ms = (twilio.clears[0] - onset) * 1000
        print(f"onset -> clear at the emulator: {stop_ms:.0f} ms")
        assert 0 < stop_ms < 250  # bench/results/bargein.md has the distribution (target 150 ms)
        # "Wait," alone is as short as an acknowledgement: the bot may resume until "I need ..."
        # commits the barge-in, so what was heard is everything played (each resume replays up to
        # one frame that was playing when it paused).
        await asyncio.sleep(0.3)
        heard_ms = bot_frames_played(twilio) * 20
        assert abs(session.truncates[0]["audio_end_ms"] - heard_ms) <= 40 + 20 * (len(twilio.clears) - 1)
        assert session.client_events("response.cancel")
        await twilio.stop()
        await twilio.close()


@pytest.mark.parametrize("backchannel", [True, False])
async def test_a_short_acknowledgement_does_not_cut_the_reply(
    standin: StandinRealtime, tmp_path: Path, bot_reply: bytes, backchannel: bool
) -> None:
    mmhm = caller_clip("Mm-hm.", "espeak", max_ms=250)
    with bridge(standin, tmp_path, backchannel=backchannel) as url:
        twilio, session = await call(url, standin)
        _, reply = await speak_over_the_bot(twilio, session, bot_reply, mmhm, 2.0)
        await reply
        await asyncio.sleep(0.5)
        assert twilio.clears, "the acknowledgement was not heard at all"
        if backchannel:  # paused, then resumed: nothing cancelled or truncated, the reply played out
            assert not session.client_events("response.cancel")
            assert not session.truncates
            assert bot_frames_played(twilio) >= len(bot_reply) // 960
        else:  # as before: any onset cuts
            assert session.client_events("response.cancel")
            assert session.truncates
        await twilio.stop()
        await twilio.close()
