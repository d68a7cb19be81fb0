"""A Twilio Media Streams emulator for the tests: the package's `MediaStreamClient`
(bridge/tools/twilio_media.py), which `ivr-bridge call` and `ivr-bridge dialplan test` use too.

It sends `connected`, `start`, 20 ms `media` frames on absolute deadlines, `dtmf` and `stop`,
and it *plays* what the bridge sends in real time: one 20 ms frame per 20 ms from a FIFO, a
`mark` echoed when playback reaches it, and `clear` dropping the unplayed audio and echoing the
pending marks (as Twilio does). So the test knows exactly which bytes the caller heard, and when.
"""

from __future__ import annotations

from bridge.tools.twilio_media import FRAME_BYTES, FRAME_S, ULAW_SILENCE, MediaStreamClient, Played

TwilioEmulator = MediaStreamClient

__all__ = ["FRAME_BYTES", "FRAME_S", "ULAW_SILENCE", "Played", "TwilioEmulator"]
