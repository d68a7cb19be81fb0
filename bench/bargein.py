"""Barge-in in the real world: the local detector (bridge/media/vad.py, default barge-in settings, 20 ms
frames exactly as the call feeds it) with and without echo cancellation / noise suppression in front.

Speech: Piper (joe) and espeak-ng speakers (en-us, en-gb, en-us+f3, en-us+m3) through the telephone
chain of tests/helpers/speech.py. The caller's side is built as a phone would: bot echo (delay, echo
return loss, speaker + room colouring) + caller speech + noise, summed and G.711 µ-law round-tripped.

Fronts (what sits before the VAD):
  none    raw caller audio
  numpy   bridge.media.echo.EchoCanceller (GCC-PHAT delay, MDF NLMS, residual gate)
  speex   libspeexdsp (Debian libspeexdsp1, ctypes): echo canceller with a 500 ms filter (it has no
          delay estimator) + its preprocessor's residual echo suppression and denoiser
  webrtc  WebRTC APM from PyPI `livekit` (AEC3 + NS + HPF, 10 ms frames)
Noise suppression candidates (no echo): rnnoise (pyrnnoise's library, 8->48->8 kHz via soxr), webrtc-ns.

Upstream: the same Silero detector with the engine's server-VAD defaults (threshold 0.5, 200 ms min
speech) run on what the front would send upstream.

Run: .venv/bin/python -m bench bargein   (writes bench/results/bargein.md; ~3-4 min on 2 loaded cores)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import os
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bridge.media.g711 import FRAME_BYTES_PCM8K, FRAME_SAMPLES_8K, RATE_8K

RESULTS = Path(__file__).parent / "results" / "bargein.md"
BOT_DBFS = -20.0

BOT_LINES = [
    "Thanks for calling. I can help you with billing, orders, or technical support.",
    "Your order number four two seven one shipped yesterday and should arrive on Friday.",
    "I'm sorry, I didn't catch that. Could you say it again, please?",
    "Our store is open from nine in the morning until six in the evening, Monday to Saturday.",
    "To reset your password, I will send a code to the phone number on your account.",
    "Is there anything else I can help you with today?",
]
CALLER_LINES = [
    "Wait, I need to talk to a person.",
    "No, that's not what I asked.",
    "Can you repeat the last part?",
    "Stop, I want to cancel my order.",
    "Hold on a second.",
    "Actually I'm calling about my bill.",
]
BACKCHANNELS = ["Mm-hm.", "Yeah.", "Okay."]
ESPEAK_VOICES = ["en-us", "en-gb", "en-us+f3", "en-us+m3"]


# ---------------------------------------------------------------------------------------------------
# signals


def espeak(text: str, voice: str) -> bytes:
    from tests.helpers.speech import telephone_chain

    proc = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", "165", "--stdout", text], capture_output=True, check=True
    )
    with wave.open(io.BytesIO(proc.stdout)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return telephone_chain(pcm.astype(np.float64) / 32768.0, rate)


def speech(text: str, voice: str) -> np.ndarray:
    from tests.helpers.speech import phone_speech

    pcm = phone_speech(text) if voice == "piper" else espeak(text, voice)
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def trim(x: np.ndarray) -> np.ndarray:
    from tests.helpers.speech import speech_span_ms

    a, b = speech_span_ms(x.astype("<i2").tobytes())
    return x[a * 8 : b * 8]


def db_gain(x: np.ndarray, target_dbfs: float) -> np.ndarray:
    from tests.helpers.speech import active_rms

    rms = active_rms(x / 32768.0)
    return x * (10 ** (target_dbfs / 20) / max(rms, 1e-9))


class EchoPath:
    """The caller's phone: loudspeaker band-pass + a decaying room response, delay, echo return loss."""

    def __init__(self, seed: int = 7) -> None:
        from scipy.signal import butter

        rng = np.random.default_rng(seed)
        n = 320  # 40 ms room tail
        ir = rng.standard_normal(n) * np.exp(-np.arange(n) / 48.0)
        ir[0] += 2.0  # direct path
        self.ir = ir / np.sqrt(np.sum(ir**2))
        self.sos = butter(2, [350.0, 3200.0], btype="bandpass", fs=RATE_8K, output="sos")

    def apply(self, bot: np.ndarray, delay_ms: float, erl_db: float) -> np.ndarray:
        from scipy.signal import lfilter, sosfilt

        y = sosfilt(self.sos, lfilter(self.ir, [1.0], bot))
        y *= np.sqrt(np.mean(bot**2) / max(np.mean(y**2), 1e-12)) * 10 ** (-erl_db / 20)
        d = int(delay_ms * RATE_8K / 1000)
        return np.concatenate([np.zeros(d), y[: len(bot) - d]])


def noise(kind: str, n: int, snr_db: float, rng: np.random.Generator, babble_src: np.ndarray) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    if kind == "pink":
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n, 1 / RATE_8K)
        spec[1:] /= np.sqrt(f[1:])
        spec[0] = 0
        x = np.fft.irfft(spec, n)
    elif kind == "car":
        x = sosfilt(butter(2, 250.0, fs=RATE_8K, output="sos"), rng.standard_normal(n))
        x = sosfilt(
            butter(2, 300.0, btype="highpass", fs=RATE_8K, output="sos"), x + 0.05 * rng.standard_normal(n)
        )
    elif kind == "babble":
        x = np.zeros(n)
        for _ in range(6):
            off = int(rng.integers(0, len(babble_src) - 1))
            seg = np.roll(babble_src, -off)
            reps = -(-n // len(seg))
            x += np.tile(seg, reps)[:n]
    else:
        raise ValueError(kind)
    rms = float(np.sqrt(np.mean(x**2)))
    return x * (10 ** ((BOT_DBFS - snr_db) / 20) * 32768.0 / max(rms, 1e-12))


def ulaw(x: np.ndarray) -> bytes:
    import audioop

    pcm = np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()
    return audioop.ulaw2lin(audioop.lin2ulaw(pcm, 2), 2)


def pcm(x: np.ndarray) -> bytes:
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


# ---------------------------------------------------------------------------------------------------
# fronts


class Front:
    name = "none"

    def far(self, frame: bytes, at_ms: float) -> None:
        pass

    def near(self, frame: bytes) -> bytes:
        return frame


class NumpyAec(Front):
    name = "numpy"

    def __init__(self) -> None:
        from bridge.media.echo import EchoCanceller

        self.ec = EchoCanceller()

    def far(self, frame: bytes, at_ms: float) -> None:
        self.ec.far(frame, at_ms=at_ms)

    def near(self, frame: bytes) -> bytes:
        return self.ec.near(frame)


_speex: ctypes.CDLL | None = None


def speex_lib() -> ctypes.CDLL:
    global _speex
    if _speex is None:
        lib = ctypes.CDLL(ctypes.util.find_library("speexdsp") or "libspeexdsp.so.1")
        lib.speex_echo_state_init.restype = ctypes.c_void_p
        lib.speex_echo_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.speex_echo_cancellation.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
        ]
        lib.speex_echo_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        lib.speex_preprocess_state_init.restype = ctypes.c_void_p
        lib.speex_preprocess_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.speex_preprocess_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        lib.speex_preprocess_run.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.speex_echo_state_destroy.argtypes = [ctypes.c_void_p]
        lib.speex_preprocess_state_destroy.argtypes = [ctypes.c_void_p]
        _speex = lib
    return _speex


class SpeexAec(Front):
    """Speex MDF with a filter long enough for the whole delay range, fed the far audio as played."""

    name = "speex"

    def __init__(self, filter_ms: int = 500) -> None:
        lib = speex_lib()
        self.lib = lib
        self.st = lib.speex_echo_state_init(FRAME_SAMPLES_8K, filter_ms * RATE_8K // 1000)
        rate = ctypes.c_int(RATE_8K)
        lib.speex_echo_ctl(self.st, 24, ctypes.byref(rate))  # SPEEX_ECHO_SET_SAMPLING_RATE
        self.pp = lib.speex_preprocess_state_init(FRAME_SAMPLES_8K, RATE_8K)
        lib.speex_preprocess_ctl(self.pp, 24, ctypes.c_void_p(self.st))  # SPEEX_PREPROCESS_SET_ECHO_STATE
        self.pending: dict[int, bytes] = {}
        self.pos = 0
        self.out = ctypes.create_string_buffer(FRAME_BYTES_PCM8K)

    def far(self, frame: bytes, at_ms: float) -> None:
        self.pending[round(at_ms * 8)] = frame

    def near(self, frame: bytes) -> bytes:
        ref = self.pending.pop(self.pos, bytes(FRAME_BYTES_PCM8K))
        self.pos += FRAME_SAMPLES_8K
        self.lib.speex_echo_cancellation(self.st, frame, ref, self.out)
        buf = ctypes.create_string_buffer(self.out.raw, FRAME_BYTES_PCM8K)
        self.lib.speex_preprocess_run(self.pp, buf)
        return buf.raw

    def __del__(self) -> None:
        self.lib.speex_echo_state_destroy(self.st)
        self.lib.speex_preprocess_state_destroy(self.pp)


class WebrtcApm(Front):
    """WebRTC APM (AEC3) via livekit's FFI: 10 ms frames; the reverse stream is what was played."""

    name = "webrtc"

    def __init__(self, aec: bool = True, ns: bool = True) -> None:
        from livekit import rtc

        self.rtc = rtc
        self.apm = rtc.AudioProcessingModule(
            echo_cancellation=aec, noise_suppression=ns, high_pass_filter=True
        )
        self.apm.set_stream_delay_ms(0)
        self.pending: dict[int, bytes] = {}
        self.pos = 0

    def far(self, frame: bytes, at_ms: float) -> None:
        self.pending[round(at_ms * 8)] = frame

    def near(self, frame: bytes) -> bytes:
        rtc = self.rtc
        ref = self.pending.pop(self.pos, bytes(FRAME_BYTES_PCM8K))
        self.pos += FRAME_SAMPLES_8K
        out = bytearray()
        for h in (0, FRAME_BYTES_PCM8K // 2):
            r = rtc.AudioFrame(bytearray(ref[h : h + 160]), RATE_8K, 1, 80)
            self.apm.process_reverse_stream(r)
            f = rtc.AudioFrame(bytearray(frame[h : h + 160]), RATE_8K, 1, 80)
            self.apm.process_stream(f)
            out += bytes(f.data.cast("B"))
        return bytes(out)


class RnNoise(Front):
    """RNNoise from the pyrnnoise wheel's library: 8 kHz -> 48 kHz -> RNNoise (480-sample frames) -> 8 kHz."""

    name = "rnnoise"

    def __init__(self) -> None:
        import soxr
        from pyrnnoise import rnnoise

        self.rn = rnnoise
        self.st = rnnoise.create()
        self.up = soxr.ResampleStream(RATE_8K, 48000, 1, dtype="float32", quality="HQ")
        self.down = soxr.ResampleStream(48000, RATE_8K, 1, dtype="float32", quality="HQ")
        self.buf = np.zeros(0, dtype=np.float32)
        self.outq = np.zeros(FRAME_SAMPLES_8K * 2, dtype=np.float32)  # primes the output queue (latency)
        self.frame = np.zeros(480, dtype=np.float32)
        self.ptr = self.frame.ctypes.data_as(ctypes.POINTER(ctypes.c_float))

    def near(self, frame: bytes) -> bytes:
        x = np.frombuffer(frame, dtype="<i2").astype(np.float32)
        self.buf = np.concatenate((self.buf, self.up.resample_chunk(x)))
        outs = []
        while self.buf.size >= 480:
            self.frame[:] = self.buf[:480]
            self.buf = self.buf[480:]
            self.rn.lib.rnnoise_process_frame(self.st, self.ptr, self.ptr)
            outs.append(self.down.resample_chunk(self.frame.copy()))
        if outs:
            self.outq = np.concatenate([self.outq, *outs])
        y = self.outq[:FRAME_SAMPLES_8K]
        self.outq = self.outq[FRAME_SAMPLES_8K:]
        if y.size < FRAME_SAMPLES_8K:
            y = np.concatenate((y, np.zeros(FRAME_SAMPLES_8K - y.size, dtype=np.float32)))
        return pcm(y)


class WebrtcNs(WebrtcApm):
    name = "webrtc-ns"

    def __init__(self) -> None:
        super().__init__(aec=False, ns=True)


FRONTS: dict[str, Callable[[], Front]] = {
    "none": Front, "numpy": NumpyAec, "speex": SpeexAec, "webrtc": WebrtcApm,
}  # fmt: skip
NS_FRONTS: dict[str, Callable[[], Front]] = {"none": Front, "rnnoise": RnNoise, "webrtc-ns": WebrtcNs}


# ---------------------------------------------------------------------------------------------------
# driving the real detector


def detector(upstream: bool = False):  # type: ignore[no-untyped-def]
    from bridge.media.vad import SpeechDetector
    from bridge.settings import Settings

    if upstream:
        return SpeechDetector(threshold=0.5, min_speech_ms=200, min_silence_ms=500)
    s = Settings()
    return SpeechDetector(
        threshold=s.barge_in_threshold, min_speech_ms=s.barge_in_min_speech_ms, min_silence_ms=300
    )


@dataclass
class Run:
    onsets_ms: list[int] = field(default_factory=list)  # when the local detector fired (end of the frame)
    upstream_onsets_ms: list[int] = field(default_factory=list)
    front_cpu_s: float = 0.0
    seconds: float = 0.0
    out: bytes = b""


def drive(front: Front, near: bytes, far: bytes | None, upstream: bool = True, keep: bool = False) -> Run:
    """Feed 20 ms frames: the far frame that starts playing now, then the caller frame, as the call would."""
    from bridge.media.vad import SpeechStart

    det = detector()
    up = detector(upstream=True) if upstream else None
    run = Run(seconds=len(near) / 2 / RATE_8K)
    out = bytearray() if keep else None
    cpu = 0.0
    clock = time.thread_time
    for i in range(0, len(near) - FRAME_BYTES_PCM8K + 1, FRAME_BYTES_PCM8K):
        t0 = clock()
        if far is not None and i < len(far):
            f = far[i : i + FRAME_BYTES_PCM8K]
            if len(f) == FRAME_BYTES_PCM8K and any(f):
                front.far(f, i / 2 / RATE_8K * 1000)
        clean = front.near(near[i : i + FRAME_BYTES_PCM8K])
        cpu += clock() - t0
        end_ms = (i + FRAME_BYTES_PCM8K) // 16
        for ev in det.feed(clean):
            if isinstance(ev, SpeechStart):
                run.onsets_ms.append(end_ms)
        if up is not None:
            for ev in up.feed(clean):
                if isinstance(ev, SpeechStart):
                    run.upstream_onsets_ms.append(end_ms)
        if out is not None:
            out += clean
    run.front_cpu_s = cpu
    if out is not None:
        run.out = bytes(out)
    return run


# ---------------------------------------------------------------------------------------------------
# scenarios


@dataclass
class Material:
    bot: list[np.ndarray]
    callers: list[np.ndarray]
    backchannels: list[np.ndarray]
    babble_src: np.ndarray


def material() -> Material:
    bot = [trim(speech(t, "piper")) for t in BOT_LINES] + [trim(speech(t, "en-us")) for t in BOT_LINES[:3]]
    callers = []
    for i, text in enumerate(CALLER_LINES):
        voice = ["piper", *ESPEAK_VOICES][i % 5]
        callers.append(trim(speech(text, voice)))
    backs = [trim(speech(t, v)) for t in BACKCHANNELS for v in ("en-gb", "en-us+f3")]
    backs = [b[: int(0.5 * RATE_8K)] for b in backs]
    babble = np.concatenate(
        [trim(speech(t, v)) for t, v in zip(CALLER_LINES, ESPEAK_VOICES * 2, strict=False)]
    )
    return Material(bot, callers, backs, babble)


def bot_stream(m: Material, seconds: float, rng: np.random.Generator) -> np.ndarray:
    parts: list[np.ndarray] = []
    total = 0
    while total < seconds * RATE_8K:
        b = db_gain(m.bot[int(rng.integers(len(m.bot)))], BOT_DBFS)
        gap = np.zeros(int(rng.uniform(0.2, 0.8) * RATE_8K))
        parts += [b, gap]
        total += len(b) + len(gap)
    return np.concatenate(parts)[: int(seconds * RATE_8K)]


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def main() -> None:
    t_start = time.monotonic()
    load_before = os.getloadavg()
    rng = np.random.default_rng(2024)
    m = material()
    path = EchoPath()
    fronts = {k: v for k, v in FRONTS.items()}
    for name, make in (("speex", SpeexAec), ("webrtc", WebrtcApm)):
        try:  # candidates only: libspeexdsp1 (Debian) and livekit (PyPI) are not project dependencies
            make()
        except Exception as exc:
            print(f"{name} front unavailable: {exc}", file=sys.stderr)
            fronts.pop(name)
    lines: list[str] = []

    # -- 1. echo only: false barge-ins per bot-minute -------------------------------------------------
    echo_conds = [(d, e) for d in (50, 150, 250, 400) for e in (10, 15, 20, 30)]
    seg_s = 600.0 / len(echo_conds)  # 10 bot-minutes in all at ERL >= 10 dB
    stress = [(150, 6), (300, 6)]
    echo_rows: dict[str, dict[str, float]] = {k: {} for k in fronts}
    per_cond: dict[tuple[int, int], dict[str, tuple[int, int]]] = {}
    erle: dict[str, list[float]] = {k: [] for k in fronts}
    for delay, erl in echo_conds + stress:
        s = seg_s if erl >= 10 else 30.0
        bot = bot_stream(m, s, rng)
        near = ulaw(path.apply(bot, delay, erl))
        far = pcm(bot)
        per_cond[(delay, erl)] = {}
        for name, make in fronts.items():
            r = drive(make(), near, far, keep=True)
            per_cond[(delay, erl)][name] = (len(r.onsets_ms), len(r.upstream_onsets_ms))
            if erl >= 10:
                row = echo_rows[name]
                row["false"] = row.get("false", 0) + len(r.onsets_ms)
                row["up_false"] = row.get("up_false", 0) + len(r.upstream_onsets_ms)
                row["minutes"] = row.get("minutes", 0) + s / 60
                row["cpu"] = row.get("cpu", 0) + r.front_cpu_s
                row["secs"] = row.get("secs", 0) + r.seconds
                o = np.frombuffer(r.out, dtype="<i2").astype(np.float64)
                n_in = np.frombuffer(near, dtype="<i2").astype(np.float64)[: len(o)]
                half = len(o) // 2  # after convergence
                erle[name].append(10 * np.log10(np.sum(n_in[half:] ** 2) / max(np.sum(o[half:] ** 2), 1.0)))
        print(f"echo {delay} ms {erl} dB: {per_cond[(delay, erl)]}", flush=True)

    # -- 2. barge-in over the bot (double talk) --------------------------------------------------------
    @dataclass
    class Stat:
        lat: list[float] = field(default_factory=list)
        missed: int = 0
        false: int = 0
        trials: int = 0
        up_lat: list[float] = field(default_factory=list)
        up_missed: int = 0

    barge_conds = [
        ("clean, ERL 10, 150 ms", 150, 10, None, 0.0, BOT_DBFS),
        ("clean, ERL 20, 300 ms", 300, 20, None, 0.0, BOT_DBFS),
        ("quiet caller (-28 dBFS), ERL 10", 150, 10, None, 0.0, -28.0),
        ("pink SNR 10, ERL 15", 250, 15, "pink", 10.0, BOT_DBFS),
        ("car SNR 5, ERL 15", 150, 15, "car", 5.0, BOT_DBFS),
        ("babble SNR 10, ERL 15", 150, 15, "babble", 10.0, BOT_DBFS),
        ("cold start (no warm-up), ERL 15", 200, 15, None, 0.0, BOT_DBFS),
    ]
    barge: dict[str, dict[str, Stat]] = {}
    for label, delay, erl, nkind, snr, level in barge_conds:
        barge[label] = {k: Stat() for k in fronts}
        for t in range(len(m.callers)):
            warm = 0.0 if label.startswith("cold") else 4.0
            bot = bot_stream(m, warm + 4.0, rng)
            caller = db_gain(m.callers[t], level)
            onset = int((warm + rng.uniform(0.6, 2.0)) * RATE_8K)
            near_x = path.apply(bot, delay, erl)
            near_x = np.concatenate([near_x, np.zeros(max(0, onset + len(caller) + RATE_8K - len(near_x)))])
            near_x[onset : onset + len(caller)] += caller
            if nkind is not None:
                near_x += noise(nkind, len(near_x), snr, rng, m.babble_src)
            near = ulaw(near_x)
            far = pcm(bot)
            onset_ms = onset * 1000 // RATE_8K
            end_ms = (onset + len(caller)) * 1000 // RATE_8K
            for name, make in fronts.items():
                r = drive(make(), near, far)
                st = barge[label][name]
                st.trials += 1
                before = [x for x in r.onsets_ms if x < onset_ms]
                after = [x for x in r.onsets_ms if onset_ms <= x <= end_ms + 300]
                st.false += len(before)
                if after:
                    st.lat.append(after[0] - onset_ms)
                else:
                    st.missed += 1
                up_after = [x for x in r.upstream_onsets_ms if onset_ms <= x <= end_ms + 500]
                if up_after:
                    st.up_lat.append(up_after[0] - onset_ms)
                else:
                    st.up_missed += 1
        print(
            f"barge {label}: "
            + ", ".join(f"{k}: miss {v.missed} false {v.false}" for k, v in barge[label].items()),
            flush=True,
        )

    # -- 3. other sounds while the bot talks (echo ERL 15, 150 ms): backchannels, DTMF, music, noise ----
    from tests.helpers.speech import dtmf_tone

    others: dict[str, dict[str, tuple[int, int]]] = {}
    t_music = np.arange(int(4 * RATE_8K)) / RATE_8K
    music = sum(
        np.sin(2 * np.pi * f0 * t_music) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t_music + f0))
        for f0 in (262, 330, 392, 523)
    )
    music = db_gain(np.asarray(music) * 1000, BOT_DBFS - 6)
    dtmf = np.concatenate(
        [np.frombuffer(dtmf_tone(dg, 120, dbfs=-16.0), dtype="<i2").astype(np.float64) for dg in "123#"] * 1
    )
    dtmf = np.concatenate([np.concatenate([x, np.zeros(800)]) for x in np.split(dtmf, 4)])
    events: list[tuple[str, np.ndarray | None, str | None, float]] = [
        ("backchannel 200-500 ms", None, None, 0.0),
        ("DTMF 4 digits (-16 dBFS)", dtmf, None, 0.0),
        ("music-like (-26 dBFS)", music, None, 0.0),
        ("pink noise SNR 0", None, "pink", 0.0),
        ("car noise SNR 0", None, "car", 0.0),
        ("babble SNR 10", None, "babble", 10.0),
        ("babble SNR 0", None, "babble", 0.0),
    ]
    for label, sig, nkind, snr in events:
        others[label] = {}
        trials = m.backchannels if label.startswith("backchannel") else [sig] if sig is not None else [None]
        for name, make in fronts.items():
            hits = 0
            for tr in trials:
                bot = bot_stream(m, 8.0, rng)
                near_x = path.apply(bot, 150, 15)
                if tr is not None:
                    at = int(2.5 * RATE_8K)
                    near_x[at : at + len(tr)] += tr if label.startswith("DTMF") else db_gain(tr, BOT_DBFS)
                if nkind is not None:
                    near_x += noise(nkind, len(near_x), snr, rng, m.babble_src)
                r = drive(make(), ulaw(near_x), pcm(bot))
                hits += min(1, len(r.onsets_ms)) if label.startswith("backchannel") else len(r.onsets_ms)
            others[label][name] = (hits, len(trials))
        print(f"other {label}: {others[label]}", flush=True)

    # -- 4. no bot: caller speech detection, clean and in noise, each noise front -----------------------
    ns_rows: dict[str, dict[str, Stat]] = {}
    ns_fronts = dict(NS_FRONTS)
    ns_fronts["numpy-aec"] = NumpyAec
    try:
        RnNoise()
    except Exception as exc:
        print(f"rnnoise unavailable: {exc}", file=sys.stderr)
        ns_fronts.pop("rnnoise")
    if "webrtc" not in fronts:
        ns_fronts.pop("webrtc-ns")
    ns_cost: dict[str, list[float]] = {k: [0.0, 0.0] for k in ns_fronts}
    for label, nkind, snr in [
        ("clean", None, 0.0),
        ("pink SNR 5", "pink", 5.0),
        ("car SNR 0", "car", 0.0),
        ("babble SNR 5", "babble", 5.0),
        ("noise only SNR 0 (pink+car)", "both", 0.0),
    ]:
        ns_rows[label] = {k: Stat() for k in ns_fronts}
        for t in range(len(m.callers)):
            caller = db_gain(m.callers[t], BOT_DBFS)
            onset = int(rng.uniform(1.0, 2.0) * RATE_8K)
            x = np.zeros(onset + len(caller) + RATE_8K)
            if nkind != "both":
                x[onset : onset + len(caller)] += caller
            if nkind == "both":
                x += noise("pink", len(x), 3.0, rng, m.babble_src) + noise(
                    "car", len(x), 3.0, rng, m.babble_src
                )
            elif nkind is not None:
                x += noise(nkind, len(x), snr, rng, m.babble_src)
            near = ulaw(x)
            onset_ms = onset * 1000 // RATE_8K
            end_ms = (onset + len(caller)) * 1000 // RATE_8K
            for name, make in ns_fronts.items():
                r = drive(make(), near, None, upstream=False)
                ns_cost[name][0] += r.front_cpu_s
                ns_cost[name][1] += r.seconds
                st = ns_rows[label][name]
                st.trials += 1
                if nkind == "both":
                    st.false += len(r.onsets_ms)
                    continue
                st.false += len([x for x in r.onsets_ms if x < onset_ms])
                after = [x for x in r.onsets_ms if onset_ms <= x <= end_ms + 300]
                if after:
                    st.lat.append(after[0] - onset_ms)
                else:
                    st.missed += 1
        print(
            f"ns {label}: "
            + ", ".join(f"{k}: miss {v.missed} false {v.false}" for k, v in ns_rows[label].items()),
            flush=True,
        )

    # -- report ---------------------------------------------------------------------------------------
    elapsed = time.monotonic() - t_start
    load_after = os.getloadavg()
    out = lines
    out.append("# Barge-in: echo cancellation and noise suppression in front of the local VAD\n")
    out.append(
        f"Command: `.venv/bin/python -m bench bargein` ({elapsed:.0f} s wall). "
        f"Machine: {os.cpu_count()} cores, "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after (other helpers running).\n"
    )
    out.append(
        "Local detector: bridge/media/vad.py SpeechDetector with the default barge-in settings "
        "(threshold 0.5, min_speech_ms 64, min_silence_ms 300), Silero at 8 kHz, fed 20 ms frames. "
        "Upstream: the same detector with the engine's server-VAD defaults (threshold 0.5, "
        "200 ms) on the signal the front would send upstream. Echo path: loudspeaker band-pass "
        "350-3200 Hz + 40 ms decaying room response, delay and echo return loss (ERL) as listed, "
        "summed with the caller's speech and noise, then G.711 µ-law. Bot at -20 dBFS active level. "
        "CPU = thread CPU time of the front alone (far + near calls) per call-second.\n"
    )
    out.append("## 1. Echo only: false barge-ins (10 bot-minutes at ERL 10-30 dB, delays 50-400 ms)\n")
    out.append(
        "| front | bot-minutes | local false barge-ins | per bot-minute | upstream false | "
        "ERLE 2nd half (dB, mean) | CPU s per call-second |"
    )
    out.append("|---|---|---|---|---|---|---|")
    for name, row in echo_rows.items():
        out.append(
            f"| {name} | {row['minutes']:.1f} | {row['false']:.0f} | {row['false'] / row['minutes']:.2f} | "
            f"{row['up_false']:.0f} | {np.mean(erle[name]):.1f} | {row['cpu'] / row['secs']:.4f} |"
        )
    out.append("\nPer condition (local / upstream false barge-ins):\n")
    out.append("| delay ms | ERL dB | seconds | " + " | ".join(fronts) + " |")
    out.append("|---|---|---|" + "---|" * len(fronts))
    for (delay, erl), res in per_cond.items():
        s = seg_s if erl >= 10 else 30.0
        out.append(
            f"| {delay} | {erl} | {s:.1f} | " + " | ".join(f"{a} / {b}" for a, b in res.values()) + " |"
        )
    out.append(
        "\n## 2. Caller barges in over the bot (6 callers: Piper joe + 4 espeak-ng voices; 4 s warm-up "
        "of bot speech unless cold)\n"
    )
    out.append(
        "Latency = speech onset -> the frame on which the detector reported SpeechStart. "
        "False = a SpeechStart before the caller began (echo or noise).\n"
    )
    out.append(
        "| condition | front | trials | missed | false | latency p50 / p95 / max ms | "
        "upstream missed | upstream p50 ms |"
    )
    out.append("|---|---|---|---|---|---|---|---|")
    for label, per in barge.items():
        for name, st in per.items():
            out.append(
                f"| {label} | {name} | {st.trials} | {st.missed} | {st.false} | "
                f"{percentile(st.lat, 50):.0f} / {percentile(st.lat, 95):.0f} / "
                f"{max(st.lat) if st.lat else float('nan'):.0f} | {st.up_missed} | "
                f"{percentile(st.up_lat, 50):.0f} |"
            )
    out.append("\n## 3. Other sounds while the bot talks (echo 150 ms, ERL 15 dB; 8 s each)\n")
    out.append(
        "Backchannels: utterances detected / played (they are real speech: detecting them is correct "
        "for the VAD; whether they should cut the bot is policy). Others: false barge-ins.\n"
    )
    out.append("| sound | " + " | ".join(fronts) + " |")
    out.append("|---|" + "---|" * len(fronts))
    for label, res in others.items():
        out.append(
            f"| {label} | "
            + " | ".join(f"{a}/{b}" if label.startswith("backchannel") else f"{a}" for a, b in res.values())
            + " |"
        )
    out.append("\n## 4. No bot audio: caller speech detection with each noise front (6 callers)\n")
    out.append("| condition | front | missed | false | latency p50 / p95 / max ms | CPU s per call-second |")
    out.append("|---|---|---|---|---|---|")
    for label, per in ns_rows.items():
        for name, st in per.items():
            c = ns_cost[name]
            out.append(
                f"| {label} | {name} | {st.missed if not label.startswith('noise only') else '-'} | "
                f"{st.false} | {percentile(st.lat, 50):.0f} / {percentile(st.lat, 95):.0f} / "
                f"{max(st.lat) if st.lat else float('nan'):.0f} | {c[0] / max(c[1], 1e-9):.4f} |"
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(out) + "\n")
    print("\n".join(out))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
