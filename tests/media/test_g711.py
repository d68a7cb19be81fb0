"""G.711 codec: bit-exact with audioop, round trips, silence, errors, frame arithmetic."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bridge.errors import BridgeError
from bridge.media import g711
from bridge.media.g711 import CodecError, decode, encode, silence, transcode

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_CODES = bytes(range(256))
ALL_PCM = np.arange(-32768, 32768, dtype="<i2").tobytes()


def test_constants_describe_a_20ms_frame() -> None:
    assert g711.RATE_8K == 8000
    assert g711.RATE_24K == 24000
    assert g711.FRAME_MS == 20
    assert g711.FRAME_SAMPLES_8K == 160
    assert g711.FRAME_BYTES_G711 == 160
    assert g711.SAMPLE_BYTES == 2
    assert g711.FRAME_BYTES_PCM24K == 960


@pytest.mark.parametrize(
    ("encoding", "to_lin", "to_law"),
    [("pcmu", audioop.ulaw2lin, audioop.lin2ulaw), ("pcma", audioop.alaw2lin, audioop.lin2alaw)],
)
def test_bit_exact_with_audioop_over_every_input(encoding, to_lin, to_law) -> None:
    assert decode(ALL_CODES, encoding) == to_lin(ALL_CODES, 2)
    assert encode(ALL_PCM, encoding) == to_law(ALL_PCM, 2)
    assert len(decode(ALL_CODES, encoding)) == 512
    assert len(encode(ALL_PCM, encoding)) == 65536


def test_mulaw_known_values() -> None:
    pcm = np.frombuffer(decode(bytes([0x00, 0x80, 0xFF, 0x7F]), "pcmu"), dtype="<i2")
    assert pcm.tolist() == [-32124, 32124, 0, 0]


@pytest.mark.parametrize("encoding", ["pcmu", "pcma"])
def test_round_trip_is_stable(encoding) -> None:
    pcm = decode(ALL_CODES, encoding)
    # Decoded values are exactly representable: encoding them again gives the same samples.
    assert decode(encode(pcm, encoding), encoding) == pcm
    codes = encode(pcm, encoding)
    differing = [c for c, back in zip(ALL_CODES, codes, strict=True) if c != back]
    # Only µ-law's negative zero (0x7F) has a twin (0xFF); every A-law code round-trips.
    assert differing == ([0x7F] if encoding == "pcmu" else [])


@pytest.mark.parametrize("encoding", ["pcmu", "pcma"])
def test_round_trip_error_is_within_a_quantisation_step(encoding) -> None:
    x = np.frombuffer(ALL_PCM, dtype="<i2").astype(np.int64)
    y = np.frombuffer(decode(encode(ALL_PCM, encoding), encoding), dtype="<i2").astype(np.int64)
    err = np.abs(y - x)
    # G.711 is logarithmic: the step grows with level, ~1/16 of the value at the top segment.
    assert np.all(err <= np.maximum(np.abs(x) // 16, 16) + 1)


def test_silence_is_digital_zero() -> None:
    assert silence("pcmu") == b"\xff" * 160
    assert silence("pcma", 8) == b"\xd5" * 8
    assert decode(silence("pcmu"), "pcmu") == bytes(320)
    # A-law has no exact zero: its smallest step is +8, what audioop encodes zero as.
    assert silence("pcma", 1) == encode(b"\x00\x00", "pcma")
    assert g711.silence_byte("pcmu") == 0xFF
    assert g711.silence_byte("pcma") == 0xD5


def test_transcode_between_laws() -> None:
    t = np.linspace(0, 1, 8000, endpoint=False)
    pcm = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
    ulaw = encode(pcm, "pcmu")
    alaw = transcode(ulaw, "pcmu", "pcma")
    assert alaw == encode(decode(ulaw, "pcmu"), "pcma")
    back = np.frombuffer(decode(alaw, "pcma"), dtype="<i2").astype(float)
    ref = np.frombuffer(pcm, dtype="<i2").astype(float)
    snr = 10 * np.log10(np.sum(ref**2) / np.sum((back - ref) ** 2))
    assert snr > 30  # two G.711 quantisations of a -12 dBFS tone
    assert transcode(ulaw, "pcmu", "pcmu") == ulaw


def test_errors_are_bridge_errors() -> None:
    with pytest.raises(CodecError, match="not whole 16-bit samples"):
        encode(b"\x00\x01\x02", "pcmu")
    with pytest.raises(CodecError, match=r"unknown G\.711 encoding 'g722'"):
        decode(b"\x00", "g722")  # type: ignore[arg-type]
    with pytest.raises(BridgeError):
        silence("opus")  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        transcode(b"\x00", "pcma", "l16")  # type: ignore[arg-type]


def test_empty_input() -> None:
    assert decode(b"", "pcmu") == b""
    assert encode(b"", "pcma") == b""


def test_ms_byte_helpers() -> None:
    assert g711.g711_ms_to_bytes(20) == 160
    assert g711.g711_ms_to_bytes(0.5) == 4
    assert g711.g711_bytes_to_ms(160) == 20.0
    assert g711.g711_bytes_to_ms(4) == 0.5
    assert g711.pcm16_ms_to_bytes(20, 24000) == 960
    assert g711.pcm16_ms_to_bytes(20, 8000) == 320
    assert g711.pcm16_bytes_to_ms(960, 24000) == 20.0
