"""Scale-out figures (docs/cluster.md): what the shared state in Redis costs and how it behaves when
Redis is gone. Real processes on 127.0.0.1: `redis-server` (Debian) and `python -m bridge serve`.

1. One bridge without Redis, then bridge A of a two-instance cluster: sequential `POST /twilio/voice`
   latency, and stream start (media `start` sent -> first audio frame from the bridge), p50/p99.
2. Control messages between instances: a status callback posted to B closing the stream held by A,
   and an operator hang-up sent to B ending A's call (request sent -> stream closed at the caller).
3. Redis down: killed (connection refused) and hung (SIGSTOP: only the 250 ms timeouts answer):
   webhook latency on A meanwhile, then the time from Redis back to both instances shared again.

Run: `.venv/bin/python -m bench cluster` (writes bench/results/cluster.md; about a minute and a half).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import wave
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import numpy as np

from bench._proc import stop_bridge
from bridge.tools.twilio_media import MediaStreamClient

RESULTS = Path(__file__).parent / "results" / "cluster.md"
ADMIN = "bench-admin-token-0123456789"
SECRET = "bench-stream-secret-0123456789"
WEBHOOKS = 200
STREAMS = 30
CONTROLS = 15


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Redis:
    def __init__(self, root: Path) -> None:
        self.port = _free_port()
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            args, cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def _bridge(root: Path, name: str, redis: Redis | None) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {
        **os.environ,
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_PORT": str(port),
        "BRIDGE_DIALPLANS": str(root / "plans"),
        "BRIDGE_DATA_DIR": str(root / f"data-{name}"),
        "BRIDGE_INSTANCE_ID": f"bench-{name}",
        "BRIDGE_STREAM_SECRET": SECRET,
        "BRIDGE_ADMIN_TOKEN": ADMIN,
        "BRIDGE_RATE_PER_SOURCE_PER_S": "100000",
        "BRIDGE_RATE_BURST": "100000",
        "BRIDGE_LOG_LEVEL": "WARNING",
    }
    if redis is not None:
        env["BRIDGE_REDIS_URL"] = redis.url
        env["BRIDGE_CLUSTER_MAX_CALLS"] = "1000"  # the admission lease is taken (and measured)
    log = (root / f"{name}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "bridge", "serve"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"bridge {name} did not start: {(root / f'{name}.log').read_text()[-2000:]}")
        time.sleep(0.2)


def _pcts(values_s: list[float]) -> tuple[float, float]:
    ms = np.asarray(values_s) * 1000.0
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _pair(p: tuple[float, float]) -> str:
    return f"{p[0]:.1f} / {p[1]:.1f}"


def _row(what: str, base: tuple[float, float], shared: tuple[float, float]) -> str:
    added = f"{shared[0] - base[0]:+.1f} / {shared[1] - base[1]:+.1f}"
    return f"| {what} | {_pair(base)} | {_pair(shared)} | {added} |"


_seq = [0]


def _sid() -> str:
    _seq[0] += 1
    return f"CA{time.time_ns() & 0xFFFFFFFF:08x}{_seq[0]:024x}"


async def _webhooks(http: httpx.AsyncClient, url: str, n: int = WEBHOOKS) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = await http.post(
            url + "/twilio/voice", data={"CallSid": _sid(), "From": "+15551230000", "To": "+1555"}
        )
        out.append(time.perf_counter() - t)
        assert "<Stream" in r.text, r.text
    return out


async def _open_call(
    http: httpx.AsyncClient, url: str, stream_on: str | None = None
) -> tuple[MediaStreamClient, float]:
    """Webhook, then the stream (on `stream_on` if given); returns the client and the time from
    `start` sent to the first audio frame received."""
    sid = _sid()
    r = await http.post(url + "/twilio/voice", data={"CallSid": sid, "From": "+15551230000", "To": "+1555"})
    stream = ET.fromstring(r.text).find("./Connect/Stream")
    assert stream is not None, r.text
    params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    ws_url = (stream_on or url).replace("http", "ws", 1) + "/twilio/media"
    client = MediaStreamClient(ws_url, call_sid=sid, custom_parameters=params)
    await client.open()
    t = time.perf_counter()
    await client.start()
    while not client.messages("media"):
        await asyncio.sleep(0.001)
        if time.perf_counter() - t > 10:
            raise RuntimeError("no audio within 10 s")
    return client, time.perf_counter() - t


async def _stream_starts(http: httpx.AsyncClient, url: str) -> list[float]:
    out = []
    for _ in range(STREAMS):
        client, took = await _open_call(http, url)
        out.append(took)
        await client.stop()
        await client.close()
    return out


async def _closed_after(client: MediaStreamClient, sent: float) -> float:
    while client.closed_at is None:
        await asyncio.sleep(0.001)
        if time.perf_counter() - sent > 10:
            raise RuntimeError("the stream was not closed")
    return time.perf_counter() - sent


async def _controls(http: httpx.AsyncClient, a: str, b: str) -> tuple[list[float], list[float]]:
    status, hangup = [], []
    for _ in range(CONTROLS):
        client, _ = await _open_call(http, a)
        await asyncio.sleep(0.1)
        sent = time.perf_counter()
        await http.post(b + "/twilio/status", data={"CallSid": client.call_sid, "CallStatus": "completed"})
        status.append(await _closed_after(client, sent))
        await client.close()
        client, _ = await _open_call(http, a)
        await asyncio.sleep(0.1)
        sent = time.perf_counter()
        r = await http.post(
            f"{b}/console/live/{client.call_sid}/hangup",
            data={"x": "1"},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert r.status_code == 303, r.text
        hangup.append(await _closed_after(client, sent))
        await client.close()
    return status, hangup


async def _until_shared(http: httpx.AsyncClient, urls: list[str]) -> float:
    t = time.perf_counter()
    while True:
        states = [(await http.get(u + "/healthz")).json()["cluster"]["redis"] for u in urls]
        if all(s == "up" for s in states):
            return time.perf_counter() - t
        await asyncio.sleep(0.02)
        if time.perf_counter() - t > 30:
            raise RuntimeError("no recovery in 30 s")


async def _run(root: Path) -> list[str]:
    rows: list[str] = []
    async with httpx.AsyncClient(timeout=10) as http:
        proc, solo = _bridge(root, "solo", None)
        try:
            await _webhooks(http, solo, 20)  # warm-up
            base_hooks = _pcts(await _webhooks(http, solo))
            base_streams = _pcts(await _stream_starts(http, solo))
        finally:
            stop_bridge(proc)
        redis = Redis(root)
        redis.start()
        pa, a = _bridge(root, "a", redis)
        pb, b = _bridge(root, "b", redis)
        try:
            await _webhooks(http, a, 20)
            hooks = _pcts(await _webhooks(http, a))
            streams = _pcts(await _stream_starts(http, a))
            rows += [
                _row(f"`POST /twilio/voice`, sequential ({WEBHOOKS}): p50 / p99", base_hooks, hooks),
                _row(f"stream `start` -> first audio frame ({STREAMS}): p50 / p99", base_streams, streams),
            ]
            status, hangup = await _controls(http, a, b)
            s50, s99 = _pcts(status)
            h50, h99 = _pcts(hangup)
            control_rows = [
                f"| status callback `completed` posted to B -> A's stream closed ({CONTROLS}) "
                f"| {s50:.1f} | {s99:.1f} |",
                f"| operator hang-up sent to B -> A's call closed ({CONTROLS}) | {h50:.1f} | {h99:.1f} |",
            ]
            # Redis killed: connection refused.
            held, _ = await _open_call(http, a)
            redis.kill()
            killed_at = time.perf_counter()
            first_t = time.perf_counter()
            await _webhooks(http, a, 1)
            first_dead = (time.perf_counter() - first_t) * 1000
            dead = _pcts(await _webhooks(http, a))
            dead_streams = _pcts(await _stream_starts(http, a))
            still_up = held.closed_at is None
            redis.start()
            recover_killed = await _until_shared(http, [a, b])
            down_s = time.perf_counter() - killed_at
            # Redis hung: SIGSTOP, every command waits for its timeout (250 ms) until the link is down.
            assert redis.proc is not None
            await asyncio.sleep(3)  # let the heartbeats see it healthy
            redis.proc.send_signal(signal.SIGSTOP)
            first_t = time.perf_counter()
            await _webhooks(http, a, 1)
            first_hung = (time.perf_counter() - first_t) * 1000
            hung = _pcts(await _webhooks(http, a))
            redis.proc.send_signal(signal.SIGCONT)
            recover_hung = await _until_shared(http, [a, b])
            await held.stop()
            await held.close()
            failure_rows = [
                f"| Redis killed: first webhook on A (finds it refused, degrades) | {first_dead:.1f} ms |",
                f"| Redis killed: webhooks on A afterwards ({WEBHOOKS}), p50 / p99 | {_pair(dead)} ms |",
                f"| Redis killed: stream start on A ({STREAMS}), p50 / p99 | {_pair(dead_streams)} ms |",
                f"| call held on A through the outage | {'still up' if still_up else 'DROPPED'} |",
                f"| Redis back (restarted empty after {down_s:.1f} s) -> both instances shared again "
                f"| {recover_killed * 1000:.0f} ms |",
                f"| Redis hung (SIGSTOP): first webhook on A (waits for the 250 ms timeout) "
                f"| {first_hung:.1f} ms |",
                f"| Redis hung: webhooks on A afterwards ({WEBHOOKS}), p50 / p99 | {_pair(hung)} ms |",
                f"| Redis resumed (SIGCONT) -> both instances shared again | {recover_hung * 1000:.0f} ms |",
            ]
        finally:
            stop_bridge(pa)
            stop_bridge(pb)
            redis.kill()
    return [
        "| figure | without Redis | with Redis (2 instances) | added |",
        "|---|---|---|---|",
        *rows,
        "",
        "Control messages between instances (ms):",
        "",
        "| path | p50 | p99 |",
        "|---|---|---|",
        *control_rows,
        "",
        "Redis unavailable:",
        "",
        "| figure | value |",
        "|---|---|",
        *failure_rows,
    ]


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    (root / "plans").mkdir()
    t = np.arange(8000 * 30) / 8000.0
    with wave.open(str(root / "tone.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes((6000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes())
    (root / "plans" / "main.yaml").write_text(
        f"numbers: {{default: main}}\nflows:\n  main:\n    - play: {root / 'tone.wav'}\n    - hang_up: {{}}\n"
    )
    load = os.getloadavg()[0]
    started = time.monotonic()
    table = asyncio.run(_run(root))
    took = time.monotonic() - started
    text = "\n".join(
        [
            "# Scale-out: shared state in Redis",
            "",
            "`python -m bridge serve` processes and one `redis-server` (Debian, no persistence) on 127.0.0.1;"
            " a dialplan that plays a tone (no speech model in the call path). Latencies are measured by one"
            " client in the bench process, requests one after another. Shared-state work per webhook: the"
            " cluster token bucket (one Lua call), the cluster admission look (ZCOUNT) and the call facts"
            " (SET); per stream start: token SET NX, admission lease (Lua), directory claim (SET NX) and"
            " the call facts (GET); per stream end: lease and directory release."
            f" 2 CPUs, 1-min load average at start {load:.2f} (other engineers' work shares the machine);"
            f" the run took {took:.0f} s.",
            "",
            *table,
            "",
            "Command: `.venv/bin/python -m bench cluster`",
            "",
        ]
    )
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
