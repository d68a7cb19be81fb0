"""bridge/limits.py: admission slots and per-source token buckets, on a fake clock."""

from __future__ import annotations

import pytest

from bridge.limits import RateLimiter, Slots


def test_slots_refuse_beyond_the_limit_and_reopen_on_release() -> None:
    slots = Slots(2)
    assert slots.try_acquire()
    assert slots.try_acquire()
    assert slots.full
    assert not slots.try_acquire()
    slots.release()
    assert slots.try_acquire()


def test_slots_release_without_acquire_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        Slots(1).release()


def test_rate_limiter_allows_a_burst_then_the_refill_rate() -> None:
    limiter = RateLimiter(rate_per_s=2.0, burst=3)
    assert [limiter.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", 0.0)  # another source has its own bucket
    assert not limiter.allow("a", 0.2)  # 0.4 token refilled: still refused
    assert limiter.allow("a", 0.5)  # 1.0 token
    assert not limiter.allow("a", 0.5)


def test_rate_limiter_clock_step_back_refills_nothing() -> None:
    limiter = RateLimiter(rate_per_s=10.0, burst=1)
    assert limiter.allow("a", 100.0)
    assert not limiter.allow("a", 50.0)


def test_rate_limiter_tracks_a_bounded_number_of_sources() -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst=1, max_sources=3)
    for i in range(10):
        limiter.allow(f"10.0.0.{i}", 0.0)
    assert limiter.sources == 3
