"""Twilio webhook figures: `ivr-bridge serve` in its own process with TWILIO_AUTH_TOKEN set (every
request signature-checked, a stream token issued per call), driven over 127.0.0.1 by 50 concurrent
clients posting signed `POST /twilio/voice` requests, plus forged and oversized ones; then the
rejections are read back from `GET /metrics`.

Run: `.venv/bin/python -m bench twilio_webhooks` (writes bench/results/twilio_webhooks.md).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import numpy as np
import psutil

from bench._proc import stop_bridge

RESULTS = Path(__file__).parent / "results" / "twilio_webhooks.md"
TOKEN = "bench-auth-token"
CONCURRENCY = 50
SIGNED_REQUESTS = 2000
FORGED_REQUESTS = 200
OVERSIZED_REQUESTS = 50


def _sign(url: str, form: dict[str, str]) -> str:
    payload = url + "".join(k + v for k, v in sorted(form.items()))
    return base64.b64encode(hmac.new(TOKEN.encode(), payload.encode(), hashlib.sha1).digest()).decode()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _bursts(base: str, rounds: int = 20) -> dict[str, float]:
    """Twilio's pattern: calls arrive together, each webhook on its own new connection. `rounds`
    bursts of CONCURRENCY signed requests sent at the same instant; latency of each. The client is
    a bare asyncio socket writing a prepared request, so it costs the shared CPUs next to nothing."""
    voice = base + "/twilio/voice"
    host, port = base.removeprefix("http://").split(":")
    latencies: list[float] = []

    def request(i: int) -> bytes:
        form = {"CallSid": f"CC{i:032x}", "From": "+15551234567", "To": "+15550100", "CallerName": ""}
        body = urlencode(form).encode()
        head = (
            f"POST /twilio/voice HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n"
            f"X-Twilio-Signature: {_sign(voice, form)}\r\n\r\n"
        )
        return head.encode() + body

    async def one(raw: bytes) -> None:
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(raw)
        response = await reader.read()  # until the server closes (Connection: close)
        latencies.append(time.perf_counter() - started)
        writer.close()
        assert response.startswith(b"HTTP/1.1 200"), response[:40]

    for n in range(rounds):
        raws = [request(n * CONCURRENCY + i) for i in range(CONCURRENCY)]
        await asyncio.gather(*(one(raw) for raw in raws))
        await asyncio.sleep(0.2)
    ms = np.asarray(latencies) * 1000.0
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "max": float(ms.max())}


async def _run(base: str) -> dict[str, object]:
    voice = base + "/twilio/voice"
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    jobs: asyncio.Queue[tuple[str, dict[str, str], dict[str, str], bytes | None]] = asyncio.Queue()
    for i in range(SIGNED_REQUESTS):
        form = {"CallSid": f"CA{i:032x}", "From": "+15551234567", "To": "+15550100", "CallerName": ""}
        jobs.put_nowait(("signed", form, {"X-Twilio-Signature": _sign(voice, form)}, None))
    for i in range(FORGED_REQUESTS):
        form = {"CallSid": f"CB{i:032x}", "From": "+15551234567", "To": "+15550100"}
        jobs.put_nowait(("forged", form, {"X-Twilio-Signature": _sign(voice + "x", form)}, None))
    for _ in range(OVERSIZED_REQUESTS):
        jobs.put_nowait(
            ("oversized", {}, {"Content-Type": "application/x-www-form-urlencoded"}, b"a=" + b"x" * 200_000)
        )

    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:

        async def worker() -> None:
            while True:
                try:
                    kind, form, headers, raw = jobs.get_nowait()
                except asyncio.QueueEmpty:
                    return
                started = time.perf_counter()
                if raw is None:
                    r = await http.post(voice, data=form, headers=headers)
                else:
                    r = await http.post(voice, content=raw, headers=headers)
                if kind == "signed":
                    latencies.append(time.perf_counter() - started)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        wall = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        wall = time.perf_counter() - wall
        metrics = (await http.get(base + "/metrics")).text
    rejected = {
        m.group(1): float(m.group(2))
        for m in re.finditer(
            r'ivr_bridge_webhook_rejections_total\{route="/twilio/voice",reason="([a-z_]+)"\} (\S+)', metrics
        )
    }
    ms = np.asarray(latencies) * 1000.0
    return {
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "max": float(ms.max()),
        "rps": (SIGNED_REQUESTS + FORGED_REQUESTS + OVERSIZED_REQUESTS) / wall,
        "statuses": statuses,
        "rejected": rejected,
    }


def main() -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "BRIDGE_"))}
    env.update(
        TWILIO_AUTH_TOKEN=TOKEN,
        BRIDGE_PUBLIC_URL=f"http://127.0.0.1:{port}",
        BRIDGE_LOG_LEVEL="ERROR",
        # Every client is on 127.0.0.1: lift the per-source limit (this measures the webhook path).
        BRIDGE_RATE_PER_SOURCE_PER_S="100000",
        BRIDGE_RATE_BURST="1000000",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("bridge did not start")
            time.sleep(0.1)
        load = os.getloadavg()[0]
        bursts = asyncio.run(_bursts(base))
        figures = asyncio.run(_run(base))
    finally:
        stop_bridge(proc)
    rejected = figures["rejected"]
    assert isinstance(rejected, dict)
    lines = [
        "# Twilio webhooks",
        "",
        f"`ivr-bridge serve` (one uvicorn worker, signatures enforced) on 127.0.0.1; "
        f"{CONCURRENCY} concurrent httpx clients in one process on the same CPUs; "
        f"{SIGNED_REQUESTS} signed `POST /twilio/voice`, {FORGED_REQUESTS} forged, "
        f"{OVERSIZED_REQUESTS} oversized (200 kB). {psutil.cpu_count()} CPUs, 1-min load average at start "
        f"{load:.2f} (other engineers' work shares the machine).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| bursts of {CONCURRENCY} simultaneous signed webhooks, each on a new connection (20 bursts): "
        f"p50 / p99 / max | {bursts['p50']:.1f} / {bursts['p99']:.1f} / {bursts['max']:.1f} ms |",
        f"| saturation run ({CONCURRENCY} keep-alive httpx clients back to back), signed p50 "
        f"| {figures['p50']:.1f} ms |",
        f"| saturation run, signed p99 | {figures['p99']:.1f} ms |",
        f"| saturation run, signed max | {figures['max']:.1f} ms |",
        f"| throughput (all requests) | {figures['rps']:.0f} req/s |",
        f"| HTTP statuses | {figures['statuses']} |",
        f"| rejections in /metrics: bad_signature | {rejected.get('bad_signature', 0):.0f} |",
        f"| rejections in /metrics: too_large | {rejected.get('too_large', 0):.0f} |",
        "",
        "Command: `.venv/bin/python -m bench twilio_webhooks`",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))
