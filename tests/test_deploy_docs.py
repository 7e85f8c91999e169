"""docs/deploy.md's files as documented: the configuration passes check-config, the systemd unit verifies and runs our commands."""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from pipe_trio.cli import build_parser, check_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = (ROOT / "docs" / "deploy.md").read_text()
PIPE_RELAY = str(Path(sys.executable).with_name("pipe-relay"))


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DEPLOY, re.MULTILINE | re.DOTALL)


def unit() -> str:
    (found,) = [b for b in blocks("ini") if "[Service]" in b]
    return found


def test_the_documented_configuration_passes_check_config(tmp_path: Path) -> None:
    """The relay.toml of docs/deploy.md is valid as it stands."""
    (config,) = [b for b in blocks("toml") if "[server]" in b]
    path = tmp_path / "relay.toml"
    path.write_text(config)
    out = io.StringIO()
    assert check_config(str(path), {}, out) == 0, out.getvalue()
    assert "trusted_proxies" in out.getvalue()


def test_the_unit_runs_commands_of_this_relay() -> None:
    """ExecStartPre and ExecStart are pipe-relay commands that parse, reading the documented file."""
    commands = re.findall(r"^ExecStart(?:Pre)?=(.*)$", unit(), re.MULTILINE)
    assert len(commands) == 2
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "/opt/pipe-relay/bin/pipe-relay"
        args = build_parser().parse_args(argv[1:])
        assert "/etc/pipe-relay/relay.toml" in (getattr(args, "config", None), getattr(args, "file", None))
    assert re.search(r"^ExecReload=/bin/kill -HUP \$MAINPID$", unit(), re.MULTILINE)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_finds_nothing_wrong_with_the_unit(tmp_path: Path) -> None:
    """systemd-analyze verify prints no complaint about the documented unit (our pipe-relay in place)."""
    path = tmp_path / "pipe-relay.service"
    path.write_text(unit().replace("/opt/pipe-relay/bin/pipe-relay", PIPE_RELAY))
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stderr


def test_the_kernel_settings_exist() -> None:
    """Every sysctl the page sets names a setting of this kernel."""
    (settings,) = [b for b in blocks("ini") if "somaxconn" in b]
    names = [line.split("=")[0].strip() for line in settings.splitlines() if "=" in line and not line.startswith("#")]
    assert names
    for name in names:
        assert Path("/proc/sys", *name.split(".")).exists(), name


def _can_build_extensions() -> bool:
    return shutil.which("cc") is not None and Path(sysconfig.get_paths()["include"], "Python.h").exists()


@pytest.mark.slow
@pytest.mark.skipif(not _can_build_extensions(), reason="no C compiler or Python headers (tests/run installs both)")
def test_the_documented_compiled_install_builds_without_the_redis_extra(tmp_path: Path) -> None:
    """"The compiled core"'s commands, as written, in a fresh virtualenv on a copy of the sources
    (no redis extra, so no coredis whose types mypyc could read): the relay runs on the compiled core.

    Like the documented install, it needs the package index (pip installs the dependencies and mypy).
    """
    import pipe_proto.relay.relay

    if not pipe_proto.relay.relay.__file__.endswith(".py"):
        pytest.skip("runs once, in the pure Python pass (this one imports the compiled core)")
    (commands,) = [b for b in blocks("sh") if "PIPE_RELAY_COMPILE=1" in b]
    source = tmp_path / "pipe-relay"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "node_modules", "__pycache__", "build", "*.so", "*.egg-info", ".*_cache", ".hypothesis",
    ))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIPE_RELAY_COMPILE", "VIRTUAL_ENV")}
    # The doc's `python3`: the interpreter of this run (whose headers were checked above).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", commands], cwd=source, env=env, capture_output=True, text=True,
        timeout=900, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].endswith(".so"), done.stdout[-2000:]
    check = (
        "import importlib.util, pipe_proto.prechecked, pipe_trio.cli, pipe_trio._wsframes;"
        "assert importlib.util.find_spec('coredis') is None;"
        "print(pipe_proto.prechecked.__file__, pipe_trio._wsframes.__file__)"
    )
    python = source / ".venv" / "bin" / "python"
    done = subprocess.run([python, "-P", "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [name.endswith(".so") for name in done.stdout.split()] == [True, True], done.stdout
    help_text = subprocess.run([source / ".venv" / "bin" / "pipe-relay", "serve", "--help"], env=env,
                               capture_output=True, text=True, timeout=120, check=True).stdout
    assert "--redis" in help_text
