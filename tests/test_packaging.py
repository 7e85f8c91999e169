"""What pyproject.toml asks of the dependencies the relay parses untrusted input with."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def requirement(name: str) -> Requirement:
    """The relay's own requirement on ``name``."""
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (found,) = [r for r in map(Requirement, dependencies) if r.name == name]
    return found


def test_h11_without_the_request_smuggling_flaw() -> None:
    """h11 before 0.16 accepts malformed chunk terminators (CVE-2025-43859): those versions are not allowed."""
    allowed = requirement("h11").specifier
    assert not allowed.contains("0.14.0") and not allowed.contains("0.15.0")
    assert allowed.contains("0.16.0")
    assert Version(metadata.version("h11")) >= Version("0.16")
