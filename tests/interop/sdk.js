#!/usr/bin/env node
/*
 * Runs the official `pusher` server SDK (npm) for the Python interop tests,
 * speaking the same JSON-lines protocol as driver.js: one command per line on
 * stdin, answered by {"type":"reply","cmd":C,"id":ID,"ok":true,"result":R}
 * (or "ok":false with "error" and, for HTTP failures, "status" and "body").
 *
 * Commands (all carry "config": {appId, key, secret, host, port}):
 *   trigger       {channels, event, data, params?}   pusher.trigger(...)
 *   triggerBatch  {batch}                            pusher.triggerBatch(...)
 *   get           {path, params?}                    pusher.get({path, params})
 *   terminate     {userId}                           pusher.terminateUserConnections(userId)
 *   sendToUser    {userId, event, data}              pusher.sendToUser(...)
 *   webhook       {headers, rawBody}                 pusher.webhook({headers, rawBody}) ->
 *                 {valid: isValid(), events: getEvents() when valid}
 * A successful HTTP call's result is {status, body} with body parsed as JSON.
 */
'use strict';

const readline = require('readline');
const Pusher = require('pusher');

function report(fields) {
  process.stdout.write(JSON.stringify(fields) + '\n');
}

function client(config) {
  return new Pusher({
    appId: config.appId,
    key: config.key,
    secret: config.secret,
    host: config.host,
    port: config.port,
    useTLS: false,
  });
}

async function readResponse(response) {
  const text = await response.text();
  let body = text;
  try {
    body = JSON.parse(text);
  } catch (_) {
    // keep the raw text: a non-JSON success body is itself worth reporting
  }
  return { status: response.status, body };
}

const commands = {
  trigger: (p, c) => p.trigger(c.channels, c.event, c.data, c.params),
  triggerBatch: (p, c) => p.triggerBatch(c.batch),
  get: (p, c) => p.get({ path: c.path, params: c.params || {} }),
  terminate: (p, c) => p.terminateUserConnections(c.userId),
  sendToUser: (p, c) => p.sendToUser(c.userId, c.event, c.data),
};

async function run(command) {
  const reply = { type: 'reply', cmd: command.cmd, id: command.id === undefined ? null : command.id };
  try {
    const pusher = client(command.config);
    if (command.cmd === 'webhook') {
      const hook = pusher.webhook({ headers: command.headers, rawBody: command.rawBody });
      const valid = hook.isValid();
      report({ ...reply, ok: true, result: { valid, events: valid ? hook.getEvents() : null } });
      return;
    }
    const response = await commands[command.cmd](pusher, command);
    report({ ...reply, ok: true, result: await readResponse(response) });
  } catch (error) {
    // The SDK rejects with a RequestError carrying the HTTP status and body.
    report({ ...reply, ok: false, error: String(error.message || error), status: error.status || null, body: error.body || null });
  }
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  let command;
  try {
    command = JSON.parse(line);
  } catch (error) {
    report({ type: 'driver_error', error: `bad command line: ${error.message}` });
    return;
  }
  run(command);
});
