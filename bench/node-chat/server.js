#!/usr/bin/env node
// bench/node-chat/server.js: the Node.js peer for the chat fan-out benchmark.
//
// A cluster chat written the usual way: the primary forks WORKERS workers (default 2); each worker
// serves the chat HTTP contract (POST /messages, GET /events SSE, GET /poll, GET /messages) with the
// node http module. A worker relays a posted message to the primary (process.send); the primary
// assigns the global id and sends the message to every worker (worker.send); each worker keeps the
// last 500 and pushes it to its SSE clients and waiting long polls. No npm dependencies.
//
//   PORT=8090 WORKERS=2 node bench/node-chat/server.js    -> prints "listening on 8090" when all are up
'use strict';
const cluster = require('cluster');
const http = require('http');

const PORT = parseInt(process.env.PORT || '8090', 10);
const WORKERS = Math.max(1, parseInt(process.env.WORKERS || '2', 10));
const POLL_SECONDS = parseFloat(process.env.CHAT_POLL_SECONDS || '25');
const PING_SECONDS = parseFloat(process.env.CHAT_PING_SECONDS || '15');
const KEEP = 500;

if (cluster.isPrimary) {
  let seq = 0;
  let ready = 0;
  const workers = [];
  for (let i = 0; i < WORKERS; i++) {
    const w = cluster.fork();
    workers.push(w);
    w.on('message', (m) => {
      if (m.t === 'ready') {
        if (++ready === WORKERS) console.log(`listening on ${PORT}`);
      } else if (m.t === 'post') {
        const msg = { id: ++seq, user: m.user, text: m.text, time: Date.now() / 1000 };
        for (const o of workers) {
          if (o.isConnected()) o.send({ t: 'msg', msg, origin: w.id, req: m.req });
        }
      }
    });
  }
  cluster.on('exit', (w, code, sig) => {
    console.error(`worker ${w.process.pid} exited (${sig || code})`);
  });
  const stop = () => {
    for (const w of workers) w.process.kill('SIGTERM');
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  const kept = [];            // last KEEP messages, ascending id: { id, msg, json, sse }
  const sse = new Set();      // SSE responses
  let polls = [];             // { since, res, timer }
  const pending = new Map();  // req -> res awaiting the id of its POST
  let reqSeq = 0;

  const since = (n) => {
    const out = [];
    for (let i = kept.length - 1; i >= 0 && kept[i].id > n; i--) out.push(kept[i]);
    return out.reverse();
  };
  const json = (res, code, obj) => {
    const body = JSON.stringify(obj);
    res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  };
  const list = (items) => '{"messages":[' + items.map((k) => k.json).join(',') + ']}';
  const sendList = (res, items) => {
    const body = list(items);
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  };

  process.on('message', (m) => {
    if (m.t !== 'msg') return;
    const j = JSON.stringify(m.msg);
    const k = { id: m.msg.id, json: j, sse: `id: ${m.msg.id}\ndata: ${j}\n\n` };
    kept.push(k);
    if (kept.length > KEEP) kept.shift();
    for (const res of sse) res.write(k.sse);
    if (polls.length) {
      const waiting = polls;
      polls = [];
      for (const p of waiting) {
        clearTimeout(p.timer);
        if (!p.res.destroyed) sendList(p.res, since(p.since));
      }
    }
    if (m.origin === cluster.worker.id) {
      const res = pending.get(m.req);
      if (res) {
        pending.delete(m.req);
        json(res, 201, { id: m.msg.id });
      }
    }
  });

  const server = http.createServer((req, res) => {
    const q = req.url.indexOf('?');
    const path = q < 0 ? req.url : req.url.slice(0, q);
    const params = new URLSearchParams(q < 0 ? '' : req.url.slice(q + 1));
    const sinceParam = () => {
      const n = parseInt(params.get('since') || '0', 10);
      return Number.isFinite(n) ? n : 0;
    };

    if (req.method === 'POST' && path === '/messages') {
      const chunks = [];
      let size = 0;
      req.on('data', (c) => {
        size += c.length;
        if (size <= 65536) chunks.push(c);
      });
      req.on('end', () => {
        let body;
        try {
          body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        } catch (e) {
          return json(res, 400, { error: 'bad JSON' });
        }
        if (!body || typeof body !== 'object') return json(res, 400, { error: 'bad JSON' });
        const { user, text } = body;
        if (typeof user !== 'string' || user === '') return json(res, 400, { error: 'user is required' });
        if (typeof text !== 'string' || text === '') return json(res, 400, { error: 'text is required' });
        if ([...user].length > 64) return json(res, 400, { error: 'user is too long' });
        if ([...text].length > 2000) return json(res, 400, { error: 'text is too long' });
        const id = ++reqSeq;
        pending.set(id, res);
        res.on('close', () => pending.delete(id));
        process.send({ t: 'post', user, text, req: id });
      });
      return;
    }
    if (req.method !== 'GET') return json(res, 405, { error: 'method not allowed' });

    if (path === '/events') {
      let from = sinceParam();
      const h = req.headers['last-event-id'];
      if (h !== undefined && /^\d+$/.test(h.trim())) from = parseInt(h, 10);
      res.writeHead(200, {
        'Content-Type': 'text/event-stream',
        'Cache-Control': 'no-cache',
        Connection: 'keep-alive',
      });
      const backlog = since(from);
      if (backlog.length) res.write(backlog.map((k) => k.sse).join(''));
      else res.flushHeaders();
      sse.add(res);
      const ping = setInterval(() => res.write(': ping\n\n'), PING_SECONDS * 1000);
      res.on('close', () => {
        clearInterval(ping);
        sse.delete(res);
      });
      return;
    }
    if (path === '/messages') return sendList(res, since(sinceParam()));
    if (path === '/poll') {
      const n = sinceParam();
      const items = since(n);
      if (items.length) return sendList(res, items);
      const p = { since: n, res, timer: null };
      p.timer = setTimeout(() => {
        polls = polls.filter((x) => x !== p);
        if (!res.destroyed) sendList(res, []);
      }, POLL_SECONDS * 1000);
      res.on('close', () => {
        clearTimeout(p.timer);
        polls = polls.filter((x) => x !== p);
      });
      polls.push(p);
      return;
    }
    json(res, 404, { error: 'not found' });
  });
  server.keepAliveTimeout = 65000;
  server.listen(PORT, '127.0.0.1', () => process.send({ t: 'ready' }));
}
