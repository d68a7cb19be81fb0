"""`ivr-bridge call` end to end: the real CLI (a subprocess) against the real app under uvicorn on
127.0.0.1, with Twilio signatures enforced; what it saved is recognised back."""

from __future__ import annotations

import re
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from bridge.app import create_app
from bridge.errors import ConfigError
from bridge.settings import Settings
from bridge.tools.call_cli import Action, parse_script
from bridge.tools.softphone import write_wav_8k
from tests.helpers.e2e import overlap, recognise, trim_silence
from tests.helpers.servers import serve

REPO = Path(__file__).resolve().parents[2]
AUTH_TOKEN = "call-cli-test-twilio-auth-token"
GREETING = "Thanks for calling Acme."
ASSISTANT = "I'm the Acme assistant. Ask me about our opening hours or our address, or say operator."


def write_wav(path: Path, pcm: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


def spoken(text: str, rate: int = 22050) -> np.ndarray:
    from bridge.speech.tts import Synthesizer

    return np.asarray(Synthesizer(out_rate=rate).synthesize(text), dtype=np.int16)


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "call", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def test_script_lines_are_parsed_and_errors_name_their_line(tmp_path: Path) -> None:
    actions = parse_script(
        "# a call\n2.5s press 12# # then wait\n500ms play hello.wav\n4s say opening hours\n9s hangup\n",
        "s",
        tmp_path,
    )
    assert actions == [
        Action(0.5, "play", str(tmp_path / "hello.wav")),
        Action(2.5, "press", "12#"),
        Action(4.0, "say", "opening hours"),
        Action(9.0, "hangup"),
    ]
    for text, message in (
        ("2s dance\n", "s:1: unknown action 'dance'"),
        ("\nsoon press 1\n", "s:2: 'soon': expected a time"),
        ("1s press 1x\n", "s:1: keys are 0-9 * # A-D"),
        ("1s play\n", "s:1: `play` needs an argument"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_script(text, "s")


@pytest.mark.slow
def test_call_plays_a_wav_presses_1_and_saves_what_it_heard(tmp_path: Path) -> None:
    settings = Settings(
        dialplans=REPO / "dialplans", twilio_auth_token=AUTH_TOKEN, data_dir=tmp_path / "data"
    )
    caller_wav = tmp_path / "caller.wav"
    write_wav(caller_wav, np.zeros(16000, dtype=np.int16) + 1, 16000)  # 1 s of (near) silence at 16 kHz
    heard_wav = tmp_path / "heard.wav"
    with serve(lambda port: create_app(settings.model_copy(update={"port": port}))) as (url, _app):
        unsigned = run_cli(url, "--duration", "3s", "--twilio-auth-token", "wrong-token")
        assert unsigned.returncode == 1, unsigned.stdout + unsigned.stderr
        assert "POST /twilio/voice answered 403" in unsigned.stderr
        done = run_cli(
            url,
            "--twilio-auth-token", AUTH_TOKEN,
            "--play", str(caller_wav), "--play-at", "0.2s",
            "--digits", "1", "--at", "3.5s",
            "--duration", "11s",
            "--save", str(heard_wav),
        )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "connected: flow main" in out
    assert "caller plays" in out
    assert "(1.0 s)" in out
    assert "caller presses 1" in out
    assert "clear: the bridge dropped unplayed audio (barge-in)" in out  # the key cut the menu prompt
    assert "caller hangs up (--duration 11s)" in out
    assert f"to {heard_wav}" in out
    with wave.open(str(heard_wav)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
        pcm = w.readframes(w.getnframes())
    # 11 s from the CLI process start; the stream (and what it hears) starts after the webhook.
    assert 8.0 < len(pcm) / 16000 <= 11.5
    # What the caller heard: the greeting first, then (after the key) the assistant's greeting.
    lines = [GREETING, ASSISTANT, "For opening hours and other questions, press 1 or say questions."]
    before = recognise(trim_silence(pcm[: int(1.7 * 16000)]), lines)
    assert overlap(GREETING, before) >= 0.75, before
    after = recognise(trim_silence(pcm[int(3.6 * 16000) :]), lines)
    assert overlap("the Acme assistant ask me about our opening hours", after) >= 0.6, after


@pytest.mark.slow
def test_a_played_wav_is_heard_by_the_bridge(tmp_path: Path) -> None:
    """The caller's WAV (22.05 kHz, resampled by the CLI) says "operator" during the menu: the
    bridge recognises it and transfers, which the CLI learns from /twilio/continue."""
    settings = Settings(dialplans=REPO / "dialplans", data_dir=tmp_path / "data")
    caller_wav = tmp_path / "operator.wav"
    write_wav(caller_wav, spoken("operator"), 22050)
    script = tmp_path / "call.txt"
    script.write_text("# say operator during the menu prompt\n4s play operator.wav\n")
    with serve(lambda port: create_app(settings.model_copy(update={"port": port}))) as (url, _app):
        done = run_cli(url, "--script", str(script), "--duration", "25s", "--transcribe")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "caller plays" in out
    assert "transfer: +15550100" in out, out
    assert "bot:" in out  # --transcribe: a line per utterance


def test_wav_writer_round_trip(tmp_path: Path) -> None:
    from bridge.tools.softphone import read_wav_8k

    tone = (np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000) * 8000).astype(np.int16)
    write_wav(tmp_path / "t16.wav", tone, 16000)
    pcm = read_wav_8k(tmp_path / "t16.wav")
    assert len(pcm) == 8000 * 2
    write_wav_8k(tmp_path / "t8.wav", pcm)
    assert read_wav_8k(tmp_path / "t8.wav") == pcm
