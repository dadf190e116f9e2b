// spec/node/ws_idle.js -- opens N idle WebSockets to ws://127.0.0.1:PORT/PATH and holds them until
// stdin closes (tools/ws-idle-memory measures the worker meanwhile). Prints "open N" once all are.
//   node ws_idle.js PORT PATH N [deflate]
'use strict';
const WebSocket = require('ws');
const [port, path, n, deflate] = process.argv.slice(2);
const all = [];
let open = 0;
function one(i) {
  if (i >= +n) return;
  const ws = new WebSocket(`ws://127.0.0.1:${port}${path}`, { perMessageDeflate: deflate === 'deflate' });
  ws.on('open', () => {
    if (++open === +n) console.log(`open ${open}`);
    one(i + 1); // one at a time: no crowd at accept
  });
  ws.on('error', (e) => { console.log(`error ${e.message}`); process.exit(1); });
  all.push(ws);
}
one(0);
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
