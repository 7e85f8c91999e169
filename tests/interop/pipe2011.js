#!/usr/bin/env node
/*
 * Hosts the original 2011 Pipe client, npm `pusher-pipe@0.0.10`, unchanged,
 * for the Python interop tests; same JSON-lines protocol as driver.js.
 *
 * Commands:
 *   connect   {config: {key, secret, app_id, host, port}, events}  createClient + subscribe + connect
 *   socket    {socket_id, event, data}      client.socket(id).trigger(event, data, callback)
 *   channel   {channel, event, data, socket_id?}  client.channel(name).trigger(...)
 *   listen    {channel, event}              client.channel(name).on('event:' + event, ...)
 *   rpc       {method, params}              client._rpc(method, params, callback)
 *   disconnect {}
 * Replies carry the callback's error ({message, errno}) or result.
 *
 * Reports: {"type":"connected", connection_id}, {"type":"open"|"close", socket_id},
 *   {"type":"socket_event", event, socket_id, data}       client.sockets 'event'
 *   {"type":"channel_event", event, channel, socket_id, data}  client.channels 'event'
 *   {"type":"channel_listener", channel, event, socket_id, data}  a listen binding fired
 *   {"type":"error", message, errno}                       client 'error'
 */
'use strict';

const readline = require('readline');
const Pipe = require('pusher-pipe');

let client = null;

function report(fields) {
  process.stdout.write(JSON.stringify(fields) + '\n');
}

function reply(command, error, result) {
  const base = { type: 'reply', cmd: command.cmd, id: command.id === undefined ? null : command.id };
  if (error) {
    report({ ...base, ok: false, error: error.message, errno: error.errno === undefined ? null : error.errno });
  } else {
    report({ ...base, ok: true, result: result === undefined ? null : result });
  }
}

function connect(command) {
  client = Pipe.createClient(command.config);
  client.on('connected', () => report({ type: 'connected', connection_id: client.connection_id }));
  client.on('error', (error) => report({ type: 'error', message: error.message, errno: error.errno === undefined ? null : error.errno }));
  client.sockets.on('open', (socketId) => report({ type: 'open', socket_id: socketId }));
  client.sockets.on('close', (socketId) => report({ type: 'close', socket_id: socketId }));
  client.sockets.on('event', (event, socketId, data) => report({ type: 'socket_event', event, socket_id: socketId, data }));
  client.channels.on('event', (event, channel, socketId, data) =>
    report({ type: 'channel_event', event, channel, socket_id: socketId, data }));
  if (command.events && command.events.length) {
    client.subscribe(command.events);
  }
  client.connect();
  reply(command, null, null);
}

const commands = {
  connect,
  socket: (c) => client.socket(c.socket_id).trigger(c.event, c.data, (e, r) => reply(c, e, r)),
  channel: (c) => {
    const callback = (e, r) => reply(c, e, r);
    if (c.socket_id) {
      client.channel(c.channel).trigger(c.event, c.data, c.socket_id, callback);
    } else {
      client.channel(c.channel).trigger(c.event, c.data, callback);
    }
  },
  listen: (c) => {
    client.channel(c.channel).on('event:' + c.event, (socketId, data) =>
      report({ type: 'channel_listener', channel: c.channel, event: c.event, socket_id: socketId, data }));
    reply(c, null, null);
  },
  rpc: (c) => client._rpc(c.method, c.params, (e, r) => reply(c, e, r)),
  disconnect: (c) => {
    client.disconnect();
    reply(c, null, null);
  },
};

readline.createInterface({ input: process.stdin })
  .on('line', (line) => {
    let command;
    try {
      command = JSON.parse(line);
      commands[command.cmd](command);
    } catch (error) {
      report({ type: 'driver_error', error: String(error && error.message) });
    }
  })
  .on('close', () => {
    if (client && client.connected) client.disconnect();
    setTimeout(() => process.exit(0), 50);
  });
