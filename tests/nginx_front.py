"""Debian's nginx, run by a test with a configuration block taken from the docs.

:func:`documented_block` reads the one ```` ```nginx ```` block of a document; the test puts its own
addresses in it; :func:`nginx` wraps it in a minimal ``nginx.conf`` (its temporary files in a prefix
directory of its own) and runs nginx in the foreground until the block exits. Run as root, nginx runs
as ``nobody`` (setpriv); files the block names must then be readable by it (:func:`nginx` hands the
prefix directory, where a test may write them, to ``nobody``).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from tests.processes import background

ROOT = Path(__file__).resolve().parent.parent


def documented_block(doc: str) -> str:
    """The one ``nginx`` block of ``docs/<doc>``, as documented."""
    text = (ROOT / "docs" / doc).read_text()
    blocks = re.findall(r"^```nginx\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, f"docs/{doc} has one nginx configuration"
    return str(blocks[0])


def nginx_config(block: str) -> str:
    """A whole nginx.conf around ``block`` (the inside of an http block); relative paths land in the prefix."""
    temporary = "\n".join(
        f"    {kind}_temp_path tmp/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    indented = "".join(f"    {line}\n" if line else "\n" for line in block.splitlines())
    return f"""worker_processes 1;
pid nginx.pid;
error_log stderr notice;

events {{
    worker_connections 256;
}}

http {{
    access_log off;
{temporary}

{indented}}}
"""


def nginx_binary() -> str:
    """Debian's nginx (in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found is None:  # pragma: no cover - tests/run installs it
        raise RuntimeError("nginx is not installed (tests/run installs Debian's nginx)")
    return found


@asynccontextmanager
async def nginx(block: Callable[[Path], str]) -> AsyncIterator[Path]:
    """Run nginx with the http-level configuration ``block(prefix)`` returns; yields the prefix directory.

    ``block`` gets the prefix directory first, to write files the configuration names (certificates).
    """
    prefix = Path(tempfile.mkdtemp(prefix="pipe-relay-nginx-"))
    try:
        (prefix / "tmp").mkdir()
        config = prefix / "nginx.conf"
        config.write_text(nginx_config(block(prefix)))
        argv = [nginx_binary(), "-e", "stderr", "-p", f"{prefix}/", "-c", str(config), "-g", "daemon off;"]
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            for path in (prefix, *prefix.rglob("*")):  # noqa: ASYNC240 - a few local files, once
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
            argv = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                    "--no-new-privs", *argv]
        async with background(argv) as lines:
            # The master has bound its ports before it starts its worker.
            await lines.expect("start worker process ", timeout=20)
            yield prefix
    finally:
        shutil.rmtree(prefix, ignore_errors=True)
