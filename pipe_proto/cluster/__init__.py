"""Cluster mode: several relays sharing Redis, as sans-I/O state and data.

:class:`ClusterDirectory` makes a :class:`~pipe_proto.Relay` one node of a
cluster: pass ``directory=lambda core: ClusterDirectory(core, node=...)``.
The relay then emits :class:`~pipe_proto.relay.outputs.ClusterCall` outputs
(calls of :data:`SCRIPT`, to send to Redis in order) and takes back the
messages of its :func:`inbox`, the results of its calls, and word of Redis
coming and going (``Relay.cluster_message``, ``cluster_result``,
``cluster_up``, ``cluster_down``); :func:`merged` says which queued calls
may travel as one, and :func:`multi` runs several in one script call.
``docs/cluster.md`` describes what goes through Redis and what clients can
rely on.
"""

from .directory import BEAT, DEAD_AFTER, MERGE_ARGS, MERGE_CALLS, ClusterDirectory, inbox, merged, multi, weight
from .script import SCRIPT, SCRIPT_SHA1

__all__ = [
    "BEAT", "DEAD_AFTER", "MERGE_ARGS", "MERGE_CALLS", "SCRIPT", "SCRIPT_SHA1", "ClusterDirectory", "inbox", "merged",
    "multi", "weight",
]
