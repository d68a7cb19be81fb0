"""SIP leg figures: RTP send timing (ours vs pyVoIP 1.6.8's own sender), round-trip SNR (ours vs
pyVoIP's 8-bit path), CPU per call with 10 and 50 concurrent SIPp calls, barge-in clear -> silence.

Run: .venv/bin/python -m bench sip    (needs sipp for the CPU rows; ~2.5 minutes)
Writes bench/results/sip.md.
"""

from __future__ import annotations

import asyncio
import audioop
import itertools
import math
import os
import resource
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import wave
from pathlib import Path

import numpy as np

from bridge.settings import Settings
from bridge.telephony.leg import CallStarted
from bridge.telephony.rtp.endpoint import RtpEndpoint, open_rtp
from bridge.telephony.rtp.jitter import RtpReceiver
from bridge.telephony.rtp.packet import parse_packet
from bridge.telephony.rtp.sender import RtpSender
from bridge.telephony.rtp.ticker import ticker_for_loop
from bridge.telephony.sip.leg import SipLeg
from bridge.telephony.sip.service import start_sip
from tests.helpers.sysdeps import ASTERISK_SOUNDS

RESULTS = Path(__file__).parent / "results" / "sip.md"
SPEECH = ASTERISK_SOUNDS / "demo-congrats.wav"  # asterisk-core-sounds-en-wav (scripts/sysdeps.txt)
TIMING_S = 20.0


class Sink:
    """A UDP receiver in its own thread stamping arrivals with time.monotonic()."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.arrivals: list[tuple[float, bytes]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            self.arrivals.append((time.monotonic(), data))

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


def timing_row(name: str, arrivals: list[tuple[float, bytes]]) -> str:
    times = [t for t, _ in arrivals]
    stamps = [parse_packet(d).timestamp for _, d in arrivals]
    intervals = [(b - a) * 1000 for a, b in itertools.pairwise(times)]
    media_s = ((stamps[-1] - stamps[0]) & 0xFFFFFFFF) / 8000.0
    wall_s = times[-1] - times[0]
    drift_ms_min = (wall_s - media_s) / wall_s * 60_000
    jitter = 0.0
    for i in range(1, len(times)):
        d = abs((times[i] - times[i - 1]) * 8000 - ((stamps[i] - stamps[i - 1]) & 0xFFFFFFFF))
        jitter += (d - jitter) / 16
    p99 = sorted(intervals)[int(len(intervals) * 0.99)]
    mean, stdev = statistics.mean(intervals), statistics.pstdev(intervals)
    return (
        f"| {name} | {len(arrivals)} | {mean:.3f} | {stdev:.2f} "
        f"| {p99:.2f} | {max(intervals):.1f} | {jitter / 8:.2f} | {drift_ms_min:+.1f} |"
    )


async def ours_timing() -> str:
    loop = asyncio.get_running_loop()
    sink = Sink()
    sender = RtpSender("pcmu", 0)
    ep = RtpEndpoint(
        RtpReceiver("pcmu", 0, None, ("127.0.0.1", sink.port)),
        sender,
        lambda f: None,
        lambda d: None,
        lambda m: None,
        loop.time,
    )
    await open_rtp("127.0.0.1", None, ep)
    ticker_for_loop().add(ep)
    await asyncio.sleep(TIMING_S)
    ticker_for_loop().remove(ep)
    await asyncio.sleep(0.1)
    ep.close()
    sink.close()
    return timing_row("ivr-bridge RtpTicker (asyncio, absolute deadlines)", sink.arrivals)


def pyvoip_timing() -> str:
    import pyVoIP.VoIP  # noqa: F401 - import order
    from pyVoIP import RTP

    sink = Sink()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = RTP.RTPClient(
        {0: RTP.PayloadType.PCMU}, "127.0.0.1", port, "127.0.0.1", sink.port, RTP.TransmitType.SENDRECV
    )
    client.start()
    client.write(b"\x80" * int(8000 * (TIMING_S + 2)))
    time.sleep(TIMING_S)
    client.stop()
    time.sleep(0.1)
    sink.close()
    return timing_row("pyVoIP 1.6.8 RTPClient (thread, sleep(20 ms - work))", sink.arrivals)


def snr_rows() -> list[str]:
    with wave.open(str(SPEECH)) as w:
        pcm = w.readframes(w.getnframes())
    ref = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    ulaw = audioop.lin2ulaw(pcm, 2)

    def snr(test: bytes) -> float:
        t = np.frombuffer(test, dtype=np.int16).astype(np.float64)
        return 10 * math.log10(float(np.sum(ref**2)) / float(np.sum((ref - t) ** 2)))

    ours = audioop.ulaw2lin(ulaw, 2)  # the bridge passes G.711 bytes through (bit-exact, tested)
    eight = audioop.lin2lin(audioop.ulaw2lin(ulaw, 1), 1, 2)  # pyVoIP: u-law -> 8-bit linear -> app
    return [
        f"| ivr-bridge (G.711 bytes kept, 16-bit decode) | {snr(ours):.1f} |",
        f"| pyVoIP 1.6.8 read_audio() (8-bit linear) | {snr(eight):.1f} |",
    ]


async def cpu_per_call(n: int, talk_ms: int = 10_000) -> str:
    """n concurrent SIPp callers streaming speech, each echoed back by the leg."""
    from tests.sip.conftest import free_udp_port

    async def echo(leg: SipLeg) -> None:
        async for event in leg.events():
            payload = getattr(event, "payload", None)
            if payload is not None:
                await leg.send_audio(payload)
            elif isinstance(event, CallStarted):
                continue

    settings = Settings(sip_server="127.0.0.1", sip_user="bridge", sip_local_port=free_udp_port())
    svc = await start_sip(settings, echo, bind_host="127.0.0.1", rtp_ports=None)
    with tempfile.TemporaryDirectory() as tmp:
        ulaw = Path(tmp) / "u.wav"
        sox = await asyncio.create_subprocess_exec(
            "sox", str(SPEECH), "-t", "wav", "-e", "u-law", "-b", "8", str(ulaw)
        )
        await sox.wait()
        text = (Path(__file__).parent.parent / "tests/sip/peers/uac_stream.xml").read_text()
        scen = Path(tmp) / "s.xml"
        scen.write_text(text.replace("@CALLER_ULAW_WAV@", str(ulaw)).replace("@TALK_MS@", str(talk_ms)))
        proc = await asyncio.create_subprocess_exec(
            "sipp",
            f"127.0.0.1:{svc.port}",
            "-sf",
            str(scen),
            "-s",
            "bridge",
            "-i",
            "127.0.0.1",
            "-p",
            str(free_udp_port()),
            "-mi",
            "127.0.0.1",
            "-mp",
            str(free_udp_port()),
            "-m",
            str(n),
            "-l",
            str(n),
            "-r",
            str(n),
            "-nostdin",
            "-timeout",
            "60s",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=tmp,
        )
        # measure the steady state: all calls up, 6 s window
        for _ in range(300):
            if svc.status()["calls_active"] >= n:
                break
            await asyncio.sleep(0.05)
        active = svc.status()["calls_active"]
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        await asyncio.sleep(6.0)
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        rc = await proc.wait()
    status = svc.status()
    await svc.stop()
    cpu = (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / (t1 - t0) * 100
    return (
        f"| {n} | {active} | {cpu:.1f} % | {cpu / max(active, 1):.2f} % | "
        f"{status['calls_total']} answered, SIPp exit {rc} |"
    )


async def barge_in_rows(trials: int = 20) -> str:
    loop = asyncio.get_running_loop()
    sink = Sink()
    sender = RtpSender("pcmu", 0)
    ep = RtpEndpoint(
        RtpReceiver("pcmu", 0, None, ("127.0.0.1", sink.port)),
        sender,
        lambda f: None,
        lambda d: None,
        lambda m: None,
        loop.time,
    )
    leg = SipLeg(CallStarted("c", "s"), sender, control=None)  # type: ignore[arg-type]
    await open_rtp("127.0.0.1", None, ep)
    ticker_for_loop().add(ep)
    speech = b"\x10" * 160
    delays: list[float] = []
    for _ in range(trials):
        for _ in range(100):
            await leg.send_audio(speech)
        await asyncio.sleep(0.3 + (len(delays) % 7) * 0.003)
        t_clear = time.monotonic()
        await leg.clear()
        await asyncio.sleep(0.1)
        silent = [t for t, d in sink.arrivals if t > t_clear and parse_packet(d).payload != speech]
        delays.append((silent[0] - t_clear) * 1000)
        sink.arrivals.clear()
    ticker_for_loop().remove(ep)
    ep.close()
    sink.close()
    delays.sort()
    return (
        f"| clear() -> first silent RTP packet on the wire | {statistics.mean(delays):.1f} ms | "
        f"{delays[len(delays) // 2]:.1f} ms | {delays[-1]:.1f} ms |"
    )


def main() -> None:
    load = os.getloadavg()
    rows_t = [asyncio.run(ours_timing()), pyvoip_timing()]
    rows_snr = snr_rows()
    barge = asyncio.run(barge_in_rows())
    rows_cpu = []
    if subprocess.run(["which", "sipp"], capture_output=True).returncode == 0:
        rows_cpu = [asyncio.run(cpu_per_call(10)), asyncio.run(cpu_per_call(50))]
    out = [
        "# SIP leg benchmarks",
        "",
        f"`python -m bench sip`, 2 vCPU VM, loopback. Load average at start: {load[0]:.2f} / {load[1]:.2f} "
        "(other engineers' builds and tests were running; figures may be disturbed by that).",
        "",
        f"## RTP send timing ({TIMING_S:.0f} s each; drift = wall clock minus RTP media time, per minute)",
        "",
        "| sender | packets | mean interval (ms) | stdev (ms) | p99 (ms) | max (ms) | RFC 3550 jitter (ms) "
        "| drift (ms/min) |",
        "|---|---|---|---|---|---|---|---|",
        *rows_t,
        "",
        "## Round-trip SNR of caller speech (demo-congrats.wav, 30 s, vs the 16-bit original)",
        "",
        "| path | SNR (dB) |",
        "|---|---|",
        *rows_snr,
        "",
        "The peer test `test_caller_speech_and_dtmf_reach_the_leg` checks that the bridge's received frames "
        "are bit-identical to the µ-law SIPp sent, so the first row is the G.711 limit itself.",
        "",
        "## Barge-in: `leg.clear()` -> RTP silence (20 trials)",
        "",
        "| measure | mean | median | max |",
        "|---|---|---|---|",
        barge,
        "",
        "## CPU of the bridge process per concurrent call (SIPp callers streaming speech, echoed back)",
        "",
        "| calls | active in window | process CPU (% of one core) | per call | notes |",
        "|---|---|---|---|---|",
        *(rows_cpu or ["| - | - | - | - | sipp not installed |"]),
        "",
    ]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(out))
    print("\n".join(out))
