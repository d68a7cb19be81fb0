"""The call's timers on uvloop (the loop `ivr-bridge serve` runs on): one wake-up per deadline.

uvloop's clock and timers step in whole milliseconds. A timer set at a fractional millisecond fires
before it and, re-armed by a waiter that checks the clock, fires again every loop iteration until
the clock passes it: the call's pacer, which sleeps to each frame's deadline, spun through ~66 loop
iterations per 20 ms frame (bench/results/load.md, "Pacer wake-ups").
"""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from bridge.call.call import _timer_s


async def wakeups_per_deadline(timer_s: bool, deadlines: int = 60) -> float:
    """Sleep to `deadlines` fractional-ms deadlines 20.3-21.1 ms apart as the pacer does: set a
    timer, wake, and set it again while the loop clock (ms) has not passed the deadline."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    wakeups = 0
    for k in range(deadlines):
        due_ms = loop.time() * 1000.0 + 20.3 + (k % 7) * 0.13
        while loop.time() * 1000.0 <= due_ms:
            wake.clear()
            at = _timer_s(due_ms) if timer_s else due_ms / 1000.0
            handle = loop.call_at(at, wake.set)
            await wake.wait()
            handle.cancel()
            wakeups += 1
    return wakeups / deadlines


def test_the_pacers_deadline_wakes_it_once_on_uvloop() -> None:
    assert uvloop.run(wakeups_per_deadline(timer_s=True)) <= 1.1
    # The control: the deadline as such spins through the loop on uvloop.
    assert uvloop.run(wakeups_per_deadline(timer_s=False)) > 5


@pytest.mark.parametrize("due_ms", [1000.0, 1000.25, 1000.999, 12345.5])
def test_the_wake_up_time_is_after_the_deadline_by_at_most_one_ms(due_ms: float) -> None:
    at_ms = _timer_s(due_ms) * 1000.0
    assert due_ms < at_ms <= due_ms + 1.0 + 1e-9
