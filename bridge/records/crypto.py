"""Encryption at rest with AES-256-GCM (`cryptography`): short fields and streamed files.

Fields (transcript lines): `enc1:` + base64(nonce 12 | ciphertext | tag 16), the call id as
associated data (a line cannot be moved to another call).

Files (recordings), a chunked streaming format, version 1:

    header  (36 bytes): magic b"IVRENC" | version u8 = 1 | flags u8 = 0 | key check (8 bytes) |
                        nonce prefix (7 bytes) | channels u8 | rate_hz u32 | sample_bytes u8 |
                        reserved (7 bytes, zero)
    chunks: length u32 (ciphertext bytes, tag included) | ciphertext

Chunk i is sealed with nonce = prefix | i (u32, big-endian) | final flag (1 on the last chunk
only), the header as associated data. So a chunk cannot be reordered, dropped or replayed, the
header cannot be altered, and a file cut short (even at a chunk boundary) is detected: its last
chunk does not open as the final one. The key check (HMAC-SHA256 of a fixed label, first 8 bytes)
tells a wrong key apart from a damaged file before any chunk is tried.

The plaintext is the raw interleaved PCM of the recording; `decrypted_wav_chunks` yields a WAV
file (header built from the authenticated length) for the admin API and the CLI.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from bridge.errors import BridgeError

# cryptography's Rust bindings cost ~7 MB RSS on import: loaded when a key is first used (records
# without BRIDGE_DATA_KEY never load them).
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FIELD_PREFIX = "enc1:"
MAGIC = b"IVRENC"
VERSION = 1
HEADER = struct.Struct(">6sBB8s7sBIB7s")
HEADER_BYTES = HEADER.size  # 36
LENGTH = struct.Struct(">I")
TAG_BYTES = 16
MAX_CHUNK_BYTES = 16 * 1024 * 1024


class RecordsCryptoError(BridgeError):
    """Encrypted data could not be opened."""


class WrongKey(RecordsCryptoError):
    """The data was encrypted with another key than BRIDGE_DATA_KEY."""


class KeyMissing(RecordsCryptoError):
    """The data is encrypted and BRIDGE_DATA_KEY is unset."""


class Tampered(RecordsCryptoError):
    """The data is damaged, cut short or altered (authentication failed)."""


def _aead(key: bytes) -> AESGCM:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def _invalid_tag() -> type[Exception]:
    from cryptography.exceptions import InvalidTag

    return InvalidTag


def key_check(key: bytes) -> bytes:
    return hmac.new(key, b"ivr-bridge records key check v1", hashlib.sha256).digest()[:8]


# --------------------------------------------------------------------------- fields


def encrypt_field(key: bytes, text: str, context: str) -> str:
    nonce = os.urandom(12)
    sealed = _aead(key).encrypt(nonce, text.encode("utf-8"), context.encode("utf-8"))
    return FIELD_PREFIX + base64.b64encode(nonce + sealed).decode("ascii")


def is_encrypted_field(value: str) -> bool:
    return value.startswith(FIELD_PREFIX)


def decrypt_field(key: bytes | None, value: str, context: str) -> str:
    """The plaintext of a stored field (returned as is when it was stored in the clear)."""
    if not value.startswith(FIELD_PREFIX):
        return value
    if key is None:
        raise KeyMissing("this text is encrypted and BRIDGE_DATA_KEY is not set")
    try:
        raw = base64.b64decode(value[len(FIELD_PREFIX) :], validate=True)
    except ValueError as exc:
        raise Tampered("encrypted text is not valid base64") from exc
    if len(raw) < 12 + TAG_BYTES:
        raise Tampered("encrypted text is too short")
    try:
        return _aead(key).decrypt(raw[:12], raw[12:], context.encode("utf-8")).decode("utf-8")
    except _invalid_tag() as exc:
        raise WrongKey("encrypted text does not open with BRIDGE_DATA_KEY (another key, or altered)") from exc


# --------------------------------------------------------------------------- files


def _nonce(prefix: bytes, index: int, final: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if final else 0)


class EncryptedWriter:
    """Seals chunks to a file object as they come (blocking I/O: call it off the event loop)."""

    def __init__(
        self, fileobj: BinaryIO, key: bytes, *, channels: int, rate_hz: int, sample_bytes: int
    ) -> None:
        self._file = fileobj
        self._aead = _aead(key)
        self._prefix = os.urandom(7)
        self.header = HEADER.pack(
            MAGIC, VERSION, 0, key_check(key), self._prefix, channels, rate_hz, sample_bytes, bytes(7)
        )
        self._index = 0
        self.closed = False
        fileobj.write(self.header)

    def write(self, data: bytes) -> None:
        if data:
            self._seal(data, final=False)

    def close(self, data: bytes = b"") -> None:
        """Seal the final chunk (possibly empty): until then the file reads as truncated."""
        if not self.closed:
            self._seal(data, final=True)
            self.closed = True

    def _seal(self, data: bytes, final: bool) -> None:
        sealed = self._aead.encrypt(_nonce(self._prefix, self._index, final), data, self.header)
        self._file.write(LENGTH.pack(len(sealed)) + sealed)
        self._index += 1


class EncryptedFile:
    """An encrypted recording opened for reading: the header checked, the chunk table walked
    (no decryption yet), the last chunk opened as the final one."""

    def __init__(self, path: Path, key: bytes | None) -> None:
        self.path = path
        with path.open("rb") as f:
            header = f.read(HEADER_BYTES)
            if len(header) < HEADER_BYTES or header[:6] != MAGIC:
                raise Tampered(f"{path.name}: not an ivr-bridge encrypted file (bad header)")
            _magic, version, _flags, check, prefix, channels, rate_hz, sample_bytes, _ = HEADER.unpack(header)
            if version != VERSION:
                raise Tampered(f"{path.name}: encrypted file version {version} is not supported (expected 1)")
            if key is None:
                raise KeyMissing(f"{path.name} is encrypted and BRIDGE_DATA_KEY is not set")
            if not hmac.compare_digest(check, key_check(key)):
                raise WrongKey(f"{path.name} was encrypted with another key than BRIDGE_DATA_KEY")
            self.header, self.prefix = header, prefix
            self.channels, self.rate_hz, self.sample_bytes = channels, rate_hz, sample_bytes
            self._aead = _aead(key)
            self.chunks: list[tuple[int, int]] = []  # (offset of ciphertext, length)
            size = path.stat().st_size
            offset = HEADER_BYTES
            while offset < size:
                f.seek(offset)
                raw = f.read(LENGTH.size)
                if len(raw) < LENGTH.size:
                    raise Tampered(f"{path.name}: truncated (cut inside a chunk length at byte {offset})")
                (length,) = LENGTH.unpack(raw)
                if length < TAG_BYTES or length > MAX_CHUNK_BYTES + TAG_BYTES:
                    raise Tampered(
                        f"{path.name}: damaged (impossible chunk length {length} at byte {offset})"
                    )
                if offset + LENGTH.size + length > size:
                    raise Tampered(
                        f"{path.name}: truncated (chunk {len(self.chunks)} needs {length} bytes, "
                        f"{size - offset - LENGTH.size} left)"
                    )
                self.chunks.append((offset + LENGTH.size, length))
                offset += LENGTH.size + length
            if not self.chunks:
                raise Tampered(
                    f"{path.name}: truncated or unfinished (no final chunk: the writer never closed it)"
                )
            self._open(f, len(self.chunks) - 1)  # the last chunk must open as the final one
        self.plaintext_bytes = sum(length - TAG_BYTES for _, length in self.chunks)

    def _open(self, f: BinaryIO, index: int) -> bytes:
        offset, length = self.chunks[index]
        f.seek(offset)
        sealed = f.read(length)
        final = index == len(self.chunks) - 1
        try:
            return self._aead.decrypt(_nonce(self.prefix, index, final), sealed, self.header)
        except _invalid_tag() as exc:
            if final:
                try:
                    self._aead.decrypt(_nonce(self.prefix, index, False), sealed, self.header)
                except _invalid_tag():
                    pass
                else:
                    raise Tampered(
                        f"{self.path.name}: truncated or unfinished (ends after chunk {index} without "
                        "the final chunk: the writer never closed it, or the file was cut)"
                    ) from exc
            raise Tampered(
                f"{self.path.name}: damaged or altered (chunk {index} fails authentication)"
            ) from exc

    def chunks_plain(self) -> Iterator[bytes]:
        """Every chunk's plaintext, in order (raises Tampered on the first bad one)."""
        with self.path.open("rb") as f:
            for index in range(len(self.chunks)):
                yield self._open(f, index)


def encrypt_file(src: Path, dst: Path, key: bytes, chunk_bytes: int = 64 * 1024) -> None:
    """Seal a whole file (tests, migrations of old recordings)."""
    with src.open("rb") as fin, dst.open("wb") as fout:
        writer = EncryptedWriter(fout, key, channels=0, rate_hz=0, sample_bytes=0)
        while block := fin.read(chunk_bytes):
            writer.write(block)
        writer.close()
