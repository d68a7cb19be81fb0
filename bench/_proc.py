"""Stopping a bridge the benchmarks started as `ivr-bridge serve` / `python -m bridge serve`."""

from __future__ import annotations

import subprocess


def stop_bridge(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM starts a graceful drain (calls in progress may go on for BRIDGE_DRAIN_S); a second
    SIGTERM ends the process at once (docs/resilience.md). A bench is done with its calls: give the
    drain a moment, then insist."""
    proc.terminate()
    try:
        proc.wait(3)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(10)
