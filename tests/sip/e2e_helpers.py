"""Helpers for the end-to-end SIP tests: the REAL app (uvicorn on 127.0.0.1, SIP service in trunk mode,
embedded engine, dialplan runner) driven by real SIP peers (SIPp, baresip).

- `bridge_app(...)`: serve `create_app(settings)` with SIP enabled on a free port; yields a `BridgeApp`.
- `RtpPeer`: the caller's media port (the `m=` port SIPp advertises). It records every RTP packet the
  bridge sends (arrival time on the test loop's monotonic clock) and can stream caller speech back
  from the same port on absolute 20 ms deadlines, so a test knows exactly when the speech began.
- `AppObserver`: a thread that samples `app.state.calls` (live `Call`s: runner position, actions,
  truncates) and the embedded engine's sessions (assistant items and their audio length) every 10 ms.
  It only reads: nothing in the bridge is replaced or patched.
- `recognise(pcm8k, phrases)`: pocketsphinx (the engine's own `Recognizer`) on what the caller heard.
"""

from __future__ import annotations

import asyncio
import audioop
import random
import threading
import time
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.media.g711 import RATE_8K
from bridge.settings import Settings
from bridge.telephony.rtp.packet import build_packet, parse_packet
from tests.helpers.servers import serve
from tests.sip.conftest import free_udp_port

SILENT_PCMU = b"\xff" * 160


# ---------------------------------------------------------------------------------------------------
# the app


@dataclass
class BridgeApp:
    base_url: str
    app: Any
    sip_port: int
    observer: AppObserver


@contextmanager
def bridge_app(dialplans: Path, **overrides: Any) -> Iterator[BridgeApp]:
    """The real bridge: `create_app` under uvicorn, SIP in trunk mode (INVITEs from 127.0.0.1 only)
    unless `overrides` say otherwise (e.g. sip_password + sip_port of a registrar), models preloaded,
    the embedded engine answering agent steps."""
    from bridge.app import create_app

    sip_port = free_udp_port()

    def make(port: int) -> Any:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "dialplans": dialplans,
            "sip_server": "127.0.0.1",
            "sip_user": "bridge",
            "sip_local_port": sip_port,
            "log_level": "WARNING",
        }
        values.update(overrides)
        return create_app(Settings(port=port, **values), preload_models=True)

    with serve(make) as (url, app):
        observer = AppObserver(app)
        observer.start()
        try:
            yield BridgeApp(url, app, sip_port, observer)
        finally:
            observer.stop()


# ---------------------------------------------------------------------------------------------------
# observing the app (read-only)


@dataclass
class CallView:
    """What a live `Call` looked like, sampled every 10 ms by `AppObserver`."""

    call_id: str
    called: str = ""
    positions: list[tuple[float, str, int]] = field(default_factory=list)  # (time, flow, step), changes
    actions: list[str] = field(default_factory=list)
    truncates: list[tuple[str, int]] = field(default_factory=list)  # as sent by the bridge's agent link
    barge_ins: int = 0
    last_seen: float = 0.0


@dataclass
class EngineItemView:
    """An assistant item of the embedded engine: longest audio seen and its latest length."""

    item_id: str
    max_audio_ms: float = 0.0
    audio_ms: float = 0.0
    transcript: str = ""


class AppObserver:
    def __init__(self, app: Any, period_s: float = 0.01) -> None:
        self.app = app
        self.period_s = period_s
        self.calls: dict[str, CallView] = {}  # by SIP Call-ID
        self.engine_items: dict[str, EngineItemView] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="app-observer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.sample()
            except RuntimeError:  # a set or dict changed size while we read it: next time
                continue

    def sample(self) -> None:
        now = time.monotonic()
        for call in list(self.app.state.calls):
            started = call.started
            if started is None:
                continue
            view = self.calls.get(started.call_id)
            if view is None:
                view = self.calls[started.call_id] = CallView(started.call_id, started.called)
            view.last_seen = now
            runner = call.runner
            if runner is not None:
                flow, index = runner.position
                if not view.positions or view.positions[-1][1:] != (flow, index):
                    view.positions.append((now, flow, index))
            view.actions = list(call.stats.actions)
            agent = call.agent
            truncates = list(call.stats.truncates) + (list(agent.truncates) if agent is not None else [])
            for entry in truncates:
                if entry not in view.truncates:
                    view.truncates.append(entry)
            view.barge_ins = max(view.barge_ins, call.stats.barge_ins, agent.barge_ins if agent else 0)
        engine = getattr(self.app.state, "engine", None)
        for conn in list(engine.sessions if engine is not None else ()):
            conversation = conn.session.conversation
            for item_id in conversation.ids():
                item = conversation.get(item_id)
                if item is None or item.data.get("role") != "assistant":
                    continue
                view_item = self.engine_items.setdefault(item_id, EngineItemView(item_id))
                view_item.audio_ms = item.audio_ms
                view_item.max_audio_ms = max(view_item.max_audio_ms, item.audio_ms)
                for part in item.data.get("content", ()):
                    if part.get("type") == "output_audio":
                        view_item.transcript = part.get("transcript", "") or view_item.transcript

    def call_for(self, called: str) -> CallView | None:
        found = [v for v in self.calls.values() if v.called == called]
        return found[-1] if found else None

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            await asyncio.sleep(0.02)
        return predicate()


# ---------------------------------------------------------------------------------------------------
# the caller's media port


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float  # loop.time() (monotonic seconds)
    payload_type: int
    sequence: int
    payload: bytes
    marker: bool = False  # first packet of a talkspurt (the bridge sets it after comfort silence)
    ssrc: int = 0

    @property
    def silent(self) -> bool:
        return self.payload == SILENT_PCMU


class _PeerProtocol(asyncio.DatagramProtocol):
    def __init__(self, peer: RtpPeer) -> None:
        self.peer = peer

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.peer._received(data, addr)


class RtpPeer:
    """The caller's RTP port: records what the bridge sends, streams caller audio to the bridge."""

    def __init__(self) -> None:
        self.port = 0
        self.arrivals: list[Arrival] = []
        self.bridge_addr: tuple[str, int] | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seq = random.getrandbits(16)
        self._ts = random.getrandbits(32)
        self._ssrc = random.getrandbits(32)
        self._first = asyncio.Event()

    async def open(self) -> RtpPeer:
        self._loop = asyncio.get_running_loop()
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _PeerProtocol(self), local_addr=("127.0.0.1", 0)
        )
        self._transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])
        return self

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def __aenter__(self) -> RtpPeer:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self._loop is not None
        try:
            packet = parse_packet(data)
        except ValueError:
            return
        if self.bridge_addr is None:
            self.bridge_addr = addr
            self._first.set()
        self.arrivals.append(
            Arrival(
                self._loop.time(),
                packet.payload_type,
                packet.sequence,
                packet.payload,
                packet.marker,
                packet.ssrc,
            )
        )

    async def wait_media(self, timeout_s: float = 10.0) -> None:
        await asyncio.wait_for(self._first.wait(), timeout_s)

    async def send_pcm(self, pcm8k: bytes, start_at: float | None = None) -> float:
        """Send PCM16 8 kHz as PCMU RTP to the bridge, one packet per 20 ms on absolute deadlines
        (from `start_at`, loop time; now if None). Returns the time the first packet was due."""
        assert self._loop is not None
        assert self._transport is not None
        assert self.bridge_addr is not None, "nothing received from the bridge yet: call wait_media()"
        loop = self._loop
        ulaw = audioop.lin2ulaw(pcm8k, 2)
        ulaw += b"\xff" * (-len(ulaw) % 160)
        start = loop.time() if start_at is None else start_at
        for n in range(len(ulaw) // 160):
            delay = start + n * 0.02 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            packet = build_packet(0, self._seq, self._ts, self._ssrc, ulaw[n * 160 : (n + 1) * 160], n == 0)
            self._seq = (self._seq + 1) & 0xFFFF
            self._ts = (self._ts + 160) & 0xFFFFFFFF
            if self._transport is None:
                break
            self._transport.sendto(packet, self.bridge_addr)
        return start

    # -- what the caller heard ---------------------------------------------------------------------

    def heard_ulaw(self, since: float = 0.0, until: float = float("inf"), ssrc: int | None = None) -> bytes:
        return b"".join(
            a.payload
            for a in self.arrivals
            if since <= a.at < until and a.payload_type == 0 and (ssrc is None or a.ssrc == ssrc)
        )

    def streams(self) -> set[int]:
        """SSRCs heard (several calls can share one media port: each bridge call has its own SSRC)."""
        return {a.ssrc for a in self.arrivals}

    def voiced(self, since: float = 0.0, until: float = float("inf")) -> list[Arrival]:
        return [a for a in self.arrivals if since <= a.at < until and a.payload_type == 0 and not a.silent]

    def silence_from(self, since: float, min_run: int = 15) -> Arrival | None:
        """The first packet after `since` that starts a run of at least `min_run` silent packets
        (the bridge stopped talking, not a quiet frame inside a sentence)."""
        run: list[Arrival] = []
        for arrival in self.arrivals:
            if arrival.at <= since or arrival.payload_type != 0:
                continue
            if arrival.silent:
                run.append(arrival)
                if len(run) >= min_run:
                    return run[0]
            else:
                run.clear()
        return None


def ulaw_to_pcm(ulaw: bytes) -> bytes:
    return audioop.ulaw2lin(ulaw, 2)


def trim_silence(ulaw: bytes) -> bytes:
    """Drop the comfort-silence packets (exactly 0xFF x 160) the bridge sends when it has nothing."""
    frames = [ulaw[i : i + 160] for i in range(0, len(ulaw), 160)]
    return b"".join(f for f in frames if f != SILENT_PCMU)


# ---------------------------------------------------------------------------------------------------
# whole calls, shared by the tests and bench/sip_e2e.py


def sipp_caller(workdir: Path, media_port: int, actions: str, wait_bye_ms: int) -> Path:
    """tests/sip/peers/uac_e2e.xml: INVITE with `media_port` (an RtpPeer) in the SDP, ACK, `actions`,
    then wait for the bridge's BYE (a timeout fails the call)."""
    from tests.sip.conftest import render

    return render(
        "uac_e2e.xml",
        workdir / "caller.xml",
        LISTEN_PORT=media_port,
        ACTIONS=actions,
        WAIT_BYE_MS=wait_bye_ms,
    )


def stream_action(wav: Path, lead_ms: int) -> str:
    """SIPp actions: after `lead_ms`, stream a µ-law WAV once from SIPp's media port (rtp_stream)."""
    return f'<pause milliseconds="{lead_ms}"/>\n  <nop><action><exec rtp_stream="{wav},1,0"/></action></nop>'


@dataclass
class BargeInCall:
    """One call where the caller talks over the agent's greeting (RTP sent by the test's RtpPeer)."""

    sipp: Any  # tests.sip.conftest.SippResult
    peer: RtpPeer
    view: CallView | None
    reply_start: float  # first packet of the greeting's talkspurt at the caller
    onset: float  # true speech onset of the interruption, as sent
    cut: Arrival | None  # first packet of the silence that followed

    @property
    def onset_to_silence_ms(self) -> float:
        return (self.cut.at - self.onset) * 1000 if self.cut is not None else float("nan")

    @property
    def heard_ms(self) -> int:
        """Greeting audio the caller received before the cut: every packet from the start of the
        greeting's talkspurt (its own quiet frames included), less the comfort silence the bridge
        sent if its playout ran dry (the silent run before each later talkspurt start)."""
        until = self.cut.at if self.cut is not None else float("inf")
        window = [a for a in self.peer.arrivals if self.reply_start <= a.at < until and a.payload_type == 0]
        heard = len(window)
        for i, arrival in enumerate(window):
            if arrival.marker and i > 0:
                j = i - 1
                while j >= 0 and window[j].silent:
                    heard -= 1
                    j -= 1
        return heard * 20


async def barge_in_call(
    bridge: BridgeApp,
    workdir: Path,
    interruption: bytes,
    *,
    service: str = "barge",
    talk_after_ms: int = 1500,
    wait_bye_ms: int = 25_000,
    stream_before: bool = False,
) -> BargeInCall:
    """SIPp calls `service` (an agent step with a long greeting); once the caller has heard
    `talk_after_ms` of it, the RtpPeer sends `interruption` (PCM16 8 kHz) then 1.5 s of silence.
    Until then the caller sends nothing (a phone with silence suppression), or with `stream_before`
    silence from the start of the media (as Twilio and most phones do), on the same 20 ms grid.
    Returns when SIPp has finished (the bridge hung up, or SIPp gave up)."""
    from tests.helpers.speech import silence, speech_span_ms
    from tests.sip.conftest import run_sipp

    onset_ms, _ = speech_span_ms(interruption)
    async with RtpPeer() as peer:
        scen = sipp_caller(workdir, peer.port, "", wait_bye_ms=wait_bye_ms)
        sipp = asyncio.create_task(
            run_sipp(
                scen, bridge.sip_port, service=service, workdir=workdir, timeout_s=wait_bye_ms // 1000 + 10
            )
        )
        line: asyncio.Task[float] | None = None
        try:
            await peer.wait_media()
            grid = asyncio.get_running_loop().time()
            if stream_before:
                line = asyncio.create_task(peer.send_pcm(silence(wait_bye_ms), start_at=grid))
            frames = talk_after_ms // 20
            if not await bridge.observer.wait_for(lambda: len(peer.voiced()) >= frames, 15):
                return BargeInCall(await sipp, peer, None, 0.0, 0.0, None)
            first = peer.voiced()[0]
            talkspurt = [a for a in peer.arrivals if a.at <= first.at and a.marker and a.payload_type == 0]
            reply_start = talkspurt[-1].at if talkspurt else first.at
            start_at = None
            if line is not None:
                line.cancel()
                now = asyncio.get_running_loop().time()
                start_at = grid + (int((now - grid) / 0.02) + 1) * 0.02  # the next slot of the same grid
            start = await peer.send_pcm(interruption + silence(1500), start_at=start_at)
        finally:
            if line is not None:
                line.cancel()
            result = await sipp
    onset = start + onset_ms / 1000
    await bridge.observer.wait_for(lambda: not bridge.app.state.calls, 3)
    view = next(
        (v for v in bridge.observer.calls.values() if v.called == service and v.last_seen >= reply_start),
        None,
    )
    return BargeInCall(result, peer, view, reply_start, onset, peer.silence_from(onset))


# ---------------------------------------------------------------------------------------------------
# audio files for the peers


def write_wav(path: Path, pcm8k: bytes, *, ulaw: bool = False) -> Path:
    """PCM16 8 kHz mono as a WAV (16-bit, or µ-law for SIPp's rtp_stream)."""
    if not ulaw:
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE_8K)
            w.writeframes(pcm8k)
        return path
    import struct

    data = audioop.lin2ulaw(pcm8k, 2)
    fmt = struct.pack("<HHIIHH", 7, 1, RATE_8K, RATE_8K, 1, 8)  # WAVE_FORMAT_MULAW
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def read_wav_pcm8k(path: Path) -> bytes:
    with wave.open(str(path)) as w:
        pcm = w.readframes(w.getnframes())
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
    if width != 2:
        raise ValueError(f"{path}: {8 * width}-bit, expected 16")
    if channels == 2:
        pcm = audioop.tomono(pcm, 2, 0.5, 0.5)
    if rate != RATE_8K:
        import numpy as np
        import soxr

        x = np.frombuffer(pcm, dtype="<i2")
        pcm = soxr.resample(x, rate, RATE_8K).astype("<i2").tobytes()
    return pcm


# ---------------------------------------------------------------------------------------------------
# recognising what the caller heard


def recognise(pcm8k: bytes, phrases: list[str] | None = None) -> str:
    """pocketsphinx on phone audio: open language model when `phrases` is None, else the engine's
    small domain LM built from `phrases` (distractors included by the caller of this function)."""
    from bridge.speech.asr import Recognizer

    rec = Recognizer()
    rec.set_expected(phrases)
    rec.recognize(pcm8k)  # warm the decoder's cepstral mean on this voice
    return rec.recognize(pcm8k).text


def word_overlap(expected: str, heard: str) -> float:
    from bridge.engine.responder import tokens

    want = set(tokens(expected))
    return len(want & set(tokens(heard))) / max(len(want), 1)


def correlation(a: bytes, b: bytes) -> float:
    """Peak normalised cross-correlation of two PCM16 signals (b searched inside a)."""
    import numpy as np
    from scipy.signal import correlate

    x = np.frombuffer(a, dtype="<i2").astype(np.float64)
    y = np.frombuffer(b, dtype="<i2").astype(np.float64)
    if len(x) < len(y) or not len(y):
        return 0.0
    num = correlate(x, y, mode="valid", method="fft")
    energy = np.convolve(x**2, np.ones(len(y)), mode="valid")
    denom = np.sqrt(np.maximum(energy, 1e-9) * float(np.sum(y**2)))
    return float(np.max(num / denom))
