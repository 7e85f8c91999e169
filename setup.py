"""The optional compiled core: ``PIPE_RELAY_COMPILE=1`` compiles the modules below with mypyc.

Everything else about the package is in pyproject.toml. Without the variable
(every usual install, and the test suite's coverage run) the package is pure
Python. With it, the core's per-message paths (the codecs, the connection
states, the relay's collaborators) and the adapter's two sans-I/O pieces that
run per frame and per new connection (WebSocket framing, the upgrade
request's parser) become C extensions beside their sources, which Python
imports in their place: about a quarter less CPU per Pipe round trip in the
benchmarks (README, "Benchmarks"). It needs a C compiler, and
mypy and the dependencies (whose types mypyc reads) in the build environment:

    .venv/bin/pip install . mypy 'setuptools>=70.1'
    PIPE_RELAY_COMPILE=1 .venv/bin/pip install --no-build-isolation --no-deps --force-reinstall .

Modules whose attrs classes define fields with ``attrs.field`` (apps, the
events) stay pure Python: mypyc takes such a field's definition for its
default value. So does relay/outputs.py (mypyc's build of it fails at
import). A compiled module uses their classes like any other Python class;
the events of a socket's message and of a Pipe round trip are built by the
compiled prechecked.py, from values already checked, without attrs' ``__init__``.
"""

from __future__ import annotations

import os

from setuptools import setup

#: The modules compiled, as paths: the core's hot paths and what they call per message or per connection.
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
    "pipe_proto/names.py",
    "pipe_proto/routes.py",
    "pipe_proto/webhooks.py",
    "pipe_proto/pipe/client.py",
    "pipe_proto/pipe/handshake.py",
    "pipe_proto/rest/api.py",
    "pipe_proto/rest/auth.py",
    "pipe_proto/prechecked.py",
    # The adapter's framing and its HTTP fast path: sans-I/O too, and run per frame and per new connection.
    "pipe_trio/_wsframes.py",
    "pipe_trio/_upgrade.py",
]


def ext_modules() -> list[object]:
    """The compiled modules when ``PIPE_RELAY_COMPILE=1``, else none."""
    if os.environ.get("PIPE_RELAY_COMPILE") != "1":
        return []
    from mypyc.build import mypycify

    # Errors only in the modules compiled: the modules they import are read
    # for their types, and the cluster's, whose Redis client is an optional
    # dependency (the redis extra), need not type-check without it.
    return list(mypycify(["--follow-imports=silent", *COMPILED], opt_level="3"))


setup(ext_modules=ext_modules())
