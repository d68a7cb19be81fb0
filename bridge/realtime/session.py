"""Types of the audio a realtime session carries upstream and back.

What the bridge tracks of a session for barge-in (responses, audio received and heard per item,
the cancel and truncate to send) lives with the rest of barge-in in `bridge.call.bargein`.
"""

from __future__ import annotations

from typing import Literal

UpstreamFormat = Literal["pcm24k", "pcmu", "pcma"]

BYTES_PER_MS: dict[str, int] = {"pcm24k": 48, "pcmu": 8, "pcma": 8}
