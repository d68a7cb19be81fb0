"""The SIP leg against real third-party peers on 127.0.0.1: SIPp callers, Kamailio as registrar.

Each test starts the bridge's SIP service in-process, drives it with a peer, and asserts on what
went over the wire: status codes (SIPp's exit code fails on any unexpected message), the audio the
bridge received, the audio the caller's media port received, packet counts and SSRCs.
"""

from __future__ import annotations

import asyncio
import audioop
import itertools
import math
import socket
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from bridge.settings import Settings
from bridge.telephony.leg import AudioIn, CallEnded, CallStarted, Dtmf, MarkPlayed
from bridge.telephony.rtp.packet import parse_packet
from bridge.telephony.sip.leg import SipLeg
from bridge.telephony.sip.service import SipService, start_sip
from tests.helpers.sysdeps import asterisk_sound
from tests.sip.conftest import Kamailio, free_udp_port, render, run_sipp

pytestmark = pytest.mark.sip


@dataclass
class CallLog:
    started: CallStarted | None = None
    audio: list[bytes] = field(default_factory=list)
    digits: list[str] = field(default_factory=list)
    marks: list[str] = field(default_factory=list)
    ended: str = ""
    stats: dict[str, float] = field(default_factory=dict)


class Recorder:
    """A stand-in for the call shell: records what the leg reports; optional per-call script."""

    def __init__(self, script=None) -> None:
        self.calls: list[CallLog] = []
        self.script = script

    async def __call__(self, leg: SipLeg) -> None:
        log = CallLog()
        self.calls.append(log)
        script = None
        async for event in leg.events():
            if isinstance(event, CallStarted):
                log.started = event
                if self.script is not None:
                    script = asyncio.create_task(self.script(leg, log))
            elif isinstance(event, AudioIn):
                log.audio.append(event.payload)
            elif isinstance(event, Dtmf):
                log.digits.append(event.digit)
            elif isinstance(event, MarkPlayed):
                log.marks.append(event.name)
            elif isinstance(event, CallEnded):
                log.ended = event.reason
        if script is not None:
            script.cancel()
        log.stats = leg.stats.as_dict()


async def played(log: CallLog, mark: str) -> None:
    while mark not in log.marks:  # noqa: ASYNC110 - the recorder appends marks as the leg reports them
        await asyncio.sleep(0.02)


def prompt_ulaw(seconds: float) -> list[bytes]:
    with wave.open(str(asterisk_sound("demo-echotest"))) as w:
        pcm = w.readframes(int(8000 * seconds))
    ulaw = audioop.lin2ulaw(pcm, 2)
    return [ulaw[i : i + 160] for i in range(0, len(ulaw) - 159, 160)]


class MediaSink:
    """The caller's media port, played by the test: records (arrival time, RTP packet)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.packets: list[tuple[float, bytes]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 2048)
            self.packets.append((loop.time(), data))

    def __enter__(self) -> MediaSink:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
        self.sock.close()


async def trunk_service(recorder, **kw) -> SipService:
    settings = Settings(sip_server="127.0.0.1", sip_user="bridge", sip_local_port=free_udp_port())
    return await start_sip(settings, recorder, bind_host="127.0.0.1", rtp_ports=None, **kw)


def snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    noise = ref - test
    return 10 * math.log10(float(np.sum(ref**2)) / max(float(np.sum(noise**2)), 1e-9))


def ulaw_pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(audioop.ulaw2lin(data, 2), dtype=np.int16).astype(np.float64)


async def test_caller_speech_and_dtmf_reach_the_leg(speech_ulaw, tmp_path: Path) -> None:
    ulaw_wav, pcm_wav = speech_ulaw
    rec = Recorder()
    svc = await trunk_service(rec)
    try:
        scen = render("uac_stream.xml", tmp_path / "s.xml", CALLER_ULAW_WAV=ulaw_wav, TALK_MS=4000)
        res = await run_sipp(scen, svc.port, workdir=tmp_path)
        assert res.returncode == 0, res.errors or res.stderr
        await asyncio.sleep(0.2)
    finally:
        await svc.stop()
    [call] = rec.calls
    assert call.started is not None
    assert call.started.called == "bridge"
    assert call.started.caller == "sipp"
    assert call.started.encoding == "pcmu"
    assert call.digits == ["1"]
    assert call.ended == "bye"
    frames = list(call.audio)
    quiet = b"\xff" * 160  # the receiver's silence while SIPp sends nothing (before and after the WAV)
    while frames and frames[0] == quiet:
        frames.pop(0)
    while frames and frames[-1] == quiet:
        frames.pop()
    got = b"".join(frames)
    assert len(got) > 8000 * 3.5  # ~4 s of speech (frames after the jitter buffer)
    # SIPp sends the WAV's µ-law bytes as they are: find where the received stream starts in it.
    with wave.open(str(pcm_wav)) as w:
        src_pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float64)
    sent = ulaw_wav.read_bytes()
    data_at = sent.find(b"data") + 8
    probe = got[1600:1760]
    start = sent.find(probe) - 1600  # where got[0] is in the file (SIPp skips a fixed-size header)
    assert start >= 0, "received audio does not appear in what SIPp sent"
    n = min(len(got), len(sent) - start) // 160 * 160
    assert got[:n] == sent[start : start + n]  # bit-exact: no 8-bit path, no loss on loopback
    skip = max(0, data_at - start)
    got_pcm = ulaw_pcm(got[skip:n])
    ref = src_pcm[start + skip - data_at :][: len(got_pcm)]
    got_pcm = got_pcm[: len(ref)]
    snr = snr_db(ref, got_pcm)
    assert snr > 33.0, f"SNR {snr:.1f} dB vs the 16-bit original (pyVoIP's 8-bit path: 32.6 dB)"


async def test_bridge_hangs_up_with_a_bye_the_caller_accepts_and_heard_the_prompt(tmp_path: Path) -> None:
    prompt = prompt_ulaw(2.0)

    async def play_then_hang_up(leg: SipLeg, log: CallLog) -> None:
        for frame in prompt:
            await leg.send_audio(frame)
        await leg.send_mark("prompt")
        await played(log, "prompt")
        await leg.hang_up()

    rec = Recorder(play_then_hang_up)
    svc = await trunk_service(rec)
    try:
        with MediaSink() as sink:
            scen = render("uac_wait_bye.xml", tmp_path / "s.xml", LISTEN_PORT=sink.port)
            res = await run_sipp(scen, svc.port, workdir=tmp_path)
            packets = [parse_packet(p) for _, p in sink.packets]
        # SIPp exits 0 only if our BYE reached it in-dialog and it could answer it
        assert res.returncode == 0, res.errors or res.stderr
        assert svc.status()["calls_active"] == 0
    finally:
        await svc.stop()
    [call] = rec.calls
    assert call.ended == "hangup"
    assert call.marks == ["prompt"]
    assert len({p.ssrc for p in packets}) == 1
    heard = b"".join(p.payload for p in packets if p.payload != b"\xff" * 160)
    assert heard == b"".join(prompt)  # every frame, in order, bit-exact


async def test_barge_in_clear_silences_rtp_within_one_frame(tmp_path: Path) -> None:
    prompt = prompt_ulaw(6.0)
    cleared_at: list[int] = []

    async def talk_then_barge_in(leg: SipLeg, log: CallLog) -> None:
        for frame in prompt:
            await leg.send_audio(frame)
        await leg.send_mark("reply")
        await asyncio.sleep(1.0)
        cleared_at.append(leg.sender.sequence)  # next packet the sender will stamp
        await leg.clear()
        await asyncio.sleep(0.5)
        await leg.hang_up()

    rec = Recorder(talk_then_barge_in)
    svc = await trunk_service(rec)
    try:
        with MediaSink() as sink:
            scen = render("uac_wait_bye.xml", tmp_path / "s.xml", LISTEN_PORT=sink.port)
            res = await run_sipp(scen, svc.port, workdir=tmp_path)
            packets = [parse_packet(p) for _, p in sink.packets]
        assert res.returncode == 0, res.errors or res.stderr
    finally:
        await svc.stop()
    [call] = rec.calls
    assert call.marks == ["reply"]  # the cleared mark is reported at once, as Twilio does
    first_silent = cleared_at[0]
    after = [p for p in packets if ((p.sequence - first_silent) & 0xFFFF) < 0x8000]
    assert after, "no packets after the clear"
    assert all(p.payload == b"\xff" * 160 for p in after)  # silent from the very next packet
    before = [p for p in packets if p not in after and p.payload != b"\xff" * 160]
    assert 40 <= len(before) <= 60  # about one second of the reply went out before the barge-in


async def test_cancel_before_answer_gets_487_and_no_answer(tmp_path: Path) -> None:
    rec = Recorder()
    svc = await trunk_service(rec, answer_delay_ms=3000)
    try:
        scen = render("uac_cancel.xml", tmp_path / "s.xml")
        res = await run_sipp(scen, svc.port, workdir=tmp_path)
        assert res.returncode == 0, res.errors or res.stderr
        status = svc.status()
    finally:
        await svc.stop()
    assert status["cancelled"] == 1
    assert status["calls_active"] == 0
    assert rec.calls == []  # the call was never answered


async def test_options_gets_200(tmp_path: Path) -> None:
    svc = await trunk_service(Recorder())
    try:
        res = await run_sipp(render("uac_options.xml", tmp_path / "s.xml"), svc.port, workdir=tmp_path)
        assert res.returncode == 0, res.errors or res.stderr
        assert svc.status()["options"] == 1
    finally:
        await svc.stop()


async def test_offer_without_g711_gets_488(tmp_path: Path) -> None:
    rec = Recorder()
    svc = await trunk_service(rec)
    try:
        res = await run_sipp(render("uac_bad_codec.xml", tmp_path / "s.xml"), svc.port, workdir=tmp_path)
        assert res.returncode == 0, res.errors or res.stderr
        assert svc.status()["calls_rejected"] == 1
    finally:
        await svc.stop()
    assert rec.calls == []


async def test_reinvite_keeps_one_stream_at_50_packets_per_second(tmp_path: Path) -> None:
    rec = Recorder()
    svc = await trunk_service(rec)
    try:
        with MediaSink() as sink:
            scen = render(
                "uac_reinvite.xml", tmp_path / "s.xml", LISTEN_PORT=sink.port, BEFORE_MS=2000, AFTER_MS=2500
            )
            res = await run_sipp(scen, svc.port, workdir=tmp_path)
            arrivals = list(sink.packets)
        assert res.returncode == 0, res.errors or res.stderr
    finally:
        await svc.stop()
    packets = [parse_packet(p) for _, p in arrivals]
    assert len({p.ssrc for p in packets}) == 1
    seqs = [p.sequence for p in packets]
    assert len(set(seqs)) == len(seqs)  # no second sender, no colliding sequence numbers
    assert all(((b - a) & 0xFFFF) == 1 for a, b in itertools.pairwise(seqs))
    span_s = arrivals[-1][0] - arrivals[0][0]
    rate = (len(arrivals) - 1) / span_s
    assert span_s > 4.0
    assert 47 <= rate <= 53, f"{len(arrivals)} packets in {span_s:.2f} s"


async def test_ten_concurrent_calls(speech_ulaw, tmp_path: Path) -> None:
    ulaw_wav, _ = speech_ulaw

    async def echo(leg: SipLeg, log: CallLog) -> None:
        sent = 0
        while True:
            while sent < len(log.audio):
                await leg.send_audio(log.audio[sent])
                sent += 1
            await asyncio.sleep(0.02)

    rec = Recorder(echo)
    svc = await trunk_service(rec)
    try:
        scen = render("uac_stream.xml", tmp_path / "s.xml", CALLER_ULAW_WAV=ulaw_wav, TALK_MS=3000)
        res = await run_sipp(scen, svc.port, calls=10, rate=10, workdir=tmp_path)
        assert res.returncode == 0, res.errors or res.stderr
        await asyncio.sleep(0.2)
    finally:
        await svc.stop()
    assert len(rec.calls) == 10
    assert len({c.started.call_id for c in rec.calls if c.started}) == 10
    for call in rec.calls:
        assert call.digits == ["1"]
        assert call.ended == "bye"
        assert len(call.audio) >= 140, [c.stats for c in rec.calls]  # ~3 s each, none mixed into another call


async def test_malformed_sip_is_answered_400_or_dropped_and_service_survives(tmp_path: Path) -> None:
    svc = await trunk_service(Recorder())
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    me = sock.getsockname()[1]
    try:
        junks = (b"\x00\x01\x02garbage", b"HELLO WORLD\r\n\r\n", b"INVITE sip:x SIP/2.0\r\n\xff\r\n\r\n")
        for junk in junks:
            sock.sendto(junk, ("127.0.0.1", svc.port))
        bad_cseq = (
            "INVITE sip:bridge@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bKx1\r\n"
            "From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:bridge@127.0.0.1>\r\nCall-ID: bad1\r\n"
            "CSeq: banana\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        sock.sendto(bad_cseq, ("127.0.0.1", svc.port))
        reply = await asyncio.wait_for(loop.sock_recv(sock, 4096), 2)
        assert reply.startswith(b"SIP/2.0 400 ")
        assert svc.status()["bad_messages"] >= 3
        res = await run_sipp(render("uac_options.xml", tmp_path / "s.xml"), svc.port, workdir=tmp_path)
        assert res.returncode == 0
    finally:
        sock.close()
        await svc.stop()


async def test_registers_with_kamailio_and_takes_a_call_through_it(
    kamailio: Kamailio, tmp_path: Path
) -> None:
    prompt = prompt_ulaw(1.0)

    async def greet_and_hang_up(leg: SipLeg, log: CallLog) -> None:
        for frame in prompt:
            await leg.send_audio(frame)
        await leg.send_mark("done")
        await played(log, "done")
        await leg.hang_up()

    rec = Recorder(greet_and_hang_up)
    settings = Settings(
        sip_server="127.0.0.1",
        sip_port=kamailio.port,
        sip_user="bridge",
        sip_password="secret",
        sip_local_port=free_udp_port(),
    )
    svc = await start_sip(settings, rec, bind_host="127.0.0.1", rtp_ports=None)
    try:
        assert await svc.wait_registered(5.0), svc.status()
        assert svc.status()["registration"] == "registered"
        with MediaSink() as sink:
            scen = render("uac_wait_bye.xml", tmp_path / "s.xml", LISTEN_PORT=sink.port)
            # through the proxy: Record-Route, our BYE must follow the route set back through Kamailio
            res = await run_sipp(scen, kamailio.port, workdir=tmp_path)
            heard = b"".join(parse_packet(p).payload for _, p in sink.packets)
        assert res.returncode == 0, res.errors or res.stderr
    finally:
        await svc.stop()
    [call] = rec.calls
    assert call.ended == "hangup"
    assert b"".join(prompt) in heard


async def test_wrong_password_is_reported_not_hanging(kamailio: Kamailio) -> None:
    settings = Settings(
        sip_server="127.0.0.1",
        sip_port=kamailio.port,
        sip_user="bridge2",
        sip_password="wrong",
        sip_local_port=free_udp_port(),
    )
    svc = await start_sip(settings, Recorder(), bind_host="127.0.0.1", rtp_ports=None)
    try:
        assert not await svc.wait_registered(5.0)
        status = svc.status()
        assert status["registration"] == "failed"
        assert "credentials" in status["last_error"]
    finally:
        await svc.stop()


async def test_silent_registrar_is_reported_within_the_timeout() -> None:
    settings = Settings(
        sip_server="127.0.0.1",
        sip_port=free_udp_port(),
        sip_user="bridge",
        sip_password="x",
        sip_local_port=free_udp_port(),
    )
    svc = await start_sip(settings, Recorder(), bind_host="127.0.0.1", rtp_ports=None, register_timeout_s=1.0)
    try:
        assert not await svc.wait_registered(3.0)
        assert "no response" in svc.status()["last_error"]
    finally:
        await svc.stop()


async def test_transfer_sends_a_blind_refer_then_leaves_the_call(tmp_path: Path) -> None:
    results: list[bool] = []

    async def transfer(leg: SipLeg, log: CallLog) -> None:
        results.append(await leg.transfer("+15550199"))

    rec = Recorder(transfer)
    svc = await trunk_service(rec)
    try:
        with MediaSink() as sink:
            scen = render("uac_refer.xml", tmp_path / "s.xml", LISTEN_PORT=sink.port)
            res = await run_sipp(scen, svc.port, workdir=tmp_path)
        # SIPp got the REFER, accepted it, reported success by NOTIFY, then got our BYE
        assert res.returncode == 0, res.errors or res.stderr
    finally:
        await svc.stop()
    assert results == [True]
    [call] = rec.calls
    assert call.ended == "transfer"
