'use strict';
// A minimal WebSocket client (RFC 6455) for the load generator's subscribers.
//
// The `ws` package spends about a microsecond of CPU per received message
// (frame parsing into a new Buffer, an EventEmitter dispatch, UTF-8 checks),
// so a load generator built on it, not the server, bounded the fan-out
// benchmark. This client does only what measuring needs: the upgrade
// request, unmasked server frames parsed in place and handed over as
// (buffer, start, end) without copying, masked frames out, ping answered,
// close echoed. Servers under test never fragment messages; a fragmented one
// is counted as malformed by the caller. Not a general-purpose client.

const crypto = require('crypto');
const net = require('net');

const MAX_HEAD = 16384;

// Masks come from a pool refilled 4 KiB at a time: a call to randomBytes per
// frame cost more than the rest of sending a small one.
let maskPool = crypto.randomBytes(4096);
let maskAt = 0;

function nextMask() {
  if (maskAt === maskPool.length) {
    maskPool = crypto.randomBytes(4096);
    maskAt = 0;
  }
  maskAt += 4;
  return maskPool.subarray(maskAt - 4, maskAt);
}

class RawWebSocket {
  // handlers: { open(), message(buf, start, end), close(code, reason) }
  constructor(url, handlers) {
    const u = new URL(url);
    this.handlers = handlers;
    this.pending = null; // bytes of an incomplete frame (or response head)
    this.upgraded = false;
    this.closed = false;
    this.socket = net.connect(Number(u.port || 80), u.hostname);
    this.socket.setNoDelay(true);
    const key = crypto.randomBytes(16).toString('base64');
    this.socket.on('connect', () => {
      this.socket.write(
        `GET ${u.pathname}${u.search} HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\n` +
        `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      );
    });
    this.socket.on('data', (chunk) => this.receive(chunk));
    this.socket.on('error', () => {}); // 'close' follows and reports
    this.socket.on('close', () => this.finish(1006, ''));
  }

  receive(chunk) {
    let buf = chunk;
    if (this.pending !== null) {
      buf = Buffer.concat([this.pending, chunk]);
      this.pending = null;
    }
    let pos = 0;
    if (!this.upgraded) {
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) {
        if (buf.length > MAX_HEAD) this.terminate();
        else this.pending = buf;
        return;
      }
      const status = buf.toString('latin1', 0, buf.indexOf('\r\n'));
      if (!/^HTTP\/1\.1 101 /.test(status)) {
        this.finish(1006, `upgrade refused: ${status}`);
        this.terminate();
        return;
      }
      this.upgraded = true;
      pos = end + 4;
      this.handlers.open();
    }
    const n = buf.length;
    while (n - pos >= 2 && !this.closed) {
      const b0 = buf[pos];
      const b1 = buf[pos + 1];
      let len = b1 & 0x7f;
      let head = pos + 2;
      if (len === 126) {
        if (n - pos < 4) break;
        len = buf.readUInt16BE(pos + 2);
        head = pos + 4;
      } else if (len === 127) {
        if (n - pos < 10) break;
        len = Number(buf.readBigUInt64BE(pos + 2));
        head = pos + 10;
      }
      if (b1 & 0x80) { // servers must not mask
        this.finish(1002, 'masked frame from the server');
        this.terminate();
        return;
      }
      if (head + len > n) break;
      const opcode = b0 & 0x0f;
      const fin = b0 & 0x80;
      if (opcode === 1 && fin) {
        this.handlers.message(buf, head, head + len);
      } else if (opcode === 8) {
        const code = len >= 2 ? buf.readUInt16BE(head) : 1005;
        const reason = len > 2 ? buf.toString('utf8', head + 2, head + len) : '';
        this.frame(0x88, buf.subarray(head, head + Math.min(len, 2)));
        this.finish(code, reason);
        this.socket.end();
        return;
      } else if (opcode === 9) {
        this.frame(0x8a, buf.subarray(head, head + len));
      } else if (opcode <= 2) {
        this.handlers.message(buf, head, head); // fragmented or binary: reported as malformed
      }
      pos = head + len;
    }
    if (pos < n && !this.closed) this.pending = buf.subarray(pos);
  }

  send(text) {
    this.frame(0x81, Buffer.from(text));
  }

  frame(first, payload) {
    const n = payload.length;
    const head = n < 126 ? Buffer.from([first, 0x80 | n]) : Buffer.from([first, 0x80 | 126, n >> 8, n & 0xff]);
    const mask = nextMask();
    const body = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) body[i] = payload[i] ^ mask[i & 3];
    if (!this.socket.destroyed) this.socket.write(Buffer.concat([head, mask, body]));
  }

  finish(code, reason) {
    if (this.closed) return;
    this.closed = true;
    this.handlers.close(code, reason);
  }

  pause() { this.socket.pause(); }
  resume() { this.socket.resume(); }
  get localPort() { return this.socket.localPort; }
  terminate() { this.socket.destroy(); }
}

module.exports = { RawWebSocket };
