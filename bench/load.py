"""Load: concurrent Twilio calls through a real `ivr-bridge serve`, swept until something breaks.

    python -m bench load                                  (defaults below)
    python -m bench load --calls 10,50,100,200 --seconds 30 --formats pcm24k,pcmu,local --peer

For each upstream format and each number of calls: a fresh bridge process (pinned with
`taskset -c 0`), a cloud-agent dialplan pointing at a light stand-in realtime server (this
process, pinned to core 1 with the load generator; `local` uses the embedded engine instead),
callers placed through POST /twilio/voice -> TwiML -> /twilio/media with the TwiML's parameters.
Each caller talks (a real recorded prompt, so the local VAD fires), the stand-in answers each turn
with audio, the callers play what they receive, echo marks, and finally hang up (`stop`) while
bot audio flows. Figures per run: bridge CPU seconds per call-second (process + children), RSS,
bot-frame lateness p50/p99 and underruns at the caller, caller->upstream delay variation p99,
messages after `stop`, turns answered, and the generator's own event-loop lag and CPU.
A format's sweep stops at the first point that breaks (calls refused or dropped, < 95 % of turns
answered, or lateness p99 over the 100 ms lead).

`--peer` runs the plain twilio-samples bridge (speech-assistant-openai-realtime-api-python, MIT)
with the same generator and stand-in at `--peer-calls` (its main.py copied to a temp dir with its
OpenAI URL pointed at the stand-in; the bare repository is read from `--peer-repo`).

Results: bench/results/load.md (or `--out`) and load.svg beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
from scipy.signal import resample_poly

from bench._proc import stop_bridge
from bench.loadgen.callers import FRAME_S, Generator, Script
from bench.loadgen.standin import Reply, Standin, make_reply

RESULTS = Path(__file__).parent / "results" / "load.md"
SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
CALLER_PROMPT = "hello-world"  # 1.4 s of a real voice (asterisk-core-sounds-en-wav)
REPLY_PROMPT = "agent-pass"  # 3.3 s: the bot's answer
PEER_REPO = Path("/work/.mirror/twilio-samples+speech-assistant-openai-realtime-api-python/repo")

AGENT_PLAN = """
numbers: {default: main}
flows:
  main:
    - agent: {provider: openai, instructions: "You are a helpful phone assistant."}
"""
LOCAL_PLAN = """
numbers: {default: main}
flows:
  main:
    - agent:
        provider: local
        instructions: "You are a helpful phone assistant."
        fallback_reply: "Sorry, could you say that again?"
        faq:
          - question: [hello world, hello]
            answer: "Hello! How can I help you today?"
"""


def read_prompt(name: str) -> bytes:
    path = SOUNDS / f"{name}.wav"
    if not path.exists():
        raise SystemExit(f"bench.load: {path} is missing (Debian asterisk-core-sounds-en-wav; make sysdeps)")
    with wave.open(str(path)) as w:
        return w.readframes(w.getnframes())


def caller_script(gap_s: float) -> Script:
    import audioop
    import base64

    speech = audioop.lin2ulaw(read_prompt(CALLER_PROMPT), 2)
    speech += b"\xff" * ((-len(speech)) % 160)
    frames = [base64.b64encode(speech[i : i + 160]).decode() for i in range(0, len(speech), 160)]
    return Script(frames, round(gap_s / FRAME_S))


def bot_reply(seconds: float) -> Reply:
    pcm8k = read_prompt(REPLY_PROMPT)[: int(seconds * 16000)]
    x = np.frombuffer(pcm8k, dtype="<i2").astype(np.float64)
    pcm24k = np.clip(np.rint(resample_poly(x, 3, 1)), -32768, 32767).astype("<i2").tobytes()
    return make_reply(pcm8k, pcm24k)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


@dataclass
class Row:
    target: str  # pcm24k | pcmu | local | peer
    calls: int
    placed: int
    refused: int
    dropped: int
    cpu_per_call_s: float
    rss_mb: float
    rss_idle_mb: float
    late_p50: float
    late_p99: float
    underruns: int
    underrun_ms: float
    inbound_p99: float
    after_stop: int
    after_stop_late: int
    turns: int
    answered: int
    answer_p50: float
    stop_close_p99: float
    gen_lag_p99: float
    gen_lag_max: float
    gen_cpu: float  # generator + stand-in CPU seconds per wall second
    load: float

    @property
    def broke(self) -> bool:
        return (
            self.placed < self.calls
            or self.dropped > 0
            or (self.turns > 0 and self.answered < 0.95 * self.turns)
            or self.late_p99 > 100.0
        )


class Server:
    """The system under test: `ivr-bridge serve` or the plain peer, pinned to core 0."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path | None, port: int, ready: str) -> None:
        self.port = port
        self.ready_path = ready
        self.log = tempfile.NamedTemporaryFile(prefix="bench-load-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.proc.pid)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_ready(self) -> None:
        async with httpx.AsyncClient() as http:
            for _ in range(1200):
                if self.proc.poll() is not None:
                    break
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(self.url + self.ready_path)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError("server did not start: " + self.log_tail())

    def log_tail(self) -> str:
        return Path(self.log.name).read_text()[-2000:]

    def cpu_s(self) -> float:
        total = 0.0
        for p in [self.ps, *self.ps.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def rss_mb(self) -> float:
        total = 0.0
        for p in [self.ps, *self.ps.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total / 2**20

    def stop(self) -> None:
        try:
            stop_bridge(self.proc)
        except subprocess.TimeoutExpired:  # a drain that outlasts the bench's patience
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()
        os.unlink(self.log.name)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin_prefix(pin: bool) -> list[str]:
    return ["taskset", "-c", "0"] if pin and shutil.which("taskset") else []


def start_bridge(target: str, standin_url: str, tmp: Path, calls: int, pin: bool) -> Server:
    plans = tmp / "plans"
    plans.mkdir(exist_ok=True)
    (plans / "main.yaml").write_text(LOCAL_PLAN if target == "local" else AGENT_PLAN)
    port = free_port()
    env = dict(os.environ)
    env.update(
        BRIDGE_DIALPLANS=str(plans),
        BRIDGE_REALTIME_URL=standin_url,
        BRIDGE_UPSTREAM_FORMAT="pcm24k" if target == "local" else target,
        BRIDGE_LOG_LEVEL="WARNING",
        BRIDGE_DATA_DIR=str(tmp / "data"),
        BRIDGE_MAX_CALLS=str(max(100, calls * 2)),
        BRIDGE_MAX_ENGINE_SESSIONS=str(max(100, calls * 2)),
        # Every emulated call comes from 127.0.0.1: lift the per-source limit, not under test here.
        BRIDGE_RATE_PER_SOURCE_PER_S="100000",
        BRIDGE_RATE_BURST="100000",
        BRIDGE_DRAIN_S="1",
    )
    if target == "local":
        env.pop("BRIDGE_REALTIME_URL")
    cmd = [
        *pin_prefix(pin),
        sys.executable,
        "-m",
        "bridge",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return Server(cmd, env, None, port, "/readyz")


def start_peer(standin_url: str, tmp: Path, pin: bool, repo: Path) -> Server:
    main = subprocess.run(
        ["git", "-C", str(repo), "show", "HEAD:main.py"], check=True, capture_output=True, text=True
    ).stdout
    if "wss://api.openai.com/v1/realtime" not in main:
        raise SystemExit("bench.load: the peer's main.py no longer names wss://api.openai.com/v1/realtime")
    (tmp / "main.py").write_text(main.replace("wss://api.openai.com/v1/realtime", standin_url))
    port = free_port()
    env = dict(os.environ, OPENAI_API_KEY="sk-bench-standin", PYTHONPATH=str(tmp))
    cmd = [
        *pin_prefix(pin),
        sys.executable,
        "-m",
        "uvicorn",
        "main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    return Server(cmd, env, tmp, port, "/")


async def run_one(target: str, calls: int, args: argparse.Namespace) -> Row:
    standin = Standin(bot_reply(args.reply_s), speed=args.reply_speed)
    await standin.start()
    gen = Generator(caller_script(args.gap_s))
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp_s:
        tmp = Path(tmp_s)
        if target == "peer":
            server = start_peer(standin.url, tmp, args.pin, Path(args.peer_repo))
        else:
            server = start_bridge(target, standin.url, tmp, calls, args.pin)
        try:
            await server.wait_ready()
            await asyncio.sleep(1.0)
            rss_idle = server.rss_mb()
            gen.start()
            await gen.place_all(server.url, calls, peer=target == "peer", rate_per_s=args.ramp)
            await asyncio.sleep(args.settle_s)
            me = psutil.Process()
            t0 = time.monotonic()
            gen.window = (t0, t0 + args.seconds)
            standin.measuring = True
            cpu0, mine0 = server.cpu_s(), sum(me.cpu_times()[:2])
            rss_peak = 0.0
            while time.monotonic() < t0 + args.seconds:
                rss_peak = max(rss_peak, server.rss_mb())
                await asyncio.sleep(1.0)
            wall = time.monotonic() - t0
            cpu, mine = server.cpu_s() - cpu0, sum(me.cpu_times()[:2]) - mine0
            standin.measuring = False
            load = os.getloadavg()[0]
            now = time.monotonic()
            for call in gen.calls:  # turns still unanswered 3 s after the caller stopped talking
                if call.pending_turn and call.speech_end is not None and gen.in_window(call.speech_end):
                    if now - call.speech_end > 3.0:
                        gen.totals.turns += 1
                    call.pending_turn = False
            await gen.hang_up_all()
        finally:
            await gen.stop()
            server.stop()
            await standin.stop()
    t = gen.totals
    live = max(1, t.placed - t.dropped)
    return Row(
        target=target,
        calls=calls,
        placed=t.placed,
        refused=t.refused + t.failed,
        dropped=t.dropped,
        cpu_per_call_s=cpu / (live * wall),
        rss_mb=rss_peak,
        rss_idle_mb=rss_idle,
        late_p50=pct(t.lateness_ms, 50),
        late_p99=pct(t.lateness_ms, 99),
        underruns=t.underruns,
        underrun_ms=t.underrun_ms,
        inbound_p99=pct(standin.stats.inbound_ms, 99) if target != "local" else float("nan"),
        after_stop=t.after_stop,
        after_stop_late=t.after_stop_late,
        turns=t.turns,
        answered=t.answered,
        answer_p50=pct(t.answer_ms, 50),
        stop_close_p99=pct(t.stop_to_close_ms, 99),
        gen_lag_p99=pct(gen.lag_ms, 99),
        gen_lag_max=max(gen.lag_ms) if gen.lag_ms else float("nan"),
        gen_cpu=mine / wall,
        load=load,
    )


HEADER = (
    "| target | calls | placed / refused / dropped | bridge CPU s per call-s | RSS peak (idle) MB "
    "| lateness p50 / p99 ms | underruns (ms) | caller->upstream p99 ms | after stop (>20 ms) "
    "| turns answered | answer p50 ms | stop->close p99 ms | generator lag p99 / max ms, CPU | load avg |\n"
    "|---|---:|---|---:|---|---|---|---:|---|---|---:|---:|---|---:|"
)


def row_md(r: Row) -> str:
    return (
        f"| {r.target} | {r.calls} | {r.placed} / {r.refused} / {r.dropped} | {r.cpu_per_call_s:.4f} "
        f"| {r.rss_mb:.0f} ({r.rss_idle_mb:.0f}) | {r.late_p50:.1f} / {r.late_p99:.1f} "
        f"| {r.underruns} ({r.underrun_ms:.0f}) | {r.inbound_p99:.1f} | {r.after_stop} ({r.after_stop_late}) "
        f"| {r.answered} / {r.turns} | {r.answer_p50:.0f} | {r.stop_close_p99:.0f} "
        f"| {r.gen_lag_p99:.1f} / {r.gen_lag_max:.0f}, {r.gen_cpu:.2f} | {r.load:.2f} |"
    )


def svg(rows: list[Row], path: Path) -> None:
    """Four small charts against concurrent calls: CPU per call-second, RSS, lateness p99, underruns."""
    series = [
        ("bridge CPU s per call-second", lambda r: r.cpu_per_call_s),
        ("RSS peak (MB)", lambda r: r.rss_mb),
        ("bot frame lateness p99 (ms)", lambda r: r.late_p99),
        ("underruns", lambda r: float(r.underruns)),
    ]
    colours = {"pcm24k": "#1f77b4", "pcmu": "#ff7f0e", "local": "#2ca02c", "peer": "#d62728"}
    targets = list(dict.fromkeys(r.target for r in rows))
    x_hi = max((r.calls for r in rows), default=1) or 1
    w, h, pad = 380, 180, 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{2 * h + 30}" font-size="11">']
    for i, (name, get) in enumerate(series):
        ox, oy = (i % 2) * w, (i // 2) * h
        ys = [get(r) for r in rows if not np.isnan(get(r))]
        hi = (max(ys) if ys else 1.0) * 1.15 or 1.0
        out.append(
            f'<rect x="{ox + pad}" y="{oy + pad}" width="{w - 2 * pad}" height="{h - 2 * pad}" '
            'fill="none" stroke="#ccc"/>'
        )
        out.append(f'<text x="{ox + pad}" y="{oy + pad - 8}">{name} (0-{hi:.3g}) vs calls (0-{x_hi})</text>')
        for target in targets:
            pts = []
            for r in rows:
                if r.target != target or np.isnan(get(r)):
                    continue
                x = ox + pad + r.calls / x_hi * (w - 2 * pad)
                y = oy + h - pad - get(r) / hi * (h - 2 * pad)
                pts.append(f"{x:.1f},{y:.1f}")
                out.append(
                    f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colours.get(target, "#000")}"/>'
                )
            if len(pts) > 1:
                out.append(
                    f'<polyline points="{" ".join(pts)}" fill="none" stroke="{colours.get(target, "#000")}" '
                    'stroke-width="1.5"/>'
                )
    for k, target in enumerate(targets):
        out.append(
            f'<text x="{pad + k * 90}" y="{2 * h + 20}" '
            f'fill="{colours.get(target, "#000")}">&#9632; {target}</text>'
        )
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def report(rows: list[Row], args: argparse.Namespace, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    svg(rows, out.with_suffix(".svg"))
    lines = [
        "# Load: concurrent Twilio calls through `ivr-bridge serve`",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores; bridge "
        f"{'pinned to core 0, generator + stand-in to core 1' if args.pin else 'not pinned'}. Command: "
        f"`python -m bench load {' '.join(args.argv)}`. Window {args.seconds:g} s per point after ramp-up; "
        f"caller turn = {CALLER_PROMPT} (1.4 s, real voice) + {args.gap_s:g} s listening; reply "
        f"{args.reply_s:g} s of {REPLY_PROMPT} streamed at {args.reply_speed:g}x real time in 100 ms deltas.",
        "",
        HEADER,
        *[row_md(r) + (" **breaks**" if r.broke else "") for r in rows],
        "",
        f"![calls vs CPU, RSS, lateness, underruns]({out.with_suffix('.svg').name})",
        "",
    ]
    out.write_text("\n".join(lines))
    print("wrote", out, flush=True)


async def sweep(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    for target in args.formats:
        for n in args.calls if target != "local" else args.local_calls:
            print(f"bench.load: {target} x {n} calls ...", flush=True)
            row = await run_one(target, n, args)
            print(row_md(row), flush=True)
            rows.append(row)
            if row.broke and not args.keep_going:
                print(f"bench.load: {target} breaks at {n} calls", flush=True)
                break
    if args.peer:
        for target in ("pcm24k", "peer"):  # side by side in the same run
            print(f"bench.load: side by side, {target} x {args.peer_calls} calls ...", flush=True)
            row = await run_one(target, args.peer_calls, args)
            row.target = f"{target} (side by side)" if target != "peer" else "peer"
            print(row_md(row), flush=True)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    if argv is None:
        print("bench.load: skipped by `python -m bench` (minutes of load); run `python -m bench load`")
        return
    parser = argparse.ArgumentParser(prog="python -m bench load", description=__doc__.split("\n")[0])
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    parser.add_argument("--calls", type=ints, default=[10, 50, 100, 150, 200, 250, 300])
    parser.add_argument("--local-calls", type=ints, default=[5, 10, 20])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--formats", type=lambda s: s.split(","), default=["pcm24k", "pcmu", "local"])
    parser.add_argument("--peer", action="store_true", help="also the plain twilio-samples bridge")
    parser.add_argument("--peer-calls", type=int, default=50)
    parser.add_argument("--peer-repo", default=str(PEER_REPO))
    parser.add_argument("--gap-s", type=float, default=4.0, help="caller silence after each utterance")
    parser.add_argument("--reply-s", type=float, default=2.0)
    parser.add_argument("--reply-speed", type=float, default=2.0, help="stand-in audio speed x real time")
    parser.add_argument("--ramp", type=float, default=25.0, help="calls placed per second")
    parser.add_argument("--settle-s", type=float, default=3.0)
    parser.add_argument("--keep-going", action="store_true", help="do not stop a sweep at its first break")
    parser.add_argument("--no-pin", dest="pin", action="store_false")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.pin and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})
    else:
        args.pin = False
    rows = asyncio.run(sweep(args))
    report(rows, args, args.out)
    if rows:
        print("median bridge CPU s per call-s:", statistics.median(r.cpu_per_call_s for r in rows))


if __name__ == "__main__":
    main(sys.argv[1:])
