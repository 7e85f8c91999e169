"""Where and how a node joins a cluster: ``--redis``, the environment and the ``[cluster]`` table.

The command line wins over the environment, which wins over the configuration
file (docs/cluster.md)::

    [cluster]
    redis = "redis://10.0.0.5:6379/0"   # --redis, PIPE_RELAY_REDIS
    prefix = "pipe-relay"               # --redis-prefix, PIPE_RELAY_REDIS_PREFIX
    beat = 2.0                          # seconds between heartbeats
    dead_after = 10.0                   # seconds of silence before a node is reaped
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipe_proto import ConfigError
from pipe_proto.cluster import BEAT, DEAD_AFTER

__all__ = ["ClusterSettings", "cluster_settings"]

_KNOWN = {"redis", "prefix", "beat", "dead_after"}
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True)
class ClusterSettings:
    """Where and how this node joins a cluster (``redis`` None: it runs alone)."""

    redis: str | None = None
    #: The cluster's name: every Redis key and channel starts with it.
    prefix: str = "pipe-relay"
    #: Seconds between heartbeats.
    beat: float = BEAT
    #: Seconds of silence after which the other nodes clean up after a node.
    dead_after: float = DEAD_AFTER


def cluster_settings(
    config: Mapping[str, Any],
    *,
    redis: str | None = None,
    prefix: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ClusterSettings:
    """The settings from the parsed configuration file, the environment and the options given.

    Args:
        config: the whole parsed configuration file (its ``cluster`` table is read).
        redis: ``--redis``, if given.
        prefix: ``--redis-prefix``, if given.
        environ: the environment (``os.environ`` by default).

    Raises:
        ConfigError: the ``[cluster]`` table or a value is invalid.
    """
    environ = os.environ if environ is None else environ
    table = config.get("cluster", {})
    if not isinstance(table, Mapping):
        raise ConfigError("cluster must be a table ([cluster])")
    unknown = set(table) - _KNOWN
    if unknown:
        raise ConfigError(f"unknown setting(s) in cluster: {', '.join(sorted(unknown))}")
    for name in ("redis", "prefix"):
        if name in table and (not isinstance(table[name], str) or not table[name]):
            raise ConfigError(f"cluster.{name} must be a non-empty string")
    for name in ("beat", "dead_after"):
        value = table.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            raise ConfigError(f"cluster.{name} must be a positive number of seconds")
    settings = ClusterSettings(
        redis=redis or environ.get("PIPE_RELAY_REDIS") or table.get("redis"),
        prefix=prefix or environ.get("PIPE_RELAY_REDIS_PREFIX") or table.get("prefix") or "pipe-relay",
        beat=float(table.get("beat", BEAT)),
        dead_after=float(table.get("dead_after", DEAD_AFTER)),
    )
    if settings.redis is not None and not settings.redis.startswith(_REDIS_SCHEMES):
        shown = settings.redis.rpartition("@")[2]  # never show a password
        raise ConfigError(f"the Redis URL must start with redis://, rediss:// or unix://, not {shown!r}")
    if settings.dead_after < 2 * settings.beat:
        raise ConfigError(
            f"cluster.dead_after ({settings.dead_after:g} s) must be at least twice cluster.beat ({settings.beat:g} s)"
        )
    return settings
