"""``pipe-relay serve --workers N``: N relay processes on one port, one per core.

The supervising process starts N copies of the same ``serve`` command, each
a node of the cluster (they share state through Redis, so ``--redis`` is
required) listening on the same port with ``SO_REUSEPORT``: the kernel
spreads new connections across them. A worker that exits on its own is
logged and started again (after 0.1 s, doubling up to 5 s while it keeps
dying within 10 s of its start). SIGINT and SIGTERM go to every worker, which
shut down gracefully; the supervisor waits for them, at most the shutdown
timeout plus 5 s, then kills what is left, and exits. SIGHUP goes to every
worker too: each re-reads the configuration file itself.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence

import trio

__all__ = ["WORKER_FLAG", "supervise"]

log = logging.getLogger("pipe_trio")

#: Passed to workers: listen with SO_REUSEPORT, print no banner.
WORKER_FLAG = "--worker"
RESTART_FIRST, RESTART_MAX, STABLE_AFTER = 0.1, 5.0, 10.0


async def supervise(argv: Callable[[int], Sequence[str]], count: int, shutdown_timeout: float) -> int:
    """Run ``count`` workers, worker i ``pipe-relay serve argv(i)``, until a signal; returns the exit status."""

    def command(index: int) -> list[str]:
        return [sys.executable, "-m", "pipe_trio.cli", "serve", *argv(index), WORKER_FLAG]

    processes: dict[int, trio.Process] = {}
    stopping = trio.Event()
    all_stopped = trio.Event()
    running = count

    async def keep(index: int) -> None:
        nonlocal running
        try:
            await keep_running(index)
        finally:
            running -= 1
            if not running:
                all_stopped.set()

    async def keep_running(index: int) -> None:
        delay = RESTART_FIRST
        while not stopping.is_set():
            started = trio.current_time()
            process = await trio.lowlevel.open_process(command(index), stdin=subprocess.DEVNULL)
            processes[index] = process
            log.info("worker %d started (pid %d)", index, process.pid)
            status = await process.wait()
            del processes[index]
            if stopping.is_set():
                log.info("worker %d (pid %d) stopped", index, process.pid)
                return
            log.warning("worker %d (pid %d) exited with status %s; starting it again", index, process.pid, status)
            delay = RESTART_FIRST if trio.current_time() - started > STABLE_AFTER else min(RESTART_MAX, delay * 2)
            await trio.sleep(delay)

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(keep, index)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: passed to %d worker(s)", len(processes))
                    for process in list(processes.values()):
                        process.send_signal(signal.SIGHUP)
                    continue
                log.info("%s: stopping %d worker(s)", signal.Signals(signum).name, len(processes))
                stopping.set()
                for process in list(processes.values()):
                    process.send_signal(signal.SIGTERM)
                break
            with trio.move_on_after(shutdown_timeout + 5.0):
                await all_stopped.wait()
            for process in list(processes.values()):
                process.kill()
            nursery.cancel_scope.cancel()
    return 0
