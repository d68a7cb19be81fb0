"""Emulated Twilio callers for load runs: many Media Streams on one light event loop.

Each call does what Twilio does: POST the voice webhook, open the `<Stream>` of the TwiML with its
`<Parameter>`s, send `connected` + `start`, then one 20 ms µ-law `media` frame every 20 ms on
absolute deadlines (pre-encoded payloads, the JSON built by one f-string). The caller talks
(a real recorded prompt) then listens for `gap_s`, over and over, so the bridge's local VAD and the
stand-in's turn detector both fire.

What the bridge sends back is *played* by a simulated Twilio player, without a task per call:
`play_end` is when the audio received so far will have finished playing. A `mark` is echoed when
the player reaches it (a heap of due echoes, served by the 5 ms ticker), `clear` empties the
player. From that the run measures, inside the measuring window:

- underruns: a media frame arriving after the player ran dry in the middle of a response
  (a response starts when audio arrives after >= 0.5 s of idle player);
- lateness of each bot frame: arrival - max(response start, play start - LEAD_MS), clipped at 0
  (the bridge's pacer means to hand a frame over LEAD_MS before it plays; a peer that forwards
  everything at once is never late);
- turns: each caller utterance is answered if bot audio starts before the caller's next utterance;
- after `stop`: every call ends by sending `stop` while bot audio is flowing; everything the
  bridge sends after that is counted (all of it, and what arrives > 20 ms after, i.e. not just
  crossing on the wire).

The ticker's own lateness is the generator's event-loop lag, reported with the results.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import itertools
import json
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import httpx

from bench.loadgen.ws import WsClient, connect

FRAME_S = 0.02
TICK_S = 0.005
BUCKETS = round(FRAME_S / TICK_S)
LEAD_S = 0.100  # the bridge's playout lead (Playout lead_ms)
NEW_RESPONSE_IDLE_S = 0.5
AFTER_STOP_GRACE_S = 0.020
SILENCE_B64 = base64.b64encode(b"\xff" * 160).decode()


@dataclass
class Script:
    """The caller's line: `speech` frames (base64 µ-law) then `gap` frames of silence, repeated."""

    speech: list[str]
    gap_frames: int

    @property
    def cycle(self) -> int:
        return len(self.speech) + self.gap_frames


@dataclass
class Totals:
    placed: int = 0
    failed: int = 0
    refused: int = 0  # closed by the bridge before `stop` was sent (1013 etc.) or webhook refused
    dropped: int = 0  # closed by the bridge mid-call, after it had started
    underruns: int = 0
    underrun_ms: float = 0.0
    frames: int = 0
    lateness_ms: list[float] = field(default_factory=list)
    turns: int = 0
    answered: int = 0
    answer_ms: list[float] = field(default_factory=list)  # end of caller speech -> first bot audio
    after_stop: int = 0
    after_stop_late: int = 0
    stop_to_close_ms: list[float] = field(default_factory=list)
    clears: int = 0


class Call(WsClient):
    gen: Generator

    def setup(self, gen: Generator, index: int, call_sid: str, params: dict[str, str]) -> None:
        self.gen = gen
        self.index = index
        self.call_sid = call_sid
        self.stream_sid = f"MZ{index:032x}"
        self.params = params
        self.seq = 0
        self.chunk = 0
        self.pos = (index * 7919) % gen.script.cycle  # spread the talking phases
        self.speech_end: float | None = None
        self.pending_turn = False
        self.play_end = 0.0
        self.resp_start = 0.0
        self.want_stop = False
        self.stop_at: float | None = None
        self.stop_sent: float | None = None
        self.started = False
        self.closed_at: float | None = None
        self._prefix = '{"event":"media","sequenceNumber":"'
        self._mid = f'","streamSid":"{self.stream_sid}","media":{{"track":"inbound","chunk":"'

    def begin(self) -> None:
        self.send_text('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        self.seq += 1
        self.send_text(
            json.dumps(
                {
                    "event": "start",
                    "sequenceNumber": str(self.seq),
                    "streamSid": self.stream_sid,
                    "start": {
                        "streamSid": self.stream_sid,
                        "accountSid": "AC" + "0" * 32,
                        "callSid": self.call_sid,
                        "tracks": ["inbound"],
                        "customParameters": self.params,
                        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    },
                }
            )
        )
        self.started = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_at = time.monotonic()
        super().connection_lost(exc)

    # -- the caller's line (called by the ticker every 20 ms) ------------------------------------------

    def tick(self, now: float) -> None:
        if self.stop_sent is not None or not self._open:
            return
        if self.want_stop and self.stop_at is not None and now >= self.stop_at:
            self.send_stop(now)
            return
        script = self.gen.script
        pos = self.pos
        n_speech = len(script.speech)
        if pos == 0:
            self._turn_begins(now)
        payload = script.speech[pos] if pos < n_speech else SILENCE_B64
        if pos == n_speech:
            self.speech_end = now
            self.pending_turn = True
        self.pos = (pos + 1) % script.cycle
        self.seq += 1
        self.chunk += 1
        self.send_text(
            f'{self._prefix}{self.seq}{self._mid}{self.chunk}","timestamp":"{(self.chunk - 1) * 20}",'
            f'"payload":"{payload}"}}}}'
        )

    def _turn_begins(self, now: float) -> None:
        gen = self.gen
        if self.pending_turn and self.speech_end is not None and gen.in_window(self.speech_end):
            gen.totals.turns += 1  # the previous turn was never answered
        self.pending_turn = False

    def send_stop(self, now: float) -> None:
        self.seq += 1
        self.stop_sent = now
        self.send_text(
            f'{{"event":"stop","sequenceNumber":"{self.seq}","streamSid":"{self.stream_sid}",'
            f'"stop":{{"accountSid":"AC{"0" * 32}","callSid":"{self.call_sid}"}}}}'
        )

    # -- what the bridge sends ------------------------------------------------------------------------

    def on_text(self, text: str) -> None:
        now = time.monotonic()
        gen = self.gen
        totals = gen.totals
        if self.stop_sent is not None:
            totals.after_stop += 1
            if now - self.stop_sent > AFTER_STOP_GRACE_S:
                totals.after_stop_late += 1
            return
        if text.startswith('{"event":"media"') or text.startswith('{"event": "media"'):
            i = text.find('"payload"')
            j = text.find('"', text.find(":", i) + 1) + 1
            k = text.find('"', j)
            n = (k - j) * 3 // 4 - (text[k - 2 : k].count("="))
            self._media(now, n / 8000.0)
            return
        msg = json.loads(text)
        event = msg.get("event")
        if event == "mark":
            name = msg.get("mark", {}).get("name", "")
            at = self.play_end
            if at <= now:
                self.echo_mark(name)
            else:
                heapq.heappush(gen.marks, (at, next(gen.mark_seq), self, name))
        elif event == "clear":
            totals.clears += 1
            self.play_end = now
            for due in [m for m in gen.marks if m[2] is self]:
                self.echo_mark(due[3])
            gen.marks = [m for m in gen.marks if m[2] is not self]
            heapq.heapify(gen.marks)
        elif event == "media":  # another spelling than the two fast prefixes
            payload = msg.get("media", {}).get("payload", "")
            self._media(now, len(base64.b64decode(payload)) / 8000.0)

    def _media(self, now: float, seconds: float) -> None:
        gen = self.gen
        totals = gen.totals
        measuring = gen.in_window(now)
        if now > self.play_end + NEW_RESPONSE_IDLE_S:
            self.resp_start = now
            play_start = now
            if self.pending_turn and self.speech_end is not None:
                self.pending_turn = False
                if gen.in_window(self.speech_end):
                    totals.turns += 1
                    totals.answered += 1
                    totals.answer_ms.append((now - self.speech_end) * 1000.0)
        elif now > self.play_end:
            play_start = now
            if measuring:
                totals.underruns += 1
                totals.underrun_ms += (now - self.play_end) * 1000.0
        else:
            play_start = self.play_end
        if measuring:
            deadline = max(self.resp_start, play_start - LEAD_S)
            totals.lateness_ms.append(max(0.0, now - deadline) * 1000.0)
            totals.frames += 1
        self.play_end = play_start + seconds
        if self.want_stop and self.stop_at is None:
            self.stop_at = now  # bot audio is flowing: hang up now (at the next tick)

    def echo_mark(self, name: str) -> None:
        if self.stop_sent is not None or not self._open:
            return
        self.seq += 1
        self.send_text(
            f'{{"event":"mark","sequenceNumber":"{self.seq}","streamSid":"{self.stream_sid}",'
            f'"mark":{{"name":{json.dumps(name)}}}}}'
        )


class Generator:
    """All the callers of one run, served by one ticker task."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.calls: list[Call] = []
        self.buckets: list[list[Call]] = [[] for _ in range(BUCKETS)]
        self.marks: list[tuple[float, int, Call, str]] = []
        self.mark_seq = itertools.count()
        self.totals = Totals()
        self.lag_ms: list[float] = []
        self.window: tuple[float, float] = (float("inf"), float("inf"))
        self._ticker: asyncio.Task[None] | None = None

    def in_window(self, t: float) -> bool:
        return self.window[0] <= t < self.window[1]

    def start(self) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for call in self.calls:
            call.close()

    async def _tick(self) -> None:
        t0 = time.monotonic()
        k = 0
        while True:
            k += 1
            deadline = t0 + k * TICK_S
            delay = deadline - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            if self.in_window(now):
                self.lag_ms.append((now - deadline) * 1000.0)
            marks = self.marks
            while marks and marks[0][0] <= now:
                _, _, call, name = heapq.heappop(marks)
                call.echo_mark(name)
            for call in self.buckets[k % BUCKETS]:
                call.tick(now)
            if now - deadline > 1.0:  # hopelessly behind: resynchronise
                t0, k = now, 0

    # -- placing calls --------------------------------------------------------------------------------

    async def place(self, http: httpx.AsyncClient, base_url: str, index: int, *, peer: bool) -> Call | None:
        sid = f"CA{index:032x}"
        try:
            if peer:
                r = await http.post(base_url + "/incoming-call", data={"CallSid": sid})
            else:
                r = await http.post(
                    base_url + "/twilio/voice",
                    data={"CallSid": sid, "From": f"+1555{index:07d}", "To": "+15557650000"},
                )
            if r.status_code != 200:
                self.totals.refused += 1
                return None
            stream = ET.fromstring(r.text).find("./Connect/Stream")
            if stream is None:
                self.totals.refused += 1
                return None
            params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
            url = urlsplit(stream.attrib["url"])
            base = urlsplit(base_url)
            url = url._replace(scheme="ws", netloc=base.netloc)
            call = await connect(urlunsplit(url), Call)
        except (httpx.HTTPError, OSError, TimeoutError, ET.ParseError):
            self.totals.failed += 1
            return None
        call.setup(self, index, sid, params)
        call.begin()
        self.calls.append(call)
        self.buckets[index % BUCKETS].append(call)
        self.totals.placed += 1
        return call

    async def place_all(self, base_url: str, n: int, *, peer: bool, rate_per_s: float) -> None:
        async with httpx.AsyncClient(timeout=20) as http:
            tasks = []
            t0 = time.monotonic()
            for i in range(n):
                delay = t0 + i / rate_per_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(self.place(http, base_url, i, peer=peer)))
            await asyncio.gather(*tasks)

    async def hang_up_all(self, timeout_s: float = 8.0) -> None:
        """Every call sends `stop` while bot audio flows (or after `timeout_s` without any), then
        waits for the bridge to close the socket."""
        now = time.monotonic()
        for call in self.calls:
            if call.closed.done():
                self.totals.dropped += 1  # the bridge closed it mid-call
                continue
            call.want_stop = True
            if now < call.play_end:  # audio is playing right now
                call.stop_at = now
        deadline = now + timeout_s
        while time.monotonic() < deadline:
            if all(c.stop_sent is not None or c.closed.done() for c in self.calls):
                break
            await asyncio.sleep(0.05)
        for call in self.calls:
            if call.stop_sent is None and not call.closed.done():
                call.send_stop(time.monotonic())
        await asyncio.sleep(1.0)
        waits = [c.closed for c in self.calls if not c.closed.done()]
        if waits:
            await asyncio.wait(waits, timeout=2.0)
        for call in self.calls:
            if call.stop_sent is not None and call.closed_at is not None:
                self.totals.stop_to_close_ms.append((call.closed_at - call.stop_sent) * 1000.0)
            call.close()
