// bench/db/node-redis.js: the Node.js peer of bench/db/redis_app.lua: a cluster of WORKERS processes,
// each with one ioredis client (ioredis pipelines the commands of concurrent requests on its one
// connection, as moonfork.redis does), answering GET bench:name per request. PORT, WORKERS,
// REDIS_PORT and IOREDIS (the directory holding node_modules/ioredis) from the environment.
const cluster = require("node:cluster");
const http = require("node:http");
const path = require("node:path");

const port = Number(process.env.PORT || 18092);
const workers = Number(process.env.WORKERS || 2);

if (cluster.isPrimary) {
  let ready = 0;
  for (let i = 0; i < workers; i++) {
    cluster.fork().on("listening", () => {
      if (++ready === workers) console.log(`listening on http://127.0.0.1:${port} with ${workers} workers`);
    });
  }
} else {
  const Redis = require(path.join(process.env.IOREDIS, "node_modules", "ioredis"));
  const redis = new Redis({ port: Number(process.env.REDIS_PORT), host: "127.0.0.1" });
  http.createServer((req, res) => {
    redis.get("bench:name").then((v) => {
      res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": Buffer.byteLength(v) });
      res.end(v);
    }, (err) => {
      res.writeHead(500);
      res.end("redis: " + err.message + "\n");
    });
  }).listen(port, "127.0.0.1");
}
