#!/usr/bin/env node
'use strict';
// The backend of "today's path" (S4, client event → webhook → REST): what a
// Pusher user runs now to answer a browser without the Pipe.
//
// An HTTP server takes the server's `client_event` webhooks (keep-alive, as
// Node serves by default), checks each body's signature and, for every
// `client-rt-ping` in it, answers with the official Pusher SDK: a REST
// `trigger` of `rt-pong` with the same data to the channel it came on, which
// only that browser is subscribed to. The webhook is acknowledged at once and
// the trigger follows, as a backend that keeps webhook senders waiting would
// not. REST calls go over keep-alive connections (an `http.Agent` given to
// the SDK), each signed once by the SDK.
//
// Prints `ready` once listening; on SIGTERM prints one JSON line of counts.
//
//   node webhook_backend.js --port 9000 --api http://127.0.0.1:6001 --app-id 1 --key key --secret secret

const http = require('http');
const Pusher = require('pusher');

const opts = { port: 0, path: '/pusher/webhooks', api: 'http://127.0.0.1:6001', appId: '1', key: 'key', secret: 'secret' };
for (let i = 2; i < process.argv.length; i += 2) {
  const name = process.argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, ch) => ch.toUpperCase());
  if (!(name in opts)) throw new Error(`unknown option ${process.argv[i]}`);
  opts[name] = typeof opts[name] === 'number' ? Number(process.argv[i + 1]) : process.argv[i + 1];
}

const api = new URL(opts.api);
const pusher = new Pusher({
  appId: opts.appId, key: opts.key, secret: opts.secret, host: api.hostname, port: Number(api.port), useTLS: false,
  agent: new http.Agent({ keepAlive: true, maxSockets: 16 }),
});

const counts = { webhooks: 0, events: 0, invalid: 0, triggered: 0, failed: 0 };

function answer(event) {
  counts.events++;
  if (event.name !== 'client_event' || event.event !== 'client-rt-ping') return;
  // Data arrives as the client sent it: a JSON string (the protocol) or an object (pusher-js, through Soketi).
  const data = typeof event.data === 'string' ? JSON.parse(event.data) : event.data;
  pusher.trigger(event.channel, 'rt-pong', data).then(
    (res) => res.text().then(() => { counts.triggered++; }), // read the body: the connection is reused after it
    (err) => { counts.failed++; if (counts.failed === 1) console.error(`trigger failed: ${err}`); },
  );
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const webhook = pusher.webhook({ headers: req.headers, rawBody: Buffer.concat(chunks).toString('utf8') });
    if (req.url !== opts.path || !webhook.isValid()) {
      counts.invalid++;
      res.writeHead(401).end();
      return;
    }
    counts.webhooks++;
    res.writeHead(200, { 'content-length': 0 }).end();
    for (const event of webhook.getEvents()) answer(event);
  });
});
server.keepAliveTimeout = 60000;
server.listen(opts.port, '127.0.0.1', () => process.stdout.write('ready\n'));
process.on('SIGTERM', () => {
  process.stdout.write(JSON.stringify({ type: 'result', ...counts, cpuS: (process.cpuUsage().user + process.cpuUsage().system) / 1e6 }) + '\n');
  process.exit(0);
});
