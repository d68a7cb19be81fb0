"""What the bridge knows about one realtime session: responses, assistant audio, what was heard.

No I/O. The call feeds it facts (a response started or ended, N bytes of audio arrived for an
item, the caller has heard an item up to X ms) and asks it what a barge-in must tell the model.

Two numbers per assistant item drive truncation:
- `received_ms`: how much audio the model sent for it (bytes / bytes-per-ms of the format);
- `heard_ms`: how much of it the caller has heard, from the leg's played marks (Twilio echoes
  a mark once the audio before it has played; the SIP leg once it has been sent on time).

`audio_end_ms` for `conversation.item.truncate` is `heard_ms` clamped to `received_ms`
(truncating past the received audio is an error on the real API), and no truncate is sent when
nothing was heard. A wall clock is never used: a model that pauses mid-reply does not make the
bridge believe the caller heard the pause as speech.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

UpstreamFormat = Literal["pcm24k", "pcmu", "pcma"]

BYTES_PER_MS: dict[str, int] = {"pcm24k": 48, "pcmu": 8, "pcma": 8}


@dataclass(slots=True)
class ItemAudio:
    received_bytes: int = 0
    heard_ms: int = 0
    cut: bool = False  # barge-in cut it: late deltas are dropped


@dataclass(frozen=True, slots=True)
class BargeIn:
    """What to tell the model after the caller talked over it."""

    cancel_response_id: str | None  # send response.cancel (the response is still running)
    truncate_item_id: str | None  # send conversation.item.truncate for this item ...
    audio_end_ms: int  # ... up to here (0 when nothing was heard: no truncate)


class SessionState:
    """Responses and assistant audio of one realtime session, as the bridge has seen them."""

    def __init__(self, fmt: UpstreamFormat) -> None:
        self.format = fmt
        self._bytes_per_ms = BYTES_PER_MS[fmt]
        self._items: dict[str, ItemAudio] = {}
        self.response_id: str | None = None  # the response in progress, if any
        self._cancel_sent = False  # response.cancel already sent for `response_id`
        self.playing_item_id: str | None = None  # the item whose audio went to the caller last

    # -- facts from the upstream session -------------------------------------------------------

    def response_started(self, response_id: str) -> None:
        self.response_id = response_id
        self._cancel_sent = False

    def response_ended(self, response_id: str) -> None:
        if self.response_id == response_id:
            self.response_id = None

    @property
    def response_active(self) -> bool:
        return self.response_id is not None

    def accept_audio(self, item_id: str, n_bytes: int) -> bool:
        """Count `n_bytes` of model audio for `item_id`; False if the item was cut by barge-in."""
        item = self._items.get(item_id)
        if item is None:
            item = self._items[item_id] = ItemAudio()
        elif item.cut:
            return False
        item.received_bytes += n_bytes
        return True

    def received_ms(self, item_id: str) -> int:
        item = self._items.get(item_id)
        return 0 if item is None else item.received_bytes // self._bytes_per_ms

    # -- facts from the phone leg --------------------------------------------------------------

    def audio_sent(self, item_id: str) -> None:
        """A frame of `item_id` went to the caller: it is the item playing now."""
        self.playing_item_id = item_id

    def heard(self, item_id: str, end_ms: int) -> None:
        """The caller has heard `item_id` up to `end_ms` (from a played mark)."""
        item = self._items.get(item_id)
        if item is not None and not item.cut and end_ms > item.heard_ms:
            item.heard_ms = end_ms

    def heard_ms(self, item_id: str) -> int:
        item = self._items.get(item_id)
        return 0 if item is None else item.heard_ms

    # -- barge-in ------------------------------------------------------------------------------

    def barge_in(self) -> BargeIn:
        """The caller started talking over the bot: decide what to tell the model.

        Marks the playing item as cut, so audio still in flight for it is dropped.
        """
        cancel = None if self._cancel_sent else self.response_id
        self._cancel_sent = self._cancel_sent or cancel is not None
        item_id = self.playing_item_id
        end_ms = 0
        if item_id is not None:
            item = self._items[item_id]
            end_ms = min(item.heard_ms, item.received_bytes // self._bytes_per_ms)
            item.cut = True
        self.playing_item_id = None
        return BargeIn(
            cancel_response_id=cancel,
            truncate_item_id=item_id if end_ms > 0 else None,
            audio_end_ms=end_ms,
        )

    def forget(self, item_id: str) -> None:
        """Drop bookkeeping for an item that is fully played (keeps long calls small)."""
        item = self._items.get(item_id)
        if item is not None and not item.cut and self.playing_item_id != item_id:
            del self._items[item_id]
