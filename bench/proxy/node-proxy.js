// bench/proxy/node-proxy.js: the Node.js contestant of bench/proxy/run, the shape of the multi-node
// proxy: `cluster` with N workers, each proxying round robin over the upstreams with http.request and
// one keep-alive Agent per upstream (at most 64 idle sockets kept, as nginx's `keepalive 64`);
// hop-by-hop headers dropped both ways, X-Forwarded-For appended, bodies piped (with backpressure),
// 502 when an upstream fails before the response started.
//   node node-proxy.js PORT WORKERS HOST:PORT[,HOST:PORT...]
'use strict';
const cluster = require('node:cluster');
const http = require('node:http');

const port = Number(process.argv[2] || 8080);
const workers = Number(process.argv[3] || 2);
const upstreams = (process.argv[4] || '127.0.0.1:8081,127.0.0.1:8082').split(',').map((s) => {
  const i = s.lastIndexOf(':');
  return { host: s.slice(0, i), port: Number(s.slice(i + 1)) };
});

const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding',
  'upgrade', 'proxy-authenticate', 'proxy-authorization']);

function endToEnd(headers) {
  const out = {};
  const named = new Set();
  if (headers.connection) for (const t of headers.connection.split(',')) named.add(t.trim().toLowerCase());
  for (const k in headers) if (!HOP.has(k) && !named.has(k)) out[k] = headers[k];
  return out;
}

if (cluster.isPrimary) {
  let ready = 0;
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on('listening', () => {
    if (++ready === workers) console.log(`node proxy listening on ${port} with ${workers} workers`);
  });
  cluster.on('exit', (w, code, sig) => console.error(`node worker ${w.process.pid} exited (${code || sig})`));
  const stop = () => { for (const id in cluster.workers) cluster.workers[id].process.kill('SIGTERM'); process.exit(0); };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  for (const up of upstreams) up.agent = new http.Agent({ keepAlive: true, maxFreeSockets: 64 });
  let next = 0;
  const server = http.createServer((req, res) => {
    const up = upstreams[next];
    next = (next + 1) % upstreams.length;
    const headers = endToEnd(req.headers);
    const addr = req.socket.remoteAddress;
    headers['x-forwarded-for'] = headers['x-forwarded-for'] ? `${headers['x-forwarded-for']}, ${addr}` : addr;
    const preq = http.request({ host: up.host, port: up.port, method: req.method, path: req.url, headers,
      agent: up.agent }, (pres) => {
      res.writeHead(pres.statusCode, endToEnd(pres.headers));
      pres.pipe(res);
      pres.on('error', () => res.destroy());
    });
    preq.on('error', () => {
      if (res.headersSent) return res.destroy();
      res.writeHead(502, { 'Content-Type': 'text/plain', 'Content-Length': '16' });
      res.end('502 Bad Gateway\n');
    });
    req.pipe(preq);
  });
  server.keepAliveTimeout = 60000;
  server.listen(port, '127.0.0.1');
}
