// bench/lib/idle-conns.js: opens N keep-alive connections to 127.0.0.1:PORT, sends one
// `GET / HTTP/1.1` on each and reads its response, then holds them all open and idle.
//   node idle-conns.js PORT N
// Prints "ready OPEN FAILED" on stdout once every connection has its response (or failed), then
// waits; on SIGTERM, or when stdin closes, it resets every connection (no TIME_WAIT) and exits.
// Used by bench/run and bench/smoke to measure the servers' memory per idle connection.
'use strict';
const net = require('node:net');
const port = Number(process.argv[2]);
const total = Number(process.argv[3] || 10000);
const inflight = 200;            // connections being set up at once
const socks = [];
let started = 0, done = 0, open = 0, failed = 0;

function next() {
  if (started >= total) return;
  started++;
  const s = net.connect({ port, host: '127.0.0.1' });
  let buf = '', settled = false;
  const settle = (ok) => {
    if (settled) return;
    settled = true;
    if (ok) { open++; socks.push(s); } else { failed++; s.destroy(); }
    done++;
    if (done === total) { process.stdout.write(`ready ${open} ${failed}\n`); } else { next(); }
  };
  s.setNoDelay(true);
  s.on('connect', () => s.write('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'));
  s.on('data', (d) => {
    buf += d;
    if (buf.endsWith('Hello, World!\n')) settle(true);
  });
  s.on('error', () => settle(false));
  s.on('close', () => {
    if (!settled) settle(false);
    else if (open > 0 && !quitting) { open--; lost++; }
  });
}

let quitting = false, lost = 0;
function quit() {
  if (quitting) return;
  quitting = true;
  if (lost) process.stderr.write(`idle-conns: ${lost} connections were closed by the server while idle\n`);
  for (const s of socks) { if (typeof s.resetAndDestroy === 'function') s.resetAndDestroy(); else s.destroy(); }
  setTimeout(() => process.exit(0), 100);
}
process.on('SIGTERM', quit);
process.on('SIGINT', quit);
process.stdin.on('end', quit);
process.stdin.on('close', quit);
process.stdin.resume();
for (let i = 0; i < Math.min(inflight, total); i++) next();
