"""SIP load: N concurrent SIPp calls with RTP both ways against the real bridge process; the bridge's
RTP send timing measured at a receiver of ours (issue 12, the SIP goal: >= 200 calls, send jitter
p99 <= 2 ms, every call answered and ended cleanly, 503 beyond BRIDGE_MAX_CALLS).

    .venv/bin/python -m bench load_sip --calls 50,100,200,250 --seconds 30
    .venv/bin/python -m bench load_sip --calls 200 --seconds 30 --profile   # + py-spy (`bench` extra)

Set-up per point (each point is a fresh bridge, so points do not leak into each other):
- the bridge: `python -m bridge serve` (the real app: SIP trunk mode, records, dialplan runner),
  pinned with `taskset -c 0`, BRIDGE_MAX_CALLS = --max-calls (200). Its dialplan plays a long
  recorded prompt (`play`, 8 kHz WAV, barge_in off) for the whole call, so every call sends real
  speech, not comfort silence, from its call pacer through the RTP ticker. No agent: the engine and
  a cloud upstream would measure the websocket/transcoding path (bench/load.py), not SIP;
- the callers: SIPp (`taskset -c 1`) at --rate calls/s up to N at once, each streaming recorded
  speech (rtp_stream, looped) to the bridge for --seconds, then BYE; a 503 is ACKed and counted;
- the receiver: bench/_rtp_receiver.py (`taskset -c 1`): every call's SDP `m=` points at its one
  UDP port. It keeps the kernel's receive timestamp of each packet (SO_TIMESTAMPNS: on loopback the
  packet is stamped inside the bridge's `sendto`, so the figures are the bridge's send timing and
  not this receiver's scheduling) and its own user-space arrival time; the difference is the
  receiver's lag, reported.

Jitter per packet: |arrival delta - 20 ms| between consecutive packets of one stream, pooled over
all streams of the point (p50 / p99 / max); plus the RFC 3550 interarrival jitter of each stream.
Writes bench/results/load_sip.md (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "load_sip.md"
SPEECH = Path("/usr/share/asterisk/sounds/en_US_f_Allison/demo-congrats.wav")  # asterisk-core-sounds-en-wav

DIALPLAN = """
numbers: {default: load}
flows:
  load:
    - play: {file: prompt.wav, barge_in: false}
    - hang_up: {}
"""

SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<!-- bench/load_sip.py: INVITE (SDP media port = the bench's RTP receiver), stream speech for a while,
     BYE. A 503 (admission) is ACKed and ends the call without failure; the bridge counts them. -->
<scenario name="load_sip">
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "sipp" <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio @LISTEN_PORT@ RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15
      a=ptime:20
      a=sendrecv
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="503" optional="true" next="refused"/>
  <recv response="200" rtd="true" rrs="true"/>
  <send>
    <![CDATA[

      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: "sipp" <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <nop><action><exec @STREAM@="@CALLER_WAV@,-1,0"/></action></nop>
  <pause milliseconds="@TALK_MS@"/>
  <nop><action><exec @STREAM@="pause"/></action></nop>
  <send retrans="500">
    <![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: "sipp" <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 9 BYE
      Contact: <sip:sipp@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true" next="end"/>
  <label id="refused"/>
  <send>
    <![CDATA[

      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "sipp" <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <label id="end"/>
</scenario>
"""


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(argv: list[str], cwd: Path, stdout: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=stdout, stderr=subprocess.DEVNULL, cwd=str(cwd))


def wait_or_kill(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    try:
        return proc.wait(max(timeout_s, 1.0))
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def pinned(cpu: str | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if cpu and shutil.which("taskset") else argv


# ---------------------------------------------------------------------------------------------------
# audio


def write_audio(workdir: Path, call_s: float) -> tuple[Path, Path]:
    """The callers' µ-law WAV (for rtp_stream) and the bridge's prompt (16-bit 8 kHz, longer than a call)."""
    import audioop

    with wave.open(str(SPEECH)) as w:
        pcm = w.readframes(w.getnframes())
    caller = workdir / "caller_ulaw.wav"
    ulaw = audioop.lin2ulaw(pcm, 2)
    import struct

    fmt = struct.pack("<HHIIHH", 7, 1, 8000, 8000, 1, 8)  # WAVE_FORMAT_MULAW
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(ulaw)) + ulaw
    caller.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    prompt = workdir / "plans" / "prompt.wav"
    prompt.parent.mkdir(exist_ok=True)
    repeats = int((call_s + 30) * 16000 // len(pcm)) + 1
    with wave.open(str(prompt), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm * repeats)
    (workdir / "plans" / "load.yaml").write_text(DIALPLAN)
    return caller, prompt


# ---------------------------------------------------------------------------------------------------
# the processes


class Bridge:
    """`python -m bridge serve` with SIP in trunk mode (INVITEs from 127.0.0.1), pinned to a core."""

    def __init__(self, workdir: Path, args: argparse.Namespace, profile: Path | None) -> None:
        self.http_port = free_port(socket.SOCK_STREAM)
        self.sip_port = free_port()
        self.mode = args.mode
        self.status_file = workdir / "status.json"
        env = dict(os.environ)
        env.update(
            BRIDGE_DIALPLANS=str(workdir / "plans"),
            BRIDGE_DATA_DIR=str(workdir / "data"),
            BRIDGE_LOG_LEVEL="WARNING",
            BRIDGE_MAX_CALLS=str(args.max_calls),
            SIP_SERVER="127.0.0.1",
            SIP_USER="bridge",
            SIP_LOCAL_PORT=str(self.sip_port),
        )
        env.update(kv.split("=", 1) for kv in args.env)
        if self.mode == "app":
            argv = [
                sys.executable,
                "-m",
                "bridge",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.http_port),
            ]
        else:
            prompt = workdir / "plans" / "prompt.wav"
            argv = [sys.executable, "-m", "bench._sip_leg_server", str(self.sip_port), str(args.max_calls)]
            argv += [str(prompt), str(self.status_file)]
        if profile is not None:
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            argv = [
                spy,
                "record",
                "--nonblocking",
                "-r",
                "100",
                "-f",
                "speedscope",
                "-o",
                str(profile),
                "--",
                *argv,
            ]
        if args.rt:
            argv = ["chrt", "-f", str(args.rt), *argv]
        self.log = (workdir / "bridge.log").open("wb")
        self.proc = subprocess.Popen(
            pinned(args.bridge_cpu, argv), env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=str(ROOT)
        )
        self.profiled = profile is not None
        self.ps: psutil.Process | None = None

    async def sip_status(self, http: httpx.AsyncClient) -> dict[str, Any]:
        if self.mode == "app":
            return dict((await http.get(f"{self.url}/healthz")).json()["sip"])
        try:
            return dict(json.loads(self.status_file.read_text()))
        except (OSError, ValueError):
            return {}

    async def wait_ready(self, http: httpx.AsyncClient) -> None:
        for _ in range(600):
            if self.proc.poll() is not None:
                raise RuntimeError(f"bridge exited with {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await self.sip_status(http)).get("enabled"):
                    break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("bridge did not start")
        me = psutil.Process(self.proc.pid)
        if self.profiled:  # py-spy's child is the bridge
            me = me.children()[0]
        self.ps = me

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def tree(self) -> list[psutil.Process]:
        assert self.ps is not None
        return [self.ps, *self.ps.children(recursive=True)]

    def cpu_s(self) -> float:
        total = 0.0
        for p in self.tree():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def runq_wait_s(self) -> float:
        """Time the bridge's main thread (the event loop) was runnable but waiting for a CPU
        (/proc/PID/schedstat): other processes on its core, not the bridge's own work."""
        assert self.ps is not None
        try:
            return int(Path(f"/proc/{self.ps.pid}/schedstat").read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return float("nan")

    def rss_mb(self) -> float:
        total = 0
        for p in self.tree():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total / 2**20

    def stop(self) -> None:
        if self.ps is not None and self.profiled:
            self.ps.send_signal(signal.SIGTERM)  # py-spy writes its profile once the bridge exits
            with contextlib.suppress(psutil.Error):
                self.ps.wait(5)
            with contextlib.suppress(psutil.Error):
                self.ps.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        else:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                self.proc.wait(10)
        self.log.close()


# ---------------------------------------------------------------------------------------------------
# analysis


@dataclass
class Timing:
    streams: int = 0
    packets: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    rfc_mean_ms: float = float("nan")  # RFC 3550 jitter at the end of each stream, mean over streams
    rfc_max_ms: float = float("nan")  # the largest value the estimate reached in any stream
    gaps_40ms: int = 0
    skips: int = 0  # timestamp jumps (the ticker skipped frames after a stall)
    lost: int = 0  # sequence gaps seen here (receiver socket overflow, or not sent)
    silent_share: float = float("nan")


def analyse(data: dict[str, np.ndarray], clock: str) -> Timing:
    t_ns = data[clock]
    ssrc = data["ssrc"]
    out = Timing()
    devs: list[np.ndarray] = []
    rfc_end: list[float] = []
    rfc_max = 0.0
    keep = t_ns > 0
    out.silent_share = float(np.mean((data["flags"] & 0x200) != 0)) if len(t_ns) else float("nan")
    for s in np.unique(ssrc):
        m = (ssrc == s) & keep
        t = t_ns[m]
        order = np.argsort(t, kind="stable")
        t = t[order].astype(np.float64) / 1e6
        ts = data["ts"][m][order]
        seq = data["seq"][m][order]
        if len(t) < 3:
            continue
        out.streams += 1
        out.packets += len(t)
        dt = np.diff(t)
        dts = ((np.diff(ts) + 2**32) % 2**32).astype(np.float64) / 8.0
        devs.append(np.abs(dt - 20.0))
        out.gaps_40ms += int(np.sum(dt > 40.0))
        out.skips += int(np.sum(dts != 20.0))
        out.lost += int(np.sum(((np.diff(seq) + 65536) % 65536) - 1))
        d = np.abs(dt - dts)
        j = 0.0
        jmax = 0.0
        for x in d:  # RFC 3550 6.4.1 (a few thousand per stream)
            j += (x - j) / 16.0
            jmax = max(jmax, j)
        rfc_end.append(j)
        rfc_max = max(rfc_max, jmax)
    if devs:
        alld = np.concatenate(devs)
        out.p50_ms, out.p99_ms, out.max_ms = (float(v) for v in np.percentile(alld, [50, 99, 100]))
        out.rfc_mean_ms = float(np.mean(rfc_end))
        out.rfc_max_ms = rfc_max
    return out


def receiver_lag(data: dict[str, np.ndarray]) -> tuple[float, float, float]:
    k, u = data["kernel_ns"], data["user_ns"]
    m = k > 0
    if not np.any(m):
        return (float("nan"),) * 3  # type: ignore[return-value]
    lag = (u[m] - k[m]) / 1e6
    p50, p99, mx = np.percentile(lag, [50, 99, 100])
    return float(p50), float(p99), float(mx)


# ---------------------------------------------------------------------------------------------------
# one point


@dataclass
class Point:
    calls: int
    active_peak: int = 0
    answered: int = 0
    refused: int = 0
    sipp_ok: int = 0
    sipp_failed: int = 0
    sipp_rc: int = -1
    cpu_pct: float = float("nan")  # bridge process tree, % of one core, steady window
    cpu_window_s: float = 0.0
    runq_ms_per_s: float = float("nan")  # the event loop thread waiting for its CPU, ms per second
    rss_mb: float = float("nan")  # at the end of the steady window
    rss_idle_mb: float = float("nan")
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    kernel: Timing | None = None
    user: Timing | None = None
    lag: tuple[float, float, float] = (float("nan"),) * 3  # type: ignore[assignment]
    bridge_stats: str = ""


def _sipp_counts(stat_csv: Path) -> tuple[int, int]:
    if not stat_csv.exists():
        return 0, 0
    lines = [ln for ln in stat_csv.read_text().splitlines() if ln.strip()]
    if len(lines) < 2:
        return 0, 0
    head = lines[0].split(";")
    last = lines[-1].split(";")
    row = dict(zip(head, last, strict=False))
    return int(row.get("SuccessfulCall(C)", 0) or 0), int(row.get("FailedCall(C)", 0) or 0)


async def run_point(calls: int, args: argparse.Namespace, profile: Path | None) -> Point:
    point = Point(calls, load=os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="load-sip-") as tmp:
        work = Path(tmp)
        caller_wav, _ = write_audio(work, args.seconds)
        rec_out = work / "rtp.npz"
        receiver = spawn(
            pinned(args.load_cpu, [sys.executable, "-m", "bench._rtp_receiver", str(rec_out)]),
            ROOT,
            subprocess.PIPE,
        )
        assert receiver.stdout is not None
        rec_port = int(receiver.stdout.readline().split()[1])
        scen = work / "load.xml"
        scenario = SCENARIO
        if args.no_caller_audio:
            scenario = "\n".join(line for line in scenario.splitlines() if "@STREAM@" not in line)
        scen.write_text(
            scenario.replace("@LISTEN_PORT@", str(rec_port))
            .replace("@CALLER_WAV@", str(caller_wav))
            .replace("@TALK_MS@", str(int(args.seconds * 1000)))
            .replace("@STREAM@", "rtp_stream")
        )
        bridge = Bridge(work, args, profile)
        sipp: subprocess.Popen[bytes] | None = None
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                await bridge.wait_ready(http)
                await asyncio.sleep(1.0)
                point.rss_idle_mb = bridge.rss_mb()
                sipp_argv = [
                    shutil.which("sipp") or "sipp",
                    f"127.0.0.1:{bridge.sip_port}",
                    "-sf",
                    str(scen),
                    "-s",
                    "load",
                    "-i",
                    "127.0.0.1",
                    "-p",
                    str(free_port()),
                    "-mi",
                    "127.0.0.1",
                    "-mp",
                    str(free_port()),
                    "-m",
                    str(calls),
                    "-l",
                    str(calls),
                    "-r",
                    str(args.rate),
                    "-nostdin",
                    "-timeout",
                    f"{int(args.seconds + calls / args.rate + 60)}s",
                    "-timeout_error",
                    "-trace_stat",
                    "-stf",
                    str(work / "stat.csv"),
                    "-fd",
                    "1",
                    "-trace_err",
                    "-error_file",
                    str(work / "sipp_errors.log"),
                    "-max_recv_loops",
                    "1000",
                ]
                t0 = time.monotonic()
                sipp = spawn(pinned(args.load_cpu, sipp_argv), work, subprocess.DEVNULL)
                # ramp: until every admitted call is up (or the ramp time is over)
                want = min(calls, args.max_calls)
                ramp_end = t0 + calls / args.rate + 3.0
                while time.monotonic() < ramp_end:
                    sip = await bridge.sip_status(http)
                    point.active_peak = max(point.active_peak, sip["calls_active"])
                    if sip["calls_active"] >= want and time.monotonic() > t0 + calls / args.rate:
                        break
                    await asyncio.sleep(0.25)
                # steady window: all calls up, before the first BYE (calls last args.seconds)
                await asyncio.sleep(0.5)
                window_end = t0 + args.seconds - 0.5
                c0, q0, w0 = bridge.cpu_s(), bridge.runq_wait_s(), time.monotonic()
                await asyncio.sleep(max(1.0, window_end - w0))
                c1, q1, w1 = bridge.cpu_s(), bridge.runq_wait_s(), time.monotonic()
                point.runq_ms_per_s = (q1 - q0) / (w1 - w0) * 1000
                point.rss_mb = bridge.rss_mb()
                point.cpu_window_s = w1 - w0
                point.cpu_pct = (c1 - c0) / (w1 - w0) * 100
                sip = await bridge.sip_status(http)
                point.active_peak = max(point.active_peak, sip["calls_active"])
                left_s = t0 + args.seconds + calls / args.rate + 90 - time.monotonic()
                point.sipp_rc = await asyncio.get_running_loop().run_in_executor(
                    None, wait_or_kill, sipp, left_s
                )
                await asyncio.sleep(0.5)
                sip = await bridge.sip_status(http)
                point.answered = sip["calls_total"]
                point.refused = sip["busy"]
                point.bridge_stats = (
                    f"active after: {sip['calls_active']}, rtp streams after: {sip.get('rtp_streams')}"
                    + (f", gc (count, max ms) by generation: {sip['gc_ms']}" if "gc_ms" in sip else "")
                )
                print(point.bridge_stats, flush=True)
        finally:
            if sipp is not None and sipp.poll() is None:
                sipp.kill()
                sipp.wait()
            bridge.stop()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"STOP", ("127.0.0.1", rec_port))
            receiver.wait(60)
        point.sipp_ok, point.sipp_failed = _sipp_counts(work / "stat.csv")
        errors = work / "sipp_errors.log"
        if point.sipp_failed and errors.exists():
            print(errors.read_text()[-2000:], file=sys.stderr)
        if args.keep:
            shutil.copy(rec_out, args.out.with_suffix(f".{calls}.npz"))
        with np.load(rec_out) as npz:
            data = {k: npz[k] for k in npz.files}
        point.kernel = analyse(data, "kernel_ns")
        point.user = analyse(data, "user_ns")
        point.lag = receiver_lag(data)
    return point


# ---------------------------------------------------------------------------------------------------
# report


def row(p: Point) -> str:
    k, u = p.kernel or Timing(), p.user or Timing()
    return (
        f"| {p.calls} | {p.active_peak} | {p.answered} / {p.refused} / {p.sipp_failed} | {p.cpu_pct:.0f} % "
        f"| {p.cpu_pct / max(min(p.active_peak, p.calls), 1):.2f} % | {p.rss_idle_mb:.0f} / {p.rss_mb:.0f} "
        f"| {k.streams} | {k.p50_ms:.3f} | {k.p99_ms:.2f} | {k.max_ms:.1f} "
        f"| {k.rfc_mean_ms:.2f} / {k.rfc_max_ms:.2f} | {k.gaps_40ms} / {k.skips} / {k.lost} "
        f"| {u.p99_ms:.2f} | {p.lag[0]:.2f} / {p.lag[1]:.2f} / {p.lag[2]:.1f} "
        f"| {p.runq_ms_per_s:.0f} | {p.load[0]:.2f} |"
    )


HEADER = [
    "| calls | peak active | answered / 503 / failed | bridge CPU (one core) | per call "
    "| RSS idle / loaded (MB) | streams | jitter p50 (ms) | p99 (ms) | max (ms) | RFC 3550 mean / max (ms) "
    "| gaps>40ms / ts skips / lost | user-space p99 (ms) | receiver lag p50 / p99 / max (ms) "
    "| bridge run-queue wait (ms/s) | load avg |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench load_sip", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--calls", default="50,100,200,250", help="comma-separated sweep (default 50,100,200,250)"
    )
    ap.add_argument("--seconds", type=float, default=30.0, help="call length after answer (default 30)")
    ap.add_argument("--rate", type=float, default=20.0, help="new calls per second (default 20)")
    ap.add_argument("--max-calls", type=int, default=200, help="BRIDGE_MAX_CALLS (default 200)")
    ap.add_argument("--bridge-cpu", default="0", help="taskset core list for the bridge ('' = unpinned)")
    ap.add_argument("--load-cpu", default="1", help="taskset core list for SIPp + receiver ('' = unpinned)")
    ap.add_argument(
        "--rt",
        type=int,
        default=0,
        help="run the bridge under `chrt -f N` (SCHED_FIFO): on a shared box, other tenants' load then does "
        "not show up as the bridge's jitter (nice does not help across autogroups)",
    )
    ap.add_argument(
        "--mode",
        choices=("app", "leg"),
        default="app",
        help="app: the real bridge (`python -m bridge serve`, dialplan playing a prompt); leg: the SIP "
        "service alone (bench/_sip_leg_server.py: SIP + RTP + a pacer per call, no VAD / echo canceller)",
    )
    ap.add_argument("--no-caller-audio", action="store_true", help="callers send no RTP (cost of receiving)")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the bridge (repeatable)")
    ap.add_argument("--profile", action="store_true", help="py-spy the bridge of the largest point")
    ap.add_argument("--keep", action="store_true", help="keep the receiver's raw arrays next to --out")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results file (markdown)")
    ap.add_argument("--label", default="", help="a note for the results line (e.g. the change measured)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    if argv is None and __name__ != "__main__":
        print("bench.load_sip: skipped by `python -m bench` (minutes of load); run: python -m bench load_sip")
        return
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sweep = [int(c) for c in str(args.calls).split(",") if c.strip()]
    if not shutil.which("sipp"):
        raise SystemExit("sipp is not installed (Debian package sip-tester; make sysdeps)")
    points: list[Point] = []
    for n in sweep:
        profile = args.out.with_suffix(f".{n}.speedscope.json") if args.profile and n == max(sweep) else None
        p = asyncio.run(run_point(n, args, profile))
        points.append(p)
        print(row(p), flush=True)
        time.sleep(2.0)
    cmd = "python -m bench load_sip " + " ".join(
        [
            f"--calls {args.calls}",
            f"--seconds {args.seconds:g}",
            f"--rate {args.rate:g}",
            f"--max-calls {args.max_calls}",
        ]
        + ([f"--rt {args.rt}"] if args.rt else [])
        + [f"--mode {args.mode}"]
        + [f"--env {kv}" for kv in args.env]
    )
    block = [
        f"### {time.strftime('%Y-%m-%d %H:%M')} {args.label}".rstrip(),
        "",
        f"`{cmd}`; bridge `taskset -c {args.bridge_cpu}`, SIPp + receiver `taskset -c {args.load_cpu}`; "
        f"load average before each point in the last column ({os.cpu_count()} CPUs).",
        "",
        *HEADER,
        *(row(p) for p in points),
        "",
    ]
    text = "\n".join(block)
    print(text)
    args.out.parent.mkdir(exist_ok=True)
    with args.out.open("a") as fh:
        fh.write("\n" + text)


if __name__ == "__main__":
    main()
