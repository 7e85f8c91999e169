"""Run a program in the background for a test and wait for lines of its output."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from subprocess import PIPE, STDOUT

import trio


async def line_batches(stream: trio.abc.ReceiveStream) -> AsyncIterator[list[bytes]]:
    """The complete lines of ``stream``, as they arrive (one list per read that completed any)."""
    pending = b""
    async for chunk in stream:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        if complete:
            yield complete


class Lines:
    """The output lines of a running process, waited on by content."""

    def __init__(self, process: trio.Process, on_line: Callable[[], None] | None = None) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = trio.Event()
        self._on_line = on_line
        self.ended = False

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for complete in line_batches(self.process.stdout):
            self.lines.extend(line.decode("utf-8", "replace") for line in complete)
            self._changed.set()
            self._changed = trio.Event()
            if self._on_line is not None:
                self._on_line()
        self.ended = True
        self._changed.set()

    async def changed(self) -> None:
        """Wait for the next lines (or the end of the output)."""
        if self.ended:
            raise AssertionError("process ended; output:\n" + "\n".join(self.lines))
        await self._changed.wait()

    async def expect(self, text: str, timeout: float = 10.0) -> str:  # noqa: ASYNC109
        """The first line containing ``text`` (waiting for it at most ``timeout`` seconds)."""
        with trio.fail_after(timeout):
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                if self.ended:
                    raise AssertionError(f"process ended without printing {text!r}; output:\n" + "\n".join(self.lines))
                await self._changed.wait()


@asynccontextmanager
async def background(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    on_line: Callable[[], None] | None = None,
) -> AsyncIterator[Lines]:
    """Start ``argv`` (stderr merged into stdout); SIGTERM, then SIGKILL, on exit.

    ``on_line`` is called whenever new lines arrived (to wake a waiter on many processes).
    """
    process = await trio.lowlevel.open_process(
        list(argv), stdout=PIPE, stderr=STDOUT, env={**os.environ, **(env or {})}, cwd=cwd
    )
    lines = Lines(process, on_line)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lines._read)
            try:
                yield lines
            finally:
                with trio.CancelScope(shield=True):
                    if process.returncode is None:
                        process.send_signal(signal.SIGTERM)
                    with trio.move_on_after(5):
                        await process.wait()
                nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
