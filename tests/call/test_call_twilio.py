"""The call path end to end: real bridge server, Twilio emulator, stand-in realtime server.

Every client event the bridge sends upstream is validated against the official openai SDK's
GA models. Audio is checked for fidelity both ways, barge-in against what the emulator really
played, and hang-up for how fast the upstream session is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bridge.app import create_app
from bridge.media import g711
from bridge.media.model_files import silero_session
from bridge.settings import Settings
from tests.helpers.realtime_schema import validate_client_event
from tests.helpers.realtime_standin import AGENT_ONLY, StandinRealtime, StandinSession
from tests.helpers.servers import serve
from tests.helpers.signals import onset_s, pcm, samples, sinad_db, speech_8k, tone, ulaw
from tests.helpers.twilio_emulator import FRAME_BYTES, Played, TwilioEmulator

pytestmark = pytest.mark.slow


@pytest.fixture
def bridge_url(standin: StandinRealtime, tmp_path: Path) -> Iterator[str]:
    (tmp_path / "main.yaml").write_text(AGENT_ONLY)

    def make(port: int) -> object:
        settings = Settings(
            port=port,
            realtime_url=standin.url,
            barge_in_min_speech_ms=100,
            dialplans=tmp_path,
            reconnect_max_s=2.0,
        )
        return create_app(settings, preload_models=False)

    # The VAD every call runs, loaded now as `ivr-bridge serve` does at start (bridge/call/warmup.py):
    # loaded by the first call instead, it would stall the event loop (the other calls) for ~0.1 s.
    silero_session()
    with serve(make) as (url, _app):
        yield url


def media_url(bridge_url: str) -> str:
    return bridge_url.replace("http://", "ws://") + "/twilio/media"


async def open_call(
    bridge_url: str, standin: StandinRealtime, **kw: object
) -> tuple[TwilioEmulator, StandinSession]:
    twilio = TwilioEmulator(media_url(bridge_url), **kw)  # type: ignore[arg-type]
    await twilio.open()
    await twilio.start()
    session = await standin.next_session()
    await asyncio.wait_for(session.updated.wait(), 5)
    return twilio, session


def assert_valid_upstream(session: StandinSession) -> None:
    assert session.received, "the bridge sent nothing upstream"
    for _, event in session.received:
        validate_client_event(event)


def item_frames_played(twilio: TwilioEmulator, before: float) -> int:
    return sum(1 for p in twilio.played if p.at < before and p.payload != b"\xff" * FRAME_BYTES)


async def test_voice_webhook_answers_twiml_that_connects_the_stream(bridge_url: str) -> None:
    import httpx

    async with httpx.AsyncClient() as http:
        r = await http.post(
            bridge_url + "/twilio/voice",
            data={"CallSid": "CA1", "From": "+15551230000", "To": "+15557650000"},
        )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/xml")
    body = r.text
    assert "<Connect" in body
    assert "><Stream " in body
    assert 'url="ws://127.0.0.1:' in body
    assert '/twilio/media"' in body
    assert 'name="caller" value="+15551230000"' in body


async def test_one_turn_with_tone_fidelity_both_ways(bridge_url: str, standin: StandinRealtime) -> None:
    twilio, session = await open_call(bridge_url, standin)
    fmt = session.session["audio"]
    assert fmt["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert fmt["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    # Caller -> model: 1 s of a 1 kHz tone, sent as Twilio sends it.
    await twilio.stream_audio(ulaw(tone(1000, 1.0, 8000)))
    await twilio.wait_for(lambda: len(session.appended) >= 48_000 * 1 - 48 * 20)
    up = samples(bytes(session.appended))
    assert abs(len(up) - 24_000) <= 480  # every frame arrived, resampled 3x
    assert sinad_db(up[480:-480], 1000, 24000) > 33  # µ-law itself limits this to ~38 dB
    # Model -> caller: 1 s of a 440 Hz tone at 24 kHz.
    played_before = len(twilio.played)
    await session.reply_audio(pcm(tone(440, 1.0, 24000)))
    await twilio.wait_for(lambda: len(twilio.played) - played_before >= 50, timeout=5)
    await asyncio.sleep(0.1)
    heard = [p for p in twilio.played[played_before:] if p.payload != b"\xff" * FRAME_BYTES]
    assert 50 <= len(heard) <= 51
    down = samples(g711.decode(b"".join(p.payload for p in heard), "pcmu"))
    assert sinad_db(down[80:-240], 440, 8000) > 33
    gaps = np.diff([p.at for p in heard])
    assert gaps.max() < 0.06  # played back to back, no holes
    await twilio.stop()
    await twilio.wait_for(lambda: session.closed_at is not None, timeout=2)
    assert_valid_upstream(session)
    await twilio.close()


async def test_appends_carry_40_ms_while_the_caller_is_quiet_and_20_ms_once_they_talk(
    bridge_url: str, standin: StandinRealtime
) -> None:
    """Half the upstream messages while the caller is quiet; once the bridge's detector hears them
    (from its candidate onset), every frame goes at once, so the server's VAD (which can cut the bot
    too) hears the caller no later than with an append per frame."""
    twilio, session = await open_call(bridge_url, standin)
    speech = speech_8k("hello-world")
    await twilio.stream_audio(ulaw(np.concatenate([np.zeros(8000, dtype=np.int16), speech])))
    await twilio.wait_for(lambda: len(session.appended) >= 48 * (1000 + len(speech) // 8) - 48 * 40)
    ends = [n for _, n in session.append_times]
    sizes_ms = [(b - a) // 48 for a, b in zip([0, *ends], ends, strict=False)]
    quiet = [ms for end, ms in zip(ends, sizes_ms, strict=True) if end <= 48 * 900]
    talking = [
        ms for end, ms in zip(ends, sizes_ms, strict=True) if end > 48 * (1000 + onset_s(speech) * 1000 + 100)
    ]
    assert set(quiet) == {40}
    assert talking.count(20) > 0.8 * len(talking)
    await twilio.stop()
    await twilio.close()


async def test_upstream_socket_opens_at_stream_start(bridge_url: str, standin: StandinRealtime) -> None:
    twilio, session = await open_call(bridge_url, standin)
    # Connected and configured before the caller said anything.
    assert session.client_events("session.update")
    assert not session.appended
    await twilio.stop()
    await twilio.close()


async def barge_in_with_speech(twilio: TwilioEmulator) -> float:
    """Caller talks over the bot with real speech; returns the true onset time."""
    speech = speech_8k("hello-world")
    start = time.monotonic()
    await twilio.stream_audio(ulaw(speech), start_at=start)
    return start + onset_s(speech)


async def test_barge_in_during_reply_truncates_at_what_was_heard(
    bridge_url: str, standin: StandinRealtime
) -> None:
    twilio, session = await open_call(bridge_url, standin)
    reply = asyncio.create_task(session.reply_audio(pcm(tone(440, 4.0, 24000)), realtime=1.5))
    line = asyncio.create_task(twilio.send_silence(8.0))  # the caller's line, as Twilio streams it
    await twilio.wait_for(lambda: item_frames_played(twilio, time.monotonic()) >= 50, timeout=5)
    line.cancel()
    onset = await barge_in_with_speech(twilio)
    await twilio.wait_for(lambda: bool(twilio.clears), timeout=3)
    await reply
    await twilio.wait_for(lambda: bool(session.truncates), timeout=2)
    clear_at = twilio.clears[0]
    assert clear_at - onset < 0.6
    heard_ms = item_frames_played(twilio, clear_at) * 20
    truncate = session.truncates[0]
    assert abs(truncate["audio_end_ms"] - heard_ms) <= 40
    assert session.client_events("response.cancel"), "the response was still running"
    # Nothing of the cut reply is played after the clear.
    await asyncio.sleep(0.2)
    assert item_frames_played(twilio, time.monotonic()) * 20 <= heard_ms + 20
    assert_valid_upstream(session)
    await twilio.stop()
    await twilio.close()


async def test_barge_in_after_model_paused_mid_reply(bridge_url: str, standin: StandinRealtime) -> None:
    twilio, session = await open_call(bridge_url, standin)
    reply = asyncio.create_task(
        session.reply_audio(pcm(tone(440, 3.0, 24000)), realtime=1.0, pause_after_ms=1000, pause_s=1.5)
    )
    # 1 s of audio, 1.5 s pause, then 0.5 s into the second part the caller talks. Until then the line
    # carries silence, as Twilio streams it: without it the call's echo canceller would meet the
    # caller's first words knowing nothing of the line and gate them against the bot for up to 1.5 s.
    line = asyncio.create_task(twilio.send_silence(8.0))
    await twilio.wait_for(lambda: item_frames_played(twilio, time.monotonic()) >= 75, timeout=8)
    line.cancel()
    await barge_in_with_speech(twilio)
    await twilio.wait_for(lambda: bool(session.truncates), timeout=3)
    await reply
    heard_ms = item_frames_played(twilio, twilio.clears[0]) * 20
    assert heard_ms >= 1400  # the pause was not counted as heard ...
    assert abs(session.truncates[0]["audio_end_ms"] - heard_ms) <= 40  # ... and the truncate is exact
    assert_valid_upstream(session)
    await twilio.stop()
    await twilio.close()


async def test_server_speech_started_barges_in(bridge_url: str, standin: StandinRealtime) -> None:
    twilio, session = await open_call(bridge_url, standin)
    reply = asyncio.create_task(session.reply_audio(pcm(tone(440, 3.0, 24000)), realtime=1.5))
    await twilio.wait_for(lambda: item_frames_played(twilio, time.monotonic()) >= 40, timeout=5)
    sent = time.monotonic()
    await session.speech_started()
    await twilio.wait_for(lambda: bool(twilio.clears), timeout=2)
    assert twilio.clears[0] - sent < 0.2
    await reply
    await twilio.wait_for(lambda: bool(session.truncates), timeout=2)
    heard_ms = item_frames_played(twilio, twilio.clears[0]) * 20
    assert abs(session.truncates[0]["audio_end_ms"] - heard_ms) <= 40
    await twilio.stop()
    await twilio.close()


async def test_no_truncate_when_nothing_was_heard(bridge_url: str, standin: StandinRealtime) -> None:
    twilio, session = await open_call(bridge_url, standin)
    await session.speech_started()  # bot silent: nothing to cut
    await asyncio.sleep(0.2)
    assert not twilio.clears
    assert not session.truncates
    await twilio.stop()
    await twilio.close()


@pytest.mark.parametrize("state", ["mid_reply", "idle", "stop_socket_open", "socket_closed"])
async def test_hang_up_closes_upstream_within_100ms(
    bridge_url: str, standin: StandinRealtime, state: str
) -> None:
    twilio, session = await open_call(bridge_url, standin)
    await twilio.stream_audio(ulaw(tone(1000, 0.2, 8000)))
    reply = None
    if state == "mid_reply":
        reply = asyncio.create_task(session.reply_audio(pcm(tone(440, 3.0, 24000)), realtime=1.0))
        await twilio.wait_for(lambda: len(twilio.played) > 10 and twilio.played[-1].payload != b"\xff" * 160)
    t0 = time.monotonic()
    if state == "socket_closed":
        assert twilio.ws is not None
        await twilio.ws.close()
    else:
        await twilio.stop()
    await twilio.wait_for(lambda: session.closed_at is not None, timeout=2)
    assert session.closed_at is not None
    assert session.closed_at - t0 < 0.1
    if state != "socket_closed":
        # Nothing is sent to Twilio once `stop` has been processed.
        late = [m for t, m in twilio.received if t > t0 + 0.03]
        assert late == []
        await twilio.wait_for(lambda: twilio.closed_at is not None, timeout=2)  # bridge closed the socket
    if reply is not None:
        await reply
    await twilio.close()


async def test_upstream_failure_apologises_then_ends_the_call(
    bridge_url: str, standin: StandinRealtime
) -> None:
    twilio, _session = await open_call(bridge_url, standin)
    before = len(twilio.played)
    # The provider goes away for good (a lone drop is reconnected: tests/call/test_resilience.py).
    await standin.stop()
    await twilio.wait_for(lambda: twilio.closed_at is not None, timeout=30)
    spoken = [p for p in twilio.played[before:] if p.payload != b"\xff" * FRAME_BYTES]
    assert len(spoken) * 20 > 800  # "Sorry, I'm having trouble right now." was played, no dead air
    await twilio.close()


# -- bad input, with a healthy call running alongside -------------------------------------------

BAD_INPUTS: dict[str, tuple[list[object], int | None]] = {
    "malformed_json": (["start", "{not json"], 1007),
    "binary_frame": (["start", b"\x00\x01binary"], 1003),
    "oversized": (["start", '{"event":"media","pad":"' + "x" * 70_000 + '"}'], 1009),
    "media_before_start": (["media"], 1007),
    "invalid_base64": (["start", "bad_media"], 1007),
    "unknown_event": (["start", '{"event":"wobble","streamSid":"MZ1"}'], None),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
async def test_bad_input_ends_only_that_stream(bridge_url: str, standin: StandinRealtime, case: str) -> None:
    healthy, healthy_session = await open_call(bridge_url, standin)
    reply = asyncio.create_task(healthy_session.reply_audio(pcm(tone(440, 2.0, 24000)), realtime=1.0))
    await healthy.wait_for(lambda: len(healthy.played) > 10 and healthy.played[-1].payload != b"\xff" * 160)

    steps, close_code = BAD_INPUTS[case]
    bad = TwilioEmulator(media_url(bridge_url), stream_sid="MZbad", call_sid="CAbad")
    await bad.open()
    assert bad.ws is not None
    for step in steps:
        if step == "start":
            await bad.start()
        elif step == "media":
            await bad.send_media(b"\xff" * 160)
        elif step == "bad_media":
            await bad.send_json(
                {
                    "event": "media",
                    "sequenceNumber": "3",
                    "streamSid": "MZbad",
                    "media": {
                        "track": "inbound",
                        "chunk": "1",
                        "timestamp": "0",
                        "payload": "***not base64***",
                    },
                }
            )
        else:
            await bad.ws.send(step)  # type: ignore[arg-type]
    if close_code is None:
        await asyncio.sleep(0.3)
        assert bad.closed_at is None  # ignored, the stream goes on
        await bad.send_media(b"\xff" * 160)
        await bad.stop()
    else:
        await bad.wait_for(lambda: bad.closed_at is not None, timeout=3)
        assert bad.close_code == close_code
    await bad.close()
    for s in standin.sessions:
        if s is not healthy_session:
            await healthy.wait_for(lambda s=s: s.closed_at is not None, timeout=2)  # type: ignore[misc]
            for _, event in s.received:
                validate_client_event(event)  # nothing garbled reached the model

    await reply

    def heard() -> list[Played]:
        return [p for p in healthy.played if p.payload != b"\xff" * 160]

    with contextlib.suppress(TimeoutError):
        await healthy.wait_for(lambda: len(heard()) >= 100, timeout=2)
    frames = heard()
    assert len(frames) >= 99  # the healthy call heard its whole 2 s reply
    assert np.diff([p.at for p in frames]).max() < 0.06
    await healthy.stop()
    await healthy.wait_for(lambda: healthy_session.closed_at is not None, timeout=2)
    await healthy.close()
