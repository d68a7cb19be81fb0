"""The input audio buffer of one engine session and its turn detection. No I/O.

`Turns` takes `input_audio_buffer.append` / `.commit` / `.clear`, decodes the audio to 8 kHz PCM16
(24 kHz `audio/pcm` is downsampled, G.711 decoded) and runs server VAD over it, as the session's
`turn_detection` says: `threshold`, `prefix_padding_ms` and `silence_duration_ms` shape the detector
and the reported positions, `create_response` / `interrupt_response` decide whether a turn answers or
barges in, `idle_timeout_ms` makes the engine speak up after a silent caller, and `null` means manual
commits. `semantic_vad` is approximated by server VAD with a silence that follows its eagerness.

What a turn means for the rest of the session goes through a `TurnHost` (the session facade): the
committed item, the barge-in, the response to create. Audio for the recogniser leaves as commands.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Protocol

from bridge.engine.commands import AsrAudio, AsrBegin, AsrDiscard, AsrEnd, Detector, DetectorFactory
from bridge.engine.outbox import Outbox
from bridge.engine.session_config import SEMANTIC_SILENCE_MS, EventError, require
from bridge.media import g711
from bridge.media.g711 import PCM8K_BYTES_PER_MS, RATE_8K
from bridge.media.resample import Downsampler
from bridge.media.vad import SpeechStart, SpeechStop
from bridge.realtime.events import (
    InputAudioBufferCleared,
    InputAudioBufferCommitted,
    InputAudioBufferSpeechStarted,
    InputAudioBufferSpeechStopped,
    InputAudioBufferTimeoutTriggered,
)

PREROLL_MS = 300  # audio before the VAD onset the recogniser gets
MIN_SPEECH_MS = 150  # speech needed before the VAD reports an onset
MIN_COMMIT_MS = 100  # a manual commit of less is `input_audio_buffer_commit_empty`
MAX_BUFFER_MS = 10 * 60 * 1000  # manual mode keeps at most this much uncommitted audio
MAX_APPEND_BYTES = 15 * 1024 * 1024


class TurnHost(Protocol):
    """What a turn does to the rest of the session."""

    def last_item_id(self) -> str | None:
        """The conversation's last item (a committed turn follows it)."""

    def add_audio_item(
        self, item_id: str, audio_ms: float, previous: str | None, *, transcribe: bool, pcm16_8k: bytes = b""
    ) -> None:
        """The committed turn becomes a user item (`pcm16_8k`: its audio, for a second recogniser)."""

    def responding(self) -> bool:
        """A response is in progress."""

    def barge_in(self) -> None:
        """Speech started while `interrupt_response` is on: cancel the response the caller talks over."""

    def respond(self, now_ms: float, *, idle: bool) -> None:
        """A turn ended with `create_response` on (idle: the idle timeout fired): answer it."""


def decode_g711(raw: bytes, fmt: str) -> bytes:
    return g711.decode(raw, "pcmu" if fmt == "audio/pcmu" else "pcma")


class Turns:
    def __init__(self, out: Outbox, detector_factory: DetectorFactory, host: TurnHost) -> None:
        self._out = out
        self._detector_factory = detector_factory
        self._host = host
        self._fmt = "audio/pcm"
        self._down = Downsampler()
        self._td: dict[str, Any] | None = None
        self.audio_ms = 0.0  # all audio appended this session
        self._buf = bytearray()  # 8 kHz PCM16 since _buf_start_ms
        self._buf_start_ms = 0.0
        self._detector: Detector | None = None
        self._det_base_ms = 0.0
        self._speech_item: str | None = None
        self._speech_start_ms = 0.0
        self._asr_item: str | None = None
        self._idle_deadline_ms: float | None = None

    @property
    def speaking(self) -> bool:
        """The VAD heard speech start and not yet stop."""
        return self._speech_item is not None

    # -- configuration -----------------------------------------------------------------------------

    def set_format(self, fmt: str) -> None:
        """The input format's type (`audio/pcm`, `audio/pcmu`, `audio/pcma`)."""
        self._fmt = fmt
        self._down = Downsampler()

    def set_turn_detection(self, td: dict[str, Any] | None) -> None:
        """A validated GA `turn_detection` (None: manual commits). Speech in progress is dropped."""
        self._td = td
        if self._speech_item is not None:
            self._drop_speech()
        if td is None:
            self._detector = None
            self._idle_deadline_ms = None
            return
        if td["type"] == "semantic_vad":
            threshold, silence_ms = 0.5, SEMANTIC_SILENCE_MS[td["eagerness"]]
        else:
            threshold, silence_ms = td["threshold"], td["silence_duration_ms"]
        threshold = min(max(threshold, 0.01), 0.99)
        self._detector = self._detector_factory(threshold, MIN_SPEECH_MS, max(silence_ms, 20))
        self._det_base_ms = self.audio_ms

    # -- client events -----------------------------------------------------------------------------

    def on_append(self, msg: dict[str, Any], now_ms: float) -> None:
        audio = require(msg, "audio", str)
        if len(audio) > MAX_APPEND_BYTES * 4 // 3 + 4:
            raise EventError("Audio chunk larger than 15 MiB.", param="audio")
        try:
            raw = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise EventError("Invalid 'audio': not valid base64.", param="audio") from exc
        if self._fmt == "audio/pcm":
            if len(raw) & 1:
                raise EventError(
                    f"Invalid 'audio': {len(raw)} bytes is not whole 16-bit samples.", param="audio"
                )
            self.ingest(self._down.process(raw), len(raw) / 48.0, now_ms)  # 24 kHz PCM16: 48 bytes per ms
        else:
            self.ingest(decode_g711(raw, self._fmt), len(raw) / 8.0, now_ms)

    def on_commit(self, msg: dict[str, Any], now_ms: float) -> None:
        start_ms = self._speech_start_ms if self._speech_item is not None else self._buf_start_ms
        if self.audio_ms - start_ms < MIN_COMMIT_MS:
            raise EventError(
                f"Error committing input audio buffer: buffer too small. Expected at least {MIN_COMMIT_MS}ms "
                f"of audio, but buffer only has {max(0.0, self.audio_ms - start_ms):.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        item_id = self._speech_item or self._out.new_id("item_")
        self._speech_item = None
        self._commit(item_id, start_ms, self.audio_ms)

    def on_clear(self, msg: dict[str, Any], now_ms: float) -> None:
        self._drop_speech()
        self._buf.clear()
        self._buf_start_ms = self.audio_ms
        self._out.emit(InputAudioBufferCleared())

    def decode_item_audio(self, audio: Any) -> bytes:
        """The audio of a `conversation.item.create` input_audio part, at 8 kHz PCM16."""
        try:
            raw = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise EventError("Invalid 'item.content.audio': not valid base64.", param="item.content") from exc
        if self._fmt == "audio/pcm":
            return Downsampler().process(raw[: len(raw) & ~1])
        return decode_g711(raw, self._fmt)

    # -- audio and time ----------------------------------------------------------------------------

    def ingest(self, pcm16_8k: bytes, n_ms: float, now_ms: float) -> None:
        """Audio already at 8 kHz PCM16 (`n_ms` of it in the session's clock)."""
        self._buf += pcm16_8k
        self.audio_ms += n_ms
        if self._asr_item is not None:
            self._out.command(AsrAudio(self._asr_item, pcm16_8k))
        detector = self._detector
        if detector is not None:
            for ev in detector.feed(pcm16_8k):
                if isinstance(ev, SpeechStart):
                    self._speech_started(self._det_base_ms + ev.audio_ms)
                elif isinstance(ev, SpeechStop):
                    self._speech_stopped(self._det_base_ms + ev.audio_ms, now_ms)
            if self._speech_item is None:
                td = self._td
                keep_ms = max(td.get("prefix_padding_ms", 300) if td else 0, PREROLL_MS) + MIN_SPEECH_MS + 500
                if len(self._buf) > 2 * keep_ms * PCM8K_BYTES_PER_MS:
                    self._trim_to(self.audio_ms - keep_ms)
        elif len(self._buf) > MAX_BUFFER_MS * PCM8K_BYTES_PER_MS:
            self._trim_to(self.audio_ms - MAX_BUFFER_MS)

    def response_started(self) -> None:
        self._idle_deadline_ms = None

    def response_completed(self, played_until_ms: float) -> None:
        """A response finished; the caller hears it until `played_until_ms` (starts the idle timeout)."""
        td = self._td
        if td is not None and td.get("idle_timeout_ms"):
            self._idle_deadline_ms = played_until_ms + td["idle_timeout_ms"]

    def next_deadline_ms(self) -> float | None:
        """When `tick` next has something to do (the idle timeout), or None."""
        return self._idle_deadline_ms

    def tick(self, now_ms: float) -> None:
        deadline = self._idle_deadline_ms
        if deadline is None or now_ms < deadline:
            return
        self._idle_deadline_ms = None
        td = self._td
        if self._host.responding() or self._speech_item is not None or td is None:
            return
        item_id = self._out.new_id("item_")
        start_ms = max(self._buf_start_ms, self.audio_ms - td["idle_timeout_ms"])
        self._out.emit(InputAudioBufferTimeoutTriggered(int(start_ms), int(self.audio_ms), item_id))
        self._commit(item_id, start_ms, self.audio_ms, transcribe=False)
        self._host.respond(now_ms, idle=True)

    # -- internals ---------------------------------------------------------------------------------

    def _offset(self, ms: float) -> int:
        return max(0, int((ms - self._buf_start_ms) * RATE_8K / 1000)) * 2

    def _trim_to(self, ms: float) -> None:
        if ms <= self._buf_start_ms:
            return
        cut = min(self._offset(ms), len(self._buf))
        del self._buf[:cut]
        self._buf_start_ms += cut / PCM8K_BYTES_PER_MS

    def _speech_started(self, onset_ms: float) -> None:
        td = self._td or {}
        start_ms = max(self._buf_start_ms, onset_ms - td.get("prefix_padding_ms", 300))
        item_id = self._out.new_id("item_")
        self._speech_item = item_id
        self._speech_start_ms = start_ms
        self._idle_deadline_ms = None
        self._out.emit(InputAudioBufferSpeechStarted(int(start_ms), item_id))
        preroll_from = max(self._buf_start_ms, min(start_ms, onset_ms - PREROLL_MS))
        self._asr_item = item_id
        self._out.command(AsrBegin(item_id, bytes(self._buf[self._offset(preroll_from) :])))
        if td.get("interrupt_response", True):
            self._host.barge_in()

    def _speech_stopped(self, end_ms: float, now_ms: float) -> None:
        item_id = self._speech_item
        if item_id is None:
            return
        td = self._td or {}
        silence = td.get("silence_duration_ms", SEMANTIC_SILENCE_MS.get(td.get("eagerness", "auto"), 500))
        end_ms = min(self.audio_ms, end_ms + silence)
        self._out.emit(InputAudioBufferSpeechStopped(int(end_ms), item_id))
        self._speech_item = None
        self._commit(item_id, self._speech_start_ms, end_ms)
        if td.get("create_response", True) and not self._host.responding():
            self._host.respond(now_ms, idle=False)

    def _drop_speech(self) -> None:
        if self._asr_item is not None:
            self._out.command(AsrDiscard(self._asr_item))
        self._asr_item = None
        self._speech_item = None

    def _commit(self, item_id: str, start_ms: float, end_ms: float, *, transcribe: bool = True) -> None:
        """The buffer up to end_ms becomes user item `item_id` (its transcript follows asynchronously)."""
        previous = self._host.last_item_id()
        self._out.emit(InputAudioBufferCommitted(item_id, previous))
        pcm = bytes(self._buf[self._offset(start_ms) : self._offset(end_ms)]) if transcribe else b""
        self._host.add_audio_item(item_id, end_ms - start_ms, previous, transcribe=transcribe, pcm16_8k=pcm)
        if transcribe:
            if self._asr_item != item_id:
                if self._asr_item is not None:
                    self._out.command(AsrDiscard(self._asr_item))
                self._out.command(AsrBegin(item_id, pcm))
            self._out.command(AsrEnd(item_id))
        self._asr_item = None
        self._trim_to(end_ms)
