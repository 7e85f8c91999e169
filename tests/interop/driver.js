#!/usr/bin/env node
/*
 * Drives the official pusher-js (Node build) for the Python interop tests.
 *
 * One long-running process hosts any number of pusher-js clients, each named
 * by an `id` chosen by the test. It reads one JSON command per line on stdin
 * and writes one JSON report per line on stdout (stderr carries pusher-js's
 * own log). It exits when stdin closes.
 *
 * Every command is answered, in order, by
 *   {"type":"reply","cmd":C,"id":ID,"ok":true[,"result":R]}
 * or {"type":"reply","cmd":C,"id":ID,"ok":false,"error":"..."} if it threw.
 *
 * Commands ({"cmd": ..., "id": client id, ...}):
 *   connect        {key, host, port, options?}  new Pusher(key, defaults + options);
 *                  defaults: cluster "mt1", ws only, plain ws to host:port, no stats.
 *                  Auth endpoints are ordinary pusher-js options, e.g.
 *                  options.channelAuthorization = {endpoint: "http://...", params: {...}},
 *                  options.authEndpoint, options.userAuthentication = {endpoint: ...}.
 *   subscribe      {channel, events?}           pusher.subscribe; binds the channel's
 *                  pusher:* events, on presence channels the member events, and
 *                  the listed events (as bind does) before any frame can arrive.
 *   unsubscribe    {channel}
 *   bind           {event, channel?, target?}   channel.bind when channel is given,
 *                  pusher.connection.bind when target is "connection", else pusher.bind.
 *   bind_global    {channel?}                   channel.bind_global or pusher.bind_global.
 *   trigger        {channel, event, data}       channel.trigger; result = its boolean.
 *   send_event     {event, data, channel?}      pusher.send_event; result = its boolean.
 *   signin         {}                           pusher.signin().
 *   members        {channel}                    result = {count, me, ids, hash}.
 *   user_bind      {event, watchlist?}          pusher.user.bind, or
 *                  pusher.user.watchlist.bind when watchlist is true.
 *   status         {}                           result = {state, socket_id, retrying, connecting}:
 *                  retrying/connecting tell whether pusher-js has a reconnect timer
 *                  or a connection attempt under way.
 *   disconnect     {}                           pusher.disconnect(); the client is forgotten.
 *   send_events    {event, first, count}        count send_event calls with data {n: first + i}.
 *   back_trigger   {event, data}                pusher.back_channel.trigger (pipe-client.js).
 *   back_bind      {event}                      pusher.back_channel.bind; reports back_channel.
 * connect options pipeAuth / pipeSignin (true) use Pusher.pipeAuthorizer /
 * Pusher.pipeUserAuthenticator from pipe-client.js.
 *
 * Reports (all carry "id", the client):
 *   {"type":"state", previous, current, socket_id}      every connection state change; the
 *                  first one (previous null) is the state right after construction,
 *                  since pusher-js starts connecting inside its constructor
 *   {"type":"error", code, message, error}               pusher.connection 'error'
 *                  (code/message lifted from the nested PusherError when present)
 *   {"type":"connecting_in", delay}                      pusher-js scheduled a retry
 *   {"type":"subscription_succeeded", channel, data}
 *   {"type":"subscription_error", channel, data}
 *   {"type":"cache_miss", channel, data}
 *   {"type":"subscription_count", channel, data}
 *   {"type":"member_added"|"member_removed", channel, member}
 *   {"type":"event", via:"bind"|"global", channel (null for pusher-level), event, data, metadata}
 *   {"type":"connection_event", event, data}             from bind with target "connection"
 *   {"type":"signin_success", user_data}                 user_data as parsed by pusher-js
 *   {"type":"signin_error", data}
 *   {"type":"user_event", event, data}                   pusher.user.bind
 *   {"type":"watchlist", event, data}                    pusher.user.watchlist.bind
 *   {"type":"back_channel", event, data}                 a back_channel.bind callback fired
 *   {"type":"driver_error", error}                       a bug in this driver or a bad command
 */
'use strict';

const path = require('path');
const readline = require('readline');
const Pusher = require('pusher-js');

// The browser helper the relay serves at /pipe-client.js (back_channel,
// Pusher.pipeAuthorizer, Pusher.pipeUserAuthenticator), loaded as a page would.
global.Pusher = Pusher;
require(path.join(__dirname, '..', '..', 'pipe_trio', 'static', 'pipe-client.js'));

// pusher-js logs through Pusher.log when set; keep stdout for reports only.
Pusher.log = (message) => process.stderr.write(`[pusher-js] ${message}\n`);

const clients = new Map();

function report(fields) {
  // Pipes to a child process are synchronous in Node on POSIX, so each line
  // is on its way as soon as this returns.
  process.stdout.write(JSON.stringify(fields, jsonSafe) + '\n');
}

// Error objects and undefined do not survive JSON.stringify on their own.
function jsonSafe(_key, value) {
  if (value instanceof Error) {
    return { name: value.name, message: value.message };
  }
  return value === undefined ? null : value;
}

function client(id) {
  const pusher = clients.get(id);
  if (!pusher) {
    throw new Error(`no client ${JSON.stringify(id)}`);
  }
  return pusher;
}

function channelOf(id, name) {
  const channel = client(id).channel(name);
  if (!channel) {
    throw new Error(`client ${id} has no channel ${name}`);
  }
  return channel;
}

// A connection error is either a PusherError ({type, data: {code, message}})
// or, during the handshake, a WebSocketError wrapping one; lift code/message.
function errorFields(err) {
  const inner = (err && err.error && err.error.data) || (err && err.data) || {};
  return { code: inner.code === undefined ? null : inner.code, message: inner.message || null };
}

function connect(cmd) {
  if (clients.has(cmd.id)) {
    throw new Error(`client ${cmd.id} exists`);
  }
  const options = Object.assign(
    {
      cluster: 'mt1', // mandatory since pusher-js 8, even with wsHost
      wsHost: cmd.host,
      wsPort: cmd.port,
      wssPort: cmd.port,
      forceTLS: false,
      enabledTransports: ['ws'],
      enableStats: false,
    },
    cmd.options || {},
  );
  // "pipe" options: authorize and sign in through the app's pipe (pipe-client.js).
  if (options.pipeAuth) {
    options.channelAuthorization = { customHandler: Pusher.pipeAuthorizer };
    delete options.pipeAuth;
  }
  if (options.pipeSignin) {
    options.userAuthentication = { customHandler: Pusher.pipeUserAuthenticator };
    delete options.pipeSignin;
  }
  const pusher = new Pusher(cmd.key, options);
  const id = cmd.id;
  clients.set(id, pusher);
  const state = (previous, current) => {
    report({ type: 'state', id, previous, current, socket_id: pusher.connection.socket_id || null });
  };
  state(null, pusher.connection.state);
  pusher.connection.bind('state_change', ({ previous, current }) => state(previous, current));
  pusher.connection.bind('error', (error) => {
    report(Object.assign({ type: 'error', id, error }, errorFields(error)));
  });
  pusher.connection.bind('connecting_in', (delay) => {
    report({ type: 'connecting_in', id, delay });
  });
  // Bound after the UserFacade's own 'message' handler, so pusher-js has
  // already parsed (or rejected) the user data when this runs.
  pusher.connection.bind('message', (message) => {
    if (message.event === 'pusher:signin_success') {
      report({ type: 'signin_success', id, user_data: pusher.user.user_data });
    }
  });
  pusher.user.bind('pusher:signin_error', (data) => {
    report({ type: 'signin_error', id, data });
  });
}

function subscribe(cmd) {
  const id = cmd.id;
  const channel = client(id).subscribe(cmd.channel);
  const name = cmd.channel;
  const forward = (event, type) => {
    channel.bind(event, (data) => report({ type, id, channel: name, data }));
  };
  forward('pusher:subscription_succeeded', 'subscription_succeeded');
  forward('pusher:subscription_error', 'subscription_error');
  forward('pusher:cache_miss', 'cache_miss');
  forward('pusher:subscription_count', 'subscription_count');
  if (name.startsWith('presence-')) {
    channel.bind('pusher:member_added', (member) => report({ type: 'member_added', id, channel: name, member }));
    channel.bind('pusher:member_removed', (member) => report({ type: 'member_removed', id, channel: name, member }));
  }
  for (const event of cmd.events || []) {
    bind({ id, channel: name, event });
  }
}

function bind(cmd) {
  const id = cmd.id;
  const pusher = client(id);
  if (cmd.channel) {
    channelOf(id, cmd.channel).bind(cmd.event, (data, metadata) => {
      report({ type: 'event', via: 'bind', id, channel: cmd.channel, event: cmd.event, data, metadata });
    });
  } else if (cmd.target === 'connection') {
    pusher.connection.bind(cmd.event, (data) => report({ type: 'connection_event', id, event: cmd.event, data }));
  } else {
    pusher.bind(cmd.event, (data, metadata) => {
      report({ type: 'event', via: 'bind', id, channel: null, event: cmd.event, data, metadata });
    });
  }
}

function bindGlobal(cmd) {
  const id = cmd.id;
  const channel = cmd.channel || null;
  const target = channel ? channelOf(id, channel) : client(id);
  target.bind_global((event, data, metadata) => {
    report({ type: 'event', via: 'global', id, channel, event, data, metadata });
  });
}

function members(cmd) {
  const m = channelOf(cmd.id, cmd.channel).members;
  return { count: m.count, me: m.me, ids: Object.keys(m.members), hash: m.members };
}

function userBind(cmd) {
  const id = cmd.id;
  const user = client(id).user;
  if (cmd.watchlist) {
    user.watchlist.bind(cmd.event, (data) => report({ type: 'watchlist', id, event: cmd.event, data }));
  } else {
    user.bind(cmd.event, (data) => report({ type: 'user_event', id, event: cmd.event, data }));
  }
}

function status(cmd) {
  const manager = client(cmd.id).connection;
  return {
    state: manager.state,
    socket_id: manager.socket_id || null,
    retrying: Boolean(manager.retryTimer && manager.retryTimer.isRunning()),
    connecting: Boolean(manager.runner),
  };
}

function disconnect(cmd) {
  client(cmd.id).disconnect();
  clients.delete(cmd.id);
}

const handlers = {
  connect,
  subscribe,
  unsubscribe: (cmd) => client(cmd.id).unsubscribe(cmd.channel),
  bind,
  bind_global: bindGlobal,
  trigger: (cmd) => channelOf(cmd.id, cmd.channel).trigger(cmd.event, cmd.data),
  send_event: (cmd) => client(cmd.id).send_event(cmd.event, cmd.data, cmd.channel),
  signin: (cmd) => client(cmd.id).signin(),
  members,
  user_bind: userBind,
  status,
  disconnect,
  // A burst of back-channel messages {n: first .. first+count-1}; result = how many sent.
  send_events: (cmd) => {
    let sent = 0;
    for (let i = 0; i < cmd.count; i += 1) {
      if (client(cmd.id).send_event(cmd.event, { n: cmd.first + i })) sent += 1;
    }
    return sent;
  },
  back_trigger: (cmd) => client(cmd.id).back_channel.trigger(cmd.event, cmd.data),
  back_bind: (cmd) => {
    const id = cmd.id;
    client(id).back_channel.bind(cmd.event, (data) => report({ type: 'back_channel', id, event: cmd.event, data }));
  },
};

function handle(line) {
  if (!line.trim()) {
    return;
  }
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    report({ type: 'driver_error', error: `not JSON: ${line}` });
    return;
  }
  const handler = handlers[cmd.cmd];
  try {
    if (!handler) {
      throw new Error(`unknown command ${JSON.stringify(cmd.cmd)}`);
    }
    const result = handler(cmd);
    report({ type: 'reply', cmd: cmd.cmd, id: cmd.id, ok: true, result: result === undefined ? null : result });
  } catch (e) {
    report({ type: 'reply', cmd: cmd.cmd, id: cmd.id, ok: false, error: String((e && e.message) || e) });
  }
}

// A throw inside a pusher-js callback must not take every client down with it.
process.on('uncaughtException', (e) => report({ type: 'driver_error', error: String((e && e.stack) || e) }));

const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
input.on('line', handle);
input.on('close', () => {
  for (const pusher of clients.values()) {
    pusher.disconnect();
  }
  process.exit(0);
});
