"""Two real `ivr-bridge serve` processes (A and B, different ports) sharing one real `redis-server`,
all on 127.0.0.1, started once for the module (each start loads the speech models: seconds)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers.redis_server import RedisServer
from tests.helpers.servers import bind_ephemeral

ADMIN_TOKEN = "cluster-admin-token-0123456789"
STREAM_SECRET = "cluster-stream-secret-0123456789"
CLUSTER_MAX_CALLS = 2
TONE_S = 90.0


def write_tone(path: Path, freq_hz: float, seconds: float = TONE_S) -> None:
    t = np.arange(int(8000 * seconds)) / 8000.0
    pcm = (6000 * np.sin(2 * np.pi * freq_hz * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm.tobytes())


def plan_yaml(tone_file: str) -> str:
    return f"""
numbers: {{default: main}}
defaults: {{transfer_to: "+15550001111"}}
flows:
  main:
    - play: {tone_file}
    - hang_up: {{}}
"""


@dataclass
class Bridge:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def healthz(self) -> dict[str, object]:
        r = httpx.get(self.url + "/healthz", timeout=5)
        r.raise_for_status()
        body: dict[str, object] = r.json()
        return body

    def cluster(self) -> dict[str, object]:
        value = self.healthz()["cluster"]
        assert isinstance(value, dict)
        return value

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when absent)."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@dataclass
class Pair:
    redis: RedisServer
    a: Bridge
    b: Bridge
    plans: Path
    extra: list[Bridge] = field(default_factory=list)


def start_bridge(name: str, root: Path, redis: RedisServer, plans: Path) -> Bridge:
    sock = bind_ephemeral()
    port = sock.getsockname()[1]
    sock.close()
    env = {
        **os.environ,
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_PORT": str(port),
        "BRIDGE_DIALPLANS": str(plans),
        "BRIDGE_DATA_DIR": str(root / f"data-{name}"),
        "BRIDGE_REDIS_URL": redis.url,
        "BRIDGE_INSTANCE_ID": f"bridge-{name}",
        "BRIDGE_STREAM_SECRET": STREAM_SECRET,
        "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN,
        "BRIDGE_CLUSTER_MAX_CALLS": str(CLUSTER_MAX_CALLS),
        "BRIDGE_RATE_PER_SOURCE_PER_S": "1000",
        "BRIDGE_RATE_BURST": "1000",
    }
    log = root / f"bridge-{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve"], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    return Bridge(name, f"http://127.0.0.1:{port}", proc, log)


def wait_ready(bridge: Bridge, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert bridge.proc.poll() is None, bridge.log_tail()
        try:
            if httpx.get(bridge.url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"bridge {bridge.name} not ready: {bridge.log_tail()}"
        time.sleep(0.2)


def stop(bridge: Bridge) -> None:
    if bridge.proc.poll() is None:
        bridge.proc.send_signal(signal.SIGINT)
        bridge.proc.send_signal(signal.SIGINT)  # the second signal: exit now, no drain
        try:
            bridge.proc.wait(15)
        except subprocess.TimeoutExpired:
            bridge.proc.kill()
            bridge.proc.wait()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("cluster")
    plans = root / "plans"
    plans.mkdir()
    write_tone(root / "v1.wav", 440.0)
    write_tone(root / "v2.wav", 880.0)
    (plans / "main.yaml").write_text(plan_yaml(str(root / "v1.wav")))
    redis = RedisServer()
    redis.start()
    a = start_bridge("a", root, redis, plans)
    b = start_bridge("b", root, redis, plans)
    try:
        wait_ready(a)
        wait_ready(b)
        yield Pair(redis, a, b, plans)
    finally:
        stop(a)
        stop(b)
        redis.kill()
