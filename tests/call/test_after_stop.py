"""Nothing is sent after Twilio's `stop`, at load: many streams hang up while the bot is talking.

Each of STREAMS calls gets a long reply from the stand-in (pcm24k, resampled and paced by the
bridge); once the caller has heard bot audio, every call sends `stop` at the same moment. The
bridge must close each stream promptly and send nothing more: a message can cross the `stop` on
the wire (sent before the bridge read it), so only what arrives later than CROSSING_S after the
`stop` counts. A bridge that played out its queued audio, or kept pacing, after `stop` fails.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.app import create_app
from bridge.settings import Settings
from tests.helpers.realtime_standin import AGENT_ONLY, StandinRealtime, StandinSession
from tests.helpers.servers import serve
from tests.helpers.signals import pcm, tone
from tests.helpers.twilio_emulator import TwilioEmulator

pytestmark = pytest.mark.slow

STREAMS = 40
CROSSING_S = 0.25  # generous: the bridge's loop, 40 calls and this test share two loaded cores


@pytest.fixture
def bridge_url(standin: StandinRealtime, tmp_path: Path) -> Iterator[str]:
    (tmp_path / "main.yaml").write_text(AGENT_ONLY)

    def make(port: int) -> object:
        settings = Settings(
            port=port,
            realtime_url=standin.url,
            dialplans=tmp_path,
            max_calls=STREAMS + 10,
            rate_per_source_per_s=10_000,
            rate_burst=10_000,
        )
        return create_app(settings, preload_models=False)

    with serve(make) as (url, _app):
        yield url


async def test_nothing_is_sent_after_stop_when_many_streams_stop_while_the_bot_talks(
    bridge_url: str, standin: StandinRealtime
) -> None:
    media = bridge_url.replace("http://", "ws://") + "/twilio/media"
    reply = pcm(tone(440, 6.0, 24000))  # longer than the test: still flowing at `stop`
    line = b"\xff" * 160 * 500  # the caller listens: 10 s of line silence, as Twilio streams it
    calls: list[tuple[TwilioEmulator, StandinSession]] = []
    for n in range(STREAMS):
        twilio = TwilioEmulator(media, stream_sid=f"MZ{n:032d}", call_sid=f"CA{n:032d}")
        await twilio.open()
        await twilio.start()
        session = await standin.next_session(timeout=20)
        await asyncio.wait_for(session.updated.wait(), 20)
        calls.append((twilio, session))
    talking = [asyncio.create_task(t.stream_audio(line)) for t, _ in calls]
    replies = [asyncio.create_task(s.reply_audio(reply, realtime=1.0)) for _, s in calls]
    try:
        for twilio, _ in calls:  # every caller hears the bot
            await twilio.wait_for(lambda t=twilio: len(t.messages("media")) >= 10, timeout=20)
        await asyncio.gather(*(t.stop() for t, _ in calls))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if all(t.closed_at is not None for t, _ in calls):
                break
            await asyncio.sleep(0.05)
        still_open = [t.stream_sid for t, _ in calls if t.closed_at is None]
        assert not still_open, f"{len(still_open)} of {STREAMS} streams not closed 10 s after stop"
        late: dict[str, list[tuple[float, object]]] = {}
        for twilio, _ in calls:
            assert twilio.stop_sent_at is not None
            after = [m for t, m in twilio.received if t > twilio.stop_sent_at + CROSSING_S]
            if after:
                late[twilio.stream_sid] = [
                    (round(t - twilio.stop_sent_at, 3), m.get("event"))
                    for t, m in twilio.received
                    if t > twilio.stop_sent_at
                ]
        assert not late, f"messages sent after stop (stream: count): {late}"
        close_s = [t.closed_at - t.stop_sent_at for t, _ in calls if t.closed_at and t.stop_sent_at]
        assert max(close_s) < 2.0, f"a stream stayed open {max(close_s):.2f} s after stop"
        # The upstream sessions end with the calls (nothing billed after the caller is gone).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if all(s.closed_at is not None for _, s in calls):
                break
            await asyncio.sleep(0.05)
        assert all(s.closed_at is not None for _, s in calls)
    finally:
        for task in talking + replies:
            task.cancel()
        for twilio, _ in calls:
            await twilio.close()
