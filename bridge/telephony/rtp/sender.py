"""The send side of the bridge's RTP: no I/O, no clock.

`RtpSender` holds one call's flushable queue of 20 ms frames, marks and DTMF, and stamps them onto
RTP packets (sequence, timestamp, marker bit) one per `tick()`; the ticker decides when.
"""

from __future__ import annotations

import random
from collections import deque

from bridge.errors import ProtocolError
from bridge.media.g711 import FRAME_BYTES_G711, FRAME_SAMPLES_8K, SILENCE_BYTE, Encoding
from bridge.telephony.rtp.packet import RtpStats, build_packet, dtmf_packets


class RtpSender:
    """Sender state of one call: a flushable queue of 20 ms frames, marks and DTMF, stamped onto
    RTP packets one per `tick()`.

    `tick()` is called once per 20 ms by the pacer and returns the datagram to send now, plus the
    names of marks whose preceding frames have all been transmitted. With nothing queued it sends
    comfort silence so timestamps stay continuous and NAT bindings stay open.
    """

    def __init__(
        self,
        codec: Encoding,
        payload_type: int,
        dtmf_pt: int | None = None,
        ssrc: int | None = None,
        stats: RtpStats | None = None,
    ) -> None:
        self.codec = codec
        self.payload_type = payload_type
        self.dtmf_pt = dtmf_pt
        self.ssrc = ssrc if ssrc is not None else random.getrandbits(32)
        self.sequence = random.getrandbits(16)
        self.timestamp = random.getrandbits(32)
        self.stats = stats or RtpStats()
        self.silence = bytes([SILENCE_BYTE[codec]]) * FRAME_BYTES_G711
        self._queue: deque[bytes | str] = deque()  # bytes = frame, str = mark name
        self._dtmf: deque[tuple[bytes, bool, bool]] = deque()
        self._dtmf_ts = 0
        self._marker_next = True  # first packet of a talkspurt
        self.frames_sent = 0  # real (queued) frames transmitted
        self.queued_frames = 0

    def queue_frame(self, frame: bytes) -> None:
        if len(frame) != FRAME_BYTES_G711:
            frame = (frame + self.silence)[:FRAME_BYTES_G711]
        self._queue.append(frame)
        self.queued_frames += 1

    def queue_mark(self, name: str) -> None:
        self._queue.append(name)

    def queue_dtmf(self, digit: str, duration_ms: int = 100) -> None:
        if self.dtmf_pt is None:
            raise ProtocolError("the peer did not offer telephone-event: cannot send DTMF")
        self._dtmf.extend(dtmf_packets(digit, duration_ms))

    def clear(self) -> list[str]:
        """Drop every queued frame at once (barge-in). Returns the marks that were pending: their
        audio will never play, so the caller learns about them now, as Twilio does on `clear`."""
        marks = [item for item in self._queue if isinstance(item, str)]
        self._queue.clear()
        self.queued_frames = 0
        return marks

    def tick(self) -> tuple[bytes, list[str] | None]:
        queue = self._queue
        marks: list[str] | None = None
        while queue and isinstance(queue[0], str):
            marks = marks or []
            marks.append(queue.popleft())  # type: ignore[arg-type]
        if self._dtmf:
            payload, marker, _end = self._dtmf.popleft()
            if marker:
                self._dtmf_ts = self.timestamp
            packet = build_packet(self.dtmf_pt or 0, self.sequence, self._dtmf_ts, self.ssrc, payload, marker)
            # audio waits while a digit is being sent
        else:
            if queue:
                frame = queue.popleft()
                self.queued_frames -= 1
                self.frames_sent += 1
                marker = self._marker_next
                self._marker_next = False
            else:
                frame = self.silence
                marker = False
                self._marker_next = True
            packet = build_packet(self.payload_type, self.sequence, self.timestamp, self.ssrc, frame, marker)  # type: ignore[arg-type]
            while queue and isinstance(queue[0], str):
                marks = marks or []
                marks.append(queue.popleft())  # type: ignore[arg-type]
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + FRAME_SAMPLES_8K) & 0xFFFFFFFF
        self.stats.sent += 1
        return packet, marks

    def skip(self, frames: int) -> None:
        """Advance the media clock without sending (the loop stalled too long to catch up)."""
        self.timestamp = (self.timestamp + FRAME_SAMPLES_8K * frames) & 0xFFFFFFFF
        self._marker_next = True
