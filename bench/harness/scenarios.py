"""The scenarios. Each takes a freshly started server and returns a flat dict
of figures (the keys report.py knows how to show; everything lands in the JSON)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .loadgen import LOADGEN_DIR as LOADGEN
from .loadgen import LoadGen
from .procstat import MachineCpu, Sampler, cpu_seconds, rss_bytes
from .publish import PUBLISHERS, Progress, Watcher, flood, paced
from .servers import RunningServer

CHANNEL_PREFIX = "bench-"  # the load generator subscribes connection i to bench-{i % channels}


@dataclass(frozen=True)
class Config:
    s1_sizes: tuple[int, ...] = (1_000, 5_000, 10_000)
    s1_channels: int = 100
    s2_subscribers: int = 1_000
    s2_seconds: float = 10.0
    s3_subscribers: int = 100
    s3_rate: float = 200.0
    s3_seconds: float = 10.0
    s4_sockets: int = 100
    s4_seconds: float = 10.0
    s4_work_us: float = 1000.0  # CPU a busy backend spends per message (the "busy backend" rows)
    s5_seconds: float = 60.0  # long enough to pass common keepalive timeouts (websockets: 20 s + 20 s)
    window: int = 20  # events in flight in S2/S5 (see publish.flood)
    backlog: int = 200  # events the load generator's subscribers may lag behind the publisher (publish.Progress)
    settle: float = 1.0  # idle time before "RSS after" in S1
    drain_stall: float = 3.0  # give up waiting for deliveries after this long without progress
    workers: int = 2  # load generator processes
    concurrency: int = 64  # handshakes in flight; below the default listen backlog (100) of asyncio servers
    ready_timeout: float = 120.0


FULL = Config()
QUICK = Config(
    s1_sizes=(20, 50), s1_channels=10, s2_subscribers=20, s2_seconds=1.0, s3_subscribers=10, s3_rate=100.0,
    s3_seconds=1.0, s4_sockets=10, s4_seconds=1.0, s5_seconds=1.5, settle=0.2, drain_stall=1.0, workers=1,
    concurrency=16, ready_timeout=15.0,
)


def _loadgen(server: RunningServer, cfg: Config, conns: int, **opts: Any) -> LoadGen:
    return LoadGen(
        server.ws_base(), server.spec.app.key, conns, workers=cfg.workers, concurrency=cfg.concurrency,
        channel_prefix=CHANNEL_PREFIX, ready_timeout=cfg.ready_timeout, **opts,
    )


def _cpu_pct(cpu_s: float, wall_s: float) -> float | None:
    return 100 * cpu_s / wall_s if wall_s > 0 else None


def _with_others(out: dict[str, Any]) -> dict[str, Any]:
    """Adds the share of all cores that processes outside the benchmark used:
    the machine is shared, and this says how much a run was disturbed."""
    ours = sum(out.get(k) or 0 for k in ("server_cpu_pct", "loadgen_cpu_pct", "harness_cpu_pct"))
    busy = out.get("machine_busy_pct")
    out["others_cpu_pct"] = max(0.0, busy - ours / (os.cpu_count() or 1)) if busy is not None else None
    return out


async def idle(server: RunningServer, cfg: Config, n: int) -> dict[str, Any]:
    """S1: n connections spread over cfg.s1_channels channels, then nothing."""
    rss0, cpu0 = rss_bytes(server.pid), cpu_seconds(server.pid)
    lg = _loadgen(server, cfg, n, channels=cfg.s1_channels)
    try:
        machine, own0 = MachineCpu(), time.process_time()
        ready = await lg.start(cfg.ready_timeout + 30)
        cpu1, busy, own1 = cpu_seconds(server.pid), machine.pct(), time.process_time()
        await asyncio.sleep(cfg.settle)  # let late frees/allocations settle before reading RSS
        rss1 = rss_bytes(server.pid)
    finally:
        await lg.quit()
    setup_s = (ready["t"] - ready["tStart"]) / 1000
    return _with_others({
        "connections": n, "established": ready["established"], "subscribed": ready["subscribed"],
        "failed": ready["failed"], "connect_rate": ready["connectRate"], "subscribe_s": ready["subscribeS"],
        "rss_before_mib": rss0 / 2**20, "rss_after_mib": rss1 / 2**20,
        "rss_per_conn_kib": (rss1 - rss0) / n / 1024,
        "server_cpu_us_per_conn": (cpu1 - cpu0) / n * 1e6,
        "server_cpu_pct": _cpu_pct(cpu1 - cpu0, setup_s),
        "loadgen_cpu_us_per_conn": ready["setupCpuS"] / n * 1e6,
        "loadgen_cpu_pct": _cpu_pct(ready["setupCpuS"], setup_s),
        "harness_cpu_pct": _cpu_pct(own1 - own0, setup_s),
        "machine_busy_pct": busy,
    })


async def fanout(server: RunningServer, cfg: Config, slow: int = 0, publish: str | None = None) -> dict[str, Any]:
    """S2 (slow=0) and S5 (slow=1): cfg.s2_subscribers on one channel, events
    published as fast as the server takes them; `slow` subscribers stop reading
    when publishing starts. `publish` overrides how events get in, for servers
    that offer it (the baseline has only its publish frame and uses that)."""
    channel = CHANNEL_PREFIX + "0"
    subs = cfg.s2_subscribers
    seconds = cfg.s5_seconds if slow else cfg.s2_seconds
    lg = _loadgen(server, cfg, subs, channels=1, slow=slow)
    watcher = Watcher(server, channel)
    how = publish if publish is not None and server.spec.publish != "frame" else server.spec.publish
    pub = PUBLISHERS[how](server)
    sampler = Sampler(server.pid)
    try:
        ready = await lg.start(cfg.ready_timeout + 30)
        await watcher.open()
        await pub.open()
        sampler.start()
        before, cpu0, machine, own0 = await lg.stats(), cpu_seconds(server.pid), MachineCpu(), time.process_time()
        w0 = asyncio.get_running_loop().time()
        if slow:
            sampler.watch_port = (await lg.command("pause"))["slowPorts"][0]
        t0 = asyncio.get_running_loop().time()
        async with Progress(lg, subs, cfg.backlog) as progress:
            sent, stalled = await flood(pub, watcher, channel, seconds, cfg.window, progress)
        publish_s = asyncio.get_running_loop().time() - t0
        after = await lg.wait_delivered(sent * (subs - slow), cfg.drain_stall)
        cpu1, busy, own1 = cpu_seconds(server.pid), machine.pct(), time.process_time()
        window_s = asyncio.get_running_loop().time() - w0  # publishing + draining
        await sampler.stop()
        if slow:
            # Read again so that whatever the server did to the slow consumer
            # (kept it, closed it) becomes visible, then let it catch up.
            await lg.command("resume")
            await lg.wait_delivered(sent * subs, cfg.drain_stall)
        result = await lg.command("result", expect=sent)
    finally:
        await sampler.stop()
        await lg.quit()
        await pub.close()
        await watcher.close()

    others = result["perConn"]  # per-connection counts, slow consumers excluded
    rx_s = (after["lastRx"] - after["firstRx"]) / 1000
    server_deliveries = after["delivered"] + watcher.seen  # the watcher is a subscriber too
    out: dict[str, Any] = {
        "subscribers": subs, "subscribed": ready["subscribed"], "events_sent": sent, "publisher_stalled": stalled,
        "publish_rate": sent / publish_s,
        "delivery_rate": others["sum"] / rx_s if rx_s > 0 else None,
        "lost": sent * others["n"] - others["sum"], "subscribers_short": others["short"],
        "duplicates": max(0, others["max"] - sent), "subscribers_closed": others["closed"],
        "server_cpu_us_per_delivery": (cpu1 - cpu0) / server_deliveries * 1e6 if server_deliveries else None,
        "server_cpu_pct": _cpu_pct(cpu1 - cpu0, window_s),
        "loadgen_cpu_pct": _cpu_pct(after["cpuS"] - before["cpuS"], (after["t"] - before["t"]) / 1000),
        "loadgen_cpu_us_per_delivery": (after["cpuS"] - before["cpuS"]) / after["delivered"] * 1e6
        if after["delivered"] else None,
        "loadgen_cpu_sys_pct": _cpu_pct(after["cpuSysS"] - before["cpuSysS"], (after["t"] - before["t"]) / 1000),
        "harness_cpu_pct": _cpu_pct(own1 - own0, window_s),  # publisher + watcher
        "machine_busy_pct": busy,
        "close_codes": result["closeCodes"],  # closes seen before the harness hung up
        **sampler.summary(),
    }
    if slow:
        s = result["slow"][0]
        out |= {
            "slow_close_code": s["closeCode"], "slow_close_reason": s["closeReason"],
            "slow_received": s["received"], "slow_received_before_pause": s["receivedBeforePause"],
        }
    return _with_others(out)


async def latency(server: RunningServer, cfg: Config) -> dict[str, Any]:
    """S3: cfg.s3_subscribers on one channel, cfg.s3_rate events/s, end-to-end latency."""
    channel = CHANNEL_PREFIX + "0"
    subs = cfg.s3_subscribers
    lg = _loadgen(server, cfg, subs, channels=1, latency=True)
    pub = PUBLISHERS[server.spec.publish](server)
    try:
        await lg.start(cfg.ready_timeout + 30)
        await pub.open()
        before, cpu0, machine, own0 = await lg.stats(), cpu_seconds(server.pid), MachineCpu(), time.process_time()
        sent, elapsed = await paced(pub, channel, cfg.s3_rate, cfg.s3_seconds)
        after = await lg.wait_delivered(sent * subs, cfg.drain_stall)
        cpu1, busy, own1 = cpu_seconds(server.pid), machine.pct(), time.process_time()
        result = await lg.command("result", expect=sent)
    finally:
        await lg.quit()
        await pub.close()
    lat = result["latencyMs"]
    window_s = (after["t"] - before["t"]) / 1000
    return _with_others({
        "subscribers": subs, "events_sent": sent, "publish_rate": sent / elapsed,
        "lost": sent * subs - result["perConn"]["sum"],
        "latency_p50_ms": lat["p50"], "latency_p90_ms": lat["p90"], "latency_p99_ms": lat["p99"],
        "latency_max_ms": lat["max"], "latency_mean_ms": lat["mean"], "latency_samples": lat["n"],
        "server_cpu_pct": _cpu_pct(cpu1 - cpu0, window_s),
        "loadgen_cpu_pct": _cpu_pct(after["cpuS"] - before["cpuS"], window_s),
        "harness_cpu_pct": _cpu_pct(own1 - own0, window_s),  # the publisher
        "machine_busy_pct": busy,
    })


async def roundtrip(server: RunningServer, cfg: Config, backends: int, work_us: float = 0.0) -> dict[str, Any]:
    """S4: sockets ask, backends on the Pipe answer each with send_to_socket; round trips/s and latency.

    With ``work_us``, each backend spends that much CPU per message first.
    Servers without a Pipe (the baseline) have nothing to run here.
    """
    if server.spec.publish != "pipe":
        return {"skipped": "no Pipe"}
    app = server.spec.app
    script = str(Path(__file__).with_name("pipe_backend.py"))
    backend = [sys.executable, script, server.ws_base(), app.app_id, app.key, app.secret, str(work_us)]
    procs = [
        await asyncio.create_subprocess_exec(*backend, stdout=asyncio.subprocess.PIPE) for _ in range(backends)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), cfg.ready_timeout)
            if line.strip() != b"ready":
                raise RuntimeError(f"pipe backend did not start: {line!r}")
        machine, cpu0 = MachineCpu(), cpu_seconds(server.pid)
        backend_cpu0 = sum(cpu_seconds(p.pid) for p in procs)
        node = await asyncio.create_subprocess_exec(
            "node", str(LOADGEN / "roundtrip.js"), "--url", server.ws_base(), "--key", app.key,
            "--conns", str(cfg.s4_sockets), "--duration", str(cfg.s4_seconds), "--warmup", str(cfg.settle),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await node.communicate()
        result = json.loads(out.decode().strip().splitlines()[-1])
        seconds = cfg.s4_seconds + cfg.settle
        cpu1, busy = cpu_seconds(server.pid), machine.pct()
        backend_cpu1 = sum(cpu_seconds(p.pid) for p in procs)
    finally:
        for proc in procs:
            proc.terminate()
            await proc.wait()
    if result.get("type") != "result":
        raise RuntimeError(f"round trip load generator failed: {result}")
    lat = result["latencyMs"]
    return {
        "backends": backends, "work_us": work_us, "sockets": cfg.s4_sockets, "round_trips": result["roundTrips"],
        "round_trip_rate": result["rate"], "errors": result["errors"],
        "latency_p50_ms": lat["p50"], "latency_p99_ms": lat["p99"], "latency_max_ms": lat["max"],
        "server_cpu_pct": _cpu_pct(cpu1 - cpu0, seconds),
        "backend_cpu_pct": _cpu_pct(backend_cpu1 - backend_cpu0, seconds),
        "loadgen_cpu_pct": _cpu_pct(result["cpuS"], cfg.s4_seconds),
        "machine_busy_pct": busy,
    }


def plan(cfg: Config) -> list[tuple[str, Any]]:
    """(scenario name, coroutine function taking (server, cfg)) in run order."""
    steps: list[tuple[str, Any]] = [
        (f"S1 idle {n}", lambda server, cfg, n=n: idle(server, cfg, n)) for n in cfg.s1_sizes
    ]
    steps += [
        ("S2 fan-out", fanout),
        ("S2 fan-out, relay via REST", lambda server, cfg: fanout(server, cfg, publish="rest")),
        ("S3 latency", latency),
        ("S4 pipe round trip, 1 backend", lambda server, cfg: roundtrip(server, cfg, 1)),
        ("S4 pipe round trip, 3 backends", lambda server, cfg: roundtrip(server, cfg, 3)),
        ("S4 busy backend, 1 backend", lambda server, cfg: roundtrip(server, cfg, 1, cfg.s4_work_us)),
        ("S4 busy backend, 3 backends", lambda server, cfg: roundtrip(server, cfg, 3, cfg.s4_work_us)),
        ("S5 slow consumer", lambda server, cfg: fanout(server, cfg, slow=1)),
    ]
    return steps
