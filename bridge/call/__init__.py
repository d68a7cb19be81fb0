"""One call: the call itself (call.py), its agent step (agent.py), barge-in (bargein.py, no I/O)
and its fixed prompts (prompts.py)."""

from bridge.call.call import Call
from bridge.call.prompts import prompt_voice

__all__ = ["Call", "prompt_voice"]
