#!/usr/bin/env node
// bench/chat/fanout.js: chat fan-out load generator (one process, no npm dependencies).
//
// Opens C SSE clients (GET /events, each on its own new TCP connection, so the server spreads them over
// its workers), waits until every client has its HTTP 200 headers, then a publisher POSTs /messages at a
// fixed rate R for D seconds. Each message text carries the run id, its index and its send time
// (performance.now(), the same monotonic clock the clients read), so each client records per message the
// delivery latency = receive time - send time. At the end it reports deliveries expected vs received,
// lost, duplicates, out-of-order (server id lower than the previous one on the same stream), deliveries/s
// and latency percentiles, then one line "RESULT {json}".
//
// Usage: node fanout.js [--host 127.0.0.1] [--port 8090] [--clients 1000] [--rate 20] [--duration 10]
//                       [--connect-parallel 100] [--connect-timeout 30] [--drain 3] [--label X]
// (use the bench/chat/fanout wrapper: it raises the fd limit first)
'use strict';
const net = require('net');
const http = require('http');
const { performance } = require('perf_hooks');

const opt = {
  host: '127.0.0.1', port: 8090, clients: 1000, rate: 20, duration: 10,
  'connect-parallel': 100, 'connect-timeout': 30, drain: 3, label: '', quiet: false,
};
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (a === '-h' || a === '--help') {
    console.log('usage: fanout [--host H] [--port P] [--clients C] [--rate R] [--duration D] ' +
      '[--connect-parallel N] [--connect-timeout S] [--drain S] [--label X] [--quiet]');
    process.exit(0);
  }
  if (a === '--quiet') { opt.quiet = true; continue; }
  const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a);
  if (!m || !(m[1] in opt)) { console.error(`fanout: unknown option ${a}`); process.exit(2); }
  const v = m[2] !== undefined ? m[2] : process.argv[++i];
  opt[m[1]] = typeof opt[m[1]] === 'number' ? Number(v) : v;
}
const C = opt.clients | 0;
const R = opt.rate;
const D = opt.duration;
const NMSG = Math.max(1, Math.round(R * D));
const RUN = Math.random().toString(36).slice(2, 8);
const MARK = `bench:${RUN}:`;
const log = (...a) => { if (!opt.quiet) console.error('fanout:', ...a); };

// ---- results ----
const lat = new Float64Array(C * NMSG);   // every delivery latency (ms)
let nlat = 0;
let received = 0, duplicates = 0, outOfOrder = 0, foreign = 0, badStatus = 0, connErrors = 0, dropped = 0;
let firstSend = 0, lastDelivery = 0;
const sendTime = new Float64Array(NMSG);   // per message index, as sent
const msgId = new Float64Array(NMSG);      // id the server answered
let sent = 0, postOk = 0, postFail = 0, lastPostDone = 0;
const postLat = [];

// ---- SSE clients ----
const clients = [];
let connected = 0, connecting = 0, nextToOpen = 0, measuring = false;

function Client(i) {
  this.i = i;
  this.sock = null;
  this.state = 0;          // 0 headers, 1 body, 2 dead
  this.hbuf = '';
  this.chunked = false;
  this.cstate = 0;         // chunked: 0 size line, 1 data, 2 CRLF after data
  this.cremain = 0;
  this.craw = '';
  this.sbuf = '';          // SSE text not yet split into events
  this.lastId = -1;
  this.seen = new Uint8Array(NMSG);
  this.count = 0;
  this.ok = false;
}

function openNext() {
  while (connecting < opt['connect-parallel'] && nextToOpen < C) {
    const c = new Client(nextToOpen++);
    clients.push(c);
    connecting++;
    const s = net.connect({ host: opt.host, port: opt.port });
    c.sock = s;
    s.setNoDelay(true);
    s.setEncoding('latin1');   // one char per byte: chunk sizes count chars
    s.on('connect', () => {
      s.write(`GET /events HTTP/1.1\r\nHost: ${opt.host}:${opt.port}\r\nAccept: text/event-stream\r\n\r\n`);
    });
    s.on('data', (d) => onData(c, d));
    s.on('error', () => { if (c.state === 0) connErrors++; });
    s.on('close', () => {
      if (c.state === 0) { connecting--; c.state = 2; openNext(); }
    else if (c.state === 2 && !c.ok) { /* gave up on it */ }
      else if (c.state === 1) { c.state = 2; if (measuring) dropped++; }
    });
  }
}

function onData(c, d) {
  const now = performance.now();
  if (c.state === 0) {
    c.hbuf += d;
    const e = c.hbuf.indexOf('\r\n\r\n');
    if (e < 0) return;
    const head = c.hbuf.slice(0, e);
    const rest = c.hbuf.slice(e + 4);
    c.hbuf = '';
    connecting--;
    if (!/^HTTP\/1\.[01] 200 /.test(head)) {
      badStatus++;
      c.state = 2;
      c.sock.destroy();
      openNext();
      return;
    }
    c.chunked = /\r\ntransfer-encoding:[ \t]*chunked/i.test(head);
    c.state = 1;
    c.ok = true;
    connected++;
    openNext();
    if (connected === C) onAllConnected();
    if (rest.length) body(c, rest, now);
    return;
  }
  if (c.state === 1) body(c, d, now);
}

function body(c, d, now) {
  if (!c.chunked) return sse(c, d, now);
  let raw = c.craw.length ? c.craw + d : d;
  c.craw = '';
  let p = 0, out = '';
  while (p < raw.length) {
    if (c.cstate === 0) {
      const e = raw.indexOf('\r\n', p);
      if (e < 0) { c.craw = raw.slice(p); break; }
      const size = parseInt(raw.slice(p, e), 16);
      p = e + 2;
      if (!(size > 0)) { c.state = 2; break; }   // last chunk: stream ended
      c.cremain = size;
      c.cstate = 1;
    } else if (c.cstate === 1) {
      const take = Math.min(c.cremain, raw.length - p);
      out += raw.slice(p, p + take);
      p += take;
      c.cremain -= take;
      if (c.cremain === 0) c.cstate = 2;
    } else {
      if (raw.length - p < 2) { c.craw = raw.slice(p); break; }
      p += 2;
      c.cstate = 0;
    }
  }
  if (out.length) sse(c, out, now);
}

function sse(c, d, now) {
  let buf = c.sbuf.length ? c.sbuf + d : d;
  let p = 0;
  for (;;) {
    const e = buf.indexOf('\n\n', p);
    if (e < 0) break;
    event(c, buf, p, e, now);
    p = e + 2;
  }
  c.sbuf = p < buf.length ? buf.slice(p) : '';
}

function event(c, buf, from, to, now) {
  const m = buf.indexOf(MARK, from);
  if (m < 0 || m > to) {
    if (buf.indexOf('data:', from) >= 0 && buf.indexOf('data:', from) < to) foreign++;
    return;
  }
  let id = -1;
  let il = buf.startsWith('id:', from) ? from : buf.indexOf('\nid:', from);
  if (il >= 0 && il < to) {
    if (il !== from) il++;
    id = parseInt(buf.slice(il + 3, buf.indexOf('\n', il)), 10);
  }
  const a = m + MARK.length;
  const b = buf.indexOf(':', a);
  const k = parseInt(buf.slice(a, b), 10);
  const t = parseFloat(buf.slice(b + 1, buf.indexOf(':', b + 1)));
  if (!(k >= 0 && k < NMSG)) { foreign++; return; }
  if (c.seen[k]) { duplicates++; return; }
  c.seen[k] = 1;
  c.count++;
  received++;
  if (id >= 0) {
    if (id < c.lastId) outOfOrder++;
    else c.lastId = id;
  }
  lat[nlat++] = now - t;
  lastDelivery = now;
}

// ---- publisher ----
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
function post(k) {
  const t = performance.now();
  const payload = JSON.stringify({ user: 'bench', text: `${MARK}${k}:${t.toFixed(3)}:` });
  sendTime[k] = t;
  sent++;
  const req = http.request({
    host: opt.host, port: opt.port, method: 'POST', path: '/messages', agent,
    headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload) },
  }, (res) => {
    let b = '';
    res.setEncoding('utf8');
    res.on('data', (x) => { b += x; });
    res.on('end', () => {
      const now = performance.now();
      lastPostDone = now;
      if (res.statusCode === 201) {
        postOk++;
        postLat.push(now - t);
        try { msgId[k] = JSON.parse(b).id; } catch (e) { /* ignore */ }
      } else {
        postFail++;
        log(`POST ${k}: HTTP ${res.statusCode} ${b.slice(0, 200)}`);
      }
    });
  });
  req.on('error', (e) => { postFail++; lastPostDone = performance.now(); log(`POST ${k}: ${e.message}`); });
  req.end(payload);
}

let cpu0, tConnected;
function onAllConnected() {
  if (measuring) return;
  measuring = true;
  tConnected = performance.now();
  nextToOpen = C;   // clients still connecting now would miss messages: give up on them
  for (const c of clients) if (c.state === 0) { c.state = 2; c.sock.destroy(); }
  log(`${connected}/${C} clients connected in ${((tConnected - tStart) / 1000).toFixed(2)} s ` +
      `(errors ${connErrors}, non-200 ${badStatus}); publishing ${NMSG} messages at ${R}/s`);
  // let the server settle a moment after the connection burst
  setTimeout(startPublishing, 500);
}

function startPublishing() {
  cpu0 = process.cpuUsage();
  const t0 = performance.now();
  firstSend = t0;
  let k = 0;
  const tick = () => {
    const now = performance.now();
    while (k < NMSG && t0 + (k * 1000) / R <= now + 0.5) post(k++);
    if (k < NMSG) setTimeout(tick, Math.max(0, t0 + (k * 1000) / R - performance.now()));
    else waitDrain();
  };
  tick();
}

function waitDrain() {
  const tEnd = performance.now();
  const check = () => {
    const now = performance.now();
    const expected = postOk * connected;
    const postsDone = postOk + postFail === sent;
    const quiet = now - Math.max(lastDelivery, lastPostDone) > opt.drain * 1000;
    if ((postsDone && received >= expected) || (postsDone && quiet) || now - tEnd > 30000) finish();
    else setTimeout(check, 20);
  };
  check();
}

function pct(sorted, n, p) {
  if (n === 0) return null;
  const i = Math.min(n - 1, Math.max(0, Math.ceil((p / 100) * n) - 1));
  return sorted[i];
}
const r3 = (x) => (x === null ? null : Math.round(x * 1000) / 1000);

function finish() {
  const cpu = process.cpuUsage(cpu0);
  const s = lat.subarray(0, nlat).sort();
  const expected = postOk * connected;
  // deliveries of messages the server answered with an id; deliveries of failed POSTs count too if seen
  const window = (lastDelivery - firstSend) / 1000;
  const pl = Float64Array.from(postLat).sort();
  let minC = Infinity, maxC = 0;
  for (const c of clients) if (c.ok) {
    if (c.count < minC) minC = c.count;
    if (c.count > maxC) maxC = c.count;
  }
  const res = {
    label: opt.label || undefined,
    clients: C, connected, conn_errors: connErrors, non_200: badStatus, dropped_streams: dropped,
    rate: R, duration: D, sent, post_ok: postOk, post_fail: postFail,
    expected, received, lost: Math.max(0, expected - received), duplicates, out_of_order: outOfOrder,
    deliveries_per_s: window > 0 ? Math.round(received / window) : 0,
    p50_ms: r3(pct(s, nlat, 50)), p90_ms: r3(pct(s, nlat, 90)), p99_ms: r3(pct(s, nlat, 99)),
    max_ms: r3(nlat ? s[nlat - 1] : null), mean_ms: r3(nlat ? s.reduce((a, b) => a + b, 0) / nlat : null),
    post_p50_ms: r3(pct(pl, pl.length, 50)), post_p99_ms: r3(pct(pl, pl.length, 99)),
    per_client_min: minC === Infinity ? 0 : minC, per_client_max: maxC,
    loadgen_cpu_s: r3((cpu.user + cpu.system) / 1e6),
  };
  if (!opt.quiet) {
    console.log(`clients ${connected}/${C} connected (conn errors ${connErrors}, non-200 ${badStatus}, ` +
      `streams closed during run ${dropped})`);
    console.log(`messages sent ${sent} (201: ${postOk}, failed: ${postFail}) at ${R}/s for ${D} s`);
    console.log(`deliveries expected ${expected}, received ${received}, lost ${res.lost}, ` +
      `duplicates ${duplicates}, out-of-order ${outOfOrder}` + (foreign ? `, other events ${foreign}` : ''));
    console.log(`deliveries/s ${res.deliveries_per_s} (window ${window.toFixed(2)} s)`);
    console.log(`latency ms: p50 ${res.p50_ms}  p90 ${res.p90_ms}  p99 ${res.p99_ms}  max ${res.max_ms}  ` +
      `mean ${res.mean_ms}; POST round trip p50 ${res.post_p50_ms} p99 ${res.post_p99_ms}`);
    console.log(`load generator CPU ${res.loadgen_cpu_s} s`);
  }
  console.log('RESULT ' + JSON.stringify(res));
  for (const c of clients) if (c.sock) c.sock.destroy();
  agent.destroy();
  process.exit(0);
}

const tStart = performance.now();
log(`run ${RUN}: opening ${C} SSE clients to ${opt.host}:${opt.port}`);
openNext();
setTimeout(() => {
  if (!measuring) {
    log(`only ${connected}/${C} clients connected after ${opt['connect-timeout']} s ` +
        `(errors ${connErrors}, non-200 ${badStatus}); measuring with those`);
    if (connected === 0) { console.log('RESULT ' + JSON.stringify({ error: 'no client connected' })); process.exit(1); }
    onAllConnected();
  }
}, opt['connect-timeout'] * 1000).unref();
