"""Phone legs (Twilio Media Streams, SIP/RTP), all producing the events of `leg.py` (the Leg protocol)."""
