#!/usr/bin/env node
'use strict';
// Load generator for the relay benchmarks (Pusher Channels protocol v7).
//
// Opens --conns WebSocket connections spread over --workers processes, at most
// --concurrency handshakes in flight, subscribes connection i to public
// channel `${channelPrefix}${i % channels}`, then counts the events named
// --event that arrive. Prints one JSON object per line on stdout:
//
//   {"type":"ready", ...}   once every connection is subscribed (or failed)
//   {"type":"stats", ...}   in reply to a `stats` command, or every --interval s
//   {"type":"result", ...}  in reply to `result` (with --duration: at the end)
//
// Commands are read from stdin, one per line, either a bare word or a JSON
// object: stats | pause | resume | {"cmd":"result","expect":N} | quit.
// `pause` stops reading on the first --slow connections (slow consumers);
// `resume` reads again so that a close the server sent can be observed.
//
//   node loadgen.js --url ws://127.0.0.1:6001 --conns 1000 --channels 100 --duration 10 --interval 1

const { spawn } = require('child_process');
const path = require('path');
const readline = require('readline');

const OPTIONS = {
  url: 'ws://127.0.0.1:6001', key: 'key', conns: 100, channels: 1, channelPrefix: 'bench-',
  event: 'bench-event', concurrency: 64, workers: 1, slow: 0, latency: false,
  maxSamples: 5e6, readyTimeout: 120, duration: 0, interval: 0,
};

function parseArgs(argv) {
  const opts = { ...OPTIONS };
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, ch) => ch.toUpperCase());
    if (!(name in opts)) throw new Error(`unknown option ${argv[i]}`);
    if (typeof opts[name] === 'boolean') opts[name] = true;
    else opts[name] = typeof opts[name] === 'number' ? Number(argv[++i]) : argv[++i];
  }
  // A bare ws://host:port gets the path and query string pusher-js 8.6.0 uses.
  if (!/\/app\//.test(opts.url)) {
    opts.url = `${opts.url.replace(/\/$/, '')}/app/${opts.key}?protocol=7&client=js&version=8.6.0&flash=false`;
  }
  return opts;
}

const print = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

function startWorkers(opts) {
  // Workers run through sh so they can lift their own open-file soft limit to
  // the hard limit (Node has no setrlimit); 10k sockets need more than 1024.
  const raise = 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@"';
  const workers = [];
  for (let w = 0; w < opts.workers; w++) {
    const child = spawn('/bin/sh', ['-c', raise, process.execPath, path.join(__dirname, 'worker.js')], {
      stdio: ['ignore', 2, 'inherit', 'ipc'], serialization: 'advanced', // advanced: typed arrays pass as is
    });
    child.pending = new Map();
    child.on('message', (msg) => { child.pending.get(msg.id)(msg); child.pending.delete(msg.id); });
    child.on('exit', (code) => { if (code) { console.error(`loadgen worker exited with ${code}`); process.exit(1); } });
    workers.push(child);
  }
  return workers;
}

let nextId = 0;
function callAll(workers, cmd, extra = {}) {
  return Promise.all(workers.map((child, w) => new Promise((resolve) => {
    const id = ++nextId;
    child.pending.set(id, resolve);
    child.send({ id, cmd, ...(typeof extra === 'function' ? extra(w) : extra) });
  })));
}

function merge(parts) {
  const out = {
    delivered: 0, established: 0, subscribed: 0, failed: 0, malformed: 0, open: 0, cpuStartS: 0, cpuSysS: 0,
    closeCodes: {},
  };
  for (const p of parts) {
    for (const k of Object.keys(out)) if (typeof out[k] === 'number') out[k] += p[k];
    for (const [code, n] of Object.entries(p.closeCodes)) out.closeCodes[code] = (out.closeCodes[code] || 0) + n;
  }
  const nz = (k) => parts.map((p) => p[k]).filter((v) => v > 0);
  out.tStart = Math.min(...nz('tStart'));
  out.tEstablished = Math.max(0, ...nz('tEstablished'));
  out.tSubscribed = Math.max(0, ...nz('tSubscribed'));
  out.firstRx = nz('firstRx').length ? Math.min(...nz('firstRx')) : 0;
  out.lastRx = Math.max(0, ...nz('lastRx'));
  // CPU of the whole load generator, coordinator included, so it can be set
  // against the cores the machine has: it must stay well below saturation.
  const own = process.cpuUsage();
  out.cpuS = parts.reduce((s, p) => s + p.cpuS, (own.user + own.system) / 1e6);
  out.cpuSysS += own.system / 1e6;
  out.t = Math.max(...parts.map((p) => p.t));
  out.parts = parts.map(({ delivered, cpuS, t }) => ({ delivered, cpuS, t }));
  return out;
}

function percentiles(arrays) {
  const n = arrays.reduce((s, a) => s + a.length, 0);
  const all = new Float64Array(n);
  let off = 0;
  for (const a of arrays) { all.set(a, off); off += a.length; }
  all.sort();
  const at = (q) => (n ? all[Math.min(n - 1, Math.floor(q * n))] : null);
  const mean = n ? all.reduce((s, v) => s + v, 0) / n : null;
  return { n, p50: at(0.5), p90: at(0.9), p99: at(0.99), p999: at(0.999), max: n ? all[n - 1] : null, mean };
}

async function main() {
  process.stdout.on('error', () => process.exit(0)); // reader went away (EPIPE): nothing left to report to
  const opts = parseArgs(process.argv.slice(2));
  const workers = startWorkers(opts);
  const per = Math.ceil(opts.conns / opts.workers);
  const conc = Math.max(1, Math.ceil(opts.concurrency / opts.workers));
  const cfgFor = (w) => ({
    cfg: {
      url: opts.url, channels: opts.channels, channelPrefix: opts.channelPrefix, event: opts.event,
      latency: opts.latency, maxSamples: Math.ceil(opts.maxSamples / opts.workers), slow: opts.slow,
      firstIndex: w * per, count: Math.max(0, Math.min(per, opts.conns - w * per)),
      concurrency: conc, readyTimeoutMs: opts.readyTimeout * 1000,
    },
  });
  const ownAtStart = process.cpuUsage();
  const ready = merge(await callAll(workers, 'start', cfgFor));
  const connectS = (ready.tEstablished - ready.tStart) / 1000;
  print({
    type: 'ready', conns: opts.conns, workers: opts.workers, ...ready, connectS,
    // CPU spent connecting and subscribing, process start-up excluded
    setupCpuS: ready.cpuS - ready.cpuStartS - (ownAtStart.user + ownAtStart.system) / 1e6,
    connectRate: connectS > 0 ? ready.established / connectS : null,
    subscribeS: (ready.tSubscribed - ready.tStart) / 1000,
  });

  // Rates since the previous stats: summed per worker, each over its own interval.
  let last = ready;
  const stats = async () => {
    const s = merge(await callAll(workers, 'stats'));
    let rate = 0, cpuPct = 0;
    s.parts.forEach((p, w) => {
      const dt = (p.t - last.parts[w].t) / 1000;
      rate += dt > 0 ? (p.delivered - last.parts[w].delivered) / dt : 0;
      cpuPct += dt > 0 ? (100 * (p.cpuS - last.parts[w].cpuS)) / dt : 0;
    });
    print({ type: 'stats', ...s, rate, cpuPct });
    last = s;
  };
  const result = async (expect) => {
    const parts = await callAll(workers, 'result', { expect });
    const out = merge(parts);
    const perConn = { n: 0, min: Infinity, max: 0, sum: 0, short: 0, closed: 0 };
    for (const p of parts) {
      if (!p.perConn.n) continue;
      for (const k of ['n', 'sum', 'short', 'closed']) perConn[k] += p.perConn[k];
      perConn.min = Math.min(perConn.min, p.perConn.min); perConn.max = Math.max(perConn.max, p.perConn.max);
    }
    if (!perConn.n) perConn.min = 0;
    const latencyMs = opts.latency ? percentiles(parts.map((p) => p.samples)) : null;
    print({ type: 'result', ...out, perConn, slow: parts.flatMap((p) => p.slow), latencyMs });
  };
  const quit = async () => { await callAll(workers, 'quit'); process.exit(0); };

  if (opts.duration > 0) {
    // Stand-alone mode: someone else publishes; we just watch for a while.
    const ticker = opts.interval > 0 ? setInterval(stats, opts.interval * 1000) : null;
    setTimeout(async () => { clearInterval(ticker); await result(null); await quit(); }, opts.duration * 1000);
  }

  const rl = readline.createInterface({ input: process.stdin });
  let queue = Promise.resolve(); // run commands one at a time, in order
  rl.on('line', (line) => {
    line = line.trim();
    if (!line) return;
    const cmd = line.startsWith('{') ? JSON.parse(line) : { cmd: line };
    queue = queue.then(() => {
      if (cmd.cmd === 'stats') return stats();
      if (cmd.cmd === 'result') return result(cmd.expect ?? null);
      if (cmd.cmd === 'quit') return quit();
      if (cmd.cmd === 'pause' || cmd.cmd === 'resume') {
        return callAll(workers, cmd.cmd).then((p) => print({
          type: cmd.cmd, ...merge(p), slowPorts: p.flatMap((x) => x.slowPorts || []),
        }));
      }
      print({ type: 'error', message: `unknown command ${cmd.cmd}` });
      return undefined;
    });
  });
  if (!(opts.duration > 0)) rl.on('close', () => queue.then(quit)); // stdin closed: the driver is gone
}

main().catch((err) => { console.error(err); process.exit(1); });
