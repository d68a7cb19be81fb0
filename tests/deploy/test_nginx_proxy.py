"""The shipped nginx template (deploy/nginx/ivr-bridge.conf.template) as a TLS proxy in front of two real
`ivr-bridge serve` processes on 127.0.0.1 (BRIDGE_TRUST_PROXY=true, a real Twilio auth token).

Through https://127.0.0.1:PORT: /readyz; signed Twilio webhooks that the bridges accept only because
nginx passes X-Forwarded-Proto/Host (the signature covers the public URL, not the bridge's own); the
TwiML's stream URL is the proxy's wss:// URL; the websocket upgrade of /twilio/media goes through and
the caller hears the greeting; calls are spread over both bridges; /metrics is not exposed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import importlib.util
import re
import socket
import ssl
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from tests.deploy.bridges import DEPLOY, BridgeProcess, free_tcp_port, start_bridge, wait_ready
from tests.helpers.e2e import is_speech, new_call_sid
from tests.helpers.sysdeps import require_binary
from tests.helpers.twilio_emulator import TwilioEmulator

pytestmark = pytest.mark.slow

TEMPLATE = DEPLOY / "nginx" / "ivr-bridge.conf.template"
AUTH_TOKEN = "f3" * 16
ACCOUNT_SID = "AC" + "0" * 31 + "1"
DIALPLAN = """
numbers:
  default: main
flows:
  main:
    - say: "Hello, you reached the bridge."
    - menu:
        prompt: "Press one."
        options:
          "1": hang_up
        timeout: 30s
        retries: 0
        no_input: hang_up
"""


def load_make_secrets() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_secrets", DEPLOY / "make_secrets.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render_template(text: str, values: dict[str, str]) -> str:
    """What envsubst does with the variables it is given: `${NAME}` replaced, nginx's `$vars` kept."""
    names = set(re.findall(r"\$\{([A-Z_]+)\}", text))
    assert names == set(values), f"the template wants {sorted(names)}"
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    return text


def sign(url: str, form: dict[str, str]) -> str:
    payload = url + "".join(k + v for k, v in sorted(form.items()))
    digest = hmac.new(AUTH_TOKEN.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = load_make_secrets().self_signed_certificate(["localhost", "127.0.0.1"])
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    return tmp_path / "tls.crt", tmp_path / "tls.key"


@pytest.fixture
def nginx_for(tmp_path: Path, tls_files: tuple[Path, Path]) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(upstreams: list[str]) -> int:
        nginx = require_binary("nginx")
        run = tmp_path / "nginx"
        run.mkdir()
        port = free_tcp_port()
        site = render_template(
            TEMPLATE.read_text(),
            {
                "PROXY_LISTEN": f"127.0.0.1:{port}",
                "BRIDGE_A": upstreams[0],
                "BRIDGE_B": upstreams[1],
                "TLS_CERT": str(tls_files[0]),
                "TLS_KEY": str(tls_files[1]),
            },
        )
        (run / "ivr-bridge.conf").write_text(site)
        temps = "".join(
            f"    {kind}_temp_path {run / kind};\n" for kind in ("client_body", "proxy", "fastcgi")
        )
        temps += "".join(f"    {kind}_temp_path {run / kind};\n" for kind in ("uwsgi", "scgi"))
        main = [
            "daemon off;",
            "master_process off;",
            f"pid {run / 'nginx.pid'};",
            f"error_log {run / 'error.log'} info;",
            "events { worker_connections 256; }",
            "http {",
            f"    access_log {run / 'access.log'};",
            temps.rstrip("\n"),
            f"    include {run / 'ivr-bridge.conf'};",
            "}",
        ]
        (run / "nginx.conf").write_text("\n".join(main) + "\n")
        check = subprocess.run([nginx, "-t", "-c", str(run / "nginx.conf")], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        proc = subprocess.Popen([nginx, "-c", str(run / "nginx.conf")], stderr=subprocess.STDOUT)
        procs.append(proc)
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, (run / "error.log").read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen"
                time.sleep(0.1)
        return port

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


async def test_tls_proxy_in_front_of_two_bridges(
    tmp_path: Path, tls_files: tuple[Path, Path], nginx_for: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "main.yaml").write_text(DIALPLAN)
    secret_env = {
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "BRIDGE_STREAM_SECRET": "s" * 40,  # the same on both: a token issued by one is checked by the other
        "BRIDGE_TRUST_PROXY": "true",
        "BRIDGE_METRICS_TOKEN": "m" * 40,
    }
    bridges: list[BridgeProcess] = []
    try:
        for name in ("a", "b"):
            bridges.append(await start_bridge(tmp_path, name, plans, **secret_env))
        await asyncio.gather(*(wait_ready(b) for b in bridges))
        port = nginx_for([b.url.removeprefix("http://") for b in bridges])  # type: ignore[operator]
        public = f"https://127.0.0.1:{port}"
        verify = ssl.create_default_context(cafile=str(tls_files[0]))

        async with httpx.AsyncClient(verify=verify, timeout=10) as http:
            # The readiness probe through the proxy; nothing else private is exposed.
            assert (await http.get(public + "/readyz")).status_code == 200
            for path in ("/metrics", "/healthz", "/api/calls", "/v1/realtime"):
                assert (await http.get(public + path)).status_code == 404, path

            # A webhook signed for the bridge's own (internal) URL is refused: it checks the public one.
            form = {"CallSid": new_call_sid(), "From": "+15551230000", "To": "+15557650000"}
            forged = {"X-Twilio-Signature": sign(bridges[0].url + "/twilio/voice", form)}
            assert (await http.post(public + "/twilio/voice", data=form, headers=forged)).status_code == 403

            monkeypatch.setenv("SSL_CERT_FILE", str(tls_files[0]))  # for the media-stream client's wss://
            for _ in range(2):  # two calls: with round robin, both bridges serve
                form = {"CallSid": new_call_sid(), "From": "+15551230000", "To": "+15557650000"}
                url = public + "/twilio/voice"
                r = await http.post(url, data=form, headers={"X-Twilio-Signature": sign(url, form)})
                assert r.status_code == 200, r.text
                stream = ET.fromstring(r.text).find("./Connect/Stream")
                assert stream is not None, r.text
                assert stream.attrib["url"] == f"wss://127.0.0.1:{port}/twilio/media", r.text
                params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
                twilio = TwilioEmulator(
                    stream.attrib["url"],
                    call_sid=form["CallSid"],
                    account_sid=ACCOUNT_SID,
                    custom_parameters=params,
                    headers={"X-Twilio-Signature": sign(stream.attrib["url"], {})},
                )
                await twilio.open()  # the websocket upgrade through nginx
                await twilio.start()
                await twilio.send_silence(0.2)
                await twilio.wait_for(lambda t=twilio: sum(is_speech(p.payload) for p in t.played) >= 10, 30)
                await twilio.stop()
                await twilio.close()

        # Both bridges got Twilio requests (voice webhooks and streams) through the proxy.
        for bridge in bridges:
            async with httpx.AsyncClient() as http:
                r = await http.get(bridge.url + "/metrics", headers={"Authorization": "Bearer " + "m" * 40})
            assert r.status_code == 200
            served = sum(
                float(line.rsplit(" ", 1)[1])
                for line in r.text.splitlines()
                if line.startswith("ivr_bridge_webhook_requests_total{")
            )
            assert served >= 1, f"{bridge.name} got no request through the proxy"
    finally:
        for bridge in bridges:
            await bridge.stop()
