"""Real SIP peers for the SIP leg tests, started by the tests on 127.0.0.1 (free ports).

SIPp (`sip-tester`), Kamailio and baresip come from Debian packages (`make sysdeps` installs them,
scripts/sysdeps.txt lists them); a missing one fails the test that needs it, naming the package
(tests/helpers/sysdeps.py: it skips only where packages cannot be installed). Scenario and config
templates live in tests/sip/peers/; `@PLACEHOLDER@`s are filled in per run (SIPp caches `rtp_stream`
files when it parses the scenario, so the WAV path must be literal in the XML).
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.telephony.sip.service import DEFAULT_RTP_PORTS
from tests.helpers.sysdeps import asterisk_sound, require_binary, require_file

PEERS = Path(__file__).parent / "peers"
DTMF_PCAP = Path("/usr/share/sip-tester/dtmf_2833_1.pcap")  # sip-tester's RFC 2833 capture of the digit 1


def dtmf_pcap() -> Path:
    return require_file(DTMF_PCAP)


@pytest.fixture(scope="session")
def speech_ulaw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Real recorded speech (Asterisk prompts): a µ-law WAV for SIPp and the 16-bit source."""
    sox = require_binary("sox")
    src = asterisk_sound("demo-congrats")
    out = tmp_path_factory.mktemp("audio")
    pcm = out / "caller16.wav"
    ulaw = out / "caller_ulaw.wav"
    subprocess.run(
        [sox, str(src), "-r", "8000", "-c", "1", "-b", "16", str(pcm), "trim", "0", "8"], check=True
    )
    subprocess.run([sox, str(pcm), "-t", "wav", "-e", "u-law", "-b", "8", str(ulaw)], check=True)
    return ulaw, pcm


def render(template: str, dest: Path, **subs: object) -> Path:
    text = (PEERS / template).read_text()
    for key, value in subs.items():
        text = text.replace(f"@{key}@", str(value))
    left = re.findall(r"@[A-Z_]+@", text)
    assert not left, f"unfilled placeholders {left} in {template}"
    dest.write_text(text)
    return dest


@dataclass
class SippResult:
    returncode: int
    stdout: str
    stderr: str
    errors: str


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# Above the bridge's own RTP range (a SIP service started with its defaults takes ports there) and
# below Linux's ephemeral range (32768-60999), where no bind(0) lands.
MEDIA_PORTS = range(DEFAULT_RTP_PORTS[1] + 4, 32000, 4)


def free_media_ports(host: str = "127.0.0.1") -> int:
    """A base port for SIPp's `-mp`: SIPp binds the base and the next three (audio RTP/RTCP, video
    RTP/RTCP), so all four must be free. A base from the ephemeral range could see the +2 taken by
    another socket's bind(0) (the bridge's own RTP port) between our check and SIPp's bind."""
    for base in random.sample(MEDIA_PORTS, 50):
        socks: list[socket.socket] = []
        try:
            for offset in range(4):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((host, base + offset))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise RuntimeError(f"no four free UDP ports in {MEDIA_PORTS} on {host}")


async def run_sipp(
    scenario: Path,
    target_port: int,
    *,
    calls: int = 1,
    rate: int = 10,
    timeout_s: int = 40,
    service: str = "bridge",
    workdir: Path,
    local_ip: str = "127.0.0.1",
) -> SippResult:
    """SIPp against 127.0.0.1:`target_port`, its signalling and media bound to `local_ip` (any
    127/8 address on Linux loopback: a second host for trust tests)."""
    sipp = require_binary("sipp")
    port = free_udp_port(local_ip)
    media = free_media_ports(local_ip)
    args = [
        sipp,
        f"127.0.0.1:{target_port}",
        "-sf",
        str(scenario),
        "-s",
        service,
        "-i",
        local_ip,
        "-p",
        str(port),
        "-mi",
        local_ip,
        "-mp",
        str(media),
        "-m",
        str(calls),
        "-l",
        str(calls),
        "-r",
        str(rate),
        "-nostdin",
        "-timeout",
        f"{timeout_s}s",
        "-timeout_error",
        "-trace_err",
        "-error_file",
        str(workdir / "sipp_errors.log"),
        "-max_recv_loops",
        "1000",
    ]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(workdir)
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s + 15)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
    errors = (workdir / "sipp_errors.log").read_text() if (workdir / "sipp_errors.log").exists() else ""
    return SippResult(
        proc.returncode if proc.returncode is not None else -1,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
        errors,
    )


@dataclass
class Kamailio:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="session")
def kamailio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    binary = require_binary("kamailio")
    run = tmp_path_factory.mktemp("kamailio")
    port = free_udp_port()
    cfg = render("kamailio.cfg.in", run / "kamailio.cfg", KAMAILIO_PORT=port)
    log = run / "kamailio.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [
                binary,
                "-f",
                str(cfg),
                "-P",
                str(run / "kamailio.pid"),
                "-DD",
                "-E",
                "-Y",
                str(run),
                "-w",
                str(run),
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    # ready when it answers an OPTIONS keep-alive
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    probe.settimeout(0.2)
    me = probe.getsockname()[1]
    msg = (
        f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bKprobe\r\n"
        f"From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1:{port}>\r\nCall-ID: probe\r\n"
        "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    ok = False
    for _ in range(50):
        if proc.poll() is not None:
            break
        try:
            probe.sendto(msg, ("127.0.0.1", port))
            probe.recv(4096)
            ok = True
            break
        except OSError:
            continue
    probe.close()
    if not ok:
        proc.kill()
        pytest.fail(f"kamailio did not start: {log.read_text()[-2000:]}")
    yield Kamailio(port, proc, log)
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
