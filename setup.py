"""The optional compiled core: ``PIPE_RELAY_COMPILE=1`` compiles the modules below with mypyc.

Everything else about the package is in pyproject.toml. Without the variable
(every usual install, and the test suite's coverage run) the package is pure
Python. With it, the core's per-message paths (the codecs, the connection
states, the relay's collaborators) become C extensions beside their sources,
which Python imports in their place: about a quarter less CPU per Pipe round
trip in the benchmarks (README, "Benchmarks"). It needs a C compiler, and
mypy and the dependencies (whose types mypyc reads) in the build environment:

    .venv/bin/pip install . mypy 'setuptools>=70.1'
    PIPE_RELAY_COMPILE=1 .venv/bin/pip install --no-build-isolation --no-deps --force-reinstall .

Modules that define attrs classes (apps, the events) stay pure Python, as
does relay/outputs.py (mypyc's build of it fails at import); a compiled
module uses their classes like any other Python class.
"""

from __future__ import annotations

import os

from setuptools import setup

#: The modules compiled, as paths: the core's hot paths and what they call per message.
COMPILED = [
    "pipe_proto/jsontext.py",
    "pipe_proto/liveness.py",
    "pipe_proto/statemachine.py",
    "pipe_proto/signatures.py",
    "pipe_proto/upgrade.py",
    "pipe_proto/pipe/codec.py",
    "pipe_proto/pipe/server.py",
    "pipe_proto/pusher/codec.py",
    "pipe_proto/pusher/connection.py",
    "pipe_proto/relay/authorization.py",
    "pipe_proto/relay/channels.py",
    "pipe_proto/relay/core.py",
    "pipe_proto/relay/directory.py",
    "pipe_proto/relay/later.py",
    "pipe_proto/relay/messages.py",
    "pipe_proto/relay/observe.py",
    "pipe_proto/relay/pipe_auth.py",
    "pipe_proto/relay/pipe_connections.py",
    "pipe_proto/relay/pipes.py",
    "pipe_proto/relay/relay.py",
    "pipe_proto/relay/sockets.py",
    "pipe_proto/relay/state.py",
    "pipe_proto/relay/timers.py",
    "pipe_proto/relay/users.py",
]


def ext_modules() -> list[object]:
    """The compiled modules when ``PIPE_RELAY_COMPILE=1``, else none."""
    if os.environ.get("PIPE_RELAY_COMPILE") != "1":
        return []
    from mypyc.build import mypycify

    return list(mypycify(COMPILED, opt_level="3"))


setup(ext_modules=ext_modules())
