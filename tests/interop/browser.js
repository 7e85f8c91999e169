#!/usr/bin/env node
/*
 * Drives a real headless Chromium (Debian's /usr/bin/chromium) with
 * playwright-core for the browser tests; same JSON-lines protocol as driver.js.
 *
 * Commands:
 *   open      {url, block_pusher, viewport}  a new page at url (block_pusher: the CDN's pusher-js
 *                                    fails to load; viewport: {width, height} of the page)
 *   eval      {expression}           result = page.evaluate(expression)
 *   wait_for  {expression, ms}       page.waitForFunction(expression) for up to ms (10000); result = its value
 *   text      {selector}             result = the element's textContent
 *   screenshot {path}                a PNG of the page as shown, written to path
 * Reports: {"type":"console", text} for every console message of the page,
 *   {"type":"page_error", message} for uncaught errors.
 *
 * The network is closed here, so pusher-js's CDN URL is served from the
 * pusher-js package installed beside this file (same library, same bytes a
 * browser would run from the CDN, version of package.json).
 */
'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const { chromium } = require('playwright-core');

const PUSHER_JS = fs.readFileSync(path.join(__dirname, 'node_modules', 'pusher-js', 'dist', 'web', 'pusher.min.js'));

let browser = null;
let page = null;

function report(fields) {
  process.stdout.write(JSON.stringify(fields) + '\n');
}

async function start() {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
  });
}

const commands = {
  open: async (c) => {
    page = await browser.newPage(c.viewport ? { viewport: c.viewport } : {});
    page.on('console', (message) => report({ type: 'console', text: message.text() }));
    page.on('pageerror', (error) => report({ type: 'page_error', message: String(error && error.message) }));
    await page.route(/^https:\/\/js\.pusher\.com\/.*pusher(\.min)?\.js$/, (route) =>
      c.block_pusher
        ? route.abort('internetdisconnected')
        : route.fulfill({ status: 200, contentType: 'application/javascript', body: PUSHER_JS }));
    await page.goto(c.url);
    return page.url();
  },
  eval: (c) => page.evaluate(c.expression),
  wait_for: async (c) => {
    const handle = await page.waitForFunction(c.expression, null, { timeout: c.ms || 10000 });
    return handle.jsonValue();
  },
  text: (c) => page.textContent(c.selector),
  screenshot: async (c) => {
    await page.screenshot({ path: c.path });
    return c.path;
  },
};

async function run(command) {
  const reply = { type: 'reply', cmd: command.cmd, id: command.id === undefined ? null : command.id };
  try {
    const result = await commands[command.cmd](command);
    report({ ...reply, ok: true, result: result === undefined ? null : result });
  } catch (error) {
    report({ ...reply, ok: false, error: String(error && error.message) });
  }
}

const ready = start().catch((error) => {
  report({ type: 'driver_error', error: `cannot start Chromium: ${error.message}` });
  process.exit(1);
});

readline.createInterface({ input: process.stdin })
  .on('line', (line) => {
    ready.then(() => run(JSON.parse(line)));
  })
  .on('close', async () => {
    await ready;
    if (browser) await browser.close();
    process.exit(0);
  });
