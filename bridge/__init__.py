"""ivr-bridge: phone calls (Twilio Media Streams, SIP) joined to realtime voice AI sessions."""

__version__ = "0.1.0"
