"""No secret setting ever appears in a log line, nor in /healthz, /readyz or /metrics.

The real app runs under uvicorn with `ivr-bridge serve`'s own uvicorn configuration (uvicorn's
records, the access log included, go to the root handler) at DEBUG, with a distinct value for
every setting in SECRET_FIELDS. A handler on the root logger captures every record of every
logger (the websocket libraries' frame and header dumps included; loggers that earlier tests set
to not propagate are made to). The test places a whole call (signed webhook, media stream with its
token, an agent turn both ways) and a series of failures (unsigned and forged webhooks, a replayed
stream token, wrong engine and metrics tokens, secrets pasted into query strings), then looks for
every secret, verbatim and URL-encoded, in every formatted line and in the health and metrics bodies.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest
from fastapi import FastAPI
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bridge.app import create_app
from bridge.cli import LOG_FORMAT, server_config
from bridge.settings import SECRET_FIELDS, Settings
from tests.helpers.realtime_standin import AGENT_ONLY, StandinRealtime
from tests.helpers.servers import serve
from tests.helpers.signals import pcm, tone, ulaw
from tests.helpers.twilio_emulator import FRAME_BYTES, TwilioEmulator

pytestmark = pytest.mark.slow

CALL_SID = "CA" + "5" * 32
# One distinct value per secret setting; some with characters that URL-encoding changes.
SECRET_VALUES = {
    name: f"{name.replace('_', '-')}-{secrets.token_hex(6)}" + ("/+=" if i % 3 == 0 else "")
    for i, name in enumerate(SECRET_FIELDS)
}
# BRIDGE_DATA_KEY must be a real key (32 bytes, base64): a random one, distinct like the others.
SECRET_VALUES["data_key"] = base64.b64encode(secrets.token_bytes(32)).decode()


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter(LOG_FORMAT))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def capture_everything() -> Iterator[Capture]:
    """Every logger at DEBUG, propagating to the root, where `Capture` is the first handler."""
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    saved: dict[str, tuple[int, bool, list[logging.Handler], bool]] = {}
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            saved[name] = (logger.level, logger.propagate, list(logger.handlers), logger.disabled)
            logger.setLevel(logging.DEBUG)
            logger.propagate = True
            logger.handlers = []
            logger.disabled = False
    capture = Capture()
    root.setLevel(logging.DEBUG)
    root.addHandler(capture)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(saved_root[0])
        for name, (level, propagate, handlers, disabled) in saved.items():
            logger = logging.getLogger(name)
            logger.setLevel(level)
            logger.propagate = propagate
            logger.handlers = handlers
            logger.disabled = disabled


def forms_of(value: str) -> set[str]:
    return {value, quote(value, safe=""), quote_plus(value, safe="")}


def leaks(text: str, values: dict[str, str]) -> list[str]:
    return [name for name, value in values.items() if any(v in text for v in forms_of(value))]


async def test_no_secret_in_any_log_line_or_health_body(standin: StandinRealtime, tmp_path: Path) -> None:
    (tmp_path / "main.yaml").write_text(AGENT_ONLY)
    found: dict[str, str] = dict(SECRET_VALUES)
    holder: list[Settings] = []

    def make(port: int) -> FastAPI:
        settings = Settings(
            port=port,
            public_url=f"http://127.0.0.1:{port}",
            realtime_url=standin.url,
            dialplans=tmp_path,
            log_level="DEBUG",
            **SECRET_VALUES,  # type: ignore[arg-type]
        )
        holder.append(settings)
        return create_app(settings, preload_models=False)

    with capture_everything() as capture:
        with serve(make, lambda app: server_config(app, holder[0])) as (url, _app):
            bodies = await exercise(url, standin, found)
        lines = list(capture.lines)

    assert len(lines) > 200, "the capture saw almost nothing: DEBUG records are not reaching it"
    text = "\n".join(lines)
    # Secrets did go through logging, and were scrubbed (so this test can fail).
    assert '/healthz?token=[redacted]&api_key=[redacted] HTTP/1.1" 200' in text  # uvicorn access log
    assert "Authorization: [redacted]" in text  # websockets' header dump of the upstream session
    assert "bad_signature" in text
    assert "stream token was already used" in text
    for line in lines:
        assert not leaks(line, found), f"secret {leaks(line, found)} in log line: {line[:300]}"
    for name, body in bodies.items():
        assert not leaks(body, found), f"secret {leaks(body, found)} in {name}"


async def exercise(url: str, standin: StandinRealtime, found: dict[str, str]) -> dict[str, str]:
    """A whole call and the failures; returns the health and metrics bodies."""
    validator = RequestValidator(SECRET_VALUES["twilio_auth_token"])
    ws_url = url.replace("http://", "ws://") + "/twilio/media"
    engine_url = url.replace("http://", "ws://") + "/v1/realtime"
    form = {"CallSid": CALL_SID, "From": "+15551230000", "To": "+15557650000", "AccountSid": "AC" + "1" * 32}
    async with httpx.AsyncClient() as http:
        # The call: signed webhook -> TwiML with the stream token.
        r = await http.post(
            url + "/twilio/voice",
            data=form,
            headers={"X-Twilio-Signature": validator.compute_signature(url + "/twilio/voice", form)},
        )
        assert r.status_code == 200, r.text
        stream = ET.fromstring(r.text).find("Connect/Stream")
        assert stream is not None
        params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
        token = params["bridge_token"]
        found["stream token mac"] = token.rsplit(".", 1)[1]
        upgrade = {"X-Twilio-Signature": validator.compute_signature(ws_url, {})}

        twilio = TwilioEmulator(ws_url, call_sid=CALL_SID, custom_parameters=params)
        twilio.ws = await connect(ws_url, additional_headers=upgrade, max_size=None, compression=None)
        twilio._tasks = [asyncio.create_task(twilio._reader()), asyncio.create_task(twilio._player())]
        await twilio.start()
        session = await standin.next_session()
        await asyncio.wait_for(session.updated.wait(), 5)
        assert session.headers.get("Authorization", session.headers.get("authorization")) == (
            "Bearer " + SECRET_VALUES["openai_api_key"]
        )
        # An agent turn: the caller speaks, the model answers, the caller hears it.
        await twilio.stream_audio(ulaw(tone(1000, 0.5, 8000)))
        await twilio.wait_for(lambda: len(session.appended) >= 48 * 400, timeout=5)
        await session.reply_audio(pcm(tone(440, 0.5, 24000)))
        await twilio.wait_for(
            lambda: sum(1 for p in twilio.played if p.payload != b"\xff" * FRAME_BYTES) >= 24, timeout=5
        )
        await twilio.stop()
        await twilio.wait_for(lambda: session.closed_at is not None, timeout=3)
        await twilio.close()

        # Failures.
        assert (await http.post(url + "/twilio/voice", data=form)).status_code == 403
        guess = RequestValidator("guess").compute_signature(url + "/twilio/voice", form)
        forged = {"X-Twilio-Signature": guess}
        assert (await http.post(url + "/twilio/voice", data=form, headers=forged)).status_code == 403
        pasted = f"?token={quote(SECRET_VALUES['engine_token'])}&api_key={SECRET_VALUES['openai_api_key']}"
        assert (await http.post(url + "/twilio/voice" + pasted, data=form)).status_code == 403
        r = await http.get(
            url + f"/healthz?token={SECRET_VALUES['admin_token']}&api_key={SECRET_VALUES['sip_password']}"
        )
        assert r.status_code == 200
        replay = TwilioEmulator(ws_url, call_sid=CALL_SID, custom_parameters=params)
        replay.ws = await connect(ws_url, additional_headers=upgrade)
        replay._tasks = [asyncio.create_task(replay._reader())]
        await replay.start()
        await replay.wait_for(lambda: replay.closed_at is not None, timeout=5)
        assert replay.close_code == 1008
        await replay.close()
        for headers in ({"Authorization": "Bearer " + SECRET_VALUES["metrics_token"][::-1]}, {}):
            with contextlib.suppress(InvalidStatus, ConnectionClosed):
                async with connect(engine_url, additional_headers=headers) as ws:
                    await ws.recv()
        with contextlib.suppress(InvalidStatus, ConnectionClosed):
            async with connect(engine_url + f"?api-key={SECRET_VALUES['engine_token']}") as ws:
                await ws.recv()
        async with connect(
            engine_url, additional_headers={"Authorization": "Bearer " + SECRET_VALUES["engine_token"]}
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
        assert (await http.get(url + "/metrics")).status_code == 401
        wrong = {"Authorization": "Bearer " + SECRET_VALUES["engine_token"]}
        assert (await http.get(url + "/metrics", headers=wrong)).status_code == 401
        assert (await http.get(url + f"/metrics?token={SECRET_VALUES['metrics_token']}")).status_code == 401

        bearer = {"Authorization": "Bearer " + SECRET_VALUES["metrics_token"]}
        metrics = await http.get(url + "/metrics", headers=bearer)
        assert metrics.status_code == 200
        healthz = await http.get(url + "/healthz")
        readyz = await http.get(url + "/readyz")
    return {"/metrics": metrics.text, "/healthz": healthz.text, "/readyz": readyz.text}
