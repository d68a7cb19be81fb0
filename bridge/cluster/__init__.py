"""Scale-out: the state several bridge instances share through Redis (docs/cluster.md).

`core` (no I/O: keys, control messages, the link state machine, Lua scripts), `shell` (`Cluster`,
redis-py's asyncio client with a timeout on every command, degrading to local state), `registry`
(the Twilio call registry with the call directory and forwarded status callbacks), `dialplans`
(one dialplan version number everywhere). Without BRIDGE_REDIS_URL none of this is created.
"""

from bridge.cluster.core import ControlMessage, ForwardStatus, HangUpCall, TransferCall
from bridge.cluster.dialplans import DialplanSync
from bridge.cluster.registry import ClusterCallRegistry
from bridge.cluster.shell import Cluster

__all__ = [
    "Cluster",
    "ClusterCallRegistry",
    "ControlMessage",
    "DialplanSync",
    "ForwardStatus",
    "HangUpCall",
    "TransferCall",
]
