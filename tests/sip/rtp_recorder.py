"""A caller's RTP port in its own process, for timing what the bridge sends without sharing its GIL.

    python -m tests.sip.rtp_recorder OUT.jsonl      # prints "port N" once bound, records until SIGTERM

Each received RTP packet becomes one line `[t, ssrc, seq, ts, pt, silent, marker]` in OUT.jsonl, `t` being
CLOCK_MONOTONIC seconds (the same clock as `time.monotonic()` in any other process on the host).
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SILENT = (b"\xff" * 160, b"\xd5" * 160)


@dataclass(frozen=True, slots=True)
class Packet:
    at: float
    ssrc: int
    sequence: int
    timestamp: int
    payload_type: int
    silent: bool
    marker: bool = False


def record(out: Path) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    rows: list[list[object]] = []
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    print(f"port {sock.getsockname()[1]}", flush=True)
    while not stop:
        try:
            data = sock.recv(2048)
        except TimeoutError:
            continue
        except OSError:
            break
        at = time.monotonic()
        if len(data) < 12:
            continue
        _, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", data)
        rows.append([at, ssrc, seq, ts, b1 & 0x7F, data[12:] in SILENT, bool(b1 & 0x80)])
    out.write_text("\n".join(json.dumps(r) for r in rows))


def load(path: Path) -> list[Packet]:
    text = path.read_text()
    return [Packet(*json.loads(line)) for line in text.splitlines() if line]


if __name__ == "__main__":
    record(Path(sys.argv[1]))
