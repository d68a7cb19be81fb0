"""Render fixed texts with the local voice in a short-lived child process, keeping only the audio.

Piper and onnxruntime cost ~110 MB RSS for the life of a process once loaded. A dialplan whose
texts are all fixed (no `{variable}`) and that has no agent on the embedded engine never needs them
again once its prompts are rendered: `render_in_child()` runs `python -m bridge.speech.prerender`,
which synthesizes every text at 8 kHz (the same `Synthesizer` and prompt cache key the process itself
would use) and writes the PCM back; the child then exits and its memory goes with it.

Wire format (stdout, binary): for each text in order, a 4-byte big-endian length then that many
bytes of PCM16 little-endian 8 kHz mono. Input (stdin): a JSON list of texts.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

from bridge.errors import BridgeError

CHILD_TIMEOUT_S = 120.0
_LEN = struct.Struct(">I")


class PrerenderError(BridgeError):
    """The child process that renders prompts failed (its exit code and the tail of its stderr)."""


def normalized(text: str) -> str:
    """The key a rendered text is kept under (whitespace runs as one space, as the prompt cache does)."""
    return " ".join(text.split())


def render_in_child(texts: list[str], timeout_s: float = CHILD_TIMEOUT_S) -> dict[str, bytes]:
    """{normalized text: PCM16 8 kHz} for every text, rendered in a child process. Blocking."""
    if not texts:
        return {}
    proc = subprocess.run(
        [sys.executable, "-m", "bridge.speech.prerender"],
        input=json.dumps(texts).encode(),
        capture_output=True,
        timeout=timeout_s,
        check=False,
    )
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise PrerenderError(f"prompt renderer exited with {proc.returncode}: {' | '.join(tail)}")
    out: dict[str, bytes] = {}
    data, pos = proc.stdout, 0
    for text in texts:
        if pos + _LEN.size > len(data):
            raise PrerenderError(f"prompt renderer answered {len(out)} of {len(texts)} texts")
        (n,) = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        out[normalized(text)] = data[pos : pos + n]
        pos += n
    return out


def _main() -> int:
    import numpy as np

    from bridge.media.g711 import RATE_8K
    from bridge.speech.tts import Synthesizer

    texts = json.loads(sys.stdin.buffer.read())
    # The answer goes out on a copy of stdout; stdout itself points at stderr from here on, so nothing
    # a library prints (espeak-ng, a warning) can corrupt the framing.
    out = os.fdopen(os.dup(1), "wb")
    sys.stdout.flush()
    os.dup2(2, 1)
    synth = Synthesizer(out_rate=RATE_8K)
    for text in texts:
        pcm = np.asarray(synth.cached(str(text)), dtype="<i2").tobytes()
        out.write(_LEN.pack(len(pcm)))
        out.write(pcm)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
