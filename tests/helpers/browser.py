"""A real headless Chromium (Debian's `chromium` + `chromium-driver`) driven by selenium, with a WAV
file as its microphone. Nothing is downloaded: both paths come from scripts/sysdeps.txt."""

from __future__ import annotations

import base64
import io
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bridge.app import create_app
from bridge.media.g711 import RATE_8K
from bridge.settings import Settings
from tests.helpers.servers import serve
from tests.helpers.sysdeps import require_binary

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
MIC_RATE_HZ = 48000


def write_mic_wav(path: Path, pcm8k: bytes) -> Path:
    """8 kHz PCM16 as the 48 kHz mono WAV Chromium's fake capture device plays."""
    import soxr

    x = np.frombuffer(pcm8k, dtype="<i2").astype(np.float32) / 32768.0
    y = soxr.resample(x, RATE_8K, MIC_RATE_HZ, quality="HQ")
    pcm = (np.clip(y, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(MIC_RATE_HZ)
        w.writeframes(pcm)
    return path


def chromium(mic_wav: Path, *, width: int = 1100, height: int = 900) -> Any:
    """A headless Chromium whose microphone plays `mic_wav` (looped: make it longer than the test)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = require_binary("chromium")
    driver_path = require_binary("chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--use-fake-ui-for-media-stream",  # grant the microphone without asking
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic_wav}",
        "--autoplay-policy=no-user-gesture-required",
        "--allow-loopback-in-peer-connection",  # the bridge's candidate is 127.0.0.1
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


def decode_recording(b64: str) -> bytes:
    """The page's MediaRecorder output (WebM/Ogg Opus, base64) as 8 kHz mono PCM16."""
    import av

    data = base64.b64decode(b64)
    out = bytearray()
    with av.open(io.BytesIO(data)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE_8K)
        for frame in container.decode(audio=0):
            for res in resampler.resample(frame):
                out += bytes(res.planes[0])[: res.samples * 2]
    return bytes(out)


def softphone_bridge(tmp_path: Path, token: str, webrtc_ports: str) -> Iterator[str]:
    """The bridge the browser softphone tests call (as a fixture body): the shipped dialplans,
    records under `tmp_path`, the admin token (which enables /phone and /console) and WebRTC on
    loopback in a port range of the test's own."""

    def make(port: int) -> Any:
        settings = Settings(
            dialplans=Path(__file__).resolve().parents[2] / "dialplans",
            data_dir=tmp_path / "data",
            port=port,
            admin_token=token,
            webrtc_hosts="127.0.0.1",
            webrtc_ports=webrtc_ports,
        )
        return create_app(settings)

    with serve(make) as (url, _app):
        yield url
