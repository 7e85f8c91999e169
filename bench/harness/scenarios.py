"""The scenarios. Each takes a freshly started server and returns a flat dict
of figures (the keys report.py knows how to show; everything lands in the JSON).

`plan` lists them with the kinds of server that can run each (Soketi and the
baseline have no Pipe; the baseline has no REST API nor webhooks) and the
relay's cluster set-ups that run it beside the one process."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .loadgen import LOADGEN_DIR as LOADGEN
from .loadgen import LoadGen
from .procstat import MachineCpu, Sampler, cpu_seconds, peak_rss_bytes, rss_bytes
from .publish import PUBLISHERS, Progress, Watcher, flood, paced
from .servers import HOST, MAX_BATCH, WEBHOOK_PATH, RunningServer

CHANNEL_PREFIX = "bench-"  # the load generator subscribes connection i to bench-{i % channels}


@dataclass(frozen=True)
class Config:
    s1_sizes: tuple[int, ...] = (1_000, 5_000, 10_000)
    s1_channels: int = 100
    storm_sockets: int = 10_000
    s2_subscribers: int = 1_000
    s2_seconds: float = 10.0
    s3_subscribers: int = 100
    s3_rate: float = 200.0
    s3_seconds: float = 10.0
    s4_sockets: int = 100
    s4_seconds: float = 10.0
    s4_work_us: float = 1000.0  # CPU a busy backend spends per message (the "busy backend" rows)
    s5_seconds: float = 60.0  # long enough to pass common keepalive timeouts (websockets: 20 s + 20 s)
    batch: int = 10  # events per publish in S2/S5: one REST batch_events (Pusher's limit: 10)
    big_batch: int = MAX_BATCH  # events per publish in "S2 fan-out, batches of 100": what both servers take
    in_flight: int = 2  # publishes unacknowledged at once in S2/S5 (see publish.flood)
    backlog: int = 200  # events the load generator's subscribers may lag behind the publisher (publish.Progress)
    settle: float = 1.0  # idle time before "RSS after" in S1
    drain_stall: float = 3.0  # give up waiting for deliveries after this long without progress
    workers: int = 2  # load generator processes
    concurrency: int = 64  # handshakes in flight; below the default listen backlog (100) of asyncio servers
    ready_timeout: float = 120.0


FULL = Config()
QUICK = Config(
    s1_sizes=(20, 50), s1_channels=10, storm_sockets=50, s2_subscribers=20, s2_seconds=1.0, s3_subscribers=10,
    s3_rate=100.0, s3_seconds=1.0, s4_sockets=10, s4_seconds=1.0, s5_seconds=1.5, settle=0.2, drain_stall=1.0,
    workers=1, concurrency=16, ready_timeout=15.0,
)


def _loadgen(server: RunningServer, cfg: Config, conns: int, prefix: str = CHANNEL_PREFIX, **opts: Any) -> LoadGen:
    opts.setdefault("concurrency", cfg.concurrency)
    return LoadGen(
        server.ws_base(), server.spec.app.key, conns, workers=cfg.workers,
        channel_prefix=prefix, ready_timeout=cfg.ready_timeout, **opts,
    )


def _cpu_pct(cpu_s: float, wall_s: float) -> float | None:
    return 100 * cpu_s / wall_s if wall_s > 0 else None


_OURS = ("server_cpu_pct", "redis_cpu_pct", "loadgen_cpu_pct", "harness_cpu_pct", "backend_cpu_pct")


def _with_others(out: dict[str, Any]) -> dict[str, Any]:
    """Adds the share of all cores that processes outside the benchmark used:
    the machine is shared, and this says how much a run was disturbed."""
    ours = sum(out.get(k) or 0 for k in _OURS)
    busy = out.get("machine_busy_pct")
    out["others_cpu_pct"] = max(0.0, busy - ours / (os.cpu_count() or 1)) if busy is not None else None
    return out


class Meter:
    """CPU of the server's processes (and of its redis-server, if any), of this
    harness and of the whole machine, from `start()` to `stop()`."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server

    def start(self) -> Meter:
        self.machine = MachineCpu()
        self.t0 = time.monotonic()
        self.cpu0 = cpu_seconds(*self.server.pids)
        redis = self.server.redis_pid
        self.redis0 = cpu_seconds(redis) if redis else 0.0
        self.own0 = time.process_time()
        return self

    def stop(self) -> dict[str, Any]:
        """server_cpu_s and the CPU shares over the wall time since start()."""
        wall = time.monotonic() - self.t0
        cpu = cpu_seconds(*self.server.pids) - self.cpu0
        redis = self.server.redis_pid
        out: dict[str, Any] = {
            "server_cpu_s": cpu, "server_cpu_pct": _cpu_pct(cpu, wall),
            "harness_cpu_pct": _cpu_pct(time.process_time() - self.own0, wall),
            "machine_busy_pct": self.machine.pct(),
        }
        if redis:
            out["redis_cpu_pct"] = _cpu_pct(cpu_seconds(redis) - self.redis0, wall)
        return out


async def idle(server: RunningServer, cfg: Config, n: int) -> dict[str, Any]:
    """S1: n connections spread over cfg.s1_channels channels, then nothing."""
    rss0 = rss_bytes(*server.pids)
    lg = _loadgen(server, cfg, n, channels=cfg.s1_channels)
    try:
        meter = Meter(server).start()
        ready = await lg.start(cfg.ready_timeout + 30)
        cpu = meter.stop()
        await asyncio.sleep(cfg.settle)  # let late frees/allocations settle before reading RSS
        rss1 = rss_bytes(*server.pids)
    finally:
        await lg.quit()
    setup_s = (ready["t"] - ready["tStart"]) / 1000
    return _with_others({
        "connections": n, "established": ready["established"], "subscribed": ready["subscribed"],
        "failed": ready["failed"], "connect_rate": ready["connectRate"], "subscribe_s": ready["subscribeS"],
        "rss_before_mib": rss0 / 2**20, "rss_after_mib": rss1 / 2**20,
        "rss_per_conn_kib": (rss1 - rss0) / n / 1024,
        "server_cpu_us_per_conn": cpu["server_cpu_s"] / n * 1e6,
        "loadgen_cpu_us_per_conn": ready["setupCpuS"] / n * 1e6,
        "loadgen_cpu_pct": _cpu_pct(ready["setupCpuS"], setup_s),
        **cpu,
    })


async def storm(server: RunningServer, cfg: Config) -> dict[str, Any]:
    """A reconnect storm: cfg.storm_sockets sockets connect and subscribe all at once
    (no cap on handshakes in flight), as pusher-js clients do when the server they
    were on went away behind a load balancer. Time until every one is subscribed,
    the server's CPU and its peak RSS."""
    n = cfg.storm_sockets
    rss0 = rss_bytes(*server.pids)
    sampler = Sampler(server.pids, interval=0.1)
    lg = _loadgen(server, cfg, n, channels=cfg.s1_channels, concurrency=n)
    try:
        sampler.start()
        meter = Meter(server).start()
        ready = await lg.start(cfg.ready_timeout + 30)
        cpu = meter.stop()
        await sampler.stop()
        peak = max(peak_rss_bytes(*server.pids), max((r for _, r in sampler.rss), default=0))
    finally:
        await sampler.stop()
        await lg.quit()
    return _with_others({
        "connections": n, "established": ready["established"], "subscribed": ready["subscribed"],
        "failed": ready["failed"], "all_subscribed_s": ready["subscribeS"] if ready["subscribed"] == n else None,
        "subscribe_s": ready["subscribeS"], "connect_s": ready["connectS"],
        "rss_before_mib": rss0 / 2**20, "rss_peak_mib": peak / 2**20,
        "server_cpu_us_per_conn": cpu["server_cpu_s"] / n * 1e6,
        "loadgen_cpu_pct": _cpu_pct(ready["setupCpuS"], ready["subscribeS"]),
        **cpu,
    })


class Flood:
    """S2's publishing: cfg.s2_subscribers on one channel (the load generator's, with
    `prefix`), events published as fast as the server takes them (publish.flood)."""

    def __init__(self, server: RunningServer, cfg: Config, how: str, prefix: str = CHANNEL_PREFIX,
                 slow: int = 0, batch: int | None = None) -> None:
        self.cfg, self.channel, self.subs = cfg, prefix + "0", cfg.s2_subscribers
        self.batch = batch or cfg.batch
        self.publishes = 0
        # The load generator may lag by what is in flight, at least.
        self.backlog = max(cfg.backlog, cfg.in_flight * self.batch)
        self.lg = _loadgen(server, cfg, self.subs, prefix, channels=1, slow=slow)
        self.watcher = Watcher(server, self.channel)
        self.pub = PUBLISHERS[how](server)

    async def open(self) -> dict[str, Any]:
        ready = await self.lg.start(self.cfg.ready_timeout + 30)
        await self.watcher.open()
        await self.pub.open()
        return ready

    async def run(self, seconds: float) -> tuple[int, bool, float]:
        """(events sent, whether the publisher stalled, seconds spent publishing)."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with Progress(self.lg, self.subs, self.backlog) as progress:
            sent, self.publishes, stalled = await flood(
                self.pub, self.watcher, self.channel, seconds, self.batch, self.cfg.in_flight, progress
            )
        return sent, stalled, loop.time() - t0

    async def close(self) -> None:
        await self.lg.quit()
        await self.pub.close()
        await self.watcher.close()


def _publish_how(server: RunningServer, publish: str | None) -> str:
    # The baseline has only its publish frame.
    return publish if publish is not None and server.spec.publish != "frame" else server.spec.publish


async def fanout(
    server: RunningServer, cfg: Config, slow: int = 0, publish: str | None = None, batch: int | None = None
) -> dict[str, Any]:
    """S2 (slow=0) and S5 (slow=1): cfg.s2_subscribers on one channel, events
    published as fast as the server takes them; `slow` subscribers stop reading
    when publishing starts. `publish` overrides how events get in, for servers
    that offer it; `batch` the events per publish (cfg.batch)."""
    subs = cfg.s2_subscribers
    seconds = cfg.s5_seconds if slow else cfg.s2_seconds
    job = Flood(server, cfg, _publish_how(server, publish), slow=slow, batch=batch)
    lg = job.lg
    sampler = Sampler(server.pids)
    try:
        ready = await job.open()
        sampler.start()
        before, meter = await lg.stats(), Meter(server).start()
        if slow:
            sampler.watch_port = (await lg.command("pause"))["slowPorts"][0]
        sent, stalled, publish_s = await job.run(seconds)
        after = await lg.wait_delivered(sent * (subs - slow), cfg.drain_stall)
        cpu = meter.stop()  # publishing + draining
        await sampler.stop()
        if slow:
            # Read again so that whatever the server did to the slow consumer
            # (kept it, closed it) becomes visible, then let it catch up.
            await lg.command("resume")
            await lg.wait_delivered(sent * subs, cfg.drain_stall)
        result = await lg.command("result", expect=sent)
    finally:
        await sampler.stop()
        await job.close()

    others = result["perConn"]  # per-connection counts, slow consumers excluded
    rx_s = (after["lastRx"] - after["firstRx"]) / 1000
    server_deliveries = after["delivered"] + job.watcher.seen  # the watcher is a subscriber too
    out: dict[str, Any] = {
        "subscribers": subs, "subscribed": ready["subscribed"], "events_sent": sent,
        "events_per_publish": sent / job.publishes if job.publishes else None,
        "publisher_stalled": stalled,
        "publish_rate": sent / publish_s,
        "delivery_rate": others["sum"] / rx_s if rx_s > 0 else None,
        "lost": sent * others["n"] - others["sum"], "subscribers_short": others["short"],
        "duplicates": max(0, others["max"] - sent), "subscribers_closed": others["closed"],
        "server_cpu_us_per_delivery": cpu["server_cpu_s"] / server_deliveries * 1e6 if server_deliveries else None,
        "loadgen_cpu_pct": _cpu_pct(after["cpuS"] - before["cpuS"], (after["t"] - before["t"]) / 1000),
        "loadgen_cpu_us_per_delivery": (after["cpuS"] - before["cpuS"]) / after["delivered"] * 1e6
        if after["delivered"] else None,
        "loadgen_cpu_sys_pct": _cpu_pct(after["cpuSysS"] - before["cpuSysS"], (after["t"] - before["t"]) / 1000),
        "close_codes": result["closeCodes"],  # closes seen before the harness hung up
        **cpu,
        **sampler.summary(),
    }
    if slow:
        s = result["slow"][0]
        out |= {
            "slow_close_code": s["closeCode"], "slow_close_reason": s["closeReason"],
            "slow_received": s["received"], "slow_received_before_pause": s["receivedBeforePause"],
        }
    return _with_others(out)


BACKGROUND_PREFIX = "background-"


async def latency(server: RunningServer, cfg: Config, loaded: bool = False) -> dict[str, Any]:
    """S3: cfg.s3_subscribers on one channel, cfg.s3_rate events/s, end-to-end latency.

    With ``loaded``, S2 runs meanwhile on another channel (its own load
    generator, publisher and watcher): the latency of one channel while the
    server fans out another as fast as it can.
    """
    channel = CHANNEL_PREFIX + "0"
    subs = cfg.s3_subscribers
    lg = _loadgen(server, cfg, subs, channels=1, latency=True)
    pub = PUBLISHERS[server.spec.publish](server)
    background = Flood(server, cfg, server.spec.publish, BACKGROUND_PREFIX) if loaded else None
    flooding: asyncio.Task[tuple[int, bool, float]] | None = None
    try:
        await lg.start(cfg.ready_timeout + 30)
        if background is not None:
            await background.open()
            # Publishing starts once the flood is under way, and ends before it does.
            flooding = asyncio.create_task(background.run(cfg.s3_seconds + 2 * cfg.settle))
            await asyncio.sleep(cfg.settle)
        await pub.open()
        before, meter = await lg.stats(), Meter(server).start()
        sent, elapsed = await paced(pub, channel, cfg.s3_rate, cfg.s3_seconds)
        after = await lg.wait_delivered(sent * subs, cfg.drain_stall)
        cpu = meter.stop()
        result = await lg.command("result", expect=sent)
        background_sent = (await flooding)[0] if flooding is not None else None
    finally:
        if flooding is not None and not flooding.done():
            flooding.cancel()
            with contextlib.suppress(BaseException):
                await flooding
        await lg.quit()
        await pub.close()
        if background is not None:
            await background.close()
    lat = result["latencyMs"]
    window_s = (after["t"] - before["t"]) / 1000
    return _with_others({
        "subscribers": subs, "events_sent": sent, "publish_rate": sent / elapsed,
        "lost": sent * subs - result["perConn"]["sum"],
        "latency_p50_ms": lat["p50"], "latency_p90_ms": lat["p90"], "latency_p99_ms": lat["p99"],
        "latency_max_ms": lat["max"], "latency_mean_ms": lat["mean"], "latency_samples": lat["n"],
        "background_events": background_sent,
        "background_delivery_rate": background_sent * cfg.s2_subscribers / (cfg.s3_seconds + 2 * cfg.settle)
        if background_sent is not None else None,
        "loadgen_cpu_pct": _cpu_pct(after["cpuS"] - before["cpuS"], window_s),
        **cpu,
    })


async def _node(*args: str, **kwargs: Any) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec("node", *args, stdout=asyncio.subprocess.PIPE, **kwargs)


async def _closed_loops(server: RunningServer, cfg: Config, mode: str) -> dict[str, Any]:
    """Runs loadgen/roundtrip.js against the clients' node; its result line."""
    app = server.spec.app
    node = await _node(
        str(LOADGEN / "roundtrip.js"), "--url", server.ws_base(), "--key", app.key, "--secret", app.secret,
        "--mode", mode, "--conns", str(cfg.s4_sockets), "--duration", str(cfg.s4_seconds),
        "--warmup", str(cfg.settle),
    )
    out, _ = await node.communicate()
    lines = out.decode().strip().splitlines()
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {"type": "error", "error": "no output"}
    if result.get("type") != "result":
        raise RuntimeError(f"round trip load generator failed: {result}")
    return result


def _round_trip_figures(result: dict[str, Any], cfg: Config) -> dict[str, Any]:
    lat = result["latencyMs"]
    return {
        "sockets": cfg.s4_sockets, "round_trips": result["roundTrips"], "round_trip_rate": result["rate"],
        "errors": result["errors"], "unanswered": result["lost"],
        "malformed_frames": result["malformed"], "sockets_closed": result["closed"],
        "latency_p50_ms": lat["p50"], "latency_p99_ms": lat["p99"], "latency_max_ms": lat["max"],
        "loadgen_cpu_pct": _cpu_pct(result["cpuS"], cfg.s4_seconds),
    }


async def roundtrip(server: RunningServer, cfg: Config, backends: int, work_us: float = 0.0) -> dict[str, Any]:
    """S4: sockets ask, backends on the Pipe answer each with send_to_socket; round trips/s and latency.

    With ``work_us``, each backend spends that much CPU per message first.
    Backends connect to the backends' node, sockets to the clients' node.
    """
    app = server.spec.app
    script = str(Path(__file__).with_name("pipe_backend.py"))
    backend = [sys.executable, script, server.backend_ws_base(), app.app_id, app.key, app.secret, str(work_us)]
    procs = [
        await asyncio.create_subprocess_exec(*backend, stdout=asyncio.subprocess.PIPE) for _ in range(backends)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), cfg.ready_timeout)
            if line.strip() != b"ready":
                raise RuntimeError(f"pipe backend did not start: {line!r}")
        meter, backend_cpu0 = Meter(server).start(), cpu_seconds(*(p.pid for p in procs))
        result = await _closed_loops(server, cfg, "pipe")
        cpu, backend_cpu1 = meter.stop(), cpu_seconds(*(p.pid for p in procs))
    finally:
        for proc in procs:
            proc.terminate()
            await proc.wait()
    seconds = cfg.s4_seconds + cfg.settle
    return _with_others({
        "backends": backends, "work_us": work_us, **_round_trip_figures(result, cfg),
        "backend_cpu_pct": _cpu_pct(backend_cpu1 - backend_cpu0, seconds),
        **cpu,
    })


async def webhook_roundtrip(server: RunningServer, cfg: Config) -> dict[str, Any]:
    """S4, today's path: a socket's client event, the server's client_event webhook
    to a backend (loadgen/webhook_backend.js, the official Pusher SDK), whose REST
    trigger to that socket's private channel brings the answer back."""
    app = server.spec.app
    backend = await _node(
        str(LOADGEN / "webhook_backend.js"), "--port", str(server.webhook_port), "--path", WEBHOOK_PATH,
        "--api", f"http://{HOST}:{server.api_port}", "--app-id", app.app_id, "--key", app.key,
        "--secret", app.secret,
    )
    counts: dict[str, Any] = {}
    try:
        assert backend.stdout is not None
        line = await asyncio.wait_for(backend.stdout.readline(), cfg.ready_timeout)
        if line.strip() != b"ready":
            raise RuntimeError(f"webhook backend did not start: {line!r}")
        meter, backend_cpu0 = Meter(server).start(), cpu_seconds(backend.pid)
        result = await _closed_loops(server, cfg, "webhook")
        cpu, backend_cpu1 = meter.stop(), cpu_seconds(backend.pid)
    finally:
        if backend.returncode is None:
            backend.terminate()
            out, _ = await backend.communicate()
            with contextlib.suppress(ValueError, IndexError):
                counts = json.loads(out.decode().strip().splitlines()[-1])
    seconds = cfg.s4_seconds + cfg.settle
    return _with_others({
        **_round_trip_figures(result, cfg),
        "webhooks": counts.get("webhooks"), "webhook_events": counts.get("events"),
        "events_per_webhook": counts["events"] / counts["webhooks"] if counts.get("webhooks") else None,
        "triggers_failed": counts.get("failed"), "webhooks_refused": counts.get("invalid"),
        "backend_cpu_pct": _cpu_pct(backend_cpu1 - backend_cpu0, seconds),
        **cpu,
    })


Step = Callable[[RunningServer, Config], Awaitable[dict[str, Any]]]


async def _idle_of(n: int, server: RunningServer, cfg: Config) -> dict[str, Any]:
    return await idle(server, cfg, n)

#: Kinds of server.
EVERY = frozenset({"baseline", "soketi", "relay"})
PUSHER_SERVERS = frozenset({"soketi", "relay"})  # with a REST API and webhooks
RELAY = frozenset({"relay"})


@dataclass(frozen=True)
class Scenario:
    """name: the table's label (its first word picks the figures shown, see report.ROWS);
    kinds: the kinds of server that can run it; cluster: the relay's cluster set-ups
    (servers.cluster_variants) that run it too."""

    name: str
    step: Step
    kinds: frozenset[str]
    cluster: tuple[str, ...] = ()


def plan(cfg: Config) -> list[Scenario]:
    """The scenarios in run order."""
    largest = max(cfg.s1_sizes)
    steps = [
        Scenario(f"S1 idle {n}", functools.partial(_idle_of, n), EVERY, ("--workers 2",) if n == largest else ())
        for n in cfg.s1_sizes
    ]
    steps += [
        Scenario(f"S1 reconnect storm {cfg.storm_sockets}", storm, PUSHER_SERVERS),
        Scenario("S2 fan-out", fanout, EVERY, ("--redis", "--workers 2", "2 nodes")),
        Scenario("S2 fan-out, relay via the Pipe", lambda server, cfg: fanout(server, cfg, publish="pipe"), RELAY),
        # Pusher's batch_events takes 10 events; a server of one's own may take more.
        Scenario(f"S2 fan-out, batches of {cfg.big_batch}",
                 lambda server, cfg: fanout(server, cfg, batch=cfg.big_batch), PUSHER_SERVERS),
        Scenario("S3 latency, idle between events", latency, EVERY, ("2 nodes",)),
        Scenario("S3 latency under S2 load", lambda server, cfg: latency(server, cfg, loaded=True), EVERY),
        Scenario("S4 today's path: client event, webhook, REST", webhook_roundtrip, PUSHER_SERVERS),
        Scenario("S4 pipe round trip, 1 backend", lambda server, cfg: roundtrip(server, cfg, 1), RELAY,
                 ("--redis", "2 nodes")),
        Scenario("S4 pipe round trip, 3 backends", lambda server, cfg: roundtrip(server, cfg, 3), RELAY),
        Scenario("S4 busy backend, 1 backend", lambda server, cfg: roundtrip(server, cfg, 1, cfg.s4_work_us), RELAY),
        Scenario("S4 busy backend, 3 backends", lambda server, cfg: roundtrip(server, cfg, 3, cfg.s4_work_us), RELAY),
        Scenario("S5 slow consumer", lambda server, cfg: fanout(server, cfg, slow=1), EVERY),
    ]
    return steps
