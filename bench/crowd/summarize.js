#!/usr/bin/env node
// bench/crowd/summarize.js results.jsonl: bench/crowd/run's table and issue 19's goals for the crowd:
// moonfork's memory per connection at most nchan's and a fifth of Node's, its p99 at most nchan's.
'use strict';
const fs = require('fs');
const rows = fs.readFileSync(process.argv[2], 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
const cols = [['connected', 'connected'], ['delivered', 'received'], ['lost', 'lost'], ['repeats', 'repeats'],
  ['skipped', 'skipped'], ['dropped', 'dropped'], ['p50 ms', 'p50_ms'], ['p99 ms', 'p99_ms'], ['max ms', 'max_ms'],
  ['workers RSS MB', 'rss_mb'], ['user KB/conn', 'user_kb_per_conn'], ['sockstat KB/conn', 'kernel_kb_per_conn'],
  ['slab KB/conn', 'slab_kb_per_conn'],
  ['server skmem KB/conn', 'server_sock_kb_per_conn'], ['CPU s', 'cpu_s'], ['CPU us/delivery', 'cpu_us_per_delivery'],
  ['clients CPU s', 'clients_cpu_s']];
const cell = (v) => (v === undefined || v === null ? '-' : String(v));
console.log('\n| contestant | ' + cols.map((c) => c[0]).join(' | ') + ' |');
console.log('|---|' + cols.map(() => '---:').join('|') + '|');
const by = {};
for (const r of rows) {
  by[r.label] = r;
  if (r.error && r.connected === undefined) { console.log(`| ${r.label} | ${r.error} |`); continue; }
  console.log(`| ${r.label} | ` + cols.map(([, k]) => cell(r[k])).join(' | ') + ' |');
}
for (const r of rows) {
  if (r.error && r.connected === undefined) continue;
  const bad = r.error || r.lost || r.repeats || r.skipped || r.dropped || r.connected !== r.clients;
  if (bad) console.log(`note: ${r.label}: ${r.error || ''} connected ${r.connected}/${r.clients}, lost ${r.lost}, ` +
    `repeats ${r.repeats}, skipped ${r.skipped}, streams dropped ${r.dropped}, failed POSTs ${r.post_fail}`);
  if (r.fds_per_worker) console.log(`${r.label}: open files per worker ${r.fds_per_worker}; POST round trip p50 ` +
    `${r.post_p50_ms} p99 ${r.post_p99_ms} ms; load average ${r.loadavg_before} -> ${r.loadavg_after}`);
}
const verdict = (ok) => (ok ? 'met' : 'NOT met');
const ok = (r) => r && !r.error;
const clean = (r) => r && !r.error && !r.lost && !r.repeats && !r.skipped && r.connected === r.clients;
// the goals, for each moonfork contestant of the run
for (const mf of ['moonfork', 'moonfork-ws', 'moonfork-wschan'].map((l) => by[l]).filter(Boolean)) {
  console.log('');
  console.log(`${mf.label}: every client got every message once, in order: ${verdict(clean(mf))}`);
  if (ok(by.nchan)) {
    console.log(`${mf.label}: memory per connection <= nchan's: ${mf.user_kb_per_conn} vs ${by.nchan.user_kb_per_conn} KB  ` +
      verdict(mf.user_kb_per_conn <= by.nchan.user_kb_per_conn));
    console.log(`${mf.label}: p99 <= nchan's: ${mf.p99_ms} vs ${by.nchan.p99_ms} ms  ${verdict(clean(mf) && typeof mf.p99_ms === 'number' && mf.p99_ms <= by.nchan.p99_ms)}`); // a run that lost messages has no p99 to compare (null <= x is true in JS)
  }
  if (ok(by.node)) console.log(`${mf.label}: memory per connection <= 1/5 of Node's: ${mf.user_kb_per_conn} vs ${by.node.user_kb_per_conn} KB ` +
    `(${(mf.user_kb_per_conn / by.node.user_kb_per_conn).toFixed(2)}x)  ${verdict(mf.user_kb_per_conn * 5 <= by.node.user_kb_per_conn)}`);
}
