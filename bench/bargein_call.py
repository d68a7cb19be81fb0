"""Barge-in through the call's own composition: `bridge.call.caller_audio.CallerFront` (echo canceller +
detector) and `bridge.call.bargein.BargeInCore` (pause / resume / commit), exactly as
`bridge.call.call.Call` drives them per 20 ms frame, on the phone signals of bench/bargein.py.

Per configuration (echo canceller on/off, detector settings, backchannel rule on/off):
- onset -> stop: from the caller's true onset (first 10 ms within 35 dB of the utterance's peak) to the
  frame on which the core said Pause or Cut (the bot stops playing there); missed = no stop before the
  utterance ended + 300 ms;
- false barge-ins per bot-minute: any Pause or Cut on echo-only audio (10 bot-minutes, ERL 10-30 dB);
- backchannels cut: 200-300 ms acknowledgements that ended in a Cut (with the rule off: any stop);
- upstream false: onsets of the engine's server-VAD defaults (0.5, 200 ms) on what the call sends
  upstream (cleaned or raw per the setting; held audio replaced by silence on Resume, flushed on Cut);
- CPU: thread time of the front (`CallerFront.played` + `hear`: the canceller, the detector and its
  Silero runs) per call-second, and what a configuration adds to the first one's (the detector alone,
  no canceller): the issue's "added CPU".

With the bench extra installed (`webrtc-noise-gain`), three more configurations put WebRTC's noise
suppressor (bench/denoise.py) in front of the detector (levels 2 and 1) or of the whole front.

Run: .venv/bin/python -m bench bargein_call   (writes bench/results/bargein.md's phase-3 section)
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench import bargein as b
from bridge.media.g711 import FRAME_BYTES_PCM8K, RATE_8K

RESULTS = Path(__file__).parent / "results" / "bargein.md"
MARK = "<!-- phase 3 -->"
PHASE2 = "<!-- phase 2 -->"


@dataclass(frozen=True)
class Config:
    name: str
    echo: bool
    threshold: float
    min_speech_ms: int
    backchannel_ms: int  # 0: off
    clean_upstream: bool = True
    early: bool = True  # energy onsets pause early (CallerFront early_onsets)
    gate_cold: bool = True  # the upstream gets the gated audio before the echo path is found
    denoise: int = 0  # WebRTC noise suppression level before the detector (0: off)
    denoise_first: int = 0  # ... level before the echo canceller (the whole front hears it)


CONFIGS = [
    Config("before: no AEC, 0.5/64, no backchannel", False, 0.5, 64, 0, False, False, False),
    Config("phase 2: AEC, 0.3/32, backchannel 400", True, 0.3, 32, 400, True, False, False),
    Config("+ upstream gated before alignment (default)", True, 0.3, 32, 400, True, False, True),
    Config("+ early energy onsets (off by default)", True, 0.3, 32, 400),
]
# Noise suppression (bench/denoise.py, not in the product): measured when the bench extra is installed.
if importlib.util.find_spec("webrtc_noise_gain") is not None:
    CONFIGS += [
        Config("default + WebRTC NS 2 before the detector", True, 0.3, 32, 400, True, False, True, 2),
        Config("default + WebRTC NS 1 before the detector", True, 0.3, 32, 400, True, False, True, 1),
        Config("default + WebRTC NS 2 before the canceller", True, 0.3, 32, 400, True, False, True, 0, 2),
    ]


@dataclass
class Sim:
    stops_ms: list[int] = field(default_factory=list)  # frame end (ms) of each Pause/Cut
    cuts_ms: list[int] = field(default_factory=list)
    resumes: int = 0
    upstream_onsets_ms: list[int] = field(default_factory=list)
    cpu_s: float = 0.0
    seconds: float = 0.0


def simulate(cfg: Config, near: bytes, far: bytes | None, bot_end_ms: int) -> Sim:
    """The call's per-frame path: far frame played, caller frame heard, core decisions, upstream."""
    from bench.denoise import DenoisedDetector, NoiseSuppressor
    from bridge.call.bargein import BargeInCore, Cut, Pause, Resume
    from bridge.call.caller_audio import CallerFront
    from bridge.media.echo import EchoCanceller
    from bridge.media.vad import EarlyOnset, SpeechDetector, SpeechStart, SpeechStop

    settings = {"threshold": cfg.threshold, "min_speech_ms": cfg.min_speech_ms, "min_silence_ms": 300}
    det = DenoisedDetector(cfg.denoise, **settings) if cfg.denoise else SpeechDetector(**settings)
    front = CallerFront(
        det,
        EchoCanceller() if cfg.echo else None,
        early_onsets=cfg.early,
        gate_upstream_unaligned=cfg.gate_cold,
    )
    first = NoiseSuppressor(cfg.denoise_first) if cfg.denoise_first else None
    up = SpeechDetector(threshold=0.5, min_speech_ms=200, min_silence_ms=500)
    core = BargeInCore()
    core.agent_started("pcm24k", barge_in=True, backchannel_max_ms=cfg.backchannel_ms)
    core.response_started("resp")
    core.audio_received("item", 48 * 600_000)
    sim = Sim(seconds=len(near) / 2 / RATE_8K)
    held: list[bytes] = []
    clock = time.thread_time
    step = FRAME_BYTES_PCM8K
    for i in range(0, len(near) - step + 1, step):
        now = i / 16.0
        end_ms = (i + step) // 16
        t0 = clock()
        if far is not None and i + step <= len(far):
            front.played(far[i : i + step], now)
        frame = near[i : i + step]
        if first is not None:
            frame = first.process(frame)
        heard, changes = front.hear(frame, now + 20)
        sim.cpu_s += clock() - t0
        audible = end_ms <= bot_end_ms
        decisions: list[object] = []
        for ch in changes:
            if isinstance(ch, SpeechStart):
                decisions.append(core.speech_started(now, audible=audible))
            elif isinstance(ch, EarlyOnset):
                decisions.append(core.early_onset(now, audible=audible))
            elif isinstance(ch, SpeechStop):
                decisions.append(core.speech_stopped(now))
        if core.paused:
            decisions.append(core.caller_speech(now, det.voiced_ms))
        out = heard if cfg.clean_upstream else frame
        for d in decisions:
            if isinstance(d, Pause):
                sim.stops_ms.append(end_ms)
            elif isinstance(d, Cut):
                if not sim.stops_ms or sim.stops_ms[-1] < end_ms - 2000:
                    sim.stops_ms.append(end_ms)
                sim.cuts_ms.append(end_ms)
                for h in held:  # committed: the model gets what was held
                    sim.upstream_onsets_ms += [end_ms for e in up.feed(h) if isinstance(e, SpeechStart)]
                held.clear()
                core.response_started("resp")  # the next reply (keeps the core armed)
            elif isinstance(d, Resume):
                sim.resumes += 1
                for h in held:
                    up.feed(bytes(len(h)))
                held.clear()
        if core.paused:
            held.append(out)
        else:
            sim.upstream_onsets_ms += [end_ms for e in up.feed(out) if isinstance(e, SpeechStart)]
    return sim


@dataclass
class Row:
    lat: list[float] = field(default_factory=list)
    missed: int = 0
    false: int = 0
    trials: int = 0


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def main() -> None:
    t_start = time.monotonic()
    load_before = os.getloadavg()
    rng = np.random.default_rng(2025)
    m = b.material()
    path = b.EchoPath()

    # 1. echo only
    echo_conds = [(d, e) for d in (50, 150, 250, 400) for e in (10, 15, 20, 30)]
    seg_s = 600.0 / len(echo_conds)
    echo_false = {c.name: [0, 0, 0.0, 0.0] for c in CONFIGS}  # local, upstream, cpu, seconds
    for delay, erl in echo_conds:
        bot = b.bot_stream(m, seg_s, rng)
        near, far = b.ulaw(path.apply(bot, delay, erl)), b.pcm(bot)
        for cfg in CONFIGS:
            s = simulate(cfg, near, far, bot_end_ms=10**9)
            row = echo_false[cfg.name]
            row[0] += len(s.stops_ms)
            row[1] += len(s.upstream_onsets_ms)
            row[2] += s.cpu_s
            row[3] += s.seconds
        print(
            f"echo {delay}/{erl}: " + ", ".join(f"{k[:22]} {v[0]}" for k, v in echo_false.items()), flush=True
        )

    # 2. interruptions over the bot
    barge_conds = [
        ("clean, ERL 10, 150 ms", 150, 10, None, 0.0, b.BOT_DBFS, 4.0),
        ("clean, ERL 20, 300 ms", 300, 20, None, 0.0, b.BOT_DBFS, 4.0),
        ("quiet caller (-28 dBFS), ERL 10", 150, 10, None, 0.0, -28.0, 4.0),
        ("pink SNR 10, ERL 15", 250, 15, "pink", 10.0, b.BOT_DBFS, 4.0),
        ("babble SNR 10, ERL 15", 150, 15, "babble", 10.0, b.BOT_DBFS, 4.0),
        ("car SNR 5, ERL 15", 150, 15, "car", 5.0, b.BOT_DBFS, 4.0),
        ("cold start, ERL 15", 200, 15, None, 0.0, b.BOT_DBFS, 0.0),
        ("no bot (clean)", None, None, None, 0.0, b.BOT_DBFS, 0.0),
    ]
    barge: dict[str, dict[str, Row]] = {}
    for label, delay, erl, nkind, snr, level, warm in barge_conds:
        barge[label] = {c.name: Row() for c in CONFIGS}
        for _rep in range(2):
            for t in range(len(m.callers)):
                bot = b.bot_stream(m, warm + 4.0, rng)
                caller = b.db_gain(m.callers[t], level)
                onset = int((warm + rng.uniform(0.6, 2.0)) * RATE_8K)
                x = path.apply(bot, delay, erl) if delay else np.zeros(len(bot))
                x = np.concatenate([x, np.zeros(max(0, onset + len(caller) + RATE_8K - len(x)))])
                x[onset : onset + len(caller)] += caller
                if nkind is not None:
                    x += b.noise(nkind, len(x), snr, rng, m.babble_src)
                near, far = b.ulaw(x), (b.pcm(bot) if delay else None)
                om, em = onset * 1000 // RATE_8K, (onset + len(caller)) * 1000 // RATE_8K
                for cfg in CONFIGS:
                    s = simulate(cfg, near, far, bot_end_ms=10**9)
                    r = barge[label][cfg.name]
                    r.trials += 1
                    r.false += len([x for x in s.stops_ms if x < om])
                    after = [x for x in s.stops_ms if om <= x <= em + 300]
                    if after:
                        r.lat.append(after[0] - om)
                    else:
                        r.missed += 1
        print(
            f"barge {label}: " + ", ".join(f"{v.missed}/{pct(v.lat, 95):.0f}" for v in barge[label].values()),
            flush=True,
        )

    # 3. backchannels 200-300 ms and other sounds while the bot talks (echo 150 ms, ERL 15)
    backs = [x[: int(rng.uniform(0.2, 0.3) * RATE_8K)] for x in m.backchannels]
    others: dict[str, dict[str, str]] = {}
    t_music = np.arange(int(4 * RATE_8K)) / RATE_8K
    music = b.db_gain(
        np.asarray(sum(np.sin(2 * np.pi * f * t_music) * (0.5 + 0.5 * np.sin(4 * np.pi * t_music + f))
                       for f in (262, 330, 392, 523))) * 1000, b.BOT_DBFS - 6)  # fmt: skip
    from tests.helpers.speech import dtmf_tone

    dtmf = np.concatenate(
        [np.concatenate([np.frombuffer(dtmf_tone(d, 120, dbfs=-16.0), "<i2").astype(float), np.zeros(800)])
         for d in "123#"])  # fmt: skip
    sounds: list[tuple[str, list[np.ndarray | None], str | None, float]] = [
        ("backchannel 200-300 ms: cut / played (resumed)", list(backs), None, 0.0),
        ("DTMF 4 digits (-16 dBFS)", [dtmf], None, 0.0),
        ("music-like (-26 dBFS)", [music], None, 0.0),
        ("pink noise SNR 0", [None], "pink", 0.0),
        ("babble SNR 10", [None], "babble", 10.0),
    ]
    for label, trials, nkind, snr in sounds:
        res = {c.name: [0, 0, 0] for c in CONFIGS}  # stops, cuts, resumes
        for tr in trials:
            bot = b.bot_stream(m, 8.0, rng)
            x = path.apply(bot, 150, 15)
            if tr is not None:
                at = int(2.5 * RATE_8K)
                x[at : at + len(tr)] += (
                    tr if not label.startswith("backchannel") else b.db_gain(tr, b.BOT_DBFS)
                )
            if nkind is not None:
                x += b.noise(nkind, len(x), snr, rng, m.babble_src)
            near, far = b.ulaw(x), b.pcm(bot)
            for cfg in CONFIGS:
                s = simulate(cfg, near, far, bot_end_ms=10**9)
                res[cfg.name][0] += len(s.stops_ms)
                res[cfg.name][1] += len(s.cuts_ms)
                res[cfg.name][2] += s.resumes
        if label.startswith("backchannel"):
            others[label] = {k: f"{v[1]} / {len(trials)} ({v[2]})" for k, v in res.items()}
        else:
            others[label] = {k: f"{v[0]} ({v[1]} cut)" for k, v in res.items()}
        print(f"other {label}: {others[label]}", flush=True)

    elapsed = time.monotonic() - t_start
    load_after = os.getloadavg()
    out = [
        MARK,
        "# Barge-in, phase 3: noise level, early energy onsets, upstream gated before alignment\n",
        f"Command: `.venv/bin/python -m bench bargein_call` ({elapsed:.0f} s wall). Machine: "
        f"{os.cpu_count()} cores, load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        "(other helpers running).\n",
        "Driven: `bridge.call.caller_audio.CallerFront` and `bridge.call.bargein.BargeInCore` per 20 ms "
        "frame as `bridge.call.call.Call` drives them (bench/bargein_call.py). Detector `t/m` = threshold "
        "/ min_speech_ms. A stop is the core's Pause or Cut (the bot stops playing). Signals as in "
        "phase 1 below; onset = first 10 ms within 35 dB of the utterance's peak; 12 trials per condition "
        "(6 callers x 2).\n",
        "## Echo only (10 bot-minutes, ERL 10-30 dB, delays 50-400 ms)\n",
        "| configuration | false stops | per bot-minute | upstream false "
        "| CPU s per call-second (canceller + detector) | added to the detector alone |",
        "|---|---|---|---|---|---|",
    ]
    _, _, cpu0, secs0 = next(iter(echo_false.values()))  # the first configuration: no canceller
    for name, (loc, upf, cpu, secs) in echo_false.items():
        added = cpu / secs - cpu0 / secs0
        out.append(f"| {name} | {loc} | {loc / 10:.2f} | {upf} | {cpu / secs:.4f} | {added:+.4f} |")
    out += [
        "\n## Interruptions over the bot: onset -> stop\n",
        "| condition | configuration | missed | false | p50 / p95 / max ms | stopped within 150 ms |",
        "|---|---|---|---|---|---|",
    ]
    for label, per in barge.items():
        for name, r in per.items():
            within = sum(1 for x in r.lat if x <= 150)
            worst = max(r.lat) if r.lat else float("nan")
            out.append(
                f"| {label} | {name} | {r.missed} | {r.false} | "
                f"{pct(r.lat, 50):.0f} / {pct(r.lat, 95):.0f} / {worst:.0f} | {within}/{r.trials} |"
            )
    out += [
        "\n## Backchannels and other sounds while the bot talks (echo 150 ms, ERL 15 dB)\n",
        "Backchannels: cut / played (resumes). Others: stops (of which cuts).\n",
        "| sound | " + " | ".join(c.name for c in CONFIGS) + " |",
        "|---|" + "---|" * len(CONFIGS),
    ]
    for label, res2 in others.items():
        out.append(f"| {label} | " + " | ".join(res2.values()) + " |")
    text = RESULTS.read_text() if RESULTS.exists() else ""
    if MARK in text:
        text = text[text.index(PHASE2) :] if PHASE2 in text else ""
    notes = Path(__file__).parent / "results" / "bargein_phase3_notes.md"
    if notes.exists():  # the hand-written reading of the tables
        out.append("\n" + notes.read_text())
    RESULTS.write_text("\n".join(out) + "\n\n" + text)
    print("\n".join(out))


if __name__ == "__main__":
    main()
