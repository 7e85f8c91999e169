"""The public surface: what each module of pipe_proto exports, and what pipe_trio documents as importable."""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import pkgutil
import types
from pathlib import Path

import pytest

import pipe_proto
import pipe_trio

ROOT = Path(__file__).resolve().parents[1]


def modules(package: types.ModuleType) -> list[str]:
    """Every module of ``package``, itself included, by dotted name."""
    names = [package.__name__]
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
        names.append(info.name)
    return sorted(names)


def is_private(dotted: str) -> bool:
    return any(part.startswith("_") for part in dotted.split("."))


CORE = modules(pipe_proto)
PUBLIC_CORE = [m for m in CORE if not is_private(m)]
PRIVATE_CORE = [m for m in CORE if is_private(m) and not m.endswith("__main__")]


def own_names(module: types.ModuleType) -> set[str]:
    """Names a module defines at its top level (classes, functions, assignments), not the ones it imports."""
    assert module.__file__ is not None
    source = Path(module.__file__)
    if source.suffix != ".py":  # its compiled build (setup.py), beside the source
        source = source.parent / (module.__name__.rpartition(".")[2] + ".py")
    tree = ast.parse(source.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    names.discard("__all__")
    return names


def imported_names(module: types.ModuleType) -> set[str]:
    """Names a module binds with ``from ... import`` at its top level."""
    assert module.__file__ is not None
    source = Path(module.__file__)
    if source.suffix != ".py":  # its compiled build (setup.py), beside the source
        source = source.parent / (module.__name__.rpartition(".")[2] + ".py")
    tree = ast.parse(source.read_text(encoding="utf-8"))
    return {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module != "__future__"
        for alias in node.names
    }


@pytest.mark.parametrize("name", CORE)
def test_every_module_has_an_all_whose_entries_exist(name: str) -> None:
    """Each module of the core declares ``__all__``, and every name in it is there."""
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list), f"{name} has no __all__ list"
    assert len(exported) == len(set(exported)), f"{name}.__all__ repeats a name"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it lacks: {missing}"


# Modules whose stray names are being settled on another line of work; strict
# xfail, so the mark must go as soon as they export them.
@pytest.mark.parametrize("name", PUBLIC_CORE)
def test_public_names_are_exported_or_private(name: str) -> None:
    """A public module's own top-level names are in its ``__all__`` or start with an underscore."""
    module = importlib.import_module(name)
    stray = sorted(n for n in own_names(module) if not n.startswith("_") and n not in module.__all__)
    assert not stray, f"{name} defines public names missing from __all__: {stray}"


@pytest.mark.parametrize("name", [m for m in PUBLIC_CORE if hasattr(importlib.import_module(m), "__path__")])
def test_packages_export_what_they_import(name: str) -> None:
    """A package's ``__init__`` imports names only to re-export them (or under a private name)."""
    package = importlib.import_module(name)
    stray = sorted(
        n
        for n in imported_names(package)
        if not n.startswith("_")
        and n not in package.__all__
        and not isinstance(getattr(package, n, None), types.ModuleType)
    )
    assert not stray, f"{name} imports public names it does not export: {stray}"


@pytest.mark.parametrize("name", [m for m in PRIVATE_CORE if m.rsplit(".", 1)[-1] != "__init__"])
def test_private_modules_are_reexported(name: str) -> None:
    """What a private module exports is reachable from a public module (as trio re-exports trio._core)."""
    module = importlib.import_module(name)
    public = {id(v) for m in PUBLIC_CORE for k, v in vars(importlib.import_module(m)).items() if k in getattr(importlib.import_module(m), "__all__", ())}
    hidden = [n for n in module.__all__ if id(getattr(module, n)) not in public]
    assert not hidden, f"{name} exports names no public module re-exports: {hidden}"


def test_no_public_name_shadows_a_builtin() -> None:
    """No name in any ``__all__`` of either package is also a builtin (``Warning``, ``TimeoutError``, ...)."""
    builtin = set(dir(builtins))
    shadows = sorted(
        f"{name}.{n}"
        for name in [*CORE, *modules(pipe_trio)]
        if not name.endswith("__main__")
        for n in getattr(importlib.import_module(name), "__all__", ())
        if n in builtin and not n.startswith("__")
    )
    assert not shadows, shadows


def test_subpackages_are_reexported_by_their_parent() -> None:
    """Each name a subpackage's ``__init__`` exports is the object its defining module exports."""
    for name in PUBLIC_CORE:
        module = importlib.import_module(name)
        for n in module.__all__:
            value = getattr(module, n)
            home = getattr(value, "__module__", None)
            if not (inspect.isclass(value) or inspect.isroutine(value)) or home == name or home is None:
                continue
            defining = importlib.import_module(home)
            if is_private(home):
                continue  # checked by test_private_modules_are_reexported
            assert n in defining.__all__, f"{name} re-exports {n}, which {home} does not export"


def test_documented_exceptions_are_importable_from_pipe_trio() -> None:
    """The exceptions docs/python-client.md names can be imported from pipe_trio itself."""
    text = (ROOT / "docs" / "python-client.md").read_text(encoding="utf-8")
    documented = {
        word.strip("`(),.:")
        for word in text.split()
        if word.strip("`(),.:").endswith(("Error", "Failed")) and word.strip("`(),.:").isidentifier()
    }
    assert {"PipeDisconnectedError", "RemoteProtocolError", "PipeError", "PipeRefusedError"} <= documented
    missing = sorted(n for n in documented if n not in pipe_trio.__all__)
    assert not missing, f"documented but not exported by pipe_trio: {missing}"


def test_the_adapter_imports_nothing_private_from_the_core() -> None:
    """No module of pipe_trio imports a private module or name of pipe_proto."""
    offenders = []
    for path in (ROOT / "pipe_trio").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipe_proto"):
                if is_private(node.module) or any(a.name.startswith("_") and a.name != "__version__" for a in node.names):
                    offenders.append(f"{path.relative_to(ROOT)}: from {node.module} import ...")
            elif isinstance(node, ast.Import):
                offenders += [f"{path.relative_to(ROOT)}: import {a.name}" for a in node.names if a.name.startswith("pipe_proto") and is_private(a.name)]
    assert not offenders, offenders
