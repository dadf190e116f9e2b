// spec/node/ws_client.js -- a real WebSocket client (the `ws` npm package) for spec/websocket_node_spec.lua.
//   node ws_client.js PORT SCENARIO   prints one JSON line with what happened, exits 0 (1 on a crash)
// Scenarios:
//   echo       /echo with perMessageDeflate and protocol "chat": text (small and large), binary, then close 1000
//   takeover   /echo with server_no_context_takeover, client_no_context_takeover, server_max_window_bits=10
//   toobig     /echo: a 70,000-byte message over maxPayload 64k; the close code the client gets
//   plain      /plain, perMessageDeflate offered but not taken: 100 messages in order
'use strict';
const WebSocket = require('ws');
const crypto = require('crypto');

const [port, scenario] = process.argv.slice(2);
const out = { scenario, messages: [] };
const done = () => { console.log(JSON.stringify(out)); process.exit(0); };
setTimeout(() => { out.error = 'timeout'; done(); }, 20000).unref();

function open(path, opts, protocols) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}${path}`, protocols || [], opts);
  ws.on('error', (e) => { out.error = e.message; });
  ws.on('close', (code, reason) => { out.close = { code, reason: reason.toString() }; done(); });
  ws.on('upgrade', (res) => { out.extensions = res.headers['sec-websocket-extensions'] || ''; });
  ws.on('open', () => { out.protocol = ws.protocol; });
  return ws;
}

// Sends each message after the previous echo came back; checks each echo is the same bytes.
function echoAll(ws, msgs, then) {
  let i = 0;
  const next = () => {
    if (i === msgs.length) return then();
    const m = msgs[i];
    ws.send(m.data, { binary: m.binary });
  };
  ws.on('message', (data, isBinary) => {
    const m = msgs[i++];
    out.messages.push({ same: Buffer.compare(Buffer.from(data), Buffer.from(m.data)) === 0, binary: isBinary, len: data.length });
    next();
  });
  ws.on('open', next);
}

const big = 'moonfork websocket '.repeat(2000); // 38 KB, compressible
if (scenario === 'echo' || scenario === 'takeover') {
  const pmd = scenario === 'echo' ? true
    : { serverNoContextTakeover: true, clientNoContextTakeover: true, serverMaxWindowBits: 10 };
  const ws = open('/echo', { perMessageDeflate: pmd, headers: { Origin: 'http://node.test' } }, ['chat']);
  const msgs = [{ data: 'hello' }, { data: big }, { data: crypto.randomBytes(5000), binary: true },
    { data: 'κόσμε 😀' }, { data: big }, { data: big + 'x' }];
  echoAll(ws, msgs, () => ws.close(1000, 'bye'));
} else if (scenario === 'toobig') {
  const ws = open('/echo', { perMessageDeflate: false });
  ws.on('open', () => ws.send(crypto.randomBytes(70000)));
} else if (scenario === 'plain') {
  const ws = open('/plain', { perMessageDeflate: true });
  const msgs = [];
  for (let k = 0; k < 100; k++) msgs.push({ data: `message ${k}` });
  echoAll(ws, msgs, () => ws.close(4001));
} else {
  out.error = 'unknown scenario';
  done();
}
