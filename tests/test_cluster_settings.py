"""The cluster settings: ``--redis``/``--redis-prefix``, the environment and the ``[cluster]`` table."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pipe_proto import ConfigError
from pipe_trio.cluster_settings import ClusterSettings, cluster_settings

TABLE = """
[cluster]
redis = "redis://file:6379/0"
prefix = "from-file"
beat = 0.5
dead_after = 3
"""

PIPE_RELAY = Path(sys.executable).with_name("pipe-relay")
ENV = {"PIPE_RELAY_REDIS": "redis://env:6379/1", "PIPE_RELAY_REDIS_PREFIX": "from-env"}


def test_without_anything_the_node_runs_alone_with_the_default_bounds() -> None:
    """No option, variable or table: no Redis, prefix pipe-relay, heartbeats every 2 s, dead after 10 s."""
    assert cluster_settings({}, environ={}) == ClusterSettings(None, "pipe-relay", 2.0, 10.0)


def test_the_table_gives_everything() -> None:
    """[cluster] sets the URL, the prefix and both liveness bounds."""
    settings = cluster_settings(tomllib.loads(TABLE), environ={})
    assert settings == ClusterSettings("redis://file:6379/0", "from-file", 0.5, 3.0)


def test_the_environment_wins_over_the_file_and_the_command_line_over_both() -> None:
    """Each source is consulted field by field: what a stronger source leaves out comes from the next."""
    config = tomllib.loads(TABLE)
    from_env = cluster_settings(config, environ=ENV)
    assert (from_env.redis, from_env.prefix) == ("redis://env:6379/1", "from-env")
    assert (from_env.beat, from_env.dead_after) == (0.5, 3.0)  # only the file sets these
    given = cluster_settings(config, redis="redis://cli:6379/2", environ=ENV)
    assert (given.redis, given.prefix) == ("redis://cli:6379/2", "from-env")
    both = cluster_settings(config, redis="redis://cli:6379/2", prefix="from-cli", environ=ENV)
    assert (both.redis, both.prefix) == ("redis://cli:6379/2", "from-cli")
    # An empty variable counts as not set.
    assert cluster_settings(config, environ={"PIPE_RELAY_REDIS": ""}).redis == "redis://file:6379/0"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("cluster = 3", "cluster must be a table"),
        ("[cluster]\nhost = 'x'", "unknown setting(s) in cluster: host"),
        ("[cluster]\nredis = 6379", "cluster.redis must be a non-empty string"),
        ("[cluster]\nprefix = ''", "cluster.prefix must be a non-empty string"),
        ("[cluster]\nbeat = 0", "cluster.beat must be a positive number of seconds"),
        ("[cluster]\ndead_after = 'soon'", "cluster.dead_after must be a positive number of seconds"),
        ("[cluster]\nbeat = true", "cluster.beat must be a positive number of seconds"),
        ("[cluster]\nbeat = 2\ndead_after = 3", "cluster.dead_after (3 s) must be at least twice cluster.beat (2 s)"),
        ("[cluster]\nredis = 'localhost:6379'", "must start with redis://, rediss:// or unix://, not 'localhost:6379'"),
        ("[cluster]\nredis = 'redis:/:hunter2@db:6379'", "must start with redis://, rediss:// or unix://, not 'db:6379'"),
    ],
)
def test_bad_settings_are_refused_naming_them(table: str, message: str) -> None:
    """Each mistake is a ConfigError saying what is wrong."""
    with pytest.raises(ConfigError) as refused:
        cluster_settings(tomllib.loads(table), environ={})
    assert message in str(refused.value)


def test_a_bad_table_stops_the_relay_with_status_2(tmp_path: Path) -> None:
    """pipe-relay serve --config with a bad [cluster] ends at once with one line naming the setting."""
    path = tmp_path / "relay.toml"
    path.write_text("[[apps]]\nid = '1'\nkey = 'k'\nsecret = 's'\n[cluster]\nbeat = -1\n")
    done = run_relay(["--config", str(path)], {})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["pipe-relay: cluster.beat must be a positive number of seconds"]


def run_relay(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``pipe-relay serve --port 0 ARGV`` with ``env`` instead of the cluster variables, at most 30 s."""
    environ = {k: v for k, v in os.environ.items() if k not in ("PIPE_RELAY_REDIS", "PIPE_RELAY_REDIS_PREFIX")}
    command = [str(PIPE_RELAY), "serve", "--port", "0", *argv]
    return subprocess.run(command, capture_output=True, text=True, env={**environ, **env}, timeout=30, check=False)


@pytest.mark.parametrize("source", ["option", "environment", "file"])
def test_a_redis_url_is_checked_wherever_it_comes_from(source: str, tmp_path: Path) -> None:
    """A URL that is not a Redis URL stops the relay at start with status 2 and one line, not a traceback."""
    argv, env = ["--app", "1:k:s"], {}
    if source == "option":
        argv += ["--redis", "nonsense"]
    elif source == "environment":
        env["PIPE_RELAY_REDIS"] = "nonsense"
    else:
        path = tmp_path / "relay.toml"
        path.write_text("[cluster]\nredis = 'nonsense'\n")
        argv += ["--config", str(path)]
    done = run_relay(argv, env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "pipe-relay: the Redis URL must start with redis://, rediss:// or unix://, not 'nonsense'"
    ]
