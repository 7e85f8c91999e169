'use strict';
// One load-generator process: owns a slice of the WebSocket connections and
// answers the coordinator's commands (see loadgen.js) over the IPC channel.
//
// The receive path is the part that must stay cheap: connections are
// rawws.js sockets, and a delivered event costs one search for the event's
// name in the frame, in place, and a few counter updates, nothing else,
// unless latency sampling is on. Other frames (rare) are parsed as JSON.

const { RawWebSocket } = require('./rawws');

// Wall clock with sub-millisecond resolution, comparable with Python's time.time_ns().
const wallMs = () => performance.timeOrigin + performance.now();
const TS = /\\?"ts\\?":\s*(\d+)/;

let cfg = null;
const conns = [];
const stats = {
  established: 0, subscribed: 0, failed: 0, malformed: 0,
  delivered: 0, firstRx: 0, lastRx: 0,
  tStart: 0, tEstablished: 0, tSubscribed: 0,
  cpuStartS: 0, // CPU already spent (process start-up) when connecting began
  closeCodes: {},
};
let eventName = null; // Buffer of the quoted event name: only the "event" field can hold it unescaped
let samples = null; // Float64Array of latencies in ms, filled when cfg.latency
let nSamples = 0;

function record(ms) {
  if (nSamples === samples.length) {
    if (samples.length >= cfg.maxSamples) return; // bounded: keep the first ones
    const bigger = new Float64Array(Math.min(samples.length * 2, cfg.maxSamples));
    bigger.set(samples);
    samples = bigger;
  }
  samples[nSamples++] = ms;
}

function onEvent(c, buf, start, end) {
  c.count++;
  stats.delivered++;
  const t = wallMs();
  if (stats.firstRx === 0) stats.firstRx = t;
  stats.lastRx = t;
  if (cfg.latency) {
    // The publisher puts wall-clock nanoseconds in data's "ts" (data is a
    // JSON string inside the frame, so its quotes arrive escaped). Doubles
    // keep ~256 ns of resolution at that magnitude, far below what we measure.
    const ts = TS.exec(buf.toString('latin1', start, end));
    if (ts) record(t - Number(ts[1]) / 1e6);
  }
}

function onControl(c, msg, settle) {
  switch (msg.event) {
    case 'pusher:connection_established':
      c.established = true;
      stats.established++;
      stats.tEstablished = wallMs();
      settle(); // frees a concurrency slot: the handshake is what we rate-limit
      c.ws.send(JSON.stringify({ event: 'pusher:subscribe', data: { auth: '', channel: c.channel } }));
      break;
    case 'pusher_internal:subscription_succeeded':
      if (!c.subscribed) {
        c.subscribed = true;
        stats.subscribed++;
        stats.tSubscribed = wallMs();
      }
      break;
    case 'pusher:ping':
      c.ws.send('{"event":"pusher:pong","data":{}}');
      break;
    default:
      break; // pongs, errors, cache misses...: irrelevant to the measurements
  }
}

function open(index, done) {
  const c = {
    index, channel: cfg.channelPrefix + (index % cfg.channels),
    slow: index < cfg.slow, count: 0, established: false, subscribed: false,
    closeCode: null, closeReason: null, pausedAt: 0, countAtPause: 0, closedAt: 0,
  };
  let settled = false;
  const settle = () => { if (!settled) { settled = true; done(); } };
  // No compression is offered: the benchmark measures servers, not zlib.
  c.ws = new RawWebSocket(cfg.url, {
    open() {},
    message(buf, start, end) {
      const at = buf.indexOf(eventName, start);
      if (at !== -1 && at + eventName.length <= end) {
        onEvent(c, buf, start, end);
        return;
      }
      let msg;
      try {
        msg = JSON.parse(buf.toString('utf8', start, end));
      } catch {
        stats.malformed++; // a server bug to report, not a reason to stop measuring
        return;
      }
      onControl(c, msg, settle);
    },
    close(code, reason) {
      if (!c.established) stats.failed++;
      c.closeCode = code;
      c.closeReason = reason;
      c.closedAt = wallMs();
      stats.closeCodes[code] = (stats.closeCodes[code] || 0) + 1;
      settle();
    },
  });
  conns.push(c);
}

// Keeps at most cfg.concurrency handshakes in flight, then waits (bounded by
// cfg.readyTimeoutMs) until every connection is subscribed or has failed.
function connectAll() {
  stats.tStart = wallMs();
  const cpu = process.cpuUsage();
  stats.cpuStartS = (cpu.user + cpu.system) / 1e6;
  let next = cfg.firstIndex;
  const end = cfg.firstIndex + cfg.count;
  let inflight = 0;
  return new Promise((resolve) => {
    const deadline = setTimeout(resolve, cfg.readyTimeoutMs);
    const check = setInterval(() => {
      if (next === end && stats.subscribed + stats.failed >= cfg.count) {
        clearTimeout(deadline);
        clearInterval(check);
        resolve();
      }
    }, 10);
    const pump = () => {
      while (inflight < cfg.concurrency && next < end) {
        inflight++;
        open(next++, () => { inflight--; pump(); });
      }
    };
    pump();
  });
}

// `t` is taken here, not by the coordinator: a saturated worker may answer
// seconds late (libuv serves the IPC pipe once per round over all sockets),
// and rates must be computed over the interval the counters really cover.
function snapshot() {
  const cpu = process.cpuUsage();
  const open = conns.filter((c) => c.closeCode === null).length;
  return { ...stats, cpuS: (cpu.user + cpu.system) / 1e6, cpuSysS: cpu.system / 1e6, open, t: wallMs() };
}

function result(expect) {
  // Slow consumers are reported apart so they do not hide losses of the others.
  let min = Infinity, max = 0, sum = 0, n = 0, short = 0, closed = 0;
  for (const c of conns) {
    if (c.slow) continue;
    min = Math.min(min, c.count);
    max = Math.max(max, c.count);
    sum += c.count;
    n++;
    if (expect != null && c.count < expect) short++;
    if (c.closeCode !== null) closed++; // the harness has not hung up yet: the server did this
  }
  const slow = conns.filter((c) => c.slow).map((c) => ({
    index: c.index, received: c.count, receivedBeforePause: c.countAtPause,
    closeCode: c.closeCode, closeReason: c.closeReason,
    closeSeenAfterPauseS: c.closedAt && c.pausedAt ? (c.closedAt - c.pausedAt) / 1000 : null,
  }));
  return {
    ...snapshot(), perConn: { n, min: n ? min : 0, max, sum, short, closed }, slow,
    samples: samples ? samples.subarray(0, nSamples) : new Float64Array(0),
  };
}

const commands = {
  async start(msg) {
    cfg = msg.cfg;
    eventName = Buffer.from(JSON.stringify(cfg.event));
    if (cfg.latency) samples = new Float64Array(Math.min(1 << 16, cfg.maxSamples));
    await connectAll();
    return snapshot();
  },
  stats: () => snapshot(),
  pause() {
    const slowPorts = [];
    for (const c of conns) {
      if (!c.slow || c.closeCode !== null) continue;
      // Stop reading at the TCP level; the server sees a full receive window.
      c.ws.pause();
      c.pausedAt = wallMs();
      c.countAtPause = c.count;
      slowPorts.push(c.ws.localPort); // lets the harness find the socket in /proc/net/tcp
    }
    return { ...snapshot(), slowPorts };
  },
  resume() {
    for (const c of conns) if (c.slow) c.ws.resume();
    return snapshot();
  },
  result: (msg) => result(msg.expect),
  quit() {
    for (const c of conns) c.ws.terminate();
    setImmediate(() => process.exit(0));
    return {};
  },
};

process.on('message', async (msg) => {
  const reply = await commands[msg.cmd](msg);
  if (process.connected) process.send({ id: msg.id, ...reply });
});
process.on('disconnect', () => process.exit(0)); // coordinator gone: do not linger
