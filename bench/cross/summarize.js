#!/usr/bin/env node
// bench/cross/summarize.js RESULTS.jsonl: the medians over the rounds of bench/cross/run, per
// contestant, and issue 16's targets: moonfork's p99 no higher than nchan's, at most half of
// Socket.IO's, with nothing lost, duplicated or reordered.
'use strict';
const fs = require('fs');
const rows = fs.readFileSync(process.argv[2], 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
const med = (a) => {
  a = a.filter((x) => typeof x === 'number').sort((x, y) => x - y);
  if (!a.length) return NaN;
  const m = a.length >> 1;
  return a.length % 2 ? a[m] : (a[m - 1] + a[m]) / 2;
};
const cols = [['deliveries/s', 'deliveries_per_s', 0], ['p50 ms', 'p50_ms', 2], ['p99 ms', 'p99_ms', 2],
  ['max ms', 'max_ms', 1], ['cross-host p99 ms', 'cross_p99_ms', 2], ['lost', 'lost', 0], ['dup', 'duplicates', 0],
  ['out-of-order', 'out_of_order', 0], ['order disagreements', 'order_disagreements', 0],
  ['hosts CPU s', 'hosts_cpu_s', 2], ['redis CPU s', 'redis_cpu_s', 2], ['CPU us/delivery', 'cpu_us_per_delivery', 2]];
const by = {};
for (const r of rows) (by[r.label] = by[r.label] || []).push(r);
const m = {};
console.log(`\nmedians over ${Math.max(...Object.values(by).map((a) => a.length))} rounds:`);
console.log('| contestant | ' + cols.map((c) => c[0]).join(' | ') + ' |');
console.log('|---|' + cols.map(() => '---:').join('|') + '|');
for (const [name, rs] of Object.entries(by)) {
  m[name] = {};
  const cells = cols.map(([, k, d]) => {
    const v = med(rs.map((r) => r[k]));
    m[name][k] = v;
    return isNaN(v) ? '-' : v.toFixed(d);
  });
  console.log(`| ${name} | ${cells.join(' | ')} |`);
}
// Reordered: two clients saw two messages in different orders (no one global order), or, when no post
// was sent before the one before it was answered, a client saw them out of the order they were posted.
const reordered = (r) => r.order_disagreements > 0 || (r.out_of_order > 0 && !r.overlapping_posts);
const clean = (name) => (by[name] || []).every((r) => !r.error && !r.lost && !r.duplicates && !reordered(r) &&
  r.connected === r.clients);
if (m.moonfork) {
  const mf = m.moonfork.p99_ms;
  if (m.nchan) console.log(`moonfork p99 / nchan p99 = ${(mf / m.nchan.p99_ms).toFixed(2)} (target <= 1: ` +
    `${mf <= m.nchan.p99_ms ? 'met' : 'NOT met'})`);
  if (m.sio) console.log(`moonfork p99 / Socket.IO p99 = ${(mf / m.sio.p99_ms).toFixed(2)} (target <= 0.5: ` +
    `${mf <= 0.5 * m.sio.p99_ms ? 'met' : 'NOT met'})`);
  console.log(`moonfork: nothing lost, duplicated or reordered in every round: ${clean('moonfork') ? 'yes' : 'NO'}`);
  // Round by round: the contestants of one round ran back to back, under much the same load.
  for (const [peer, goal] of [['nchan', 1], ['sio', 0.5]]) {
    if (!m[peer]) continue;
    const ratios = [];
    for (const r of by.moonfork) {
      const p = (by[peer] || []).find((x) => x.round === r.round);
      if (p && r.p99_ms && p.p99_ms) ratios.push(r.p99_ms / p.p99_ms);
    }
    const met = ratios.filter((x) => x <= goal).length;
    console.log(`round by round, moonfork p99 / ${peer} p99: ${ratios.map((x) => x.toFixed(2)).join(' ')} ` +
      `(median ${med(ratios).toFixed(2)}; <= ${goal} in ${met} of ${ratios.length})`);
  }
}
for (const r of rows) {
  if (r.error || r.lost || r.duplicates || r.out_of_order || r.order_disagreements || r.connected !== r.clients) {
    console.log(`note: round ${r.round} ${r.label}: ` + (r.error ? r.error : `connected ${r.connected}/${r.clients}, ` +
      `lost ${r.lost}, duplicates ${r.duplicates}, out-of-order ${r.out_of_order}, order disagreements ` +
      `${r.order_disagreements}, overlapping posts ${r.overlapping_posts}, failed POSTs ${r.post_fail}, ` +
      `streams closed ${r.dropped_streams}`));
  }
}
