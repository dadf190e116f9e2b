// bench/db/pg_node.js: the Node.js contestant of bench/db/pg-run: `cluster` + `http` + `pg` (npm),
// N workers, each with a pg.Pool of PG_POOL connections. GET /item/N answers the JSON of row N of
// bench_items, one primary-key SELECT.
//   PG_HOST=dir PG_PORT=port PG_POOL=8 NODE_PATH=.../node_modules node pg_node.js PORT WORKERS
'use strict';
const cluster = require('node:cluster');
const http = require('node:http');

const port = Number(process.argv[2] || 8080);
const workers = Number(process.argv[3] || 2);

if (cluster.isPrimary) {
  let ready = 0;
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on('listening', () => {
    if (++ready === workers) console.log(`node cluster listening on ${port} with ${workers} workers`);
  });
  const stop = () => { for (const id in cluster.workers) cluster.workers[id].process.kill('SIGTERM'); process.exit(0); };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  const { Pool } = require('pg');
  const pool = new Pool({ host: process.env.PG_HOST, port: Number(process.env.PG_PORT), user: 'postgres',
    database: 'postgres', max: Number(process.env.PG_POOL || 8) });
  const SQL = 'SELECT id, title, n FROM bench_items WHERE id = $1';
  http.createServer((req, res) => {
    const id = req.url.startsWith('/item/') ? Number(req.url.slice(6)) : NaN;
    if (!Number.isInteger(id)) { res.writeHead(404); res.end('no such route\n'); return; }
    pool.query(SQL, [id]).then((r) => {
      if (!r.rows[0]) { res.writeHead(404); res.end('no such item\n'); return; }
      const body = JSON.stringify(r.rows[0]);
      res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
      res.end(body);
    }, (err) => { res.writeHead(500); res.end(String(err.message) + '\n'); });
  }).listen(port, '127.0.0.1');
}
