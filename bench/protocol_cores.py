"""Protocol-core figures: per-message cost of the Twilio and Realtime cores, and close time.

- Twilio: `TwilioStream.receive` of one inbound 20 ms media frame; `media_message` build (vs
  json.dumps of the same object); `mark_message`.
- Realtime: `parse_server_event` of a 20 ms and a 100 ms `response.output_audio.delta` (24 kHz
  PCM16 and G.711); `append_audio_json` vs `encode_client_event` for one 20 ms append.
- Engine: one `response.output_audio.delta` event built by the session's `Outbox.audio_delta` (the
  per-frame path), and the same event through the typed class (`Outbox.emit(ResponseOutputAudioDelta)`).
- `RealtimeClient.close()`: wall time against a websockets server (answers the close) and against
  a raw TCP peer that never answers the close handshake (requirement: under 100 ms).

Run: `.venv/bin/python -m bench protocol_cores` (writes bench/results/protocol_cores.md).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve
from websockets.utils import accept_key

from bridge.engine.outbox import Outbox
from bridge.realtime import events as rt
from bridge.realtime.client import RealtimeClient
from bridge.realtime.providers import Endpoint
from bridge.telephony.twilio.messages import mark_message, media_message
from bridge.telephony.twilio.stream import TwilioStream

RESULTS = Path(__file__).parent / "results" / "protocol_cores.md"
SID = "MZ18ad3ab5a668481ce02b83e7395059f0"


def per_call_us(fn: Callable[[], object], n: int = 20000, repeat: int = 5) -> float:
    """Best-of-`repeat` mean time per call, in microseconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def twilio_rows() -> list[tuple[str, float]]:
    stream = TwilioStream()
    start = {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": SID,
        "start": {
            "streamSid": SID,
            "accountSid": "AC" + "0" * 32,
            "callSid": "CA" + "0" * 32,
            "tracks": ["inbound"],
            "customParameters": {"caller": "+15551234567"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
    stream.receive(json.dumps(start))
    payload = bytes(range(160))
    frame = json.dumps(
        {
            "event": "media",
            "sequenceNumber": "2",
            "streamSid": SID,
            "media": {
                "track": "inbound",
                "chunk": "1",
                "timestamp": "20",
                "payload": base64.b64encode(payload).decode(),
            },
        }
    )
    obj = {"event": "media", "streamSid": SID, "media": {"payload": base64.b64encode(payload).decode()}}
    return [
        (
            "Twilio `TwilioStream.receive` (inbound 20 ms media frame)",
            per_call_us(lambda: stream.receive(frame)),
        ),
        ("Twilio `media_message` (160 B payload)", per_call_us(lambda: media_message(SID, payload))),
        (
            "  same object with base64 + `json.dumps` (comparison)",
            per_call_us(
                lambda: json.dumps({**obj, "media": {"payload": base64.b64encode(payload).decode()}})
            ),
        ),
        ("Twilio `mark_message`", per_call_us(lambda: mark_message(SID, "1234"))),
    ]


def realtime_rows() -> list[tuple[str, float]]:
    def delta(n_bytes: int) -> str:
        return json.dumps(
            {
                "type": "response.output_audio.delta",
                "event_id": "event_CHx0000000000001",
                "response_id": "resp_CHx000000000001",
                "item_id": "item_CHx000000000001",
                "output_index": 0,
                "content_index": 0,
                "delta": base64.b64encode(bytes(n_bytes)).decode(),
            }
        )

    rows = []
    for label, n_bytes in (
        ("20 ms PCM16 24 kHz", 960),
        ("100 ms PCM16 24 kHz", 4800),
        ("20 ms G.711", 160),
    ):
        text = delta(n_bytes)
        rows.append(
            (
                f"Realtime `parse_server_event` (audio delta, {label})",
                per_call_us(lambda t=text: rt.parse_server_event(t)),
            )
        )
    b64 = base64.b64encode(bytes(960)).decode()
    ev = rt.InputAudioBufferAppend(audio=b64)
    rows.append(
        ("Realtime `append_audio_json` (20 ms PCM16 24 kHz)", per_call_us(lambda: rt.append_audio_json(b64)))
    )
    rows.append(
        (
            "  `encode_client_event` of the same append (comparison)",
            per_call_us(lambda: rt.encode_client_event(ev)),
        )
    )
    return rows


def engine_rows() -> list[tuple[str, float]]:
    out = Outbox()
    b64 = base64.b64encode(bytes(9600)).decode()  # 200 ms of 24 kHz PCM16, the engine's delta size

    def fast() -> None:
        out.audio_delta("resp_1", "item_1", 0, 0, b64)
        out.events.clear()

    def typed() -> None:
        out.emit(rt.ResponseOutputAudioDelta("resp_1", "item_1", 0, 0, b64))
        out.events.clear()

    return [
        ("Engine `Outbox.audio_delta` (one audio delta event, built as a dict)", per_call_us(fast)),
        ("  same event through `emit(ResponseOutputAudioDelta(...))` (comparison)", per_call_us(typed)),
    ]


async def close_times(n: int = 20) -> tuple[list[float], list[float]]:
    async def handler(ws: ServerConnection) -> None:
        async for _ in ws:
            pass

    cooperative: list[float] = []
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        for _ in range(n):
            client = RealtimeClient()
            await client.connect(Endpoint(f"ws://127.0.0.1:{port}/v1/realtime"))
            start = time.perf_counter()
            await client.close()
            cooperative.append((time.perf_counter() - start) * 1000)

    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        key = next(
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")
            if line.lower().startswith("sec-websocket-key")
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n"
        )
        while await reader.read(65536):
            pass

    unresponsive: list[float] = []
    server2 = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server2.sockets[0].getsockname()[1]
    for _ in range(n):
        client = RealtimeClient()
        await client.connect(Endpoint(f"ws://127.0.0.1:{port}/v1/realtime"))
        start = time.perf_counter()
        await client.close()
        unresponsive.append((time.perf_counter() - start) * 1000)
    for w in writers:
        w.close()
    server2.close()
    return cooperative, unresponsive


def main() -> None:
    load = os.getloadavg()
    rows = twilio_rows() + realtime_rows() + engine_rows()
    cooperative, unresponsive = asyncio.run(close_times())
    coop_ms = (statistics.median(cooperative), max(cooperative))
    silent_ms = (statistics.median(unresponsive), max(unresponsive))
    lines = [
        "# Protocol cores",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} CPUs, load average "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (other engineers' work was running: "
        "figures are noisy).",
        "",
        "| operation | µs per message |",
        "|---|---:|",
        *[f"| {label} | {us:.2f} |" for label, us in rows],
        "",
        "| `RealtimeClient.close()` (20 runs) | median ms | max ms |",
        "|---|---:|---:|",
        f"| peer answers the close handshake | {coop_ms[0]:.1f} | {coop_ms[1]:.1f} |",
        f"| peer never answers (requirement < 100 ms) | {silent_ms[0]:.1f} | {silent_ms[1]:.1f} |",
        "",
        "Run: `.venv/bin/python -m bench protocol_cores`",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
