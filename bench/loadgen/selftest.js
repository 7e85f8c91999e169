#!/usr/bin/env node
'use strict';
// How many messages per second can the load generator itself take in?
// Runs loadgen.js against blast.js (which only replays pre-framed bytes) with
// 1, 2, ... workers and prints one JSON line per configuration:
//   {"type":"selftest","workers":W,"conns":C,"rate":msgs_per_s,"loadgenCpuPct":..,"blasterCpuPct":..}
//
//   node selftest.js [--conns 100] [--seconds 5] [--workers 1,2] [--batch 64,1]

const { fork, spawn } = require('child_process');
const path = require('path');
const readline = require('readline');

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const CONNS = Number(arg('conns', 100));
const SECONDS = Number(arg('seconds', 5));
const WORKERS = arg('workers', '1,2').split(',').map(Number);
const BATCHES = arg('batch', '64,1').split(',').map(Number); // events per write, see blast.js

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function ask(child, msg) {
  return new Promise((resolve) => { child.once('message', resolve); child.send(msg); });
}

async function measure(port, blaster, workers, batch) {
  const lg = spawn(process.execPath, [path.join(__dirname, 'loadgen.js'), '--url', `ws://127.0.0.1:${port}`,
    '--conns', String(CONNS), '--workers', String(workers)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = readline.createInterface({ input: lg.stdout })[Symbol.asyncIterator]();
  const next = async (cmd) => {
    if (cmd) lg.stdin.write(`${cmd}\n`);
    return JSON.parse((await lines.next()).value);
  };
  await next(); // ready
  await ask(blaster, { go: true });
  await sleep(1000); // let the pipes fill before the window opens
  const a = await next('stats');
  const ba = (await ask(blaster, {})).cpuS;
  await sleep(SECONDS * 1000);
  const b = await next('stats');
  const bb = (await ask(blaster, { go: false })).cpuS;
  lg.stdin.write('quit\n');
  await new Promise((r) => lg.on('exit', r));
  // b.rate and b.cpuPct cover a..b as each worker measured it.
  const dt = (b.t - a.t) / 1000;
  return {
    type: 'selftest', workers, conns: CONNS, eventsPerWrite: batch, seconds: dt,
    rate: Math.round(b.rate), loadgenCpuPct: Math.round(b.cpuPct), blasterCpuPct: Math.round((100 * (bb - ba)) / dt),
  };
}

async function main() {
  for (const batch of BATCHES) {
    const blaster = fork(path.join(__dirname, 'blast.js'), [String(batch)]);
    const { port } = await new Promise((r) => blaster.once('message', r));
    for (const w of WORKERS) console.log(JSON.stringify(await measure(port, blaster, w, batch)));
    blaster.disconnect();
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
