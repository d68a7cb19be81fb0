"""The SIP leg (PBX or SIP trunk), see docs/sip.md.

- `message`: SIP message parse / build, header helpers (no I/O)
- `sdp`: offer parsing, codec choice, answer SDP (no I/O)
- `dialog`: the UAS dialog and its in-dialog requests (no I/O)
- `uas`: the UAS core: datagrams and time in, datagrams, timers and call events out (no I/O)
- `policy`: which sources are served, refusal logging (no I/O)
- `registration`: REGISTER with pyVoIP's digest, refresh and back-off
- `endpoint`: the asyncio shell (socket, timers, RTP, legs) around the core
- `leg`: a SIP call as a `Leg`
- `service`: start/stop from the app lifespan (`start_sip`)
"""
