"""Call records: what happened on every call, kept safely, deleted on request (docs/records.md).

`Records` (one per process, started in the app's lifespan) hands each call a `CallRecorder`
whose methods never block; rows go through a bounded writer task to SQLite or PostgreSQL,
audio to a two-channel WAV (optionally AES-256-GCM encrypted) written off the event loop.
"""

from bridge.records.db import RecordsUnavailable
from bridge.records.recording import RecordingCorrupt, RecordingError, RecordingMissing, RecordingWriter
from bridge.records.redaction import PiiRedactor, mask_digits
from bridge.records.service import CallRecorder, Records, TurnStages, pii_redactor_from_settings
from bridge.records.store import Actor, CallFilters, CallNotFound, FilterError, parse_filters

__all__ = [
    "Actor",
    "CallFilters",
    "CallNotFound",
    "CallRecorder",
    "FilterError",
    "PiiRedactor",
    "RecordingCorrupt",
    "RecordingError",
    "RecordingMissing",
    "RecordingWriter",
    "Records",
    "RecordsUnavailable",
    "TurnStages",
    "mask_digits",
    "parse_filters",
    "pii_redactor_from_settings",
]
