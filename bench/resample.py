"""Streaming 8k <-> 24k resamplers on 20 ms int16 chunks: speed, added latency, quality.

Compares the bridge's polyphase FIRs (bridge.media.resample) with python-soxr's
`ResampleStream(quality="HQ")` and stateful `audioop.ratecv`. Writes bench/results/resample.md.

- µs per chunk: median over repeats of the mean time of one `process` call on a 20 ms chunk.
- backlog: after each of 100 chunks, input fed minus output returned (ms); mean and max.
- group delay: measured, from the slope of the cross-spectrum phase (300-3400 Hz) between the
  output and an exact (non-causal) resampling of the input, both on the output's own sample grid.
  Added latency = mean backlog + group delay.
- SINAD: a -6 dBFS tone, chunked; tone power over everything else after a least-squares tone fit.
- alias: output power of a -6 dBFS tone at 24 kHz above 4 kHz after going to 8 kHz, relative to
  the input tone (lower is better; 0 dB means it folds back untouched).
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soxr
from scipy import signal

from bridge.media.resample import Downsampler, Upsampler

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

RESULTS = Path(__file__).parent / "results" / "resample.md"
CHUNK_MS = 20
TONES_HZ = (300, 1000, 3400)
ALIAS_HZ = (4100, 5000, 7000, 11000)


class _Soxr:
    def __init__(self, in_hz: int, out_hz: int) -> None:
        self._stream = soxr.ResampleStream(in_hz, out_hz, 1, dtype="int16", quality="HQ")

    def process(self, pcm16: bytes) -> bytes:
        x = np.frombuffer(pcm16, dtype="<i2")
        return self._stream.resample_chunk(x).tobytes()


class _Ratecv:
    def __init__(self, in_hz: int, out_hz: int) -> None:
        self._in_hz = in_hz
        self._out_hz = out_hz
        self._state: object = None

    def process(self, pcm16: bytes) -> bytes:
        out, self._state = audioop.ratecv(pcm16, 2, 1, self._in_hz, self._out_hz, self._state)
        return out


Factory = Callable[[], "_Soxr | _Ratecv | Upsampler | Downsampler"]

METHODS: dict[str, tuple[Factory, Factory]] = {
    "bridge polyphase FIR": (Upsampler, Downsampler),
    "soxr HQ stream": (lambda: _Soxr(8000, 24000), lambda: _Soxr(24000, 8000)),
    "audioop.ratecv (stateful)": (lambda: _Ratecv(8000, 24000), lambda: _Ratecv(24000, 8000)),
}


def _run(rs: object, x: np.ndarray, rate_hz: int) -> tuple[np.ndarray, list[float]]:
    """Feed x in 20 ms chunks; return the output and the backlog (ms) after each chunk."""
    n = rate_hz * CHUNK_MS // 1000
    out_rate = 24000 if rate_hz == 8000 else 8000
    parts: list[bytes] = []
    backlog: list[float] = []
    got = 0
    for i in range(0, len(x) - n + 1, n):
        y = rs.process(x[i : i + n].tobytes())  # type: ignore[attr-defined]
        parts.append(y)
        got += len(y) // 2
        backlog.append((i + n) * 1000 / rate_hz - got * 1000 / out_rate)
    return np.frombuffer(b"".join(parts), dtype="<i2").astype(np.float64), backlog


def _us_per_chunk(factory: Factory, rate_hz: int) -> float:
    n = rate_hz * CHUNK_MS // 1000
    rng = np.random.default_rng(1)
    chunks = [np.clip(rng.normal(0, 4000, n), -32768, 32767).astype("<i2").tobytes() for _ in range(50)]
    rs = factory()
    for c in chunks:
        rs.process(c)
    means = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(40):
            for c in chunks:
                rs.process(c)
        means.append((time.perf_counter() - t0) / (40 * len(chunks)) * 1e6)
    return statistics.median(means)


def _tone(freq_hz: float, rate_hz: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return np.rint(16000 * np.sin(2 * np.pi * freq_hz * t + 0.3)).astype("<i2")


def _sinad_db(y: np.ndarray, freq_hz: float, rate_hz: int) -> float:
    t = np.arange(len(y)) / rate_hz
    w = 2 * np.pi * freq_hz * t
    basis = np.column_stack([np.sin(w), np.cos(w), np.ones_like(t)])
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    fit = basis[:, :2] @ coef[:2]
    resid = y - basis @ coef
    return float(10 * np.log10(np.sum(fit**2) / np.sum(resid**2)))


def _group_delay_ms(factory: Factory, in_hz: int, out_hz: int) -> float:
    rng = np.random.default_rng(2)
    b = signal.firwin(511, [300, 3400], pass_zero=False, fs=in_hz)
    x = signal.lfilter(b, 1, rng.normal(0, 4000, in_hz * 3))[in_hz // 2 :]
    xi = np.rint(x).astype("<i2")
    y, _ = _run(factory(), xi, in_hz)
    ref = signal.resample_poly(xi.astype(np.float64), out_hz, in_hz, window=("kaiser", 12.0))
    n = min(len(y), len(ref))
    edge = out_hz // 10
    ys, rs = y[edge : n - edge], ref[edge : n - edge]
    cross = np.fft.rfft(ys) * np.conj(np.fft.rfft(rs))
    f = np.fft.rfftfreq(len(ys), 1 / out_hz)
    band = (f >= 300) & (f <= 3400)
    phase = np.unwrap(np.angle(cross[band]))
    slope = np.polyfit(f[band], phase, 1, w=np.sqrt(np.abs(cross[band])))[0]
    return float(-slope / (2 * np.pi) * 1000)


def _measure(name: str, up: Factory, down: Factory) -> dict[str, object]:
    row: dict[str, object] = {"name": name}
    row["us_up"] = _us_per_chunk(up, 8000)
    row["us_down"] = _us_per_chunk(down, 24000)
    noise8 = np.clip(np.random.default_rng(3).normal(0, 4000, 8000 * 2), -32768, 32767).astype("<i2")
    noise24 = np.clip(np.random.default_rng(4).normal(0, 4000, 24000 * 2), -32768, 32767).astype("<i2")
    _, bl_up = _run(up(), noise8, 8000)
    _, bl_down = _run(down(), noise24, 24000)
    row["backlog_up"] = (statistics.mean(bl_up[:100]), max(bl_up[:100]))
    row["backlog_down"] = (statistics.mean(bl_down[:100]), max(bl_down[:100]))
    row["gd_up"] = _group_delay_ms(up, 8000, 24000)
    row["gd_down"] = _group_delay_ms(down, 24000, 8000)
    row["sinad_up"] = [_sinad_db(_run(up(), _tone(f, 8000), 8000)[0][2400:], f, 24000) for f in TONES_HZ]
    row["sinad_down"] = [_sinad_db(_run(down(), _tone(f, 24000), 24000)[0][800:], f, 8000) for f in TONES_HZ]
    alias = []
    for f in ALIAS_HZ:
        x = _tone(f, 24000)
        y = _run(down(), x, 24000)[0][800:]
        x_rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
        y_rms = max(float(np.sqrt(np.mean(y**2))), 1e-9)
        alias.append(20 * np.log10(y_rms / x_rms))
    row["alias"] = alias
    return row


def _ms(value: float) -> str:
    text = f"{value:.2f}"
    return "0.00" if text == "-0.00" else text


def _fmt(values: list[float]) -> str:
    return " / ".join(f"{v:.0f}" if round(v) != 0 else "0" for v in values)


def main() -> None:
    load_before = os.getloadavg()
    rows = [_measure(name, up, down) for name, (up, down) in METHODS.items()]
    load_after = os.getloadavg()
    lines = [
        "# Streaming resampling 8 kHz <-> 24 kHz, 20 ms int16 chunks",
        "",
        "Command: `.venv/bin/python -m bench resample`. Machine load average (1 min) "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after"
        " (other engineers at work on 2 cores: timings are noisy).",
        "",
        "## Speed and latency",
        "",
        "Added latency = mean backlog (input fed minus output returned, over 100 chunks) + measured group"
        " delay (cross-spectrum phase slope, 300-3400 Hz). Requirement for the bridge: <= 3 ms per direction,"
        " <= 30 µs per chunk.",
        "",
        "| method | µs/chunk up / down | backlog up mean / max (ms) | backlog down mean / max (ms) "
        "| group delay up / down (ms) | added latency up / down (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        bu, bd = r["backlog_up"], r["backlog_down"]
        gu, gd = r["gd_up"], r["gd_down"]
        lines.append(
            f"| {r['name']} | {r['us_up']:.1f} / {r['us_down']:.1f} | {_ms(bu[0])} / {_ms(bu[1])} "  # type: ignore[index]
            f"| {_ms(bd[0])} / {_ms(bd[1])} | {_ms(gu)} / {_ms(gd)} "  # type: ignore[index,arg-type]
            f"| {_ms(bu[0] + gu)} / {_ms(bd[0] + gd)} |"  # type: ignore[index,operator]
        )
    lines += [
        "",
        "## Quality",
        "",
        "SINAD of a -6 dBFS tone (requirement >= 60 dB in 300-3400 Hz, both ways); alias: output power"
        " of a -6 dBFS tone above 4 kHz at 24 kHz after going to 8 kHz, relative to the input"
        " (requirement <= -60 dB).",
        "",
        "| method | 8k→24k SINAD 300 / 1k / 3.4k (dB) | 24k→8k SINAD 300 / 1k / 3.4k (dB) "
        "| alias 4.1k / 5k / 7k / 11k (dB) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {_fmt(r['sinad_up'])} | {_fmt(r['sinad_down'])} "  # type: ignore[arg-type]
            f"| {_fmt(r['alias'])} |"  # type: ignore[arg-type]
        )
    lines += [
        "",
        f"Bridge filters: up {Upsampler.taps_per_phase * 3} taps (delay_ms {Upsampler.delay_ms:.2f}),"
        f" down {Downsampler.n_taps} taps (delay_ms {Downsampler.delay_ms:.2f}).",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))
