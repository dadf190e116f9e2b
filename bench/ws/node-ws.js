// bench/ws/node-ws.js -- the Node contestant of the WebSocket benches: a cluster of W workers with
// npm's `ws`, the broadcast relayed through the primary (the way a Node cluster without Redis shares
// messages: worker -> process.send -> primary -> every worker).
//   node bench/ws/node-ws.js PORT [WORKERS]      (NODE_PATH must find `ws`; bench/ws/run sets it)
// Routes (same as bench/ws/app.lua): /echo sends every message back; /sub receives every message
// sent on /pub, by any client on any worker.
'use strict';
const cluster = require('cluster');
const http = require('http');
const port = Number(process.argv[2] || 8080);
const workers = Number(process.argv[3] || 2);

if (cluster.isPrimary) {
  const all = [];
  for (let i = 0; i < workers; i++) {
    const w = cluster.fork();
    all.push(w);
    w.on('message', (m) => { for (const o of all) o.send(m); });
  }
  let ready = 0;
  cluster.on('listening', () => {
    if (++ready === workers) console.log(`node-ws listening on http://127.0.0.1:${port} with ${workers} workers`);
  });
  process.on('SIGTERM', () => { for (const w of all) w.kill(); process.exit(0); });
} else {
  const { WebSocketServer } = require('ws');
  const subs = new Set();
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
  const server = http.createServer((req, res) => { res.writeHead(404); res.end(); });
  server.on('upgrade', (req, sock, head) => {
    const path = req.url.split('?')[0];
    if (path !== '/echo' && path !== '/sub' && path !== '/pub') { sock.destroy(); return; }
    wss.handleUpgrade(req, sock, head, (ws) => {
      if (path === '/echo') ws.on('message', (data, binary) => ws.send(data, { binary }));
      else if (path === '/sub') { subs.add(ws); ws.on('close', () => subs.delete(ws)); }
      else ws.on('message', (data) => process.send(data.toString()));
    });
  });
  process.on('message', (m) => { for (const ws of subs) ws.send(m); });
  server.listen(port, '127.0.0.1');
}
