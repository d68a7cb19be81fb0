"""Chaos with the expected behaviour asserted: a lossy, reordering RTP path; an event loop that stalls.

(Upstream chaos, a TCP reset, a 5 s stall, a server that stops reading, is end to end in
tests/call/test_resilience.py; a speech worker killed mid-turn in tests/speech/test_asr_pool.py.)
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.app import create_app
from bridge.media.playout import Playout
from bridge.settings import Settings
from bridge.telephony.rtp.jitter import RtpReceiver
from bridge.telephony.rtp.packet import build_packet
from tests.helpers.e2e import live_call, place_call
from tests.helpers.realtime_standin import AGENT_ONLY, StandinRealtime
from tests.helpers.servers import serve
from tests.helpers.signals import pcm, tone

PEER = ("192.0.2.20", 40000)


def test_rtp_with_5_percent_loss_and_reordering_is_concealed_in_order() -> None:
    rng = random.Random(7)
    n = 1000
    frames = [bytes([i % 251]) * 160 for i in range(n)]
    packets = [(seq, build_packet(0, seq & 0xFFFF, seq * 160, 0xBEEF, frames[seq])) for seq in range(n)]
    lost = {seq for seq in range(5, n - 5) if rng.random() < 0.05}
    sent = [(seq, p) for seq, p in packets if seq not in lost]
    swaps = 0
    i = 0
    while i < len(sent) - 1:  # swap some neighbours in transit (one packet 20 ms late: within depth)
        if rng.random() < 0.05:
            sent[i], sent[i + 1] = sent[i + 1], sent[i]
            swaps += 1
            i += 1
        i += 1
    rx = RtpReceiver("pcmu", 0, 101, PEER)
    out: list[bytes] = []
    for k, (_, data) in enumerate(sent):
        ready, _ = rx.feed(data, PEER, 20.0 * k)
        out.extend(ready)
    assert swaps > 10
    assert len(lost) > 30
    # One frame per 20 ms slot, in order: received ones as sent, lost ones concealed (never skipped).
    assert len(out) >= n - 3  # the last `depth` frames wait for their successors
    for seq in range(len(out)):
        if seq not in lost:
            assert out[seq] == frames[seq], f"frame {seq} out of order"
    assert rx.stats.lost == len([s for s in lost if s < len(out)])
    assert rx.stats.late == 0  # a neighbour swapped in transit is reordered, not dropped


def test_pacer_catches_up_after_a_stall_without_bursting_past_its_lead() -> None:
    lead_ms = 100
    playout = Playout(lead_ms=lead_ms, silence_byte=0xFF)
    playout.push("item", b"\x00" * 160 * 150)  # 3 s of audio
    sent_at: list[tuple[float, float]] = []  # (now, frame end)
    now = 1000.0
    for _ in range(20):  # normal pacing: 400 ms
        for frame in playout.pop_due(now):
            sent_at.append((now, frame.end_ms))
        now += 20
    stall_end = now + 700.0  # the event loop was blocked for 700 ms
    burst = playout.pop_due(stall_end)
    assert len(burst) <= lead_ms // 20 + 1, f"{len(burst)} frames at once after a stall"
    # Then back to one frame per 20 ms on absolute deadlines.
    now = stall_end
    counts = []
    for _ in range(20):
        now += 20
        counts.append(len(playout.pop_due(now)))
    assert max(counts) <= 1
    assert sum(counts) >= 19


@pytest.fixture
def bridge(standin: StandinRealtime, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    (tmp_path / "main.yaml").write_text(AGENT_ONLY)

    def make(port: int) -> object:
        return create_app(
            Settings(port=port, dialplans=tmp_path, data_dir=tmp_path / "data", realtime_url=standin.url),
            preload_models=False,
        )

    with serve(make) as served:
        yield served


@pytest.mark.slow
async def test_event_loop_stall_in_the_bridge_does_not_burst_audio_to_twilio(
    bridge: tuple[str, Any], standin: StandinRealtime
) -> None:
    url, app = bridge
    caller = await place_call(url)
    session = await standin.next_session()
    await asyncio.wait_for(session.updated.wait(), 5)
    reply = asyncio.create_task(session.reply_audio(pcm(tone(440, 3.0, 24000))))
    await caller.wait_speech(time.monotonic() - 1, timeout=5)
    await asyncio.sleep(0.5)
    call = live_call(app, caller.call_sid)
    assert call is not None
    loop = call._loop
    stalled = time.monotonic()
    loop.call_soon_threadsafe(time.sleep, 0.5)  # the bridge's event loop blocks for 500 ms
    await asyncio.sleep(1.5)
    media = [t for t, m in caller.twilio.messages("media") if t > stalled]
    # After the stall the pacer sends at most its lead (100 ms = 5 frames) plus the frame in
    # progress at once, not the 500 ms it missed; then ~1 frame per 20 ms again, so any window
    # of T ms after the stall holds at most lead + T/20 (+1) frames.
    first = media[0]
    burst = [t for t in media if t - first < 0.01]
    assert len(burst) <= 7, f"{len(burst)} frames burst after the stall"
    window = [t for t in media if t - first < 0.2]
    assert len(window) <= 5 + 10 + 2, f"{len(window)} frames in the 200 ms after the stall"
    later = [t for t in media if 0.3 <= t - first < 0.8]
    assert 20 <= len(later) <= 30  # real time again: 25 frames in 500 ms
    reply.cancel()
    await caller.hang_up()
