#!/usr/bin/env node
'use strict';
// S4 load generator: sockets that ask a backend through the relay's Pipe.
//
// Opens --conns pusher-js-like WebSocket connections; each runs a closed loop
// for --duration seconds: send the back-channel event `rt-ping` with a
// sequence number, wait for the backend's `rt-pong` (sent to this socket
// alone with send_to_socket), record the round trip, send the next. Prints
// one JSON line: {"type":"result", roundTrips, rate, latencyMs: {p50, p99,
// max, mean, n}, errors, cpuS}.
//
//   node roundtrip.js --url ws://127.0.0.1:6001 --key key --conns 100 --duration 10

const WebSocket = require('ws');

const opts = { url: 'ws://127.0.0.1:6001', key: 'key', conns: 100, duration: 10, warmup: 1 };
for (let i = 2; i < process.argv.length; i += 2) {
  const name = process.argv[i].replace(/^--/, '');
  if (!(name in opts)) throw new Error(`unknown option ${process.argv[i]}`);
  opts[name] = typeof opts[name] === 'number' ? Number(process.argv[i + 1]) : process.argv[i + 1];
}
const url = `${opts.url.replace(/\/$/, '')}/app/${opts.key}?protocol=7&client=js&version=8.6.0&flash=false`;

const samples = [];
let errors = 0;
let measuring = false;
let running = true;

function connect() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    let seq = 0;
    let sentAt = 0n;
    const ping = () => {
      seq += 1;
      sentAt = process.hrtime.bigint();
      ws.send(JSON.stringify({ event: 'rt-ping', data: { seq } }));
    };
    ws.on('message', (raw) => {
      const msg = JSON.parse(raw);
      if (msg.event === 'pusher:connection_established') {
        resolve(ws);
        ws.start = ping;
      } else if (msg.event === 'rt-pong') {
        if (measuring) samples.push(Number(process.hrtime.bigint() - sentAt) / 1e6);
        if (running) ping();
      } else if (msg.event === 'pusher:ping') {
        ws.send('{"event":"pusher:pong","data":{}}');
      } else if (msg.event === 'pusher:error') {
        errors += 1;
      }
    });
    ws.on('error', reject);
  });
}

function percentile(sorted, p) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : null;
}

async function main() {
  const sockets = [];
  for (let i = 0; i < opts.conns; i++) sockets.push(await connect());
  for (const ws of sockets) ws.start();
  await new Promise((r) => setTimeout(r, opts.warmup * 1000));
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  measuring = true;
  await new Promise((r) => setTimeout(r, opts.duration * 1000));
  measuring = false;
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  running = false;
  const sorted = samples.slice().sort((a, b) => a - b);
  const mean = sorted.reduce((a, b) => a + b, 0) / (sorted.length || 1);
  process.stdout.write(JSON.stringify({
    type: 'result', roundTrips: sorted.length, rate: sorted.length / seconds, seconds, errors,
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
