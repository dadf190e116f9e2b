#!/usr/bin/env node
// bench/crowd/collect.js LABEL OUTDIR PROCS POST_JSON MERGE_JSON key=value...: one contestant's line of
// bench/crowd/run's results.jsonl: the client processes' RESULT lines summed (OUTDIR/LABEL-P.out), the
// publisher's and the merged latencies, and the measurements the run took (RSS in KB, sockstat in pages,
// ss as "sockets bytes", CPU in clock ticks) turned into per-connection and per-delivery figures.
'use strict';
const fs = require('fs');
const [label, dir, procs, postJson, mergeJson, ...kv] = process.argv.slice(2);
const m = Object.fromEntries(kv.map((s) => [s.slice(0, s.indexOf('=')), s.slice(s.indexOf('=') + 1)]));
const j = { label, proto: m.proto, workers: +m.workers, rate: +m.rate };
const sums = ['clients', 'connected', 'conn_errors', 'non_ok', 'dropped', 'expected', 'received', 'lost', 'repeats',
  'skipped', 'foreign', 'complete_streams'];
for (const k of sums) j[k] = 0;
let missing = 0;
for (let p = 0; p < +procs; p++) {
  let line = '';
  try { line = fs.readFileSync(`${dir}/${label}-${p}.out`, 'utf8').split('\n').find((l) => l.startsWith('RESULT ')); } catch (e) { /* none */ }
  if (!line) { missing++; continue; }
  const r = JSON.parse(line.slice(7));
  for (const k of sums) j[k] += r[k];
  j.messages = r.messages;
  j.clients_cpu_s = +((j.clients_cpu_s || 0) + r.cpu_s).toFixed(2);
  j.per_stream_min = Math.min(j.per_stream_min ?? Infinity, r.per_stream_min);
}
if (missing) j.error = `${missing} client process(es) gave no result`;
try { Object.assign(j, JSON.parse(postJson)); } catch (e) { j.error = 'the publisher gave no result'; }
// every stream is owed every message that was published: posts that failed are not its loss
if (typeof j.post_ok === 'number') { j.expected = j.connected * j.post_ok; j.lost = Math.max(0, j.expected - j.received); }
try { Object.assign(j, JSON.parse(mergeJson)); } catch (e) { /* no latencies */ }
const pair = (s) => (s || '0 0').split(' ').map(Number);
const [w0, m0] = pair(m.rss0), [w1, m1] = pair(m.rss1), [w2, m2] = pair(m.rss2);
const conns = j.connected || 1, pageKB = 4;
const fix = (x, d = 2) => +x.toFixed(d);
Object.assign(j, {
  rss_idle_kb: w0, rss_connected_kb: w1, rss_end_kb: w2, master_rss_kb: m2 || m1,
  rss_mb: fix(w2 / 1024, 1),
  user_kb_per_conn: fix((Math.max(w1, w2) - w0) / conns),
  sockstat_pages: [+m.sk0, +m.sk1, +m.sk2],
  kernel_kb_per_conn: fix((+m.sk1 - +m.sk0) * pageKB / conns),
  slab_kb_per_conn: fix((+m.slab1 - +m.slab0) / conns),
  server_sockets: pair(m.ss1)[0],
  server_sock_kb_per_conn: fix(pair(m.ss1)[1] / 1024 / conns, 3),
  cpu_s: fix(+m.cpu_ticks / +m.hz),
  server_alive_at_end: m.alive === 'true',
  fds_per_worker: m.fds.trim(),
  loadavg_before: +m.load, loadavg_after: +m.load_after,
});
j.cpu_us_per_delivery = j.received ? fix(j.cpu_s * 1e6 / j.received) : null;
console.log(JSON.stringify(j));
