"""G.711 (µ-law / A-law) <-> PCM16 little-endian, and the one source of rates and encodings.

Conversions go through `audioop` (stdlib up to Python 3.12, the `audioop-lts` package from 3.13;
both import as `audioop`). A 20 ms frame costs well under a microsecond each way.

Every rate, frame size and byte count the audio path uses is defined here, and so are the names of
the audio formats: `Encoding` (what a phone leg carries) and `UpstreamFormat` (what a realtime
session carries), so the rest of the bridge never multiplies by 160 or 2 on its own and never
spells a format list twice.
"""

from __future__ import annotations

import warnings
from typing import Final, Literal

from bridge.errors import BridgeError

with warnings.catch_warnings():
    # Python 3.11/3.12 warn that the stdlib module goes away in 3.13; audioop-lts replaces it there.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

# G.711 on a phone leg: µ-law or A-law, 8 kHz, one byte per sample.
Encoding = Literal["pcmu", "pcma"]
# The audio a realtime session carries upstream and back: PCM16 at 24 kHz, or G.711 passed through.
UpstreamFormat = Literal["pcm24k", "pcmu", "pcma"]
# The formats an operator may choose (settings, dialplan agent steps); A-law upstream is used only
# internally, when a leg's own encoding is passed through.
ConfigurableUpstreamFormat = Literal["pcm24k", "pcmu"]

RATE_8K: Final = 8000
RATE_16K: Final = 16000
RATE_24K: Final = 24000
FRAME_MS: Final = 20
SAMPLE_BYTES: Final = 2  # PCM16
FRAME_SAMPLES_8K: Final = RATE_8K * FRAME_MS // 1000  # 160
FRAME_SAMPLES_24K: Final = RATE_24K * FRAME_MS // 1000  # 480
FRAME_BYTES_G711: Final = FRAME_SAMPLES_8K  # one byte per sample: 160
FRAME_BYTES_PCM8K: Final = FRAME_SAMPLES_8K * SAMPLE_BYTES  # 320
FRAME_BYTES_PCM24K: Final = FRAME_SAMPLES_24K * SAMPLE_BYTES  # 960
PCM8K_BYTES_PER_MS: Final = RATE_8K * SAMPLE_BYTES // 1000  # 16
# Bytes of one millisecond of audio in each upstream format.
BYTES_PER_MS: Final[dict[UpstreamFormat, int]] = {
    "pcm24k": RATE_24K * SAMPLE_BYTES // 1000,  # 48
    "pcmu": RATE_8K // 1000,  # 8
    "pcma": RATE_8K // 1000,
}

# The G.711 code of digital zero. µ-law: 0xFF (+0). A-law: 0xD5 (+8, the smallest positive step;
# ITU-T G.711's A-law has no exact zero, and audioop.lin2alaw(0) gives 0xD5).
SILENCE_BYTE: Final[dict[Encoding, int]] = {"pcmu": 0xFF, "pcma": 0xD5}


class CodecError(BridgeError):
    """An encoding name the codec does not know, or PCM16 data of odd length."""


def _check_encoding(encoding: str) -> None:
    if encoding not in SILENCE_BYTE:
        raise CodecError(f"unknown G.711 encoding {encoding!r}: expected 'pcmu' or 'pcma'")


def decode(payload: bytes, encoding: Encoding) -> bytes:
    """G.711 bytes (one per sample) -> PCM16LE (two bytes per sample)."""
    if encoding == "pcmu":
        return audioop.ulaw2lin(payload, SAMPLE_BYTES)
    _check_encoding(encoding)
    return audioop.alaw2lin(payload, SAMPLE_BYTES)


def encode(pcm16: bytes, encoding: Encoding) -> bytes:
    """PCM16LE -> G.711 bytes. `pcm16` must hold whole samples (an even number of bytes)."""
    try:
        if encoding == "pcmu":
            return audioop.lin2ulaw(pcm16, SAMPLE_BYTES)
        _check_encoding(encoding)
        return audioop.lin2alaw(pcm16, SAMPLE_BYTES)
    except audioop.error as exc:
        raise CodecError(f"PCM16 data of {len(pcm16)} bytes is not whole 16-bit samples") from exc


def transcode(payload: bytes, src: Encoding, dst: Encoding) -> bytes:
    """G.711 in `src` -> G.711 in `dst` (via PCM16; a plain copy when they are the same)."""
    if src == dst:
        _check_encoding(src)
        return bytes(payload)
    return encode(decode(payload, src), dst)


def silence(encoding: Encoding, n_bytes: int = FRAME_BYTES_G711) -> bytes:
    """`n_bytes` of G.711 digital silence (one 20 ms frame by default)."""
    _check_encoding(encoding)
    return bytes((SILENCE_BYTE[encoding],)) * n_bytes


def silence_byte(encoding: Encoding) -> int:
    """The G.711 code for digital zero in `encoding` (for `Playout(silence_byte=...)`)."""
    _check_encoding(encoding)
    return SILENCE_BYTE[encoding]


def g711_ms_to_bytes(ms: float) -> int:
    """Bytes of 8 kHz G.711 in `ms` milliseconds (rounded down to whole samples)."""
    return int(ms * RATE_8K) // 1000


def g711_bytes_to_ms(n_bytes: int) -> float:
    """Milliseconds of audio in `n_bytes` of 8 kHz G.711."""
    return n_bytes * 1000 / RATE_8K


def pcm16_ms_to_bytes(ms: float, rate_hz: int) -> int:
    """Bytes of PCM16 mono at `rate_hz` in `ms` milliseconds (rounded down to whole samples)."""
    return (int(ms * rate_hz) // 1000) * SAMPLE_BYTES


def pcm16_bytes_to_ms(n_bytes: int, rate_hz: int) -> float:
    """Milliseconds of audio in `n_bytes` of PCM16 mono at `rate_hz`."""
    return (n_bytes // SAMPLE_BYTES) * 1000 / rate_hz
