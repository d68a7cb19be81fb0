"""Real `ivr-bridge serve` processes on 127.0.0.1 for the deployment tests (each on its own ports)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers.servers import bind_ephemeral

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def free_tcp_port() -> int:
    sock = bind_ephemeral()
    port = int(sock.getsockname()[1])
    sock.close()
    return port


@dataclass
class BridgeProcess:
    name: str
    proc: asyncio.subprocess.Process
    url: str
    log: Path

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    async def healthz(self) -> dict[str, object]:
        async with httpx.AsyncClient() as http:
            r = await http.get(self.url + "/healthz", timeout=5)
        r.raise_for_status()
        body: dict[str, object] = r.json()
        return body

    async def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
        async with httpx.AsyncClient() as http:
            r = await http.get(self.url + "/metrics", timeout=5)
        r.raise_for_status()
        total = 0.0
        for line in r.text.splitlines():
            m = re.match(r"^([a-z_:]+)(?:\{(.*)\})? (\S+)$", line)
            if m is None or m.group(1) != name:
                continue
            have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
        return total

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.proc.wait(), 1)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def start_bridge(workdir: Path, name: str, dialplans: Path, **env: str) -> BridgeProcess:
    """`python -m bridge serve` with its own port, data directory and log; the caller sets the rest."""
    run = workdir / name
    run.mkdir(parents=True, exist_ok=True)
    port = free_tcp_port()
    environ = {
        **os.environ,
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_PORT": str(port),
        "BRIDGE_DIALPLANS": str(dialplans),
        "BRIDGE_DATA_DIR": str(run / "data"),
        "BRIDGE_LOG_LEVEL": "INFO",
        **env,
    }
    log = run / "bridge.log"
    with log.open("wb") as fh:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "serve", env=environ, stdout=fh, stderr=fh, cwd=str(REPO)
        )
    return BridgeProcess(name, proc, f"http://127.0.0.1:{port}", log)


async def wait_ready(bridge: BridgeProcess, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as http:
        while True:
            assert bridge.proc.returncode is None, f"{bridge.name} exited:\n{bridge.tail()}"
            try:
                if (await http.get(bridge.url + "/readyz", timeout=5)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{bridge.name} did not become ready:\n{bridge.tail()}"
            await asyncio.sleep(0.3)
