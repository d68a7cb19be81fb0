"""Fixtures shared across the suite."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.helpers.realtime_standin import StandinRealtime


@pytest.fixture
async def standin() -> AsyncIterator[StandinRealtime]:
    """A stand-in realtime server on 127.0.0.1 that tests script turn by turn."""
    server = StandinRealtime()
    await server.start()
    yield server
    await server.stop()
