"""The callers' RTP port for bench/load_sip.py, in its own process (pinned to the load core).

    python -m bench._rtp_receiver OUT.npz     # prints "port N" once bound; records until it gets b"STOP"

Every call's SDP points here, so this one UDP socket gets every RTP packet the bridge sends (the
streams are told apart by SSRC). It is a tight blocking `recvmsg` loop and keeps, per packet, two
arrival times:

- `kernel_ns`: the kernel's receive timestamp (SO_TIMESTAMPNS, CLOCK_REALTIME). On loopback the
  kernel stamps the packet inside the bridge's own `sendto`, so this is the bridge's send timing and
  is free of this process's scheduling;
- `user_ns`: `time.monotonic_ns()` when `recvmsg` returned here (what a naive receiver would see).

`user - kernel` (clock offset removed) is this receiver's own lag, reported next to the figures.
No analysis here: the arrays are written as they are and bench/load_sip.py reads them.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from array import array
from pathlib import Path

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_TIMESTAMPNS has the same value
_TIMESPEC = struct.Struct("@qq")
_HEAD = struct.Struct("!BBHII")
_SILENT = (b"\xff" * 160, b"\xd5" * 160)  # the bridge's comfort silence (PCMU, PCMA)


def record(out: Path) -> None:
    import numpy as np

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind(("127.0.0.1", 0))
    ssrc, seq, ts, flags = array("q"), array("q"), array("q"), array("q")
    kernel_ns, user_ns = array("q"), array("q")
    # CLOCK_REALTIME - CLOCK_MONOTONIC, to put the kernel stamps on the monotonic clock
    offset_ns = time.time_ns() - time.monotonic_ns()
    print(f"port {sock.getsockname()[1]}", flush=True)
    recvmsg, now, unpack_head, unpack_ts = (
        sock.recvmsg,
        time.monotonic_ns,
        _HEAD.unpack_from,
        _TIMESPEC.unpack,
    )
    cmsg_space = socket.CMSG_SPACE(_TIMESPEC.size)
    while True:
        data, anc, _flags, _addr = recvmsg(2048, cmsg_space)
        t_user = now()
        if len(data) < 12:
            if data == b"STOP":
                break
            continue
        _, b1, s, t, ss = unpack_head(data)
        k = -1
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = unpack_ts(cdata[: _TIMESPEC.size])
                k = sec * 1_000_000_000 + nsec - offset_ns
        ssrc.append(ss)
        seq.append(s)
        ts.append(t)
        flags.append((b1 & 0x7F) | (0x100 if b1 & 0x80 else 0) | (0x200 if data[12:] in _SILENT else 0))
        kernel_ns.append(k)
        user_ns.append(t_user)
    sock.close()
    np.savez(
        out,
        ssrc=np.frombuffer(ssrc, dtype=np.int64),
        seq=np.frombuffer(seq, dtype=np.int64),
        ts=np.frombuffer(ts, dtype=np.int64),
        flags=np.frombuffer(flags, dtype=np.int64),
        kernel_ns=np.frombuffer(kernel_ns, dtype=np.int64),
        user_ns=np.frombuffer(user_ns, dtype=np.int64),
    )
    print("saved", flush=True)


if __name__ == "__main__":
    record(Path(sys.argv[1]))
