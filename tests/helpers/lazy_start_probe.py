"""Run in a fresh interpreter by tests/test_lazy_start.py: serve the real app (models "preloaded":
what the dialplan needs) on a dialplan directory, report what this process has loaded, hot-reload the
directory to a plan with an agent on the embedded engine, report again, then place a call.

A fresh process, because `sys.modules` is the fact under test: a pytest process has usually imported
Piper or pocketsphinx for some other test already. Prints one JSON line per stage on stdout:
{"stage": ..., "modules": [heavy modules imported], "workers": [pids of speech worker processes], ...}.
Usage: python -m tests.helpers.lazy_start_probe DIALPLAN_DIR DATA_DIR
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil

# (not alembic: a fresh database runs its migrations, which import it)
HEAVY = ("piper", "pocketsphinx", "faster_whisper", "ctranslate2", "onnxruntime", "aiortc", "av")

LOCAL_PLAN = textwrap.dedent(
    """
    numbers:
      default: main
    flows:
      main:
        - agent:
            provider: local
            greeting: "Hello, this is the local assistant."
            instructions: "Answer briefly."
    """
)


def speech_workers() -> list[int]:
    """Child processes running a speech worker (the ASR pool's and Whisper's spawned interpreters)."""
    pids = []
    for child in psutil.Process().children(recursive=True):
        try:
            if any("spawn_main" in part for part in child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:
            continue
    return pids


def report(stage: str, app: Any, **extra: Any) -> None:
    facts = {
        "stage": stage,
        "modules": sorted(m for m in HEAVY if m in sys.modules),
        "workers": speech_workers(),
        "version": app.state.dialplans.version,
        **extra,
    }
    print(json.dumps(facts), flush=True)


async def call_and_listen(url: str) -> float:
    from tests.helpers.e2e import place_call

    caller = await place_call(url)
    try:
        heard_at = await caller.wait_speech(caller.started_at, timeout=20)
        return heard_at - caller.started_at
    finally:
        await caller.twilio.stop()
        await caller.twilio.close()


def main(plans: Path, data: Path) -> int:
    from bridge.app import create_app
    from bridge.settings import Settings
    from tests.helpers.servers import serve

    def make(port: int) -> Any:
        settings = Settings(port=port, dialplans=plans, data_dir=data, openai_api_key="sk-test")
        return create_app(settings, preload_models=True)

    with serve(make) as (url, app):
        report("started", app)
        (plans / "main.yaml").write_text(LOCAL_PLAN)
        deadline = time.monotonic() + 180
        while app.state.dialplans.version < 2:  # swapped in once what it needs has started
            if time.monotonic() > deadline:
                report("reload_timeout", app)
                return 1
            time.sleep(0.2)
        report("reloaded", app)
        heard_after_s = asyncio.run(call_and_listen(url))
        report("called", app, heard_after_s=heard_after_s)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("BRIDGE_LOG_LEVEL", "warning")
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
