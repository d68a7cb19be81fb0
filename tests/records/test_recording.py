"""Recordings: two aligned channels, the WAV header finalized at close, encryption at rest
(round trip, wrong key refused, truncation and tampering detected), write errors contained."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import struct
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bridge.metrics import METRICS
from bridge.records.crypto import KeyMissing, Tampered, WrongKey, decrypt_field, encrypt_field
from bridge.records.recording import (
    RecordingCorrupt,
    RecordingMissing,
    RecordingWriter,
    open_recording,
)
from tests.helpers.records_fixtures import KEY, OTHER_KEY

RATE = 8000
FRAME = 160  # 20 ms


@pytest.fixture
def io() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown()


def tone(freq_hz: float, ms: int, amplitude: int = 8000) -> np.ndarray:
    t = np.arange(ms * RATE // 1000) / RATE
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype("<i2")


def frames(signal: np.ndarray) -> Iterator[bytes]:
    for start in range(0, len(signal), FRAME):
        yield signal[start : start + FRAME].tobytes()


def read_stereo(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    import io as _io

    with wave.open(_io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, RATE, 2)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm[0::2], pcm[1::2]


def onset_ms(channel: np.ndarray, reference: np.ndarray) -> float:
    """Where `reference` sits in `channel`, by cross-correlation (ms)."""
    corr = np.correlate(channel.astype(np.float64), reference.astype(np.float64), mode="valid")
    return float(np.argmax(corr)) * 1000 / RATE


async def write_call(path: Path, io: concurrent.futures.Executor, key: bytes | None) -> RecordingWriter:
    """Caller says a 440 Hz tone at 1000 ms (frames every 20 ms from 0 with silence around it);
    the bot plays a 1200 Hz tone at 2500 ms and a 700 Hz tone at 7300 ms; nothing in between."""
    rec = RecordingWriter(path, key=key, io=io)
    caller = np.concatenate([np.zeros(RATE, "<i2"), tone(440, 400), np.zeros(RATE * 8, "<i2")])
    for i, frame in enumerate(frames(caller)):
        rec.caller(frame, i * 20)
        if i == 125:  # 2500 ms: the bot's first answer, as the pacer plays it
            for j, bot_frame in enumerate(frames(tone(1200, 300))):
                rec.bot(bot_frame, 2500 + j * 20)
        if i == 365:  # 7300 ms: the first frame placed by time, the rest right after it (t_ms=None)
            for j, bot_frame in enumerate(frames(tone(700, 200))):
                rec.bot(bot_frame, 7300 if j == 0 else None)
    result = await rec.close()
    assert result.error is None
    return rec


async def test_two_channels_are_aligned_to_the_call_clock(
    tmp_path: Path, io: concurrent.futures.Executor
) -> None:
    rec = await write_call(tmp_path / "a.wav", io, None)
    data = (tmp_path / "a.wav").read_bytes()
    caller, bot = read_stereo(data)
    assert len(caller) == len(bot) == 9400 * RATE // 1000
    assert onset_ms(caller, tone(440, 400)) == pytest.approx(1000, abs=1)
    assert onset_ms(bot, tone(1200, 300)) == pytest.approx(2500, abs=1)
    assert onset_ms(bot, tone(700, 200)) == pytest.approx(7300, abs=1)
    assert np.abs(bot[: 2500 * 8]).max() == 0  # silence padding before the bot spoke
    assert np.abs(caller[1400 * 8 :]).max() == 0
    assert rec.duration_ms == 9400


async def test_memory_stays_bounded_while_recording(tmp_path: Path, io: concurrent.futures.Executor) -> None:
    rec = RecordingWriter(tmp_path / "long.wav", key=None, io=io)
    frame = tone(300, 20).tobytes()
    for i in range(60 * 50):  # one minute of caller audio, the bot silent throughout
        rec.caller(frame, i * 20)
        held = len(rec._pending[0]) + len(rec._pending[1])
        assert held <= 2 * 3 * RATE * 2  # never more than ~3 s per channel
    await rec.close()
    caller, bot = read_stereo((tmp_path / "long.wav").read_bytes())
    assert len(caller) == 60 * RATE
    assert not bot.any()


async def test_unfinished_and_damaged_files_are_reported(
    tmp_path: Path, io: concurrent.futures.Executor
) -> None:
    rec = RecordingWriter(tmp_path / "u.wav", key=None, io=io)
    for i, frame in enumerate(frames(tone(440, 4000))):
        rec.caller(frame, i * 20)
    await asyncio.wrap_future(io.submit(lambda: None))  # the first blocks reached the disk; no close
    rec._file.flush()  # type: ignore[union-attr]  # what a crash leaves: audio, no final header
    with pytest.raises(RecordingCorrupt, match="unfinished recording"):
        open_recording(tmp_path / "u.wav", encrypted=False, key=None)
    await rec.close()
    opened = open_recording(tmp_path / "u.wav", encrypted=False, key=None)
    assert len(b"".join(opened.chunks)) == opened.wav_bytes
    with (tmp_path / "u.wav").open("r+b") as f:  # cut the file: the header disagrees
        f.truncate(opened.wav_bytes - 1000)
    with pytest.raises(RecordingCorrupt, match="damaged or cut"):
        open_recording(tmp_path / "u.wav", encrypted=False, key=None)
    (tmp_path / "x.wav").write_bytes(b"hello")
    with pytest.raises(RecordingCorrupt, match="not a WAV"):
        open_recording(tmp_path / "x.wav", encrypted=False, key=None)
    with pytest.raises(RecordingMissing):
        open_recording(tmp_path / "missing.wav", encrypted=False, key=None)


async def test_encrypted_recording_round_trip(tmp_path: Path, io: concurrent.futures.Executor) -> None:
    key = base64.b64decode(KEY)
    await write_call(tmp_path / "a.wav.enc", io, key)
    raw = (tmp_path / "a.wav.enc").read_bytes()
    assert raw[:6] == b"IVRENC"
    assert b"RIFF" not in raw
    assert tone(440, 400).tobytes()[:64] not in raw
    opened = open_recording(tmp_path / "a.wav.enc", encrypted=True, key=key)
    data = b"".join(opened.chunks)
    assert len(data) == opened.wav_bytes
    caller, bot = read_stereo(data)
    assert onset_ms(caller, tone(440, 400)) == pytest.approx(1000, abs=1)
    assert onset_ms(bot, tone(1200, 300)) == pytest.approx(2500, abs=1)


async def test_wrong_or_missing_key_is_refused(tmp_path: Path, io: concurrent.futures.Executor) -> None:
    await write_call(tmp_path / "a.wav.enc", io, base64.b64decode(KEY))
    with pytest.raises(WrongKey, match="another key"):
        open_recording(tmp_path / "a.wav.enc", encrypted=True, key=base64.b64decode(OTHER_KEY))
    with pytest.raises(KeyMissing, match="BRIDGE_DATA_KEY is not set"):
        open_recording(tmp_path / "a.wav.enc", encrypted=True, key=None)


async def test_truncation_and_tampering_are_detected(tmp_path: Path, io: concurrent.futures.Executor) -> None:
    key = base64.b64decode(KEY)
    path = tmp_path / "a.wav.enc"
    await write_call(path, io, key)
    whole = path.read_bytes()
    # the chunk table: header 36 bytes, then (u32 length, ciphertext)...
    offsets, offset = [], 36
    while offset < len(whole):
        (length,) = struct.unpack_from(">I", whole, offset)
        offsets.append(offset)
        offset += 4 + length
    assert len(offsets) >= 3
    path.write_bytes(whole[: offsets[-1]])  # cut exactly at a chunk boundary: the final chunk is gone
    with pytest.raises(Tampered, match="truncated or unfinished"):
        open_recording(path, encrypted=True, key=key)
    path.write_bytes(whole[:-7])  # cut inside the last chunk
    with pytest.raises(Tampered, match="truncated"):
        open_recording(path, encrypted=True, key=key)
    flipped = bytearray(whole)
    flipped[offsets[1] + 100] ^= 0x01  # one bit in the second chunk
    path.write_bytes(bytes(flipped))
    opened = open_recording(path, encrypted=True, key=key)
    with pytest.raises(Tampered, match="chunk 1 fails authentication"):
        b"".join(opened.chunks)


def test_encrypted_fields() -> None:
    key = base64.b64decode(KEY)
    sealed = encrypt_field(key, "hello there", "transcript:CA1")
    assert sealed.startswith("enc1:")
    assert "hello" not in sealed
    assert decrypt_field(key, sealed, "transcript:CA1") == "hello there"
    assert decrypt_field(None, "plain text", "transcript:CA1") == "plain text"
    with pytest.raises(WrongKey):
        decrypt_field(base64.b64decode(OTHER_KEY), sealed, "transcript:CA1")
    with pytest.raises(WrongKey):  # moved to another call
        decrypt_field(key, sealed, "transcript:CA2")
    with pytest.raises(KeyMissing):
        decrypt_field(None, sealed, "transcript:CA1")


async def test_disk_full_ends_the_recording_not_the_call(io: concurrent.futures.Executor) -> None:
    lost_before = METRICS.records_lost.value(kind="recording", reason="io_error")
    rec = RecordingWriter(Path("/dev/full"), key=None, io=io)
    for i, frame in enumerate(frames(tone(440, 5000))):
        rec.caller(frame, i * 20)  # never raises: the call goes on
    result = await rec.close()
    assert result.error is not None
    assert "disk full" in result.error
    assert METRICS.records_lost.value(kind="recording", reason="io_error") > lost_before
