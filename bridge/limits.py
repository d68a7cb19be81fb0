"""Admission control and per-source rate limits: no I/O, time is an input.

- `Slots`: at most `limit` things in progress (calls, engine sessions). `try_acquire()` either
  takes a slot or says no; `release()` gives it back. A refused request never disturbs the ones
  already admitted.
- `RateLimiter`: one token bucket per source address (`rate_per_s` refill, `burst` capacity),
  with the number of tracked sources bounded so a flood of spoofed addresses cannot grow memory.

Shells (Twilio routes, the SIP endpoint, the engine server) decide what a refusal looks like on
their protocol (busy TwiML, SIP 503, a WebSocket close) and count it in /metrics.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class Slots:
    """A counting semaphore that refuses instead of waiting."""

    limit: int
    in_use: int = 0

    def try_acquire(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        if self.in_use <= 0:
            raise RuntimeError("Slots.release() without a matching try_acquire()")
        self.in_use -= 1

    @property
    def full(self) -> bool:
        return self.in_use >= self.limit


@dataclass
class _Bucket:
    tokens: float
    updated_s: float


@dataclass
class RateLimiter:
    """Token buckets keyed by source; `allow(source, now_s)` spends one token or refuses."""

    rate_per_s: float
    burst: int
    max_sources: int = 10_000
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)

    def allow(self, source: str, now_s: float) -> bool:
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now_s)
            self._buckets[source] = bucket
            if len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)  # forget the least recently seen source
        else:
            self._buckets.move_to_end(source)
            elapsed_s = max(0.0, now_s - bucket.updated_s)  # a clock step back refills nothing
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed_s * self.rate_per_s)
            bucket.updated_s = now_s
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    @property
    def sources(self) -> int:
        return len(self._buckets)
