"""Opening hours: weekly windows parsed from "mon-fri 09:00-17:00", and whether a time is inside them.

No I/O: the time is an input (`now_ms`, epoch milliseconds); the timezone database turns it into
local time, so DST changes are handled.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from datetime import date, datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WINDOW_RE = re.compile(
    r"^\s*(?P<days>[a-z]{3}(?:\s*-\s*[a-z]{3})?(?:\s*,\s*[a-z]{3}(?:\s*-\s*[a-z]{3})?)*)\s+"
    r"(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$"
)


class Window(BaseModel):
    """One weekly opening window; `end_min` may be 1440 (midnight). Parsed from "mon-fri 09:00-17:00"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    days: frozenset[int]  # 0 = Monday
    start_min: int
    end_min: int


def parse_window(text: str) -> Window:
    m = WINDOW_RE.match(text.lower())
    if not m:
        raise ValueError(f'expected a window like "mon-fri 09:00-17:00", got {text!r}')
    days: set[int] = set()
    for part in m.group("days").split(","):
        ends = [p.strip() for p in part.split("-")]
        for d in ends:
            if d not in DAYS:
                raise ValueError(f"unknown day {d!r} in {text!r}; use mon tue wed thu fri sat sun")
        a, b = DAYS.index(ends[0]), DAYS.index(ends[-1])
        span = range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)]
        days.update(span)

    def minutes(hhmm: str) -> int:
        h, mm = (int(x) for x in hhmm.split(":"))
        if h > 24 or mm > 59 or (h == 24 and mm):
            raise ValueError(f"bad time {hhmm!r} in {text!r}")
        return h * 60 + mm

    start, end = minutes(m.group("start")), minutes(m.group("end"))
    if end <= start:
        raise ValueError(f"window {text!r} ends before it starts (use 00:00-24:00 style, no overnight)")
    return Window(days=frozenset(days), start_min=start, end_min=end)


class Schedule(Protocol):
    """What `hours_open` reads (an `hours` step)."""

    @property
    def timezone(self) -> str: ...
    @property
    def windows(self) -> Sequence[Window]: ...
    @property
    def holidays(self) -> Collection[date]: ...


def hours_open(hours: Schedule, now_ms: float) -> bool:
    local = datetime.fromtimestamp(now_ms / 1000.0, ZoneInfo(hours.timezone))
    if local.date() in hours.holidays:
        return False
    minute = local.hour * 60 + local.minute
    weekday = local.weekday()
    return any(weekday in w.days and w.start_min <= minute < w.end_min for w in hours.windows)
