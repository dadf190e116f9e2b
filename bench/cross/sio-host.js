#!/usr/bin/env node
// bench/cross/sio-host.js: the Socket.IO contestant of the cross-host fan-out, one "host" of it.
//
// A Node cluster the usual way: the primary forks WORKERS workers (default 2) that share PORT; each
// runs Socket.IO (WebSocket transport only, so no sticky sessions are needed) with the Redis adapter
// (@socket.io/redis-adapter on node-redis 4: one publishing and one subscribing connection per
// worker), so io.emit() reaches the clients of every worker of every host that shares REDIS_URL.
// POST /messages {user,text} emits "message" {id,user,text,time} to everyone and answers 201 once the
// emit is handed to the adapter (it publishes to Redis without waiting: there is no acknowledgement
// to wait for, and no global id: id is this worker's own counter).
//
//   NODE_PATH=build-bench/cross-node/node_modules PORT=8080 WORKERS=2 REDIS_URL=redis://127.0.0.1:6379 \
//     node bench/cross/sio-host.js           -> prints "listening on PORT" once every worker is
'use strict';
const cluster = require('cluster');
const http = require('http');

const PORT = parseInt(process.env.PORT || '8080', 10);
const WORKERS = Math.max(1, parseInt(process.env.WORKERS || '2', 10));
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';

if (cluster.isPrimary) {
  let ready = 0;
  for (let i = 0; i < WORKERS; i++) {
    cluster.fork().on('message', (m) => {
      if (m === 'ready' && ++ready === WORKERS) console.log(`listening on ${PORT}`);
    });
  }
  cluster.on('exit', (w, code, sig) => {
    console.error(`worker ${w.process.pid} exited (${sig || code})`);
    process.exitCode = 1;
  });
  process.on('SIGTERM', () => { for (const w of Object.values(cluster.workers)) w.kill(); process.exit(0); });
} else {
  const { Server } = require('socket.io');
  const { createAdapter } = require('@socket.io/redis-adapter');
  const { createClient } = require('redis');
  let seq = 0;
  const server = http.createServer((req, res) => {
    if (req.method !== 'POST' || req.url !== '/messages') {
      if (req.url.startsWith('/socket.io/')) return; // Socket.IO's own handler answers
      res.writeHead(404).end();
      return;
    }
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let body;
      try { body = JSON.parse(Buffer.concat(chunks).toString()); } catch (e) { body = null; }
      if (!body || typeof body.user !== 'string' || typeof body.text !== 'string') {
        res.writeHead(400, { 'Content-Type': 'application/json' }).end('{"error":"user and text are required"}');
        return;
      }
      const id = `${process.pid}-${++seq}`;
      io.emit('message', { id, user: body.user, text: body.text, time: Date.now() / 1000 });
      res.writeHead(201, { 'Content-Type': 'application/json' }).end(JSON.stringify({ id }));
    });
  });
  const io = new Server(server, { transports: ['websocket'], serveClient: false });
  const pub = createClient({ url: REDIS_URL });
  const sub = pub.duplicate();
  for (const c of [pub, sub]) c.on('error', (e) => console.error(`redis: ${e.message}`));
  Promise.all([pub.connect(), sub.connect()]).then(() => {
    io.adapter(createAdapter(pub, sub));
    server.listen(PORT, '0.0.0.0', () => process.send('ready'));
  }, (e) => { console.error(`redis ${REDIS_URL}: ${e.message}`); process.exit(1); });
}
