"""End-to-end calls through the real bridge app: the Twilio webhook, a caller line, what was heard.

`place_call()` does what Twilio does for an incoming call: POST /twilio/voice, read the TwiML's
`<Stream url>` and `<Parameter>`s, open the media stream with them and start it. The returned
`Caller` keeps the line alive the way Twilio does: one 20 ms µ-law frame every 20 ms on absolute
deadlines (silence unless the caller is talking), plus DTMF events. What the caller heard is the
emulator's `played` frames (real-time playout, marks echoed, `clear` honoured).

Other helpers read the bridge's state from the test thread (the app runs in its own thread and
loop; the reads are of plain attributes, copied before use) and tap the embedded engine's sessions
to see the events it sent upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from bridge.media import g711
from tests.helpers.twilio_emulator import FRAME_BYTES, FRAME_S, ULAW_SILENCE, Played, TwilioEmulator

SPEECH_RMS = 150.0  # a 20 ms frame louder than this (PCM16 RMS) is bot speech, not silence or dither
_sid_seq = 0


def new_call_sid() -> str:
    global _sid_seq
    _sid_seq += 1
    return f"CA{time.time_ns() & 0xFFFFFFFFFFFF:012x}{_sid_seq:020x}"


@dataclass
class Caller:
    """One caller on the line: the Twilio emulator plus a continuous inbound audio stream."""

    twilio: TwilioEmulator
    call_sid: str
    base_url: str
    started_at: float = 0.0
    _frames: deque[bytes] = field(default_factory=deque)
    _sent: asyncio.Event = field(default_factory=asyncio.Event)
    _line: asyncio.Task[None] | None = None

    async def begin(self) -> None:
        await self.twilio.open()
        await self.twilio.start()
        self.started_at = time.monotonic()
        self._line = asyncio.create_task(self._run_line())

    async def _run_line(self) -> None:
        t0 = time.monotonic()
        n = 0
        while self.twilio.closed_at is None:
            frame = self._frames.popleft() if self._frames else ULAW_SILENCE
            try:
                await self.twilio.send_media(frame)
            except Exception:  # the bridge closed the stream: the line is down
                return
            if not self._frames:
                self._sent.set()
            n += 1
            delay = t0 + n * FRAME_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    async def say(self, pcm8k: bytes, *, tail_s: float = 0.0) -> tuple[float, float]:
        """Talk (PCM16 8 kHz, sent as µ-law), then `tail_s` of silence; returns when all of it has
        gone out, with the (start, end-of-speech) times it was sent."""
        ulaw = g711.encode(pcm8k, "pcmu")
        ulaw += ULAW_SILENCE[: (-len(ulaw)) % FRAME_BYTES]
        self._sent.clear()
        start = time.monotonic() + FRAME_S * len(self._frames)
        self._frames.extend(ulaw[i : i + FRAME_BYTES] for i in range(0, len(ulaw), FRAME_BYTES))
        end = start + len(ulaw) / 8000
        self._frames.extend([ULAW_SILENCE] * round(tail_s / FRAME_S))
        await self._sent.wait()
        return start, end

    async def press(self, digit: str) -> float:
        now = time.monotonic()
        await self.twilio.dtmf(digit)
        return now

    async def hang_up(self) -> None:
        with contextlib.suppress(Exception):
            await self.twilio.stop()
        await self.close()

    async def close(self) -> None:
        if self._line is not None:
            self._line.cancel()
        await self.twilio.close()

    # -- what the caller heard ---------------------------------------------------------------

    def speech_frames(self, after: float = 0.0, before: float = float("inf")) -> list[Played]:
        return [p for p in list(self.twilio.played) if after <= p.at < before and is_speech(p.payload)]

    def heard(self, after: float = 0.0, before: float = float("inf")) -> bytes:
        """PCM16 8 kHz of everything played between the two times (silence included)."""
        frames = [p.payload for p in list(self.twilio.played) if after <= p.at < before]
        return g711.decode(b"".join(frames), "pcmu")

    async def wait_speech(self, after: float, timeout: float = 10.0) -> float:
        """When the bot started being heard after `after`."""
        deadline = time.monotonic() + timeout
        while True:
            frames = self.speech_frames(after)
            if frames:
                return frames[0].at
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing heard within {timeout} s")
            await asyncio.sleep(0.01)

    async def wait_quiet(
        self, after: float, quiet_s: float = 0.8, timeout: float = 30.0
    ) -> tuple[float, float]:
        """Wait for the bot to speak after `after` and then stay quiet for `quiet_s` (or the stream
        to close); returns (first, last) speech frame times."""
        first = await self.wait_speech(after, timeout)
        deadline = time.monotonic() + timeout
        while True:
            last = self.speech_frames(after)[-1].at
            now = time.monotonic()
            if now - last >= quiet_s or self.twilio.closed_at is not None:
                return first, last
            if now > deadline:
                raise TimeoutError(f"the bot kept talking for {timeout} s")
            await asyncio.sleep(0.02)

    async def wait_closed(self, timeout: float = 20.0) -> float:
        await self.twilio.wait_for(lambda: self.twilio.closed_at is not None, timeout=timeout)
        assert self.twilio.closed_at is not None
        return self.twilio.closed_at


def is_speech(ulaw_frame: bytes) -> bool:
    x = np.frombuffer(g711.decode(ulaw_frame, "pcmu"), dtype="<i2").astype(np.float64)
    return bool(x.size) and float(np.sqrt(np.mean(x * x))) > SPEECH_RMS


async def place_call(
    base_url: str, *, caller: str = "+15551230000", called: str = "+15557650000", call_sid: str | None = None
) -> Caller:
    """An incoming call the way Twilio places it: webhook, TwiML, media stream with its parameters."""
    sid = call_sid or new_call_sid()
    async with httpx.AsyncClient() as http:
        r = await http.post(base_url + "/twilio/voice", data={"CallSid": sid, "From": caller, "To": called})
    r.raise_for_status()
    root = ET.fromstring(r.text)
    stream = root.find("./Connect/Stream")
    assert stream is not None, r.text
    params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    twilio = TwilioEmulator(stream.attrib["url"], call_sid=sid, custom_parameters=params)
    c = Caller(twilio, sid, base_url)
    await c.begin()
    return c


async def post_form(base_url: str, path: str, form: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(base_url + path, data=form)


async def healthz(base_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        r = await http.get(base_url + "/healthz")
    r.raise_for_status()
    result: dict[str, Any] = r.json()
    return result


# -- the bridge's side, read from the test thread ---------------------------------------------------


def live_call(app: Any, call_sid: str) -> Any | None:
    """The running `Call` for this CallSid (None before its stream starts or after it ends)."""
    for _ in range(5):
        try:
            calls = list(app.state.calls)
            break
        except RuntimeError:  # the set changed size while copying: try again
            continue
    else:
        return None
    for call in calls:
        if call.started is not None and call.started.call_id == call_sid:
            return call
    return None


async def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not met within {timeout} s")
        await asyncio.sleep(0.01)


async def wait_position(app: Any, call_sid: str, flow: str, index: int = 0, timeout: float = 15.0) -> Any:
    """Wait until the call's runner stands at `flow[index]`; returns the Call."""

    def at() -> Any:
        call = live_call(app, call_sid)
        runner = call.runner if call is not None else None
        return call if runner is not None and runner.position == (flow, index) else None

    return await wait_until(at, timeout, f"call {call_sid} at {flow}[{index}]")


class EngineTap:
    """Records the events each embedded-engine session emits (wraps `take_events` of sessions
    already open or opened later; nothing is changed on the way)."""

    def __init__(self, app: Any) -> None:
        self._services = app.state.engine
        self.events: list[tuple[float, str, dict[str, Any]]] = []  # (time, session id, event)
        self._tapped: set[int] = set()

    def poll(self) -> int:
        """Tap sessions that are new since the last call; returns how many are tapped in all."""
        for _ in range(5):
            try:
                conns = list(self._services.sessions)
                break
            except RuntimeError:
                continue
        else:
            return len(self._tapped)
        for conn in conns:
            session = conn.session
            if id(session) in self._tapped:
                continue
            self._tapped.add(id(session))
            original = session.take_events

            def take(original: Callable[[], list[dict[str, Any]]] = original, sid: str = session.id) -> Any:
                events = original()
                now = time.monotonic()
                for e in events:
                    self.events.append((now, sid, e))
                return events

            session.take_events = take
        return len(self._tapped)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, _, e in list(self.events) if e.get("type") == kind]


# -- recognising what the caller heard ---------------------------------------------------------------


def recognise(pcm8k: bytes, phrases: Sequence[str] | None = None) -> str:
    """What pocketsphinx hears in `pcm8k`: the open language model, or a small LM of `phrases`
    (with its garbage loop, so nothing is forced onto them). Two passes: the first adapts the
    cepstral mean to this voice and line."""
    from bridge.speech.asr import Recognizer

    rec = Recognizer()
    rec.set_expected(list(phrases) if phrases else None)
    rec.recognize(pcm8k)
    return rec.recognize(pcm8k).text


def trim_silence(pcm8k: bytes, pad_ms: int = 200) -> bytes:
    """Cut leading/trailing silence (keeping `pad_ms`), so recognition sees one utterance."""
    x = np.frombuffer(pcm8k, dtype="<i2").astype(np.float64)
    n = len(x) // 160
    if n == 0:
        return pcm8k
    rms = np.sqrt(np.mean(x[: n * 160].reshape(n, 160) ** 2, axis=1))
    loud = np.nonzero(rms > SPEECH_RMS)[0]
    if loud.size == 0:
        return pcm8k
    pad = pad_ms // 20
    a, b = max(0, loud[0] - pad), min(n, loud[-1] + 1 + pad)
    return pcm8k[a * 320 : b * 320]


def words_of(text: str) -> set[str]:
    return {w.strip(".,!?;:'\"").lower() for w in text.split()} - {""}


def overlap(expected: str, heard: str) -> float:
    want = words_of(expected)
    return len(want & words_of(heard)) / max(1, len(want))
