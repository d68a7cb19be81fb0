"""A real headless Firefox (Debian's `firefox-esr`) driven over Marionette, its built-in remote protocol,
by Mozilla's `marionette-driver` client. Debian ships no geckodriver and nothing is downloaded: Firefox
is started here with `--marionette` and a fresh profile whose user.js sets the prefs below.

Firefox has no "WAV file as microphone" like Chromium: with media.navigator.streams.fake its microphone
is a steady sine tone (1 kHz by default). It is put at 6 kHz, above the telephone band, so the bridge's
8 kHz path (its anti-aliasing resampler) removes it and the caller is silent to the VAD and the
recogniser whatever the browser's noise suppression does with a tone.

Headless Firefox on a machine without a sound server cannot open an audio output, so AudioContexts stay
"suspended" (the page's level meters read nothing) and the page's <audio> plays into nothing; WebRTC
itself runs, so tests measure received audio with the page's RTP statistics (window.softphone.audioStats).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helpers.sysdeps import require_binary

FAKE_TONE_HZ = 6000  # the fake microphone's tone: above the 4 kHz the 8 kHz phone path keeps
STARTUP_TIMEOUT_S = 60.0

PREFS: dict[str, object] = {
    "marionette.port": 0,  # any free port; Firefox writes it to <profile>/MarionetteActivePort
    # The microphone: a fake device, granted without asking
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.navigator.audio.fake_frequency": FAKE_TONE_HZ,
    # Autoplay of the bot's audio without a user gesture
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "media.autoplay.block-webaudio": False,
    # The bridge's only ICE candidate is 127.0.0.1: let Firefox gather and use loopback candidates
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    # A quiet start: no first-run pages, updates, telemetry or remote settings fetches
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.page": 0,
    "browser.aboutwelcome.enabled": False,
    "app.update.disabledForTesting": True,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "services.settings.server": "http://127.0.0.1:9/",
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
}


def user_js(prefs: dict[str, object]) -> str:
    """The text of a profile's user.js setting `prefs`."""
    lines = []
    for name, value in prefs.items():
        if isinstance(value, bool):
            literal = "true" if value else "false"
        elif isinstance(value, int):
            literal = str(value)
        else:
            literal = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines.append(f'user_pref("{name}", {literal});')
    return "\n".join(lines) + "\n"


def _active_port(profile: Path, proc: subprocess.Popen[bytes], log: Path) -> int:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    port_file = profile / "MarionetteActivePort"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"firefox-esr exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if port_file.exists():
            text = port_file.read_text().strip()
            if text.isdigit() and int(text) > 0:
                return int(text)
        time.sleep(0.1)
    raise RuntimeError(
        f"firefox-esr wrote no Marionette port in {STARTUP_TIMEOUT_S:.0f} s: {log.read_text()[-2000:]}"
    )


@contextmanager
def firefox(*, width: int = 1100, height: int = 900) -> Iterator[Any]:
    """A headless Firefox with a Marionette session (a `marionette_driver.marionette.Marionette`)."""
    from marionette_driver.marionette import Marionette

    binary = require_binary("firefox-esr")
    profile = Path(tempfile.mkdtemp(prefix="ivr-firefox-"))
    (profile / "user.js").write_text(user_js(PREFS))
    log = profile / "firefox.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "--headless", "--marionette", "--no-remote", "--profile", str(profile)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={
                **_env(),
                "MOZ_HEADLESS": "1",
                "MOZ_HEADLESS_WIDTH": str(width),
                "MOZ_HEADLESS_HEIGHT": str(height),
            },
        )
    client = None
    try:
        port = _active_port(profile, proc, log)
        client = Marionette(host="127.0.0.1", port=port, socket_timeout=60)
        client.start_session(timeout=STARTUP_TIMEOUT_S)
        client.set_window_rect(width=width, height=height)
        yield client
    finally:
        if client is not None and client.session_id is not None:
            # The browser may be gone already; it is stopped below either way.
            with contextlib.suppress(Exception):
                client.delete_session()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


def _env() -> dict[str, str]:
    # No display: headless needs none, and a stray DISPLAY would make Firefox try to reach it.
    return {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}


def run(client: Any, script: str, *args: object) -> Any:
    """Run `script` in the page's own context (so it sees the page's globals, e.g. window.softphone)."""
    return client.execute_script(script, script_args=args, sandbox=None, new_sandbox=False)


def run_async(client: Any, script: str, *args: object, timeout_s: float = 30.0) -> Any:
    """Like run(), for a script that calls its last argument with the result."""
    return client.execute_async_script(
        script, script_args=args, sandbox=None, new_sandbox=False, script_timeout=int(timeout_s * 1000)
    )


def save_screenshot(client: Any, path: Path) -> Path:
    """The page as a PNG at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(client.screenshot(format="base64")))
    return path
