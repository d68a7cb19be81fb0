"""A scriptable caller for a running bridge, over the Twilio protocol (what `ivr-bridge call` and
`ivr-bridge dialplan test` drive).

`Softphone.dial()` does what Twilio does for an incoming call: POST `/twilio/voice` (signed with
`X-Twilio-Signature` when an auth token is given), read the TwiML's `<Stream url>` and
`<Parameter>`s (the stream token among them), open the media stream (the upgrade signed too) and
start it. Then the line runs like a phone line: one 20 ms µ-law frame every 20 ms on absolute
deadlines (silence unless the caller is talking), DTMF events when keys are pressed; what the
bridge sends is played in real time by `MediaStreamClient` (marks echoed, `clear` honoured).
When the bridge ends the stream, `outcome()` asks `/twilio/continue` what Twilio would do next
(`<Dial>` = a transfer, else a hang-up), as Twilio does with the `<Connect action>` URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
import wave
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from twilio.request_validator import RequestValidator

from bridge.errors import BridgeError
from bridge.media import g711
from bridge.tools.twilio_media import FRAME_BYTES, FRAME_S, ULAW_SILENCE, MediaStreamClient

if TYPE_CHECKING:
    import httpx  # imported by the first webhook post: `ivr-bridge serve` builds this CLI's parser too

SPEECH_RMS = 150.0  # a 20 ms frame louder than this (PCM16 RMS) is bot speech, not silence or dither
FRAME_SAMPLES = FRAME_BYTES  # 8 kHz, 20 ms: 160 samples (1 byte each in G.711)


class SoftphoneError(BridgeError):
    """The bridge refused the call, or answered something that is not a media stream."""


@dataclass(frozen=True, slots=True)
class CallEvent:
    """Something the caller noticed, `t_s` seconds after the stream started."""

    t_s: float
    kind: str  # refused, connected, bot_speaking, bot_quiet, clear, closed, transfer, hangup
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the call ended, from the caller's side: `transfer` (to `target`), `hangup`, or `caller`
    (the caller hung up first)."""

    kind: str
    target: str = ""


def sign(auth_token: str, url: str, params: dict[str, str]) -> str:
    """`X-Twilio-Signature` for `url` and form `params`, as Twilio computes it (HMAC-SHA1)."""
    return str(RequestValidator(auth_token).compute_signature(url, params))


def is_speech(ulaw_frame: bytes) -> bool:
    x = np.frombuffer(g711.decode(ulaw_frame, "pcmu"), dtype="<i2").astype(np.float64)
    return bool(x.size) and float(np.sqrt(np.mean(x * x))) > SPEECH_RMS


def read_wav_8k(path: Path) -> bytes:
    """A WAV file as PCM16 8 kHz mono (other rates resampled, stereo mixed down)."""
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2:
            raise SoftphoneError(f"{path}: expected 16-bit PCM, got {8 * w.getsampwidth()}-bit")
        rate, channels = w.getframerate(), w.getnchannels()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1).astype("<i2")
    if rate != g711.RATE_8K:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(rate, g711.RATE_8K)
        y = resample_poly(data.astype(np.float64), g711.RATE_8K // g, rate // g)
        data = np.clip(np.round(y), -32768, 32767)
    return data.astype("<i2").tobytes()


def write_wav_8k(path: Path, pcm8k: bytes) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(g711.RATE_8K)
        w.writeframes(pcm8k)


def new_call_sid() -> str:
    return "CA" + uuid.uuid4().hex


@dataclass
class Softphone:
    """One call to the bridge at `base_url` (http://HOST:PORT), placed the way Twilio places it."""

    base_url: str
    caller: str = "+15555550123"
    called: str = "+15550100"
    auth_token: str | None = None  # TWILIO_AUTH_TOKEN of the bridge: sign webhooks and the upgrade
    call_sid: str = field(default_factory=new_call_sid)
    flow: str | None = None  # start this flow instead of the called number's (a `flow` parameter)
    on_event: Callable[[CallEvent], None] | None = None
    stream: MediaStreamClient | None = None
    events: list[CallEvent] = field(default_factory=list)
    started_at: float = 0.0
    _frames: deque[bytes] = field(default_factory=deque)
    _sent: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _hung_up: bool = False
    _outcome: Outcome | None = None
    _asking: asyncio.Task[Outcome] | None = None

    # -- placing the call ----------------------------------------------------------------------

    def _headers(self, url: str, params: dict[str, str]) -> dict[str, str]:
        return {"X-Twilio-Signature": sign(self.auth_token, url, params)} if self.auth_token else {}

    async def _post(self, path: str, form: dict[str, str]) -> httpx.Response:
        url = self.base_url.rstrip("/") + path
        import httpx

        async with httpx.AsyncClient(timeout=10.0) as http:
            return await http.post(url, data=form, headers=self._headers(url, form))

    async def dial(self) -> None:
        """Webhook, TwiML, media stream: the call is up when this returns (SoftphoneError if not)."""
        form = {
            "CallSid": self.call_sid,
            "AccountSid": "AC" + "0" * 32,
            "From": self.caller,
            "To": self.called,
            "CallStatus": "ringing",
            "Direction": "inbound",
        }
        r = await self._post("/twilio/voice", form)
        if r.status_code != 200:
            raise SoftphoneError(f"POST /twilio/voice answered {r.status_code}")
        root = ET.fromstring(r.text)
        stream = root.find("./Connect/Stream")
        if stream is None:
            said = " ".join((e.text or "").strip() for e in root.iter("Say"))
            kind = "busy" if root.find("Reject") is not None else "no stream"
            self._event("refused", f"{kind}: {said}".strip(": "))
            raise SoftphoneError(f"the bridge did not connect the call ({kind}) {said}".strip())
        params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
        if self.flow:
            params["flow"] = self.flow
        url = self._stream_url(stream.attrib["url"])
        self.stream = MediaStreamClient(
            url, call_sid=self.call_sid, custom_parameters=params, headers=self._headers(url, {})
        )
        await self.stream.open()
        await self.stream.start()
        self.started_at = time.monotonic()
        self._event("connected", f"flow {params.get('flow', '-')}")
        self._tasks = [asyncio.create_task(self._line()), asyncio.create_task(self._watch())]

    def _stream_url(self, twiml_url: str) -> str:
        """The TwiML's stream URL; a wss:// URL for a plain-http bridge (no TLS on 127.0.0.1, no
        BRIDGE_PUBLIC_URL) is reached as ws:// on the same host and path."""
        parts = urlsplit(twiml_url)
        if parts.scheme == "wss" and urlsplit(self.base_url).scheme == "http":
            return urlunsplit(("ws", *parts[1:]))
        return twiml_url

    # -- the caller's side -----------------------------------------------------------------------

    async def _line(self) -> None:
        stream = self.stream
        assert stream is not None
        t0 = time.monotonic()
        n = 0
        while stream.closed_at is None and not self._hung_up:
            frame = self._frames.popleft() if self._frames else ULAW_SILENCE
            try:
                await stream.send_media(frame)
            except Exception:  # the bridge closed the stream: the line is down
                break
            if not self._frames:
                self._sent.set()
            n += 1
            delay = t0 + n * FRAME_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        self._sent.set()

    async def play(self, pcm8k: bytes) -> None:
        """Talk: send PCM16 8 kHz as µ-law in real time; returns when all of it has gone out."""
        ulaw = g711.encode(pcm8k, "pcmu")
        ulaw += ULAW_SILENCE[: (-len(ulaw)) % FRAME_BYTES]
        self._sent.clear()
        self._frames.extend(ulaw[i : i + FRAME_BYTES] for i in range(0, len(ulaw), FRAME_BYTES))
        await self._sent.wait()

    async def press(self, digits: str, gap_s: float = 0.25) -> None:
        """Press keys (Twilio `dtmf` events), `gap_s` apart."""
        assert self.stream is not None
        for i, digit in enumerate(digits):
            if i:
                await asyncio.sleep(gap_s)
            if self.closed:
                return
            await self.stream.dtmf(digit)

    async def hang_up(self) -> None:
        """The caller hangs up (`stop`, then the socket closes)."""
        if self.stream is None or self._hung_up:
            return
        self._hung_up = True
        if self.stream.closed_at is None:
            with contextlib.suppress(Exception):
                await self.stream.stop()
            if self._outcome is None:
                self._outcome = Outcome("caller")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.stream is not None:
            await self.stream.close()

    # -- what the caller noticed -------------------------------------------------------------------

    @property
    def now_s(self) -> float:
        return time.monotonic() - self.started_at

    @property
    def closed(self) -> bool:
        return self.stream is None or self.stream.closed_at is not None

    def _event(self, kind: str, detail: str = "") -> None:
        event = CallEvent(round(self.now_s if self.started_at else 0.0, 3), kind, detail)
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    async def _watch(self) -> None:
        """Turn what the stream saw into events: the bot speaking and going quiet, clears, the end."""
        stream = self.stream
        assert stream is not None
        seen_played = seen_clears = 0
        speaking_since: float | None = None
        last_speech = 0.0
        while True:
            played = stream.played[seen_played:]
            seen_played += len(played)
            for frame in played:
                if is_speech(frame.payload):
                    if speaking_since is None:
                        speaking_since = frame.at
                        self._event("bot_speaking")
                    last_speech = frame.at
            if speaking_since is not None and time.monotonic() - last_speech > 0.5:
                self._event("bot_quiet", f"spoke {last_speech - speaking_since + FRAME_S:.1f} s")
                speaking_since = None
            for _ in stream.clears[seen_clears:]:
                seen_clears += 1
                self._event("clear", "the bridge dropped unplayed audio (barge-in)")
            if stream.closed_at is not None:
                if speaking_since is not None:
                    self._event("bot_quiet", f"spoke {last_speech - speaking_since + FRAME_S:.1f} s")
                marks = len(stream.marks_echoed)
                self._event("closed", f"code {stream.close_code}; {marks} marks echoed")
                if not self._hung_up:
                    outcome = await self.outcome()
                    self._event(outcome.kind, outcome.target)
                return
            await asyncio.sleep(0.05)

    async def wait_closed(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.closed:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def outcome(self) -> Outcome:
        """What Twilio would do once the stream ended: POST the `<Connect action>` URL
        (`/twilio/continue`) and read its TwiML (`<Dial>` = transfer)."""
        if self._outcome is not None:
            return self._outcome
        if self._asking is None:  # asked once: Twilio fetches the action URL once
            self._asking = asyncio.ensure_future(self._ask_continuation())
        return await asyncio.shield(self._asking)

    async def _ask_continuation(self) -> Outcome:
        r = await self._post("/twilio/continue", {"CallSid": self.call_sid, "CallStatus": "in-progress"})
        kind, target = "hangup", ""
        if r.status_code == 200:
            root = ET.fromstring(r.text)
            dial = root.find("Dial")
            if dial is not None:
                inner = [e.text or "" for e in dial]
                target = (dial.text or "").strip() or next((t.strip() for t in inner if t.strip()), "")
                kind = "transfer"
        self._outcome = Outcome(kind, target)
        return self._outcome

    # -- what was heard ------------------------------------------------------------------------------

    def heard_frames(self) -> list[tuple[int, bytes]]:
        """(frame index since the stream started, µ-law frame) of everything played."""
        if self.stream is None:
            return []
        t0 = self.started_at
        return [(max(0, round((p.at - t0) / FRAME_S)), p.payload) for p in list(self.stream.played)]

    def heard_pcm(self, start_s: float = 0.0, end_s: float | None = None) -> bytes:
        """PCM16 8 kHz of what the caller heard on the call's clock (silence where nothing played)."""
        frames = self.heard_frames()
        last = frames[-1][0] + 1 if frames else 0
        total = last if end_s is None else max(0, round(end_s / FRAME_S))
        first = max(0, round(start_s / FRAME_S))
        ulaw = bytearray(ULAW_SILENCE * max(0, total - first))
        for index, payload in frames:
            if first <= index < total:
                at = (index - first) * FRAME_BYTES
                ulaw[at : at + FRAME_BYTES] = payload
        return g711.decode(bytes(ulaw), "pcmu")

    def speech_segments(self, quiet_s: float = 0.7) -> list[tuple[float, float]]:
        """(start, end) seconds of each stretch of bot speech, split at `quiet_s` of silence."""
        segments: list[tuple[float, float]] = []
        for index, payload in self.heard_frames():
            if not is_speech(payload):
                continue
            t = index * FRAME_S
            if segments and t - segments[-1][1] <= quiet_s:
                segments[-1] = (segments[-1][0], t + FRAME_S)
            else:
                segments.append((t, t + FRAME_S))
        return segments

    def last_speech_s(self) -> float | None:
        segments = self.speech_segments()
        return segments[-1][1] if segments else None

    def save_heard(self, path: Path) -> float:
        """Write what was heard as a mono 8 kHz WAV; returns its length in seconds."""
        pcm = self.heard_pcm()
        write_wav_8k(path, pcm)
        return len(pcm) / 2 / g711.RATE_8K


def recognise(pcm8k: bytes, phrases: list[str] | None = None) -> str:
    """What pocketsphinx hears in `pcm8k` (the open model, or a small model of `phrases` with a
    garbage loop). Two passes: the first adapts the cepstral mean to this voice and line."""
    from bridge.speech.asr import Recognizer

    rec = Recognizer()
    rec.set_expected(phrases or None)
    rec.recognize(pcm8k)
    return rec.recognize(pcm8k).text


__all__ = [
    "CallEvent",
    "Outcome",
    "Softphone",
    "SoftphoneError",
    "is_speech",
    "read_wav_8k",
    "recognise",
    "sign",
    "write_wav_8k",
]
