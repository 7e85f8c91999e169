'use strict';
// A deliberately unrealistic "server" for selftest.js: it answers the Pusher
// handshake and subscribe, then keeps every subscriber's socket full of
// pre-framed events. Framing a batch once and writing raw bytes makes it far
// cheaper per message than any real server, so whatever rate the load
// generator reaches against it is the load generator's own ceiling.
//
// Run as a child of selftest.js: reports {port} over IPC, then answers every
// IPC message with {cpuS}; {go:true} starts the flood, {go:false} stops it.
// (Flooding from the first subscribe would starve the load generator's
// remaining handshakes and measure that instead.)

const { WebSocketServer } = require('ws');

const BATCH = Number(process.argv[2] || 64); // events per write: 1 mimics a server that writes each event on its own

function frame(text) {
  const payload = Buffer.from(text);
  // Unmasked server text frame; payloads here are < 64 KiB, so at most 16-bit length.
  const head = payload.length < 126
    ? Buffer.from([0x81, payload.length])
    : Buffer.from([0x81, 126, payload.length >> 8, payload.length & 0xff]);
  return Buffer.concat([head, payload]);
}

function eventBatch(channel) {
  const frames = [];
  for (let i = 0; i < BATCH; i++) {
    const data = JSON.stringify({ seq: i, ts: 0, pad: 'x'.repeat(64) }); // ~100 bytes like run.py's
    frames.push(frame(JSON.stringify({ event: 'bench-event', channel, data })));
  }
  return Buffer.concat(frames);
}

const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
const batches = new Map(); // channel -> framed batch
const fillers = new Set(); // one per subscribed socket
let flooding = false;

wss.on('connection', (ws) => {
  ws.send(JSON.stringify({ event: 'pusher:connection_established',
    data: JSON.stringify({ socket_id: '1.1', activity_timeout: 120 }) }));
  ws.on('message', (buf) => {
    const msg = JSON.parse(buf.toString());
    if (msg.event !== 'pusher:subscribe') return;
    const channel = msg.data.channel;
    ws.send(JSON.stringify({ event: 'pusher_internal:subscription_succeeded', channel, data: '{}' }));
    if (!batches.has(channel)) batches.set(channel, eventBatch(channel));
    // Write until the socket pushes back, then refill on 'drain'. The kernel
    // may keep accepting small writes as fast as the client drains them, so
    // yield now and then or the other sockets (and IPC) would never run.
    const sock = ws._socket;
    const batch = batches.get(channel);
    const fill = () => {
      for (let i = 0; i < 256; i++) {
        if (!flooding || sock.destroyed || !sock.write(batch)) return;
      }
      setImmediate(fill);
    };
    sock.on('drain', fill);
    sock.on('close', () => fillers.delete(fill));
    fillers.add(fill);
  });
});

wss.on('listening', () => {
  process.send({ port: wss.address().port });
});
process.on('message', (msg) => {
  if (typeof msg.go === 'boolean') {
    flooding = msg.go;
    for (const fill of fillers) fill();
  }
  const cpu = process.cpuUsage();
  process.send({ cpuS: (cpu.user + cpu.system) / 1e6 });
});
process.on('disconnect', () => process.exit(0));
