"""The bridge's own RTP for the SIP leg (RFC 3550 / 3551 / 4733).

- `packet`: header parse/build, G.711 constants, stats, RFC 4733 telephone-events (no I/O)
- `jitter`: reordering jitter buffer, loss concealment, `RtpReceiver` (no I/O)
- `sender`: `RtpSender`, the per-call send queue stamping 20 ms frames (no I/O)
- `endpoint`: one call's UDP socket (`RtpEndpoint`, `open_rtp`)
- `ticker`: the shared pacer sending every call's packets on absolute 20 ms deadlines
"""
