"""The send side of the WebRTC leg: a flushable queue of 20 ms G.711 frames and marks. No I/O, no clock.

The leg's outbound track asks for one frame per 20 ms (`pop()`); marks queued after a frame are
reported as played once that frame has been handed to the encoder, as the SIP leg's RTP sender
does (the browser's jitter buffer adds a constant few tens of ms that no mark can see).
"""

from __future__ import annotations

from collections import deque

from bridge.media.g711 import FRAME_BYTES_G711, FRAME_MS


class Outbox:
    """Frames (bytes) and marks (str) in the order the call sent them."""

    def __init__(self, silence: bytes) -> None:
        self.silence = silence
        self._queue: deque[bytes | str] = deque()
        self.queued_frames = 0
        self.frames_sent = 0  # real (queued) frames handed to the track

    def queue_frame(self, frame: bytes) -> None:
        if len(frame) != FRAME_BYTES_G711:
            frame = (frame + self.silence)[:FRAME_BYTES_G711]
        self._queue.append(frame)
        self.queued_frames += 1

    def queue_mark(self, name: str) -> None:
        self._queue.append(name)

    def clear(self) -> list[str]:
        """Drop everything queued (barge-in); the pending marks are returned, to be reported now."""
        marks = [item for item in self._queue if isinstance(item, str)]
        self._queue.clear()
        self.queued_frames = 0
        return marks

    def pop(self) -> tuple[bytes | None, list[str]]:
        """The next frame to play (None: nothing queued, play silence) and the marks it completes:
        those queued before it (their audio is out already) and those right after it."""
        queue = self._queue
        marks: list[str] = []
        while queue and isinstance(queue[0], str):
            marks.append(queue.popleft())  # type: ignore[arg-type]
        frame: bytes | None = None
        if queue:
            head = queue.popleft()
            assert isinstance(head, bytes)
            frame = head
            self.queued_frames -= 1
            self.frames_sent += 1
            while queue and isinstance(queue[0], str):
                marks.append(queue.popleft())  # type: ignore[arg-type]
        return frame, marks

    @property
    def played_ms(self) -> int:
        return self.frames_sent * FRAME_MS

    @property
    def queued_ms(self) -> int:
        return self.queued_frames * FRAME_MS
