"""The SIP leg alone, for bench/load_sip.py `--mode leg`: the bridge's SIP service (`start_sip`: UAS
core, admission, RTP endpoints, the shared RTP ticker, `SipLeg`) on uvloop, with a call handler that
does what `Call` does with the leg and nothing else: a pacer per call hands the prompt's frames (and
a mark per frame) to the leg from a `Playout` shaped by the leg, as `Call._pacer` does, and every leg
event (the caller's audio, marks) is read. No dialplan, VAD or echo canceller: what is left is the
cost of SIP + RTP per call.

    python -m bench._sip_leg_server SIP_PORT MAX_CALLS PROMPT_WAV STATUS_JSON
"""

from __future__ import annotations

import asyncio
import audioop
import contextlib
import gc
import json
import signal
import sys
import time
import wave
from pathlib import Path

from bridge.limits import Slots
from bridge.media.playout import Playout
from bridge.settings import Settings
from bridge.telephony.leg import CallEnded
from bridge.telephony.sip.leg import SipLeg
from bridge.telephony.sip.service import start_sip


async def serve(sip_port: int, max_calls: int, prompt: Path, status_path: Path) -> None:
    with wave.open(str(prompt)) as w:
        ulaw = audioop.lin2ulaw(w.readframes(w.getnframes()), 2)
    loop = asyncio.get_running_loop()

    async def pace(leg: SipLeg) -> None:
        """What `Call._pacer` does: a `Playout` shaped by the leg (lead_ms, refill_ms), frames and a
        mark per frame handed to the leg when due, sleeping to the next absolute deadline."""
        playout = Playout(lead_ms=leg.lead_ms, refill_ms=getattr(leg, "refill_ms", 0), silence_byte=0xFF)
        playout.push("prompt", ulaw)
        playout.finish_item("prompt")
        n = 0
        while True:
            now = loop.time() * 1000
            for frame in playout.pop_due(now):
                n += 1
                await leg.send_audio(frame.payload)
                await leg.send_mark(str(n))
            due = playout.next_due_ms()
            if due is None:
                return
            await asyncio.sleep(max(0.0, due / 1000 - loop.time()))

    async def on_call(leg: SipLeg) -> None:
        pacer = loop.create_task(pace(leg))
        try:
            async for event in leg.events():
                if isinstance(event, CallEnded):
                    break
        finally:
            pacer.cancel()

    gc_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    gc_t0 = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_t0[0] = time.perf_counter()
        else:
            gc_pauses[info["generation"]].append((time.perf_counter() - gc_t0[0]) * 1000)

    gc.callbacks.append(on_gc)
    settings = Settings(
        sip_server="127.0.0.1", sip_user="bridge", sip_local_port=sip_port, max_calls=max_calls
    )
    svc = await start_sip(settings, on_call, bind_host="127.0.0.1", admission=Slots(max_calls))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        status = svc.status()
        status["gc_ms"] = {g: [len(v), round(max(v, default=0.0), 1)] for g, v in gc_pauses.items()}
        status_path.with_suffix(".tmp").write_text(json.dumps(status))
        status_path.with_suffix(".tmp").replace(status_path)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)
    await svc.stop()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])))
