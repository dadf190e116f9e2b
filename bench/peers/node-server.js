// bench/peers/node-server.js: the Node.js contestant, `cluster` + `http`, one primary and N workers
// (the primary accepts and hands connections round-robin, Node's default on Linux).
//   node node-server.js PORT WORKERS
// Same routes as bench/apps/server.lua: GET / hello, GET /json JSON.stringify of
// bench/lib/payload.json (parsed once), POST /echo the body echoed back.
'use strict';
const cluster = require('node:cluster');
const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');

const port = Number(process.argv[2] || 8080);
const workers = Number(process.argv[3] || 2);

if (cluster.isPrimary) {
  let ready = 0;
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on('listening', () => {
    if (++ready === workers) console.log(`node cluster listening on ${port} with ${workers} workers`);
  });
  cluster.on('exit', (w, code, sig) => console.error(`node worker ${w.process.pid} exited (${code || sig})`));
  const stop = () => { for (const id in cluster.workers) cluster.workers[id].process.kill('SIGTERM'); process.exit(0); };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  const payload = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'lib', 'payload.json'), 'utf8'));
  const hello = 'Hello, World!\n';
  const server = http.createServer((req, res) => {
    if (req.url === '/json') {
      const body = JSON.stringify(payload);
      res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
      res.end(body);
    } else if (req.url === '/echo') {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        const body = Buffer.concat(chunks);
        res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': body.length });
        res.end(body);
      });
    } else {
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': hello.length });
      res.end(hello);
    }
  });
  server.keepAliveTimeout = 60000;   // as nginx's keepalive_timeout and moonfork's --keepalive-timeout
  server.headersTimeout = 65000;
  server.listen(port, '127.0.0.1');
}
