"""The in-process call registry and the continuation-path rule."""

from __future__ import annotations

import pytest

from bridge.telephony.twilio.call_registry import (
    CallRegistry,
    HangUp,
    InProcessCallRegistry,
    StatusEvent,
    Transfer,
    choose_continuation_path,
)

CA = "CA" + "1" * 32


def _call(status: str, at_s: float) -> StatusEvent:
    return StatusEvent("call", status, at_s)


def _stream(status: str, at_s: float, detail: str = "") -> StatusEvent:
    return StatusEvent("stream", status, at_s, detail)


async def test_open_and_status_history() -> None:
    registry: CallRegistry = InProcessCallRegistry()
    record = await registry.open_call(
        CA, caller="+15551234567", called="+15550100", flow="main", has_action_url=True, now_s=10.0
    )
    assert (record.caller, record.called, record.flow, record.has_action_url) == (
        "+15551234567",
        "+15550100",
        "main",
        True,
    )
    await registry.record_status(CA, _call("ringing", 10.1))
    await registry.record_status(CA, _call("in-progress", 10.2))
    await registry.record_status(CA, _stream("stream-started", 10.3))
    record2 = await registry.get(CA)
    assert record2 is not None
    assert record2.status == "in-progress"
    assert record2.stream_status == "open"
    assert [e.status for e in record2.history] == ["ringing", "in-progress", "stream-started"]
    # Snapshots are copies.
    record2.history.clear()
    again = await registry.get(CA)
    assert again is not None
    assert len(again.history) == 3
    assert await registry.get("CA" + "9" * 32) is None


async def test_status_never_goes_back_from_terminal_or_later() -> None:
    registry = InProcessCallRegistry()
    await registry.record_status(CA, _call("in-progress", 1.0))
    await registry.record_status(CA, _call("ringing", 1.1))  # late, out of order
    record = await registry.get(CA)
    assert record is not None
    assert record.status == "in-progress"
    await registry.record_status(CA, _call("completed", 2.0))
    await registry.record_status(CA, _call("in-progress", 2.1))
    record = await registry.get(CA)
    assert record is not None
    assert record.status == "completed"
    assert record.ended
    assert len(record.history) == 4


async def test_completed_closes_a_lingering_stream() -> None:
    registry = InProcessCallRegistry()
    closed: list[str] = []

    async def closer(reason: str) -> None:
        closed.append(reason)

    assert await registry.attach_stream(CA, "MZ1", closer, now_s=1.0)
    await registry.record_status(CA, _call("in-progress", 1.5))
    assert closed == []
    await registry.record_status(CA, _call("completed", 2.0))
    assert closed == ["call completed"]
    await registry.record_status(CA, _call("completed", 2.1))  # a duplicate closes nothing twice
    assert closed == ["call completed"]
    # The call has ended: no new stream for it.
    assert not await registry.attach_stream(CA, "MZ2", closer, now_s=3.0)


async def test_one_open_stream_per_call() -> None:
    registry = InProcessCallRegistry()

    async def closer(reason: str) -> None:
        return None

    assert await registry.attach_stream(CA, "MZ1", closer, now_s=1.0)
    assert not await registry.attach_stream(CA, "MZ2", closer, now_s=1.1)
    await registry.detach_stream(CA, "MZ2", now_s=1.2)  # someone else's stream id: nothing changes
    assert not await registry.attach_stream(CA, "MZ2", closer, now_s=1.3)
    await registry.detach_stream(CA, "MZ1", now_s=1.4)
    record = await registry.get(CA)
    assert record is not None
    assert record.stream_status == "stopped"
    assert await registry.attach_stream(CA, "MZ3", closer, now_s=1.5)


async def test_failing_closer_does_not_break_status_recording() -> None:
    registry = InProcessCallRegistry()

    async def closer(reason: str) -> None:
        raise RuntimeError("socket already gone")

    await registry.attach_stream(CA, "MZ1", closer, now_s=1.0)
    record = await registry.record_status(CA, _call("failed", 2.0))
    assert record.ended


async def test_stream_status_events() -> None:
    registry = InProcessCallRegistry()
    await registry.record_status(CA, _stream("stream-started", 1.0))
    await registry.record_status(CA, _stream("stream-error", 2.0, "31920"))
    record = await registry.get(CA)
    assert record is not None
    assert record.stream_status == "error"
    assert record.history[-1].detail == "31920"
    await registry.record_status(CA, _stream("stream-stopped", 3.0))
    record = await registry.get(CA)
    assert record is not None
    assert record.stream_status == "stopped"


async def test_continuation_is_taken_once() -> None:
    registry = InProcessCallRegistry()
    assert await registry.take_continuation(CA) is None
    await registry.set_continuation(CA, Transfer("+15550199"), now_s=1.0)
    await registry.set_continuation(CA, HangUp(), now_s=1.1)  # the latest decision wins
    assert await registry.take_continuation(CA) == HangUp()
    assert await registry.take_continuation(CA) is None


async def test_prune_keeps_live_and_recent_records() -> None:
    registry = InProcessCallRegistry(ended_keep_s=60.0, max_age_s=3600.0)

    async def closer(reason: str) -> None:
        return None

    await registry.open_call("CAended", caller="", called="", flow=None, has_action_url=False, now_s=0.0)
    await registry.record_status("CAended", _call("completed", 10.0))
    await registry.open_call("CAold", caller="", called="", flow=None, has_action_url=False, now_s=0.0)
    await registry.attach_stream("CAstreaming", "MZ", closer, now_s=0.0)
    assert await registry.prune(50.0) == 0
    assert await registry.prune(100.0) == 1  # CAended, 90 s after it ended
    assert await registry.get("CAended") is None
    assert await registry.prune(4000.0) == 1  # CAold is over max age; the open stream's record stays
    assert len(registry) == 1
    assert await registry.get("CAstreaming") is not None


async def test_prune_forgets_a_stopped_stream_without_status_callbacks() -> None:
    registry = InProcessCallRegistry(ended_keep_s=60.0, max_age_s=3600.0)

    async def closer(reason: str) -> None:
        return None

    for sid in ("CAquiet", "CAtransferred"):
        await registry.open_call(sid, caller="", called="", flow=None, has_action_url=True, now_s=0.0)
        await registry.attach_stream(sid, "MZ" + sid, closer, now_s=1.0)
        await registry.detach_stream(sid, "MZ" + sid, now_s=10.0)  # no status callback ever comes
    await registry.set_continuation("CAtransferred", Transfer("+15550199"), now_s=30.0)
    assert await registry.prune(60.0) == 0  # kept for the <Connect action> request and late callbacks
    assert await registry.prune(80.0) == 1  # CAquiet, 70 s after its stream stopped (not 3600 s)
    assert await registry.get("CAquiet") is None
    assert await registry.prune(100.0) == 1
    assert len(registry) == 0


@pytest.mark.parametrize(
    ("mode", "has_action_url", "shared", "creds", "expected"),
    [
        ("auto", True, True, True, "action"),
        ("auto", True, True, False, "action"),
        ("auto", True, False, True, "rest"),  # several instances could be answering: REST holds
        ("auto", True, False, False, "action"),  # single instance without credentials
        ("auto", False, False, False, "none"),
        ("auto", False, True, True, "rest"),
        ("action", True, False, True, "action"),
        ("action", False, False, True, "rest"),
        ("rest", True, True, True, "rest"),
        ("rest", True, True, False, "action"),
        ("rest", False, False, False, "none"),
    ],
)
def test_choose_continuation_path(
    mode: str, has_action_url: bool, shared: bool, creds: bool, expected: str
) -> None:
    got = choose_continuation_path(
        mode,  # type: ignore[arg-type]
        has_action_url=has_action_url,
        registry_shared=shared,
        has_rest_credentials=creds,
    )
    assert got == expected
