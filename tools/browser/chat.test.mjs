// tools/browser/chat.test.mjs -- headless-browser test of the comet chat (examples/chat).
//
// Run by tools/browser-test, which starts the server and sets:
//   CHAT_URL         base URL of the running chat server (required), e.g. http://127.0.0.1:40123
//   SCREENSHOT_DIR   where chat-a.png / chat-b.png / chat-poll.png go (default: build/browser)
//   CHROMIUM         the browser binary (default: /usr/bin/chromium)
//   TEST_TIMEOUT_MS  per wait (default: 10000)
//   WORKER_PIDS, MASTER_PID  the server's processes (the worker-death and reload tests need them)
// Prints "ok - NAME" / "not ok - NAME" per test case and ends with one line
// "N passed, N failed, N skipped"; exits 1 when anything failed.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

const BASE = (process.env.CHAT_URL || '').replace(/\/+$/, '');
const SHOTS = process.env.SCREENSHOT_DIR || 'build/browser';
const EXE = process.env.CHROMIUM || '/usr/bin/chromium';
const WAIT = Number(process.env.TEST_TIMEOUT_MS || 10000);
const RUN = `${process.pid}-${Date.now().toString(36)}`;  // makes every text unique to this run

let passed = 0, failed = 0, skipped = 0;
const pageErrors = [];   // uncaught exceptions in any page: a test of their own at the end

function log(...a) { console.log(...a); }

// test(name, fn): runs fn, counts it; a failure prints the error (and never throws further)
async function test(name, fn, { skip } = {}) {
  if (skip) { skipped++; log(`ok - ${name} # SKIP ${skip}`); return false; }
  const t0 = Date.now();
  try {
    await fn();
    passed++;
    log(`ok - ${name} (${Date.now() - t0} ms)`);
    return true;
  } catch (err) {
    failed++;
    log(`not ok - ${name} (${Date.now() - t0} ms)`);
    log(String(err && err.stack || err).split('\n').map((l) => '    ' + l).join('\n'));
    return false;
  }
}

function assert(cond, msg) { if (!cond) throw new Error('assertion failed: ' + msg); }

// the <li> of the message whose text is exactly `text`
function messageItem(page, text) {
  return page.locator('[data-testid="message-list"] > li[data-testid="message"]').filter({
    has: page.locator('[data-testid="message-text"]', { hasText: new RegExp('^' + escapeRe(text) + '$') }),
  });
}
function escapeRe(s) { return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'); }

async function waitForMessage(page, text, who) {
  try {
    await messageItem(page, text).first().waitFor({ state: 'attached', timeout: WAIT });
  } catch (err) {
    const state = await page.getAttribute('[data-testid="status"]', 'data-state').catch(() => '?');
    throw new Error(`${who} did not show the message ${JSON.stringify(text)} within ${WAIT} ms ` +
                    `(status: ${state})`);
  }
}

async function countOf(page, text) { return messageItem(page, text).count(); }

async function idsOf(page) {
  return page.$$eval('[data-testid="message-list"] > li[data-testid="message"]',
    (lis) => lis.map((li) => Number(li.getAttribute('data-id'))));
}
function assertOrderedUnique(ids, who) {
  for (let i = 1; i < ids.length; i++) {
    assert(ids[i] > ids[i - 1], `${who}: message ids not strictly ascending at ${i}: ${ids.slice(Math.max(0, i - 3), i + 2)}`);
  }
}

async function waitForTransport(page, transport, who) {
  try {
    await page.waitForSelector(`[data-testid="status"][data-state="connected"][data-transport="${transport}"]`,
                               { timeout: WAIT });
  } catch (err) {
    const now = await page.getAttribute('[data-testid="status"]', 'data-transport').catch(() => '?');
    throw new Error(`${who}: not connected with ${transport} within ${WAIT} ms (transport: "${now}")`);
  }
}

async function waitForState(page, state, who) {
  try {
    await page.waitForSelector(`[data-testid="status"][data-state="${state}"]`, { timeout: WAIT });
  } catch (err) {
    const now = await page.getAttribute('[data-testid="status"]', 'data-state').catch(() => '?');
    throw new Error(`${who}: status did not become "${state}" within ${WAIT} ms (it is "${now}")`);
  }
}

// workersWithConnections(port, pids): which of pids hold an established TCP connection
// accepted on 127.0.0.1:port (from /proc/net/tcp and /proc/PID/fd)
function workersWithConnections(port, pids) {
  const inodes = new Set();
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try { text = fs.readFileSync(f, 'utf8'); } catch { continue; }
    for (const line of text.split('\n').slice(1)) {
      const c = line.trim().split(/\s+/);
      if (c.length < 10) continue;
      const localPort = parseInt(c[1].split(':').pop(), 16);
      if (localPort === port && c[3] === '01') inodes.add(c[9]);
    }
  }
  return pids.filter((pid) => {
    let fds = [];
    try { fds = fs.readdirSync(`/proc/${pid}/fd`); } catch { return false; }
    return fds.some((fd) => {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
        return m && inodes.has(m[1]);
      } catch { return false; }
    });
  });
}

// a loopback port where nothing listens (bound, then closed): connecting to it is refused
function refusedPort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

// noWebSocket: the page has no WebSocket (it must use what comes next); refuseWebSocket: its
// WebSockets go to a port where nothing listens (the connection is refused)
async function openPage(browser, label, { viewport, noEventSource, noWebSocket, refuseWebSocket, route } = {}) {
  const context = await browser.newContext({ viewport: viewport || { width: 1100, height: 760 } });
  const page = await context.newPage();
  if (noEventSource) await page.addInitScript(() => { delete window.EventSource; });
  if (noWebSocket) await page.addInitScript(() => { delete window.WebSocket; });
  else {
    const refuse = refuseWebSocket ? await refusedPort() : 0;
    // every page records the URLs it opens WebSockets to and their close codes
    await page.addInitScript((refusePort) => {
      const Real = window.WebSocket;
      window.__wsUrls = [];
      window.__wsCloses = [];
      window.WebSocket = function (url, protocols) {
        window.__wsUrls.push(String(url));
        const sock = new Real(refusePort ? String(url).replace(/^(wss?:\/\/)[^/]+/, '$1127.0.0.1:' + refusePort) : url,
                              protocols);
        sock.addEventListener('close', (ev) => window.__wsCloses.push(ev.code));
        return sock;
      };
      window.WebSocket.prototype = Real.prototype;
    }, refuse);
  }
  if (route) await page.route(route.url, route.handler);
  page.on('pageerror', (err) => pageErrors.push(`${label}: ${err && err.message || err}`));
  page.on('console', (msg) => { if (msg.type() === 'error') log(`    [${label} console] ${msg.text()}`); });
  await page.goto(BASE + '/', { waitUntil: 'domcontentloaded', timeout: WAIT });
  return { context, page };
}

async function join(page, name) {
  await page.fill('[data-testid="name-input"]', name, { timeout: WAIT });
  await page.click('[data-testid="join-button"]', { timeout: WAIT });
  await page.waitForSelector('[data-testid="message-input"]', { state: 'visible', timeout: WAIT });
}

async function send(page, text) {
  await page.fill('[data-testid="message-input"]', text, { timeout: WAIT });
  await page.click('[data-testid="send-button"]', { timeout: WAIT });
}

async function main() {
  if (!BASE) { console.error('chat.test.mjs: CHAT_URL is not set'); process.exit(2); }
  fs.mkdirSync(SHOTS, { recursive: true });

  let browser;
  const launched = await test('chromium starts headless', async () => {
    browser = await chromium.launch({
      executablePath: EXE,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
             '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      timeout: 60000,
    });
    log(`    chromium ${browser.version()}`);
  });
  if (!launched) return;

  const nameA = `Ada ${RUN.slice(-4)}`;
  const nameB = `Bob ${RUN.slice(-4)}`;
  let A, B;
  try {
    await test('the page loads: static files, name form, status', async () => {
      A = await openPage(browser, 'A', { viewport: { width: 1100, height: 760 } });
      B = await openPage(browser, 'B', { viewport: { width: 400, height: 760 } });   // phone-sized
      for (const [p, who] of [[A.page, 'A'], [B.page, 'B']]) {
        await p.waitForSelector('[data-testid="name-input"]', { state: 'visible', timeout: WAIT });
        assert(await p.title() === 'moonfork chat', `${who}: title is ${JSON.stringify(await p.title())}`);
        const bg = await p.$eval('body', (b) => getComputedStyle(b).backgroundColor);
        assert(bg && bg !== 'rgba(0, 0, 0, 0)', `${who}: style.css not applied (body background ${bg})`);
      }
      await A.page.screenshot({ path: path.join(SHOTS, 'chat-join.png') });
    });

    await test('A and B join and connect with WebSocket', async () => {
      await join(A.page, nameA);
      await join(B.page, nameB);
      await waitForTransport(A.page, 'websocket', 'A');
      await waitForTransport(B.page, 'websocket', 'B');
      const shown = await A.page.textContent('[data-testid="current-user"]');
      assert(shown === nameA, `A's name shown as ${JSON.stringify(shown)}`);
    });

    const fromA = `hello from A ${RUN}`;
    await test('A posts; B shows it; A shows it once', async () => {
      await send(A.page, fromA);
      await waitForMessage(B.page, fromA, 'B');
      await waitForMessage(A.page, fromA, 'A');
      assert(await countOf(A.page, fromA) === 1, `A shows its message ${await countOf(A.page, fromA)} times`);
      assert(await countOf(B.page, fromA) === 1, `B shows A's message ${await countOf(B.page, fromA)} times`);
      const user = await messageItem(B.page, fromA).locator('[data-testid="message-user"]').textContent();
      assert(user === nameA, `B shows the author as ${JSON.stringify(user)}`);
      const box = await A.page.inputValue('[data-testid="message-input"]');
      assert(box === '', `A's message box not cleared after sending: ${JSON.stringify(box)}`);
    });

    const fromB = `reply from B ${RUN}`;
    await test('B replies; A sees it; still no duplicates, ids in order', async () => {
      await send(B.page, fromB);
      await waitForMessage(A.page, fromB, 'A');
      await waitForMessage(B.page, fromB, 'B');
      // A's stream has delivered B's later reply, so it has delivered A's own message too
      for (const [p, who] of [[A.page, 'A'], [B.page, 'B']]) {
        assert(await countOf(p, fromA) === 1, `${who} shows A's message ${await countOf(p, fromA)} times`);
        assert(await countOf(p, fromB) === 1, `${who} shows B's reply ${await countOf(p, fromB)} times`);
        assertOrderedUnique(await idsOf(p), who);
      }
      const idA = Number(await messageItem(A.page, fromA).getAttribute('data-id'));
      const idB = Number(await messageItem(A.page, fromB).getAttribute('data-id'));
      assert(idB > idA, `reply id ${idB} not after ${idA}`);
    });

    const html = `<b>bold</b><img src=x onerror="window.__xss=1"> ${RUN}`;
    await test('message text is shown as text, not HTML', async () => {
      await send(A.page, html);
      await waitForMessage(B.page, html, 'B');
      const item = messageItem(B.page, html);
      assert(await item.locator('b, img').count() === 0, 'markup from a message was rendered as HTML');
      assert(!(await B.page.evaluate(() => window.__xss)), 'script from a message ran');
    });

    await test('a 400 answer shows the server\'s error text', async () => {
      // 2,001 characters: more than the server accepts (set directly: the textarea's maxlength
      // would stop typing)
      await A.page.$eval('[data-testid="message-input"]', (t) => { t.value = 'x'.repeat(2001); });
      const [resp] = await Promise.all([
        A.page.waitForResponse((r) => r.url().endsWith('/messages') && r.request().method() === 'POST',
                               { timeout: WAIT }),
        A.page.click('[data-testid="send-button"]', { timeout: WAIT }),
      ]);
      assert(resp.status() === 400, `POST of 2,001 characters answered ${resp.status()}, expected 400`);
      const body = await resp.json().catch(() => ({}));
      await A.page.waitForFunction(() => {
        const e = document.querySelector('[data-testid="error"]');
        return e && e.textContent.trim() !== '';
      }, null, { timeout: WAIT });
      const shown = (await A.page.textContent('[data-testid="error"]')).trim();
      assert(!body.error || shown === body.error, `error shown as ${JSON.stringify(shown)}, server said ${JSON.stringify(body.error)}`);
      await A.page.fill('[data-testid="message-input"]', '');
    });

    await test('the name is remembered after a reload', async () => {
      await A.page.reload({ waitUntil: 'domcontentloaded' });
      await A.page.waitForSelector('[data-testid="message-input"]', { state: 'visible', timeout: WAIT });
      const shown = await A.page.textContent('[data-testid="current-user"]');
      assert(shown === nameA, `after reload the name is ${JSON.stringify(shown)}`);
      // history comes back, once each
      await waitForMessage(A.page, fromB, 'A (reloaded)');
      assert(await countOf(A.page, fromA) === 1, 'A (reloaded) shows its message twice');
      assertOrderedUnique(await idsOf(A.page), 'A (reloaded)');
      await waitForState(A.page, 'connected', 'A (reloaded)');
    });

    await test('screenshots saved (chat-a.png, chat-b.png)', async () => {
      await A.page.screenshot({ path: path.join(SHOTS, 'chat-a.png') });
      await B.page.screenshot({ path: path.join(SHOTS, 'chat-b.png') });
      for (const f of ['chat-a.png', 'chat-b.png']) {
        assert(fs.statSync(path.join(SHOTS, f)).size > 1000, `${f} is (nearly) empty`);
      }
    });

    await test('when the WebSocket endpoint is refused, the page falls back to Server-Sent Events', async () => {
      const W = await openPage(browser, 'W', { viewport: { width: 800, height: 640 }, refuseWebSocket: true });
      try {
        await join(W.page, `Wes ${RUN.slice(-4)}`);
        await waitForTransport(W.page, 'sse', 'W');
        const urls = await W.page.evaluate(() => window.__wsUrls);
        assert(urls.length >= 1 && /\/ws\?since=/.test(urls[0]), `the page tried no WebSocket first: ${JSON.stringify(urls)}`);
        await waitForMessage(W.page, fromB, 'W');
        const live = `while W uses SSE ${RUN}`;
        await send(A.page, live);
        await waitForMessage(W.page, live, 'W');
        assert(await countOf(W.page, live) === 1, 'W shows the message twice');
        assertOrderedUnique(await idsOf(W.page), 'W');
      } finally {
        await W.context.close().catch(() => {});
      }
    });

    await test('without WebSocket and EventSource the page long-polls and still receives and sends', async () => {
      const C = await openPage(browser, 'C', { viewport: { width: 800, height: 640 }, noEventSource: true,
                                               noWebSocket: true });
      try {
        assert(await C.page.evaluate(() => typeof window.EventSource) === 'undefined', 'EventSource still there');
        await join(C.page, `Cy ${RUN.slice(-4)}`);
        await waitForState(C.page, 'polling', 'C');
        // history arrives by polling too
        await waitForMessage(C.page, fromB, 'C');
        const live = `while C long-polls ${RUN}`;
        await send(A.page, live);
        await waitForMessage(C.page, live, 'C');
        assert(await countOf(C.page, live) === 1, 'C shows the message twice');
        const fromC = `sent by the long-polling page ${RUN}`;
        await send(C.page, fromC);
        await waitForMessage(A.page, fromC, 'A');
        await waitForMessage(C.page, fromC, 'C');
        assert(await countOf(C.page, fromC) === 1, 'C shows its own message twice');
        assertOrderedUnique(await idsOf(C.page), 'C');
        const text = await C.page.textContent('[data-testid="status"]');
        assert(/long polling/i.test(text), `status text is ${JSON.stringify(text)}`);
        await C.page.screenshot({ path: path.join(SHOTS, 'chat-poll.png') });
      } finally {
        await C.context.close().catch(() => {});
      }
    });

    await test('without WebSocket, when /events fails before it opens, the page falls back to long polling', async () => {
      const D = await openPage(browser, 'D', {
        viewport: { width: 800, height: 640 }, noWebSocket: true,
        route: { url: '**/events*', handler: (r) => r.fulfill({ status: 503, body: 'unavailable' }) },
      });
      try {
        await join(D.page, `Dee ${RUN.slice(-4)}`);
        await waitForState(D.page, 'polling', 'D');
        const live = `while D long-polls ${RUN}`;
        await send(B.page, live);
        await waitForMessage(D.page, live, 'D');
        assert(await countOf(D.page, live) === 1, 'D shows the message twice');
      } finally {
        await D.context.close().catch(() => {});
      }
    });

    const workers = (process.env.WORKER_PIDS || '').split(/[\s,]+/).filter(Boolean).map(Number);
    await test('a stream cut by a worker\'s death reconnects and gets what it missed, once', async () => {
      // only E may hold connections now, so that the worker serving its stream can be found
      await A.context.close(); A = null;
      await B.context.close(); B = null;
      const E = await openPage(browser, 'E', { viewport: { width: 800, height: 640 } });
      try {
        await E.page.evaluate(() => {
          const s = document.querySelector('[data-testid="status"]');
          window.__states = [s.getAttribute('data-state')];
          new MutationObserver(() => window.__states.push(s.getAttribute('data-state')))
            .observe(s, { attributes: true, attributeFilter: ['data-state'] });
        });
        await join(E.page, `Eve ${RUN.slice(-4)}`);
        await waitForState(E.page, 'connected', 'E');
        await waitForMessage(E.page, fromB, 'E');
        const before = (await idsOf(E.page)).length;
        // the worker holding E's connections (its idle keep-alive ones close after a few seconds)
        const port = Number(new URL(BASE).port);
        let owners = [];
        const deadline = Date.now() + 20000;
        for (;;) {
          owners = workersWithConnections(port, workers);
          if (owners.length === 1) break;
          if (Date.now() > deadline) throw new Error(`E's connections are held by workers ${JSON.stringify(owners)}`);
          await new Promise((r) => setTimeout(r, 200));
        }
        log(`    E's stream is on worker ${owners[0]}: SIGKILL`);
        process.kill(owners[0], 'SIGKILL');
        await E.page.waitForFunction(() => window.__states.includes('reconnecting'), null, { timeout: WAIT });
        // a message posted while E is away
        const missed = `posted while E reconnects ${RUN}`;
        const res = await fetch(BASE + '/messages', {
          method: 'POST', headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ user: 'node', text: missed }),
        });
        assert(res.status === 201, `POST answered ${res.status}`);
        await waitForMessage(E.page, missed, 'E');
        await waitForState(E.page, 'connected', 'E');
        assert(await countOf(E.page, missed) === 1, 'E shows the missed message twice');
        const ids = await idsOf(E.page);
        assertOrderedUnique(ids, 'E');
        assert(ids.length === before + 1, `E shows ${ids.length} messages, expected ${before + 1}`);
      } finally {
        await E.context.close().catch(() => {});
      }
    }, { skip: workers.length < 2 ? 'WORKER_PIDS not set' : (!fs.existsSync('/proc/net/tcp') ? 'no /proc/net/tcp' : undefined) });

    const master = Number(process.env.MASTER_PID || 0);
    await test('a reload closes the page\'s WebSocket with 1001; it reconnects with its last id and misses nothing', async () => {
      const F = await openPage(browser, 'F', { viewport: { width: 800, height: 640 } });
      try {
        await join(F.page, `Fay ${RUN.slice(-4)}`);
        await waitForTransport(F.page, 'websocket', 'F');
        await waitForMessage(F.page, fromB, 'F');
        const before = (await idsOf(F.page)).length;
        const opened = (await F.page.evaluate(() => window.__wsUrls)).length;
        process.kill(master, 'SIGHUP');
        await F.page.waitForFunction(() => window.__wsCloses.includes(1001), null, { timeout: 3 * WAIT });
        const missed = `posted during the reload ${RUN}`;
        const res = await fetch(BASE + '/messages', {
          method: 'POST', headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ user: 'node', text: missed }),
        });
        assert(res.status === 201, `POST answered ${res.status}`);
        await waitForMessage(F.page, missed, 'F');
        await waitForTransport(F.page, 'websocket', 'F');
        const urls = await F.page.evaluate(() => window.__wsUrls);
        assert(urls.length > opened, 'F did not open a new WebSocket');
        assert(!/since=0$/.test(urls[urls.length - 1]), `F reconnected without its last id: ${urls[urls.length - 1]}`);
        assert(await countOf(F.page, missed) === 1, 'F shows the message twice');
        const ids = await idsOf(F.page);
        assertOrderedUnique(ids, 'F');
        assert(ids.length === before + 1, `F shows ${ids.length} messages, expected ${before + 1}`);
      } finally {
        await F.context.close().catch(() => {});
      }
    }, { skip: master ? undefined : 'MASTER_PID not set' });

    await test('no uncaught JavaScript errors in the pages', async () => {
      assert(pageErrors.length === 0, pageErrors.join('; '));
    });
  } finally {
    if (A) await A.context.close().catch(() => {});
    if (B) await B.context.close().catch(() => {});
    await browser.close().catch(() => {});
  }
}

const watchdog = setTimeout(() => {
  failed++;
  log('not ok - the browser test finished in time (killed after 180 s)');
  log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
  process.exit(1);
}, 180000);

main()
  .catch((err) => { failed++; log('not ok - test script crashed'); log('    ' + (err && err.stack || err)); })
  .finally(() => {
    clearTimeout(watchdog);
    log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
    process.exit(failed > 0 ? 1 : 0);
  });
