"""The shipped Kamailio dispatcher (deploy/kamailio/dispatcher.cfg, run unmodified) in front of two real
`ivr-bridge serve` processes on 127.0.0.1, SIPp placing calls through it.

Round robin spreads calls over both bridges; then bridge A gets SIGTERM (drain: new INVITEs and OPTIONS
get 503): new calls all land on B (failover on 503 and the OPTIONS probe), the call in progress on A
goes on to its natural end, and A exits 0 once it is over.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.deploy.bridges import DEPLOY, BridgeProcess, start_bridge, wait_ready
from tests.helpers.sysdeps import require_binary, require_file
from tests.sip.conftest import free_media_ports, free_udp_port

pytestmark = [pytest.mark.sip, pytest.mark.slow]

PEERS = Path(__file__).parent / "peers"
DISPATCHER_CFG = DEPLOY / "kamailio" / "dispatcher.cfg"
DISPATCHER_MODULE = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules/dispatcher.so")

DIALPLAN = """
numbers:
  default: main
flows:
  main:
    - menu:
        prompt: "Hello."
        options:
          "1": hang_up
        timeout: 60s
        retries: 0
        no_input: hang_up
"""

HOLD_MS = 14_000  # the calls in progress when A starts draining
DRAIN_S = 60  # longer than HOLD_MS: the drain waits for the call, it is not cut


@dataclass
class Dispatcher:
    port: int
    ctl: str
    proc: subprocess.Popen[bytes]
    log: Path

    def rpc(self, *command: str) -> str:
        kamcmd = require_binary("kamcmd")
        done = subprocess.run(
            [kamcmd, "-s", self.ctl, *command], capture_output=True, text=True, timeout=10, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout


def _options(port: int, me: int) -> bytes:
    return (
        f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bKprobe\r\n"
        f"From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1:{port}>\r\nCall-ID: probe\r\n"
        "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@pytest.fixture
def dispatcher_for(tmp_path: Path) -> Iterator[object]:
    started: list[subprocess.Popen[bytes]] = []

    def start(bridge_sip_ports: list[int], ping_interval_s: int) -> Dispatcher:
        binary = require_binary("kamailio")
        require_file(DISPATCHER_MODULE)
        run = tmp_path / "kamailio"
        run.mkdir()
        listing = run / "dispatcher.list"
        listing.write_text("".join(f"1 sip:127.0.0.1:{p}\n" for p in bridge_sip_ports))
        port = free_udp_port()
        ctl = f"unix:{run / 'ctl.sock'}"
        log = run / "kamailio.log"
        defines = [
            f"LISTEN=udp:127.0.0.1:{port}",
            f'DISPATCHER_LIST="{listing}"',
            f'CTL_SOCKET="{ctl}"',
            f"DS_PING_INTERVAL={ping_interval_s}",
            "CHILDREN=2",
        ]
        args = [binary, "-f", str(DISPATCHER_CFG), "-P", str(run / "pid"), "-DD", "-E", "-Y", str(run)]
        args += ["-w", str(run)]
        for define in defines:
            args += ["-A", define]
        with log.open("wb") as fh:
            proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT)
        started.append(proc)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            probe.settimeout(0.2)
            for _ in range(50):
                assert proc.poll() is None, f"kamailio exited: {log.read_text()[-3000:]}"
                try:
                    probe.sendto(_options(port, probe.getsockname()[1]), ("127.0.0.1", port))
                    if b"SIP/2.0 200" in probe.recv(4096):
                        return Dispatcher(port, ctl, proc, log)
                except OSError:
                    continue
        pytest.fail(f"kamailio did not answer: {log.read_text()[-3000:]}")

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


async def sipp(
    workdir: Path, port: int, *, calls: int, hold_ms: int, name: str, timeout_s: float = 60
) -> tuple[int, str]:
    """SIPp's uac_hold scenario through the dispatcher: `calls` calls at 10/s, each held `hold_ms`."""
    binary = require_binary("sipp")
    run = workdir / name
    run.mkdir()
    args = [binary, f"127.0.0.1:{port}", "-sf", str(PEERS / "uac_hold.xml"), "-s", "bridge"]
    args += ["-i", "127.0.0.1", "-p", str(free_udp_port())]
    args += ["-mi", "127.0.0.1", "-mp", str(free_media_ports())]
    args += ["-m", str(calls), "-l", str(calls), "-r", "10", "-d", str(hold_ms), "-nostdin"]
    args += ["-timeout", f"{int(timeout_s)}s", "-timeout_error", "-trace_err"]
    args += ["-error_file", str(run / "errors.log"), "-max_recv_loops", "1000"]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=str(run)
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s + 15)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
    errors = (run / "errors.log").read_text(errors="replace") if (run / "errors.log").exists() else ""
    text = out.decode(errors="replace")[-2000:] + "\n" + errors[-3000:]
    return (proc.returncode if proc.returncode is not None else -1), text


async def sip_status(bridge: BridgeProcess) -> dict[str, int]:
    sip = (await bridge.healthz())["sip"]
    assert isinstance(sip, dict)
    return {k: int(v) for k, v in sip.items() if isinstance(v, int)}


async def wait_for(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if await predicate():  # type: ignore[operator]
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def inactive(listing: str, port: int) -> bool:
    """Whether `kamcmd dispatcher.list` shows the destination on `port` inactive (flags I or IP)."""
    entry = listing.split(f"sip:127.0.0.1:{port}", 1)[1].split("URI:", 1)[0]
    return "FLAGS: I" in entry


# probe: OPTIONS every second; the test waits until the probe alone has taken A out, then calls.
# failover: no probe during the test; the first new INVITE that goes to A gets 503 and is re-sent to B.
@pytest.mark.parametrize("path", ["probe", "failover"])
async def test_dispatcher_round_robin_and_drain_moves_new_calls_to_the_other_bridge(
    tmp_path: Path, dispatcher_for: object, path: str
) -> None:
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "main.yaml").write_text(DIALPLAN)
    ports = {"a": free_udp_port(), "b": free_udp_port()}
    kamailio_port = free_udp_port()  # the bridges trust 127.0.0.1 (SIP_SERVER): Kamailio and SIPp
    bridges: dict[str, BridgeProcess] = {}
    try:
        for name in ("a", "b"):
            bridges[name] = await start_bridge(
                tmp_path,
                name,
                plans,
                SIP_SERVER="127.0.0.1",
                SIP_PORT=str(kamailio_port),
                SIP_USER="bridge",
                SIP_LOCAL_PORT=str(ports[name]),
                BRIDGE_DRAIN_S=str(DRAIN_S),
            )
        await asyncio.gather(*(wait_ready(b) for b in bridges.values()))
        a, b = bridges["a"], bridges["b"]
        kam = dispatcher_for([ports["a"], ports["b"]], 1 if path == "probe" else 600)  # type: ignore[operator]

        # 1. Round robin: two calls held for HOLD_MS, one on each bridge.
        held = asyncio.create_task(sipp(tmp_path, kam.port, calls=2, hold_ms=HOLD_MS, name="held"))

        async def one_each() -> bool:
            return [(await sip_status(x))["calls_active"] for x in (a, b)] == [1, 1]

        await wait_for(one_each, 15, "one held call on each bridge")
        held_at = time.monotonic()

        # 2. A drains: /readyz 503 at once, its SIP leg refuses new INVITEs (and OPTIONS) with 503.
        a.proc.send_signal(signal.SIGTERM)
        async with httpx.AsyncClient() as http:

            async def a_not_ready() -> bool:
                return (await http.get(a.url + "/readyz", timeout=5)).status_code == 503

            await wait_for(a_not_ready, 5, "A's /readyz to answer 503")
        if path == "probe":

            async def probed_out() -> bool:
                return inactive(kam.rpc("dispatcher.list"), ports["a"])

            await wait_for(probed_out, 5, "the OPTIONS probe to mark A inactive")

        # 3. New calls while A drains: every one is answered, all of them by B.
        b_before = (await sip_status(b))["calls_total"]
        rc, out = await sipp(tmp_path, kam.port, calls=4, hold_ms=500, name="during-drain")
        assert rc == 0, f"calls during the drain failed:\n{out}\n{kam.log.read_text()[-3000:]}"
        a_now, b_now = await sip_status(a), await sip_status(b)
        assert b_now["calls_total"] - b_before == 4, (a_now, b_now)
        assert a_now["calls_total"] == 1, a_now  # only the held call
        assert a_now["calls_active"] == 1, "the call in progress on the draining bridge was cut"
        assert time.monotonic() - held_at < HOLD_MS / 1000, "too slow: the held calls ended meanwhile"

        # The dispatcher has A out of the rotation, by its OPTIONS probe or by the INVITE it refused.
        listing = kam.rpc("dispatcher.list")
        assert inactive(listing, ports["a"]), listing
        assert not inactive(listing, ports["b"]), listing
        refused, probes = a_now["calls_rejected"], a_now["options"]
        print(f"{path}: A refused {refused} INVITE(s) with 503 while draining; answered {probes} OPTIONS")
        if path == "probe":
            assert refused == 0, a_now
            assert probes >= 1, a_now
        else:
            assert refused == 1, a_now  # one 503, then A is marked inactive
            assert probes == 0, a_now
            assert await a.metric("ivr_bridge_admission_rejections_total", leg="sip", reason="draining") == 1

        # 4. The held calls (one on the draining A) run to their end; then A exits 0.
        rc, out = await held
        assert rc == 0, f"a held call failed:\n{out}\n{kam.log.read_text()[-3000:]}"
        exit_code = await asyncio.wait_for(a.proc.wait(), 20)
        assert exit_code == 0, a.tail()
        assert b.proc.returncode is None
        assert (await sip_status(b))["calls_active"] == 0
    finally:
        for bridge in bridges.values():
            await bridge.stop()
