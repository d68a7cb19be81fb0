"""The browser softphone leg: WebRTC (aiortc) between a browser page and the bridge.

`outbox.py` (no I/O) holds the flushable queue of frames and marks toward the browser; `audio.py`
converts between the browser's audio (Opus, 48 kHz, decoded by aiortc) and the 8 kHz G.711 path
every leg carries; `leg.py` is the `Leg` over one `RTCPeerConnection`; `peer.py` answers an SDP offer.
"""
