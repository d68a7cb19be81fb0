"""One exception root for the bridge. Errors name the exact defect and keep their cause."""


class BridgeError(Exception):
    """Root of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """A setting or an environment variable has a value the bridge cannot use."""


class ProtocolError(BridgeError):
    """A peer sent something that breaks its protocol (Twilio, Realtime, SIP, RTP)."""


class UpstreamError(BridgeError):
    """The realtime session failed: could not connect, closed, or reported an error."""


class DialplanError(BridgeError):
    """A dialplan is invalid. The message reads `file:line path: what was expected`."""
