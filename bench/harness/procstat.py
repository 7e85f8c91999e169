"""CPU time and memory of a server process, read from /proc (Linux only).

A server may fork workers, so figures cover the process and its live
descendants; CPU of descendants that already exited and were reaped is
included through the parent's cutime/cstime.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def _tree(*roots: int) -> list[int]:
    """The roots and their live descendants (no /proc/PID/task/*/children on every kernel, so scan)."""
    parent_of: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                parent_of[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
            except (OSError, ValueError):
                continue  # exited while we looked
    pids, frontier = list(roots), list(roots)
    while frontier:
        children = [pid for pid, ppid in parent_of.items() if ppid in frontier]
        pids += children
        frontier = children
    return pids


def cpu_seconds(*roots: int) -> float:
    """user+system CPU seconds consumed so far by the roots' process trees."""
    total = 0
    for pid in _tree(*roots):
        try:
            f = _stat_fields(pid)
        except OSError:
            continue
        # fields after ')' start at stat field 3: utime=14, stime=15, cutime=16, cstime=17
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / TICKS


class MachineCpu:
    """Share of all cores busy between construction and `pct()`, from /proc/stat.
    Near 100 means the box was saturated (server, load generator, harness,
    and anything else running), so rates are bounded by the machine and the
    CPU-per-operation figures are the ones to compare."""

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    def pct(self) -> float | None:
        busy, total = self._read()
        return 100 * (busy - self.start[0]) / (total - self.start[1]) if total > self.start[1] else None


def _status_bytes(field: str, roots: tuple[int, ...]) -> int:
    total = 0
    for pid in _tree(*roots):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def rss_bytes(*roots: int) -> int:
    """Resident set size of the roots' process trees (shared pages are counted once per process)."""
    return _status_bytes("VmRSS:", roots)


def peak_rss_bytes(*roots: int) -> int:
    """The sum of each live process's own peak resident set size (VmHWM) in the roots' trees."""
    return _status_bytes("VmHWM:", roots)


@dataclass
class Sampler:
    """Samples the server's RSS (and, once `watch_port` is set, the kernel
    queues of that one client connection) in the background, to catch what a
    before/after pair misses: a slow consumer's backlog freed when it is closed."""

    pids: list[int]
    interval: float = 0.25
    watch_port: int | None = None
    rss: list[tuple[float, int]] = field(default_factory=list)
    tcp: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            self._take()

    def _take(self) -> None:
        now = asyncio.get_running_loop().time()
        with contextlib.suppress(OSError):  # the server died: the scenario will report it
            self.rss.append((now, rss_bytes(*self.pids)))
        if self.watch_port is not None:
            self.tcp.append((now, tcp_queues(self.watch_port)))

    async def _run(self) -> None:
        while True:
            self._take()
            await asyncio.sleep(self.interval)

    def summary(self) -> dict[str, object]:
        if not self.rss:
            return {}
        t0, first = self.rss[0]
        peak = max(rss for _, rss in self.rss)
        out: dict[str, object] = {
            "rss_start_mib": first / 2**20,
            "rss_peak_mib": peak / 2**20,
            "rss_end_mib": self.rss[-1][1] / 2**20,
            "rss_max_growth_mib": (peak - first) / 2**20,
            # downsampled to ~1 point per second for the JSON file
            "rss_timeline_mib": [
                [round(t - t0, 2), round(rss / 2**20, 1)]
                for i, (t, rss) in enumerate(self.rss)
                if i % max(1, round(1 / self.interval)) == 0
            ],
        }
        if self.tcp:
            out["slow_server_send_queue_max_bytes"] = max(q["server_send_queue_bytes"] for _, q in self.tcp)
            out["slow_client_recv_queue_max_bytes"] = max(q["client_recv_queue_bytes"] for _, q in self.tcp)
            # When the server side stopped being an established connection: closed or aborted.
            gone = [t for t, q in self.tcp if not q["server_established"]]
            out["slow_server_closed_after_s"] = round(gone[0] - self.tcp[0][0], 2) if gone else None
        return out


def tcp_queues(port: int) -> dict[str, int]:
    """Bytes the kernel holds for the loopback connection whose client side
    uses `port`: unsent/unacked at the server, received but unread at the client.
    Tells apart data parked in kernel buffers from data the server keeps itself."""
    out = {"server_send_queue_bytes": 0, "client_recv_queue_bytes": 0, "server_established": 0}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, remote, state, queues = line.split()[1:5]
            tx, rx = (int(q, 16) for q in queues.split(":"))
            if int(remote.rsplit(":", 1)[1], 16) == port:
                out["server_send_queue_bytes"] += tx
                out["server_established"] |= state == "01"
            elif int(local.rsplit(":", 1)[1], 16) == port:
                out["client_recv_queue_bytes"] += rx
    return out
