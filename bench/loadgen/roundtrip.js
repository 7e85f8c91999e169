#!/usr/bin/env node
'use strict';
// S4 load generator: sockets that ask a backend and wait for its answer.
//
// Opens --conns pusher-js-like WebSocket connections; each runs a closed loop
// for --duration seconds: ask with a sequence number, wait for the backend's
// `rt-pong` (to this socket alone), record the round trip, ask again. Prints
// one JSON line: {"type":"result", roundTrips, rate, latencyMs: {p50, p99,
// max, mean, n}, errors, lost (questions unanswered for 5 s, asked again), malformed (frames that are
// not JSON), closed (sockets the server closed once ready), cpuS}.
//
// --mode pipe (the relay's Pipe): the question is the back-channel event
// `rt-ping`; the backend answers with send_to_socket.
// --mode webhook (today's path, any Pusher server): socket i subscribes to
// `private-rt-{i}` (signed with --secret, as an app's auth endpoint would)
// and asks with the client event `client-rt-ping` there; the server's
// client_event webhook reaches the backend, which triggers `rt-pong` on that
// channel through the REST API.
//
//   node roundtrip.js --url ws://127.0.0.1:6001 --key key --conns 100 --duration 10

const crypto = require('crypto');
const { RawWebSocket } = require('./rawws');

const opts = {
  url: 'ws://127.0.0.1:6001', key: 'key', secret: 'secret', conns: 100, duration: 10, warmup: 1, mode: 'pipe',
};
for (let i = 2; i < process.argv.length; i += 2) {
  const name = process.argv[i].replace(/^--/, '');
  if (!(name in opts)) throw new Error(`unknown option ${process.argv[i]}`);
  opts[name] = typeof opts[name] === 'number' ? Number(process.argv[i + 1]) : process.argv[i + 1];
}
if (opts.mode !== 'pipe' && opts.mode !== 'webhook') throw new Error(`unknown mode ${opts.mode}`);
const url = `${opts.url.replace(/\/$/, '')}/app/${opts.key}?protocol=7&client=js&version=8.6.0&flash=false`;

const ANSWER_TIMEOUT_NS = 5_000_000_000n;
// A socket not ready this long after it was opened (no connection_established,
// or its subscribe never answered) fails the run instead of hanging it.
const READY_TIMEOUT_MS = 30_000;
const samples = [];
let errors = 0;
let lost = 0;
let malformed = 0; // frames that are not JSON (rawws hands fragmented and binary ones over empty)
let closed = 0; // sockets the server closed after they were ready
let measuring = false;
let running = true;

function connect(index) {
  return new Promise((resolve, reject) => {
    const channel = `private-rt-${index}`;
    let seq = 0;
    let sentAt = 0n;
    let ws = null;
    let ready = false;
    const timer = setTimeout(() => {
      reject(new Error(`socket ${index} not ready after ${READY_TIMEOUT_MS} ms`));
    }, READY_TIMEOUT_MS);
    const done = (socket) => {
      ready = true;
      clearTimeout(timer);
      resolve(socket);
    };
    const ping = () => {
      seq += 1;
      sentAt = process.hrtime.bigint();
      ws.send(JSON.stringify(opts.mode === 'pipe'
        ? { event: 'rt-ping', data: { seq } }
        : { event: 'client-rt-ping', channel, data: { seq } }));
    };
    // rawws.js, as the fan-out's subscribers: the `ws` package's per-message
    // cost (a Buffer per frame, an EventEmitter dispatch) came to a fifth of
    // this process's CPU per round trip, on the same two cores as the servers.
    ws = new RawWebSocket(url, {
      open() {},
      message(buf, start, end) {
        let msg;
        try {
          msg = JSON.parse(buf.toString('utf8', start, end));
        } catch {
          malformed += 1;
          return;
        }
        if (msg.event === 'pusher:connection_established') {
          if (opts.mode === 'pipe') {
            done(ws);
            return;
          }
          const socketId = JSON.parse(msg.data).socket_id;
          const signature = crypto.createHmac('sha256', opts.secret).update(`${socketId}:${channel}`).digest('hex');
          ws.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel, auth: `${opts.key}:${signature}` } }));
        } else if (msg.event === 'pusher_internal:subscription_succeeded') {
          done(ws);
        } else if (msg.event === 'rt-pong') {
          const data = typeof msg.data === 'string' ? JSON.parse(msg.data) : msg.data;
          if (data.seq !== seq) return; // the answer to a question given up on (see `overdue`)
          if (measuring) samples.push(Number(process.hrtime.bigint() - sentAt) / 1e6);
          if (running) ping();
        } else if (msg.event === 'pusher:ping') {
          ws.send('{"event":"pusher:pong","data":{}}');
        } else if (msg.event === 'pusher:subscription_error') {
          reject(new Error(`socket ${index} could not subscribe: ${JSON.stringify(msg.data)}`));
        } else if (msg.event === 'pusher:error') {
          errors += 1;
        }
      },
      close(code, reason) {
        if (ready) closed += 1;
        else reject(new Error(`socket ${index} closed: ${code} ${reason}`));
      },
    });
    ws.start = ping;
    // A question unanswered for ANSWER_TIMEOUT_MS is counted lost and asked again, so one lost
    // answer (a webhook a server dropped) costs its socket seconds, not the rest of the run.
    ws.overdue = (now) => {
      if (seq && now - sentAt > ANSWER_TIMEOUT_NS) {
        if (measuring) lost += 1;
        ping();
      }
    };
  });
}

function percentile(sorted, p) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : null;
}

async function main() {
  const sockets = [];
  for (let i = 0; i < opts.conns; i++) sockets.push(await connect(i));
  for (const ws of sockets) ws.start();
  const watchdog = setInterval(() => {
    const now = process.hrtime.bigint();
    if (running) for (const ws of sockets) ws.overdue(now);
  }, 500);
  await new Promise((r) => setTimeout(r, opts.warmup * 1000));
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  measuring = true;
  await new Promise((r) => setTimeout(r, opts.duration * 1000));
  measuring = false;
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  running = false;
  clearInterval(watchdog);
  const sorted = samples.slice().sort((a, b) => a - b);
  const mean = sorted.reduce((a, b) => a + b, 0) / (sorted.length || 1);
  process.stdout.write(JSON.stringify({
    type: 'result', roundTrips: sorted.length, rate: sorted.length / seconds, seconds, errors, lost, malformed, closed,
    latencyMs: { p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99), max: sorted[sorted.length - 1] || null, mean, n: sorted.length },
    cpuS: (cpu.user + cpu.system) / 1e6,
  }) + '\n');
  for (const ws of sockets) ws.terminate();
  process.exit(0);
}

main().catch((error) => {
  process.stdout.write(JSON.stringify({ type: 'error', error: String(error) }) + '\n');
  process.exit(1);
});
