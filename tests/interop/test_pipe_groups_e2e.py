"""Pipe groups with real backend processes and pusher-js senders (pipe-protocol.md 6).

Three OS processes run ``open_pipe`` in one group (tests/workers/pipe_worker.py);
pusher-js clients send numbered back-channel messages; processes are killed
with SIGKILL mid-stream, restarted, or kept away, and the per-process logs are
checked against the delivery promises.
"""

from __future__ import annotations

import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from pipe_proto import App, Limits, PipeSettings
from pipe_trio import RelayServer
from tests.interop.node import Driver, open_driver
from tests.processes import Lines, background
from tests.support import start_relay

pytestmark = [pytest.mark.interop, pytest.mark.slow, pytest.mark.both_transports]

ROOT = Path(__file__).resolve().parents[2]
KEY, SECRET = "group-key", "group-secret"


def group_app(**pipe: Any) -> App:
    # Senders push far faster than the default back-channel limit of 50/s.
    return App(
        id="1",
        key=KEY,
        secret=SECRET,
        limits=Limits(back_channel_per_second=1_000_000),
        pipe=PipeSettings(**{"resume_grace": 3.0, **pipe}),
    )


class Worker:
    """One backend process and what it printed, parsed."""

    def __init__(self, lines: Lines, state: Path) -> None:
        self.lines = lines
        self.state = state

    def processed(self) -> list[tuple[int, str, int, bool, int]]:
        """(n, socket, seq, redelivered, acked-before) per processed message, in order."""
        rows = []
        for line in self.lines.lines:
            if line.startswith("P "):
                _, n, sock, seq, redelivered, acked = line.split()
                rows.append((int(n), sock, int(seq), redelivered == "1", int(acked)))
        return rows

    def saved(self) -> int:
        """The last seq the process saved to its state file (0: none yet)."""
        seqs = [int(line.split()[1]) for line in self.lines.lines if line.startswith("S ")]
        return seqs[-1] if seqs else 0

    def gaps(self) -> list[int]:
        return [int(line.split()[1]) for line in self.lines.lines if line.startswith("G ")]


class Fleet:
    """Worker processes of one group, and a way to wait on all their output."""

    def __init__(self, server: RelayServer, stack: AsyncExitStack, tmp: Path) -> None:
        self.server = server
        self.stack = stack
        self.tmp = tmp
        self.changed = trio.Event()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def start(self, name: str) -> Worker:
        state = self.tmp / f"{name}.state"
        argv = [sys.executable, "-m", "tests.workers.pipe_worker", f"ws://127.0.0.1:{self.server.port}", "1", KEY, SECRET, "workers", str(state)]
        lines = await self.stack.enter_async_context(background(argv, cwd=str(ROOT), on_line=self._notify))
        await lines.expect("READY", timeout=20)
        return Worker(lines, state)

    async def until(self, condition: Callable[[], bool], timeout: float = 60) -> None:  # noqa: ASYNC109
        """Wait until ``condition()`` holds, re-checking whenever a worker printed."""
        with trio.fail_after(timeout):
            while not condition():
                await self.changed.wait()


@asynccontextmanager
async def fleet(nursery: trio.Nursery, tmp: Path, app: App) -> AsyncIterator[Fleet]:
    """A relay for ``app`` and a fleet of workers; enter it last (workers' nurseries nest inside)."""
    server = await start_relay(nursery, [app])
    async with AsyncExitStack() as stack:
        yield Fleet(server, stack, tmp)


async def senders(js: Driver, server: RelayServer, count: int) -> None:
    for i in range(count):
        await js.connected(f"s{i}", server, key=KEY)


async def send(js: Driver, senders: int, per_sender: int, offset: int) -> int:
    """Each sender sends ``per_sender`` messages numbered from ``offset``; returns how many."""
    total = 0
    for i in range(senders):
        total += await js.call("send_events", f"s{i}", event="work", first=offset + i * 100_000, count=per_sender, timeout=30)
    return total


def numbers(workers: list[Worker]) -> Counter[int]:
    return Counter(n for w in workers for (n, *_rest) in w.processed())


def assert_per_socket_order(worker: Worker) -> None:
    last: dict[str, int] = {}
    for n, sock, _seq, redelivered, _acked in worker.processed():
        if redelivered:
            continue
        assert last.get(sock, -1) < n, f"socket {sock}: {n} after {last[sock]}"
        last[sock] = n


async def test_sigkill_mid_stream_loses_nothing(nursery: trio.Nursery, tmp_path: Path) -> None:
    """10,000 messages, one of three processes SIGKILLed halfway: all processed, duplicates only its unacked ones."""
    async with open_driver() as js, open_driver("pipe2011.js") as legacy, fleet(nursery, tmp_path, group_app()) as f:
        await legacy.call("connect", config={"key": KEY, "secret": SECRET, "app_id": 1, "host": "127.0.0.1", "port": f.server.port}, events=["socket_message"])
        await legacy.expect({"type": "connected"})
        workers = [await f.start(f"w{i}") for i in range(3)]
        await senders(js, f.server, 20)
        sent = await send(js, 20, 250, 0)
        await f.until(lambda: sum(numbers(workers).values()) >= 3000)
        victim = workers[0]
        victim.lines.process.send_signal(signal.SIGKILL)
        await victim.lines.process.wait()
        sent += await send(js, 20, 250, 250)
        assert sent == 10_000
        expected = {i * 100_000 + k for i in range(20) for k in range(500)}
        await f.until(lambda: set(numbers(workers)) >= expected, timeout=90)

        counts = numbers(workers)
        assert set(counts) == expected
        duplicates = {n for n, c in counts.items() if c > 1}
        dead = victim.processed()
        acked_at_death = max((acked for *_rest, acked in dead), default=0)
        unacked_by_dead = {n for n, _sock, seq, _r, _a in dead if seq > acked_at_death}
        assert duplicates <= unacked_by_dead
        survivors = workers[1:]
        assert all(any(r for _n, _s, _q, r, _a in w.processed()) for w in survivors if any(n in unacked_by_dead for n, *_ in w.processed()))
        for worker in workers:
            assert_per_socket_order(worker)
        # The 2011 client, a group of its own, got every message exactly once.
        legacy_numbers = Counter()
        with trio.fail_after(30):
            while len(legacy_numbers) < 10_000:
                report = await legacy.expect({"type": "socket_event", "event": "work"})
                legacy_numbers[report["data"]["n"]] += 1
        assert set(legacy_numbers) == expected and max(legacy_numbers.values()) == 1


async def test_restart_within_the_grace_resumes_and_nothing_moves(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A process killed and restarted within the resume grace gets its own pending messages; others get none."""
    async with open_driver() as js, fleet(nursery, tmp_path, group_app(resume_grace=30.0)) as f:
        workers = [await f.start(f"w{i}") for i in range(3)]
        await senders(js, f.server, 10)
        await send(js, 10, 200, 0)
        await f.until(lambda: sum(numbers(workers).values()) >= 600)
        # Sockets are spread by hashing, so one of three processes may hold none
        # of the ten and have no session state to resume; the busiest one has.
        index = max(range(3), key=lambda i: len(workers[i].processed()))
        victim = workers[index]
        bystanders = [w for w in workers if w is not victim]
        victim.lines.process.send_signal(signal.SIGKILL)
        await victim.lines.process.wait()
        await send(js, 10, 200, 200)
        restarted = await f.start(f"w{index}")
        assert "resumed=True" in await restarted.lines.expect("READY")
        everyone = [*bystanders, victim, restarted]
        expected = {i * 100_000 + k for i in range(10) for k in range(400)}
        await f.until(lambda: set(numbers(everyone)) >= expected)
        for worker in bystanders:
            assert not any(redelivered for _n, _s, _q, redelivered, _a in worker.processed())
        # The session kept its sockets: none of them went to another process.
        others = {sock for w in bystanders for _n, sock, *_ in w.processed()}
        session_sockets = {sock for w in (victim, restarted) for _n, sock, *_ in w.processed()}
        assert session_sockets and not (session_sockets & others)
        for worker in everyone:
            assert_per_socket_order(worker)


async def test_messages_wait_for_an_absent_pipe_and_drops_are_reported_exactly(nursery: trio.Nursery, tmp_path: Path) -> None:
    """With no pipe connected for 5 s, messages wait; past buffer_events the gap is reported with the exact count."""
    async with open_driver() as js, fleet(nursery, tmp_path, group_app(resume_grace=30.0, buffer_events=100)) as f:
        worker = await f.start("w")
        await senders(js, f.server, 1)
        await send(js, 1, 10, 0)
        # Killed once all ten are processed and saved: the restart resumes after them.
        await f.until(lambda: len(worker.processed()) == 10 and worker.saved() == 10)
        worker.lines.process.send_signal(signal.SIGKILL)
        await worker.lines.process.wait()
        await send(js, 1, 150, 10)
        # The outage itself: five seconds without a pipe while messages wait.
        with trio.move_on_after(5):
            await trio.sleep_forever()
        back = await f.start("w")
        assert "resumed=True" in await back.lines.expect("READY")
        await f.until(lambda: len(back.processed()) >= 100)
        assert back.gaps() == [50]
        assert [n for n, *_ in back.processed()] == list(range(60, 160))
