"""Tools for people and scripts on top of the bridge: the Twilio-protocol client
(`twilio_media.py`, `softphone.py`), `ivr-bridge call` (`call_cli.py`) and
`ivr-bridge dialplan test` (`dialplan_test.py`)."""
