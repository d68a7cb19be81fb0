"""Shared state of several bridge instances: the parts that do no I/O (docs/cluster.md).

- `Keys`: every Redis key and channel name, in one place (prefix `ivr:`).
- Control messages between instances: `ForwardStatus`, `HangUpCall`, `TransferCall`, encoded as
  small JSON objects (`encode` / `decode`; `decode` raises `ControlMessageError` naming the defect).
- `Link`: is Redis usable right now? One state machine (UP / DOWN) with the transitions in one
  place; time is an input; `retry_delay_s` gives the reconnect backoff.
- The Lua scripts that make the cluster-wide admission lease and the per-source token bucket atomic.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass
from typing import Literal

from bridge.errors import ProtocolError

KEY_PREFIX = "ivr:"
# A call's directory entry and admission lease live this long unless the holding instance's
# heartbeat refreshes them: a dead instance's calls vanish within DIRECTORY_TTL_S.
DIRECTORY_TTL_S = 10.0
HEARTBEAT_S = 2.0
# Every Redis command gets this long; a hung Redis can never stall a webhook longer.
OP_TIMEOUT_S = 0.25
# The shared part of a Twilio call's record (caller, flow, action URL), for the instance that gets
# the stream when another answered the webhook; and a pending continuation for `<Connect action>`.
CALL_INFO_TTL_S = 6 * 3600
CONTINUATION_TTL_S = 600
BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 5.0


@dataclass(frozen=True, slots=True)
class Keys:
    """Redis key and channel names (one prefix, so one Redis can serve several deployments)."""

    prefix: str = KEY_PREFIX

    def token(self, nonce: str) -> str:
        return f"{self.prefix}token:{nonce}"

    def call(self, call_id: str) -> str:
        return f"{self.prefix}call:{call_id}"

    def call_info(self, call_id: str) -> str:
        return f"{self.prefix}callinfo:{call_id}"

    def continuation(self, call_id: str) -> str:
        return f"{self.prefix}cont:{call_id}"

    @property
    def leases(self) -> str:
        return f"{self.prefix}leases"

    def rate(self, source: str) -> str:
        return f"{self.prefix}rate:{source}"

    def control(self, instance: str) -> str:
        return f"{self.prefix}ctl:{instance}"

    @property
    def dialplan(self) -> str:
        """Hash: `version` (monotonic), `hash` (sha256 of the files' content), `by` (instance)."""
        return f"{self.prefix}dialplan"

    @property
    def dialplan_channel(self) -> str:
        return f"{self.prefix}dialplan:published"


def lease_member(instance: str, call_id: str) -> str:
    return f"{instance}|{call_id}"


# --------------------------------------------------------------------------- control messages


class ControlMessageError(ProtocolError):
    """A control message from another instance that is not one this bridge understands."""


@dataclass(frozen=True, slots=True)
class ForwardStatus:
    """A Twilio status callback that reached another instance, for the call this one holds."""

    call_id: str
    kind: Literal["call", "stream"]
    status: str
    at_s: float
    detail: str = ""
    type: Literal["status"] = "status"


@dataclass(frozen=True, slots=True)
class HangUpCall:
    """An operator's hang-up (console / admin API) that reached another instance."""

    call_id: str
    who: str
    type: Literal["hang_up"] = "hang_up"


@dataclass(frozen=True, slots=True)
class TransferCall:
    """An operator's transfer that reached another instance (the target was checked there)."""

    call_id: str
    target: str
    who: str
    type: Literal["transfer"] = "transfer"


ControlMessage = ForwardStatus | HangUpCall | TransferCall
_TYPES: dict[str, type[ForwardStatus] | type[HangUpCall] | type[TransferCall]] = {
    "status": ForwardStatus,
    "hang_up": HangUpCall,
    "transfer": TransferCall,
}
MAX_MESSAGE_BYTES = 4096


def encode(message: ControlMessage) -> str:
    return json.dumps(asdict(message), separators=(",", ":"))


def decode(raw: str | bytes) -> ControlMessage:
    """The typed message in `raw`, or `ControlMessageError` naming what is wrong with it."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ControlMessageError(f"control message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ControlMessageError(f"control message is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ControlMessageError("control message is not a JSON object")
    kind = data.get("type")
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ControlMessageError(f"control message type {kind!r} is not one of {sorted(_TYPES)}")
    try:
        message = cls(**data)
    except TypeError as exc:
        raise ControlMessageError(f"control message {kind!r} has the wrong fields: {exc}") from exc
    for name, value in asdict(message).items():
        if name == "at_s":
            if not isinstance(value, int | float):
                raise ControlMessageError(f"control message {kind!r}: at_s is not a number")
        elif not isinstance(value, str):
            raise ControlMessageError(f"control message {kind!r}: {name} is not a string")
    return message


# --------------------------------------------------------------------------- the link to Redis


class LinkState(enum.Enum):
    UP = "up"
    DOWN = "down"


class Link:
    """Whether the instance uses Redis or its local state, and when to try Redis again.

    `failed(now_s)` and `recovered(now_s)` return True when they change the state (the shell logs
    and counts transitions only, never each failed command). While DOWN, commands are not even
    tried (no timeout paid per webhook); the shell's retry loop probes at `retry_delay_s()`.
    """

    def __init__(self) -> None:
        self.state = LinkState.DOWN  # until the first successful command
        self.since_s = 0.0
        self.attempts = 0  # probes since the link went down
        self.transitions = 0

    @property
    def up(self) -> bool:
        return self.state is LinkState.UP

    def failed(self, now_s: float) -> bool:
        if self.state is LinkState.DOWN:
            return False
        self.state, self.since_s, self.attempts = LinkState.DOWN, now_s, 0
        self.transitions += 1
        return True

    def probe_failed(self) -> None:
        self.attempts += 1

    def recovered(self, now_s: float) -> bool:
        if self.state is LinkState.UP:
            return False
        self.state, self.since_s, self.attempts = LinkState.UP, now_s, 0
        self.transitions += 1
        return True

    def retry_delay_s(self) -> float:
        """Exponential backoff: 0.2 s, 0.4 s, ... at most 5 s between probes."""
        return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * (2 ** min(self.attempts, 10)))


# --------------------------------------------------------------------------- Lua scripts

# KEYS[1] leases (sorted set: member -> expiry ms); ARGV: member, limit, now_ms, ttl_ms.
# Drops expired leases, then takes (or refreshes) the member's lease unless `limit` are held.
ACQUIRE_LEASE = """
local now = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
return 1
"""

# KEYS[1] the source's bucket (hash t = tokens, ts = last update ms); ARGV: rate/s, burst, now_ms.
# The same token bucket as bridge/limits.RateLimiter, shared by every instance.
TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) / 1000.0 * rate)
  ts = now
end
local ok = 0
if tokens >= 1 then
  tokens = tokens - 1
  ok = 1
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return ok
"""

# KEYS[1] the dialplan hash; ARGV: content hash, instance, the caller's version. A new content hash
# gets the next version, or the caller's own version when that is higher (so a Redis that lost its
# data cannot make versions go back); the same hash keeps its version. Returns {version, hash}:
# every instance adopts that number.
PUBLISH_DIALPLAN = """
local current = redis.call('HGET', KEYS[1], 'hash')
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current == ARGV[1] then
  return {version, current}
end
version = version + 1
local floor = tonumber(ARGV[3])
if version < floor then
  version = floor
end
redis.call('HSET', KEYS[1], 'version', version, 'hash', ARGV[1], 'by', ARGV[2])
return {version, ARGV[1]}
"""
