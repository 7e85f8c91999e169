"""docs/deploy.md's files as documented: the configuration passes check-config, the systemd unit verifies and runs our commands."""

from __future__ import annotations

import io
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipe_trio.cli import build_parser, check_config

DEPLOY = (Path(__file__).resolve().parents[1] / "docs" / "deploy.md").read_text()
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
