"""Every setting the bridge reads from the environment, in one place.

Nothing else in the package reads `os.environ`. Tests build `Settings(...)` directly.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bridge.errors import ConfigError
from bridge.media.g711 import ConfigurableUpstreamFormat

# Environment variable -> settings field. Keep these names stable: outside tools rely on them.
ENV_FIELDS: dict[str, str] = {
    "BRIDGE_PUBLIC_URL": "public_url",
    "BRIDGE_REALTIME_URL": "realtime_url",
    "BRIDGE_DIALPLANS": "dialplans",
    "BRIDGE_PORT": "port",
    "BRIDGE_HOST": "host",
    "BRIDGE_UPSTREAM_FORMAT": "upstream_format",
    "BRIDGE_REALTIME_MODEL": "realtime_model",
    "BRIDGE_PLAYOUT_LEAD_MS": "playout_lead_ms",
    "BRIDGE_BARGE_IN_MIN_SPEECH_MS": "barge_in_min_speech_ms",
    "BRIDGE_BARGE_IN_THRESHOLD": "barge_in_threshold",
    "BRIDGE_ECHO_CANCEL": "echo_cancel",
    "BRIDGE_ECHO_TO_UPSTREAM": "echo_to_upstream",
    "BRIDGE_BACKCHANNEL": "backchannel",
    "BRIDGE_BACKCHANNEL_MAX_MS": "backchannel_max_ms",
    "BRIDGE_LOG_LEVEL": "log_level",
    "OPENAI_API_KEY": "openai_api_key",
    "AZURE_OPENAI_API_KEY": "azure_api_key",
    "AZURE_OPENAI_ENDPOINT": "azure_endpoint",
    "TWILIO_ACCOUNT_SID": "twilio_account_sid",
    "TWILIO_AUTH_TOKEN": "twilio_auth_token",
    "TWILIO_WEBHOOK_SIGNING_SECRET": "twilio_webhook_signing_secret",
    "TWILIO_API_BASE_URL": "twilio_api_base_url",
    "BRIDGE_STREAM_SECRET": "stream_secret",
    "BRIDGE_STREAM_TOKEN_TTL_S": "stream_token_ttl_s",
    "BRIDGE_TRUST_PROXY": "trust_proxy",
    "BRIDGE_WEBHOOK_MAX_BYTES": "webhook_max_bytes",
    "BRIDGE_TWILIO_CONTINUATION": "twilio_continuation",
    "SIP_SERVER": "sip_server",
    "SIP_PORT": "sip_port",
    "SIP_USER": "sip_user",
    "SIP_PASSWORD": "sip_password",
    "SIP_LOCAL_PORT": "sip_local_port",
    "SIP_PUBLIC_IP": "sip_public_ip",
    "SIP_TRUSTED_PEERS": "sip_trusted_peers",
    "SIP_UNTRUSTED_ACTION": "sip_untrusted_action",
    "BRIDGE_ENGINE_TOKEN": "engine_token",
    "BRIDGE_ADMIN_TOKEN": "admin_token",
    "BRIDGE_METRICS_TOKEN": "metrics_token",
    "BRIDGE_MAX_CALLS": "max_calls",
    "BRIDGE_MAX_ENGINE_SESSIONS": "max_engine_sessions",
    "BRIDGE_RATE_PER_SOURCE_PER_S": "rate_per_source_per_s",
    "BRIDGE_RATE_BURST": "rate_burst",
    "BRIDGE_DATA_DIR": "data_dir",
    "BRIDGE_DATABASE_URL": "database_url",
    "BRIDGE_DATA_KEY": "data_key",
    "BRIDGE_RETENTION_DAYS": "retention_days",
    "BRIDGE_PII_RULES": "pii_rules",
    "BRIDGE_PII_PATTERNS": "pii_patterns",
    "BRIDGE_DRAIN_S": "drain_s",
    "BRIDGE_DRAIN_LINE": "drain_line",
    "BRIDGE_DRAIN_TRANSFER_TO": "drain_transfer_to",
    "BRIDGE_DRAIN_REDIRECT_URL": "drain_redirect_url",
    "BRIDGE_MAX_SESSION_S": "max_session_s",
    "BRIDGE_RECONNECT_MAX_S": "reconnect_max_s",
    "BRIDGE_HOLD_LINE": "hold_line",
    "BRIDGE_MODERATION_URL": "moderation_url",
    "BRIDGE_RECORDS": "records_enabled",
    "BRIDGE_WEBRTC_HOSTS": "webrtc_hosts",
    "BRIDGE_WEBRTC_PORTS": "webrtc_ports",
    "BRIDGE_REDIS_URL": "redis_url",
    "BRIDGE_INSTANCE_ID": "instance_id",
    "BRIDGE_CLUSTER_MAX_CALLS": "cluster_max_calls",
}

# Settings whose values are secrets: redacted from logs, error events and health output.
SECRET_FIELDS: tuple[str, ...] = (
    "openai_api_key",
    "azure_api_key",
    "twilio_auth_token",
    "twilio_webhook_signing_secret",
    "stream_secret",
    "sip_password",
    "engine_token",
    "admin_token",
    "metrics_token",
    "data_key",
)

# The only settings a chat-completions backend configured in a dialplan may send as its bearer:
# keys meant for language-model endpoints. Twilio, SIP and the bridge's own tokens never leave it.
CHAT_KEY_ENVS: tuple[str, ...] = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY")


DATA_KEY_BYTES = 32
_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")


def parse_data_key(value: str) -> bytes:
    """The 32-byte AES-256-GCM key from `BRIDGE_DATA_KEY` (64 hex digits, or base64 / base64url of
    32 bytes). The error names the expected forms, never the value."""
    text = value.strip()
    if _HEX_KEY.match(text):
        return bytes.fromhex(text)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(raw) == DATA_KEY_BYTES:
            return raw
    raise ConfigError(
        f"BRIDGE_DATA_KEY must be a 32-byte key written as 64 hex digits or as base64 "
        f"(44 characters); got {len(text)} characters that are neither "
        f"(make one with: python -c 'import os,base64; print(base64.b64encode(os.urandom(32)).decode())')"
    )


class Settings(BaseModel):
    """The bridge's configuration. Immutable once built."""

    # hide_input_in_errors: a rejected secret (a malformed BRIDGE_DATA_KEY) is never echoed.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    public_url: str | None = None
    realtime_url: str | None = None
    realtime_model: str = "gpt-realtime"
    dialplans: Path = Path("dialplans")
    upstream_format: ConfigurableUpstreamFormat = "pcm24k"
    # Barge-in: how much caller speech, at what Silero probability, stops the bot. One 32 ms window
    # at 0.3 behind the echo canceller: no false stop in 10 bot-minutes of echo, p50 ~100 ms from the
    # true onset (bench/results/bargein.md, phase 2; 0.5/64 was p50 ~140 ms). Background talkers pause
    # the bot more often at 0.3 (the backchannel rule resumes it); raise them per dialplan `barge_in:`.
    barge_in_min_speech_ms: int = Field(32, ge=20, le=2000)
    barge_in_threshold: float = Field(0.3, gt=0.0, lt=1.0)
    # Echo cancellation of the caller's audio against what the bridge played (bridge/media/echo.py),
    # before the barge-in detector; and whether the model gets the cleaned audio too (without it
    # the server's VAD hears the bot's echo: bench/results/bargein.md).
    echo_cancel: bool = True
    echo_to_upstream: bool = True
    # Backchannels: the bot pauses at the caller's onset and resumes when the caller stops within
    # backchannel_max_ms ("mm-hm"); longer speech commits the barge-in.
    backchannel: bool = True
    backchannel_max_ms: int = Field(400, ge=100, le=2000)
    # How far ahead of real time the pacer sends audio to Twilio.
    playout_lead_ms: int = Field(100, ge=20, le=500)
    log_level: str = "INFO"
    openai_api_key: str | None = None
    azure_api_key: str | None = None
    azure_endpoint: str | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    # Secret of a Twilio webhook SharedKey (HMAC-SHA256 signatures); the auth token when unset.
    twilio_webhook_signing_secret: str | None = None
    # Base URL of the Twilio REST API (tests and mocks only); the library's default when unset.
    twilio_api_base_url: str | None = None
    # Key for the short-lived media-stream tokens; derived from the auth token when unset.
    stream_secret: str | None = None
    stream_token_ttl_s: int = Field(120, ge=10, le=3600)
    # Rebuild the signed URL from X-Forwarded-Proto/Host (only behind your own proxy).
    trust_proxy: bool = False
    webhook_max_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    # How a transfer or hang-up continues a Twilio call: <Connect action>, REST update, or auto.
    twilio_continuation: Literal["auto", "action", "rest"] = "auto"
    sip_server: str | None = None
    sip_port: int = 5060
    sip_user: str | None = None
    sip_password: str | None = None
    sip_local_port: int = 5070
    sip_public_ip: str | None = None
    # Registration mode: besides the registrar, the addresses or CIDRs (comma-separated) whose SIP
    # requests are served. Trunk mode: the peers accepted (the SIP server when unset).
    sip_trusted_peers: str | None = None
    # What an untrusted SIP source gets: a 403 answer ("reject") or nothing at all ("drop").
    sip_untrusted_action: Literal["reject", "drop"] = "reject"
    # Bearer every `WS /v1/realtime` client must present; generated at start-up when unset (the
    # bridge's own `local` provider always knows it). docs/security.md says how SDK clients get it.
    engine_token: str | None = None
    # Bearer of the admin API, the console and the softphone; those routes are off when unset.
    admin_token: str | None = None
    # Optional bearer for GET /metrics (open on the bridge's port when unset; see docs/security.md).
    metrics_token: str | None = None
    # Admission: calls in progress per process (Twilio busy TwiML / SIP 503 beyond it) and
    # embedded-engine sessions per process. Justified in docs/security.md (bench/results/).
    max_calls: int = Field(100, ge=1, le=10_000)
    max_engine_sessions: int = Field(100, ge=1, le=10_000)
    # Per-source token bucket on webhooks and engine connections (requests per second, burst).
    rate_per_source_per_s: float = Field(20.0, gt=0, le=100_000)
    rate_burst: int = Field(60, ge=1, le=1_000_000)
    # Call records (bridge/records, docs/records.md). The data directory holds the SQLite database
    # (unless BRIDGE_DATABASE_URL names another) and the recordings; it is created at start-up.
    data_dir: Path = Path("data")
    # SQLAlchemy async URL: sqlite+aiosqlite:///<data_dir>/ivr-bridge.db when unset;
    # postgresql+asyncpg://user:password@host/db in production.
    database_url: str | None = None
    # AES-256-GCM key for transcripts and recordings at rest (64 hex digits or base64 of 32 bytes).
    data_key: str | None = None
    # Records and recordings older than this many days are purged (kept forever when unset).
    retention_days: int | None = Field(None, ge=1, le=36_500)
    # PII redaction of transcripts, event data and log lines: built-in rules on (comma-separated:
    # card, spoken_card, ssn, email, phone; "none" for none) and a YAML file of extra named regexes.
    pii_rules: str = "card,spoken_card,ssn,email,phone"
    pii_patterns: Path | None = None
    # Resilience (docs/resilience.md). Graceful drain on SIGTERM: calls in progress go on for up to
    # this long, then hear `drain_line` and are transferred to `drain_transfer_to` or hung up. New
    # Twilio calls meanwhile get busy TwiML, or a <Redirect> to `drain_redirect_url` (another bridge).
    drain_s: float = Field(120.0, ge=0, le=86_400)
    drain_line: str = "Sorry, we have to end this call now. Please call back in a moment. Goodbye."
    drain_transfer_to: str | None = None
    drain_redirect_url: str | None = None
    # A realtime session is replaced (rollover) before it is this old: under the provider's cap
    # (OpenAI: 60 minutes).
    max_session_s: float = Field(55 * 60.0, ge=1, le=86_400)
    # How long a lost realtime session is retried (per provider) before the fallback or on_error.
    reconnect_max_s: float = Field(10.0, ge=0, le=600)
    # Said once when the model is away longer than a second mid-call.
    hold_line: str = "One moment, please."
    # The moderation endpoint a dialplan's `moderation: {endpoint: true}` uses (OpenAI's moderation API
    # shape; its bearer is OPENAI_API_KEY, nothing else).
    moderation_url: str = "https://api.openai.com/v1/moderations"
    # Keep a record of every call (off: calls leave no rows; the admin API still reads older ones).
    records_enabled: bool = True
    # The browser softphone (/phone, WebRTC): the addresses of the bridge's ICE host candidates
    # (comma-separated; unset: BRIDGE_HOST when it is one address, else every IPv4 interface and
    # 127.0.0.1) and the UDP ports they use, one per call (docs/security.md, docs/softphone.md).
    webrtc_hosts: str | None = None
    webrtc_ports: str = Field("40000-40999", pattern=r"^\d{4,5}-\d{4,5}$")
    # Scale-out (docs/cluster.md): the Redis that several instances share (redis://[:password@]host:
    # port/db; its password is redacted like every secret). Unset: one instance, all state in memory.
    redis_url: str | None = None
    # This instance's name in the shared call directory and its control channel (hostname-pid when
    # unset; set it to the pod name in Kubernetes).
    instance_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,100}$")
    # Calls in progress across every instance sharing BRIDGE_REDIS_URL (unset: no cluster-wide cap,
    # BRIDGE_MAX_CALLS still caps each instance). Not enforced while Redis is unreachable.
    cluster_max_calls: int | None = Field(None, ge=1, le=1_000_000)

    @field_validator("data_key")
    @classmethod
    def _check_data_key(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            try:
                parse_data_key(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
            return value
        return None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name, field in ENV_FIELDS.items():
            raw = env.get(name)
            if raw is not None and raw != "":
                values[field] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            by_field = {v: k for k, v in ENV_FIELDS.items()}
            problems = "; ".join(
                f"{by_field.get(str(err['loc'][0]), err['loc'][0])}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigError(f"invalid configuration: {problems}") from exc

    @property
    def sip_enabled(self) -> bool:
        return bool(self.sip_server or self.sip_user)

    @property
    def instance_name(self) -> str:
        """BRIDGE_INSTANCE_ID, else `<hostname>-<pid>` (unique per process on one host)."""
        if self.instance_id:
            return self.instance_id
        import socket

        host = re.sub(r"[^A-Za-z0-9_.:-]", "_", socket.gethostname())[:80] or "host"
        return f"{host}-{os.getpid()}"

    @property
    def data_key_bytes(self) -> bytes | None:
        """The records encryption key, or None when BRIDGE_DATA_KEY is unset."""
        return parse_data_key(self.data_key) if self.data_key else None

    @property
    def database_url_resolved(self) -> str:
        """BRIDGE_DATABASE_URL, or the SQLite database in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'ivr-bridge.db').resolve()}"

    def secret_values(self) -> tuple[str, ...]:
        """The values of every secret setting that is set (for log and error redaction)."""
        from urllib.parse import unquote, urlsplit

        values = [getattr(self, name) for name in SECRET_FIELDS]
        for url in (self.database_url, self.redis_url):  # passwords inside BRIDGE_DATABASE_URL / _REDIS_URL
            if not url:
                continue
            try:
                password = urlsplit(url).password
            except ValueError:
                password = None
            if password:
                values += [password, unquote(password)]
        return tuple(dict.fromkeys(v for v in values if isinstance(v, str) and v))
