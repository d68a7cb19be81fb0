"""The few Twilio REST calls the bridge makes, through the `twilio` library's client.

- `configure_number`: point a number's voice webhook (POST {url}/twilio/voice) and status
  callback (POST {url}/twilio/status) at the bridge; used by `ivr-bridge twilio configure`.
- `update_call_twiml`: replace a live call's TwiML (`<Dial>` or `<Hangup/>`): the transfer /
  hang-up fallback when the `<Connect action>` continuation cannot be used.

Credentials come from `TWILIO_ACCOUNT_SID` + `TWILIO_AUTH_TOKEN`. `TWILIO_API_BASE_URL` (tests and
mock servers only) sends the client's requests elsewhere through its own HTTP layer.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from bridge.errors import ConfigError, UpstreamError
from bridge.settings import Settings

# The library's HTTP client pulls in requests and urllib3 (~4 MB RSS): imported when a REST client is
# made (a transfer, a continuation, the `ivr-bridge twilio` commands), not when the app starts.
if TYPE_CHECKING:
    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

TWILIO_API_ORIGIN = "https://api.twilio.com"
VOICE_PATH = "/twilio/voice"
STATUS_PATH = "/twilio/status"


class TwilioRestError(UpstreamError):
    """The Twilio REST API refused or failed a request."""


@functools.cache
def _rebased_class() -> type[TwilioHttpClient]:
    from twilio.http.http_client import TwilioHttpClient

    class RebasedHttpClient(TwilioHttpClient):
        """The library's HTTP client, with `https://api.twilio.com` replaced by another origin."""

        def __init__(self, base_url: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.base_url = base_url.rstrip("/")

        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            if url.startswith(TWILIO_API_ORIGIN):
                url = self.base_url + url[len(TWILIO_API_ORIGIN) :]
            return super().request(method, url, *args, **kwargs)

    return RebasedHttpClient


def rebased_http_client(base_url: str, **kwargs: Any) -> TwilioHttpClient:
    """The library's HTTP client, with `https://api.twilio.com` replaced by `base_url`."""
    return _rebased_class()(base_url, **kwargs)


def __getattr__(name: str) -> Any:
    """`RebasedHttpClient`, made (with the twilio HTTP stack imported) on first access."""
    if name == "RebasedHttpClient":
        return _rebased_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def has_rest_credentials(settings: Settings) -> bool:
    return bool(settings.twilio_account_sid and settings.twilio_auth_token)


def make_client(settings: Settings, http_client: TwilioHttpClient | None = None) -> Client:
    """A REST client from settings; `ConfigError` without credentials."""
    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    if not has_rest_credentials(settings):
        raise ConfigError("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN must be set to use the Twilio REST API")
    if http_client is None:
        http_client = (
            rebased_http_client(settings.twilio_api_base_url, timeout=10)
            if settings.twilio_api_base_url
            else TwilioHttpClient(timeout=10)
        )
    return Client(settings.twilio_account_sid, settings.twilio_auth_token, http_client=http_client)


@dataclass(frozen=True, slots=True)
class Change:
    field: str
    old: str
    new: str

    @property
    def changed(self) -> bool:
        return self.old != self.new


def webhook_urls(base_url: str) -> dict[str, str]:
    """The number fields that point Twilio at the bridge at `base_url` (https://host[/prefix])."""
    if not base_url.startswith("https://"):
        raise ConfigError(f"--url must be the bridge's public https:// base URL, got {base_url!r}")
    if "?" in base_url or "#" in base_url:
        raise ConfigError(f"--url must not have a query string or fragment: {base_url!r}")
    base = base_url.rstrip("/")
    return {
        "voice_url": base + VOICE_PATH,
        "voice_method": "POST",
        "status_callback": base + STATUS_PATH,
        "status_callback_method": "POST",
    }


def configure_number(client: Client, number: str, base_url: str, *, dry_run: bool = False) -> list[Change]:
    """Point `number`'s voice webhook and status callback at the bridge; returns every field with its
    old and new value (unchanged ones too). Nothing is written when nothing changes or `dry_run`."""
    from twilio.base.exceptions import TwilioException

    wanted = webhook_urls(base_url)
    try:
        found = [n for n in client.incoming_phone_numbers.list(phone_number=number, limit=20)]
    except TwilioException as exc:
        raise TwilioRestError(f"looking up {number} failed: {exc}") from exc
    exact = [n for n in found if n.phone_number == number]
    if not exact:
        raise ConfigError(f"{number} is not a phone number of this Twilio account")
    phone = exact[0]
    changes = [Change(name, str(getattr(phone, name, None) or ""), value) for name, value in wanted.items()]
    if dry_run or not any(c.changed for c in changes):
        return changes
    try:
        client.incoming_phone_numbers(phone.sid).update(**wanted)
    except TwilioException as exc:
        raise TwilioRestError(f"updating {number} ({phone.sid}) failed: {exc}") from exc
    return changes


def update_call_twiml_sync(client: Client, call_sid: str, twiml: str) -> str:
    """Replace the live call's TwiML; returns the call status Twilio reports."""
    from twilio.base.exceptions import TwilioException

    try:
        call = client.calls(call_sid).update(twiml=twiml)
    except TwilioException as exc:
        raise TwilioRestError(f"updating call {call_sid} failed: {exc}") from exc
    return str(call.status or "")


async def update_call_twiml(client: Client, call_sid: str, twiml: str) -> str:
    """`update_call_twiml_sync` off the event loop (the library's client blocks)."""
    return await asyncio.to_thread(update_call_twiml_sync, client, call_sid, twiml)


# --------------------------------------------------------------------------- CLI


def run_configure(
    settings: Settings,
    number: str,
    url: str,
    *,
    dry_run: bool = False,
    out: TextIO = sys.stdout,
    http_client: TwilioHttpClient | None = None,
) -> int:
    client = make_client(settings, http_client)
    changes = configure_number(client, number, url, dry_run=dry_run)
    changed = [c for c in changes if c.changed]
    for c in changes:
        mark = "changed" if c.changed else "unchanged"
        print(f"{number} {c.field}: {c.old or '(none)'} -> {c.new} ({mark})", file=out)
    if not changed:
        print(f"{number}: already points at {url}; nothing to do", file=out)
    elif dry_run:
        print(f"{number}: dry run, {len(changed)} field(s) would change", file=out)
    else:
        print(f"{number}: updated {len(changed)} field(s)", file=out)
    return 0


def _configure_command(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
        return run_configure(settings, args.number, args.url, dry_run=args.dry_run)
    except (ConfigError, TwilioRestError) as exc:
        print(f"ivr-bridge: {exc}", file=sys.stderr)
        return 2


def add_subcommand(sub: Any) -> None:
    """Register `ivr-bridge twilio configure` on the CLI's sub-parsers."""
    twilio = sub.add_parser("twilio", help="Twilio account set-up")
    twilio_sub = twilio.add_subparsers(dest="twilio_command", required=True)
    configure = twilio_sub.add_parser(
        "configure",
        help="point a Twilio number's voice webhook and status callback at the bridge",
        description="Uses TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN; prints each field as old -> new.",
    )
    configure.add_argument("--number", required=True, help="the Twilio number, E.164 (+15550100)")
    configure.add_argument("--url", required=True, help="the bridge's public base URL (https://...)")
    configure.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
    configure.set_defaults(func=_configure_command)
