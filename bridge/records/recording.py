"""Call recordings: a two-channel (caller, bot) 8 kHz PCM16 WAV, written while the call runs.

`RecordingWriter.caller(pcm16_8k, t_ms)` / `.bot(pcm16_8k, t_ms)` place each frame on its channel
at `t_ms` on the call clock (ms since the call started): a gap is padded with silence, a frame that
arrives no later than its channel's end follows it directly (`t_ms=None`: right after the previous
frame). Per frame that is a little arithmetic and one `bytearray.extend`; about once a second the
pending audio older than `HOLD_MS` (the lagging channel padded with silence) is interleaved and
handed to the recordings I/O thread, so at most ~3 s per call are ever held in memory and the
event loop never touches the disk. `close()` finalizes the file: the WAV header gets its sizes (an
unfinished file keeps RIFF size 0 and is reported as such), or the encrypted format its final chunk.

Write errors (disk full, ...) end the recording, not the call: the rest of its audio is counted in
`ivr_bridge_records_lost_total{kind="recording"}` and the error is logged once and kept on the writer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from bridge.errors import BridgeError
from bridge.metrics import METRICS
from bridge.records.crypto import EncryptedFile, EncryptedWriter

log = logging.getLogger(__name__)

RATE_HZ = 8000
CHANNELS = 2  # 0: caller, 1: bot
SAMPLE_BYTES = 2
SAMPLES_PER_MS = RATE_HZ // 1000
FLUSH_MS = 1000  # hand audio to the I/O thread in ~1 s blocks
HOLD_MS = 2000  # how late a frame may come and still land at its time
MAX_CALL_MS = 24 * 3600 * 1000
WAV_HEADER_BYTES = 44
READ_CHUNK_BYTES = 64 * 1024


class RecordingError(BridgeError):
    """A recording could not be written or read."""


class RecordingMissing(RecordingError):
    """The call has no recording, or its file is gone."""


class RecordingCorrupt(RecordingError):
    """A recording file is unfinished (header never finalized) or damaged."""


def wav_header(
    data_bytes: int, *, channels: int = CHANNELS, rate_hz: int = RATE_HZ, riff_size: int | None = None
) -> bytes:
    block = channels * SAMPLE_BYTES
    riff = 36 + data_bytes if riff_size is None else riff_size
    fmt = struct.pack("<IHHIIHH", 16, 1, channels, rate_hz, rate_hz * block, block, 8 * SAMPLE_BYTES)
    return b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", data_bytes)


def safe_name(call_id: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", call_id).strip(".")[:120]
    return name or "call"


@dataclass(frozen=True)
class RecordingResult:
    path: Path
    encrypted: bool
    duration_ms: int
    error: str | None


class RecordingWriter:
    """One call's recording. The audio methods do no I/O; `close()` returns when the file is final."""

    def __init__(
        self,
        path: Path,
        *,
        key: bytes | None,
        io: concurrent.futures.Executor,
        on_loss: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self.encrypted = key is not None
        self._key = key
        self._io = io
        self._on_loss = on_loss
        self._pending = (bytearray(), bytearray())
        self._base = 0  # sample index (per channel) of the first pending sample
        self._end = [0, 0]  # sample index where each channel's audio ends
        self._flush_samples = FLUSH_MS * SAMPLES_PER_MS
        self._hold_samples = HOLD_MS * SAMPLES_PER_MS
        self._file: BinaryIO | None = None
        self._sealer: EncryptedWriter | None = None
        self._written_bytes = 0
        self.error: str | None = None
        self.closed = False
        self._last: concurrent.futures.Future[None] = io.submit(self._open_file)

    # ---------------------------------------------------------------- the call's side (no I/O)

    def caller(self, pcm16_8k: bytes, t_ms: int | None = None) -> None:
        """Caller audio (mono PCM16 at 8 kHz) heard at `t_ms` on the call clock."""
        self._add(0, pcm16_8k, t_ms)

    def bot(self, pcm16_8k: bytes, t_ms: int | None = None) -> None:
        """Bot audio (mono PCM16 at 8 kHz) played to the caller at `t_ms` on the call clock."""
        self._add(1, pcm16_8k, t_ms)

    @property
    def duration_ms(self) -> int:
        return max(self._end) // SAMPLES_PER_MS

    def _add(self, channel: int, pcm: bytes, t_ms: int | None) -> None:
        if self.closed or self.error is not None:
            return
        end = self._end[channel]
        if t_ms is not None:
            if not 0 <= t_ms <= MAX_CALL_MS:
                self._fail(f"frame at t_ms={t_ms}: the call clock starts at 0 and a call lasts under 24 h")
                return
            position = t_ms * SAMPLES_PER_MS
            if position > end:
                self._pad(channel, position - end)
        buffer = self._pending[channel]
        buffer.extend(pcm[: len(pcm) & ~1])
        self._end[channel] = self._base + len(buffer) // SAMPLE_BYTES
        if max(self._end) - self._base >= self._flush_samples + self._hold_samples:
            self._flush(max(self._end) - self._hold_samples)

    def _pad(self, channel: int, samples: int) -> None:
        buffer = self._pending[channel]
        while samples > 0:
            n = min(samples, self._flush_samples)
            buffer.extend(bytes(n * SAMPLE_BYTES))
            samples -= n
            self._end[channel] = self._base + len(buffer) // SAMPLE_BYTES
            if self._end[channel] - self._base >= self._flush_samples + self._hold_samples:
                self._flush(self._end[channel] - self._hold_samples)
                buffer = self._pending[channel]

    def _flush(self, upto: int) -> None:
        """Interleave [base, upto) (silence where a channel has nothing) and hand it to the I/O thread."""
        n = upto - self._base
        if n <= 0:
            return
        stereo = np.zeros(2 * n, dtype="<i2")
        for channel in (0, 1):
            buffer = self._pending[channel]
            have = min(n, len(buffer) // SAMPLE_BYTES)
            if have:
                stereo[channel : 2 * have : 2] = np.frombuffer(buffer, dtype="<i2", count=have)
            del buffer[: have * SAMPLE_BYTES]
        self._base = upto
        self._end = [max(e, upto) for e in self._end]
        self._last = self._io.submit(self._write, stereo.tobytes())

    # ---------------------------------------------------------------- close

    def close_nowait(self) -> concurrent.futures.Future[None]:
        """Flush what is pending and finalize the file on the I/O thread."""
        if not self.closed:
            self.closed = True
            if self.error is None:
                self._flush(max(self._end))
            self._last = self._io.submit(self._finish)
        return self._last

    def discard(self) -> None:
        """Stop recording and remove the file (the call was erased while in progress)."""
        if self.error is None:
            self.error = "erased while the call was in progress"
        self.closed = True
        self._last = self._io.submit(self._remove)

    def _remove(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
        with contextlib.suppress(OSError):
            self.path.unlink()

    async def close(self) -> RecordingResult:
        await asyncio.wrap_future(self.close_nowait())
        return RecordingResult(self.path, self.encrypted, self.duration_ms, self.error)

    # ---------------------------------------------------------------- the I/O thread

    def _open_file(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = self.path.open("wb")
            self._file = f
            if self._key is not None:
                self._sealer = EncryptedWriter(
                    f, self._key, channels=CHANNELS, rate_hz=RATE_HZ, sample_bytes=SAMPLE_BYTES
                )
            else:  # RIFF size 0 marks the file unfinished until `_finish` writes the real sizes
                f.write(wav_header(0, riff_size=0))
        except OSError as exc:
            self._io_failed(exc, "opening")

    def _write(self, data: bytes) -> None:
        if self.error is not None or self._file is None:
            self._count_lost(len(data))
            return
        try:
            if self._sealer is not None:
                self._sealer.write(data)
            else:
                self._file.write(data)
            self._written_bytes += len(data)
        except OSError as exc:
            self._io_failed(exc, "writing")
            self._count_lost(len(data))

    def _finish(self) -> None:
        f = self._file
        if f is None:
            return
        try:
            if self.error is None:
                if self._sealer is not None:
                    self._sealer.close()
                else:
                    f.flush()
                    f.seek(0)
                    f.write(wav_header(self._written_bytes))
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            self._io_failed(exc, "finalizing")
        finally:
            self._file = None
            try:
                f.close()
            except OSError as exc:  # a failed flush of the buffered tail: the file stays unfinished
                self._io_failed(exc, "closing")

    def _io_failed(self, exc: OSError, doing: str) -> None:
        if self.error is None:
            what = "disk full" if getattr(exc, "errno", None) == 28 else "I/O error"
            self.error = (
                f"{what} {doing} {self.path}: {exc.strerror or exc}; the rest of this recording is lost"
            )
            log.error("recording failed: %s", self.error)
            if self._on_loss is not None:
                self._on_loss(self.error)

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message
            log.error("recording %s stopped: %s", self.path.name, message)

    @staticmethod
    def _count_lost(nbytes: int) -> None:
        METRICS.records_lost.inc(
            nbytes / (RATE_HZ * CHANNELS * SAMPLE_BYTES), kind="recording", reason="io_error"
        )


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class OpenedRecording:
    """A recording checked and ready to stream as a WAV file."""

    wav_bytes: int
    chunks: Iterator[bytes]


def open_recording(path: Path, *, encrypted: bool, key: bytes | None) -> OpenedRecording:
    """Check a recording and return its WAV bytes as an iterator (decrypting when encrypted).

    Raises RecordingMissing, RecordingCorrupt (unfinished header, sizes that disagree, a cut file)
    or a `RecordsCryptoError` (wrong or missing key, damaged chunks). Blocking I/O."""
    if not path.is_file():
        raise RecordingMissing(f"recording file {path} is missing")
    if encrypted:
        sealed = EncryptedFile(path, key)
        if (sealed.channels, sealed.rate_hz, sealed.sample_bytes) != (CHANNELS, RATE_HZ, SAMPLE_BYTES):
            raise RecordingCorrupt(f"{path.name}: encrypted file is not a 2-channel 8 kHz PCM16 recording")

        def decrypted() -> Iterator[bytes]:
            yield wav_header(sealed.plaintext_bytes)
            yield from sealed.chunks_plain()

        return OpenedRecording(WAV_HEADER_BYTES + sealed.plaintext_bytes, decrypted())
    size = path.stat().st_size
    with path.open("rb") as f:
        header = f.read(WAV_HEADER_BYTES)
    check_wav_header(path.name, header, size)

    def plain() -> Iterator[bytes]:
        with path.open("rb") as f:
            while block := f.read(READ_CHUNK_BYTES):
                yield block

    return OpenedRecording(size, plain())


def check_wav_header(name: str, header: bytes, file_bytes: int) -> None:
    if len(header) < WAV_HEADER_BYTES or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        raise RecordingCorrupt(f"{name}: not a WAV file (no RIFF/WAVE header)")
    (riff_size,) = struct.unpack_from("<I", header, 4)
    if riff_size == 0:
        raise RecordingCorrupt(
            f"{name}: unfinished recording (the WAV header was never finalized: the bridge stopped "
            f"during the call?); {file_bytes - WAV_HEADER_BYTES} bytes of audio are in the file"
        )
    fmt = struct.unpack_from("<4sIHHIIHH", header, 12)
    if fmt[0] != b"fmt " or fmt[2:4] != (1, CHANNELS) or fmt[4] != RATE_HZ or fmt[7] != 16:
        raise RecordingCorrupt(f"{name}: not a 2-channel 8 kHz PCM16 WAV")
    if header[36:40] != b"data":
        raise RecordingCorrupt(f"{name}: damaged WAV header (no data chunk)")
    (data_bytes,) = struct.unpack_from("<I", header, 40)
    if data_bytes != file_bytes - WAV_HEADER_BYTES or riff_size != 36 + data_bytes:
        raise RecordingCorrupt(
            f"{name}: damaged or cut (the header says {data_bytes} bytes of audio, the file has "
            f"{file_bytes - WAV_HEADER_BYTES})"
        )
