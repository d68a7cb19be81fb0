"""Phone legs: Twilio Media Streams and SIP/RTP, both producing the events in `events.py`."""
