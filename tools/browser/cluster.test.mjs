// tools/browser/cluster.test.mjs -- headless-browser test of the chat across two hosts
// (tools/cluster-demo: two network namespaces, one Redis, nginx in front).
//
// Run by tools/browser-test (as root), which brings the cluster up and sets:
//   CHAT_URL        nginx's URL, e.g. http://127.0.0.1:40123
//   CLUSTER_NS1/2   the hosts' network namespaces (to see which host holds a page's stream)
//   CLUSTER_TOOL, CLUSTER_DIR   tools/cluster-demo and its state directory (to kill a host)
//   CHROMIUM, SCREENSHOT_DIR, TEST_TIMEOUT_MS   as for chat.test.mjs
// Two pages whose event streams are held by different hosts chat with each other; then the host of
// one is SIGKILLed and the two still chat, each message shown once and in stream order.
// Prints "ok - NAME" / "not ok - NAME" per case and ends with "N passed, N failed, N skipped".
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const BASE = (process.env.CHAT_URL || '').replace(/\/+$/, '');
const SHOTS = process.env.SCREENSHOT_DIR || 'build/browser';
const EXE = process.env.CHROMIUM || '/usr/bin/chromium';
const WAIT = Number(process.env.TEST_TIMEOUT_MS || 10000);
const NS = { 1: process.env.CLUSTER_NS1, 2: process.env.CLUSTER_NS2 };
const RUN = `${process.pid}-${Date.now().toString(36)}`;

let passed = 0, failed = 0, skipped = 0;
const pageErrors = [];
const log = (...a) => console.log(...a);

async function test(name, fn) {
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
const sleepTick = (ms) => new Promise((r) => setTimeout(r, ms));

// established connections host n accepted on its port 8080 (nginx keeps none idle: these are streams)
function streamsOn(n) {
  try {
    const out = execFileSync('ip', ['netns', 'exec', NS[n], 'ss', '-Htn', 'state', 'established', '( sport = :8080 )'],
      { encoding: 'utf8' });
    return out.split('\n').filter((l) => l.trim()).length;
  } catch { return 0; }
}
// polls until the hosts hold `total` streams between them: { 1: n1, 2: n2 }
async function waitStreams(total) {
  const end = Date.now() + WAIT;
  for (;;) {
    const c = { 1: streamsOn(1), 2: streamsOn(2) };
    if (c[1] + c[2] === total || Date.now() > end) return c;
    await sleepTick(50);
  }
}

function messageItem(page, text) {
  return page.locator('[data-testid="message-list"] > li[data-testid="message"]').filter({
    has: page.locator('[data-testid="message-text"]', { hasText: new RegExp('^' + text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + '$') }),
  });
}
async function waitForMessage(page, text, who) {
  try {
    await messageItem(page, text).first().waitFor({ state: 'attached', timeout: WAIT });
  } catch {
    throw new Error(`${who} did not show ${JSON.stringify(text)} within ${WAIT} ms`);
  }
}
async function waitForState(page, state, who) {
  try {
    await page.waitForSelector(`[data-testid="status"][data-state="${state}"]`, { timeout: WAIT });
  } catch {
    const now = await page.getAttribute('[data-testid="status"]', 'data-state').catch(() => '?');
    throw new Error(`${who}: status did not become "${state}" (it is "${now}")`);
  }
}
// the page's ids, checked: stream ids ("ms-seq"), strictly ascending, no duplicate
async function checkIds(page, who) {
  const ids = await page.$$eval('[data-testid="message-list"] > li[data-testid="message"]',
    (lis) => lis.map((li) => li.getAttribute('data-id')));
  const parsed = ids.map((id) => {
    const m = /^(\d+)-(\d+)$/.exec(id);
    assert(m, `${who}: id ${id} is not a stream id`);
    return [Number(m[1]), Number(m[2])];
  });
  for (let i = 1; i < parsed.length; i++) {
    const [a, b] = [parsed[i - 1], parsed[i]];
    assert(b[0] > a[0] || (b[0] === a[0] && b[1] > a[1]), `${who}: ids not ascending at ${i}: ${ids.slice(i - 1, i + 1)}`);
  }
  return ids;
}

async function openPage(browser, label, name) {
  const context = await browser.newContext({ viewport: { width: 900, height: 700 } });
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(`${label}: ${err && err.message || err}`));
  await page.goto(BASE + '/', { waitUntil: 'domcontentloaded', timeout: WAIT });
  await page.fill('[data-testid="name-input"]', name, { timeout: WAIT });
  await page.click('[data-testid="join-button"]', { timeout: WAIT });
  await waitForState(page, 'connected', label);
  return { context, page };
}

async function send(page, text) {
  await page.fill('[data-testid="message-input"]', text, { timeout: WAIT });
  await page.click('[data-testid="send-button"]', { timeout: WAIT });
}

async function main() {
  if (!BASE || !NS[1] || !NS[2]) { console.error('cluster.test.mjs: CHAT_URL and CLUSTER_NS1/2 must be set'); process.exit(2); }
  fs.mkdirSync(SHOTS, { recursive: true });
  let browser, A, B, hostA, hostB;
  const launched = await test('cluster: chromium starts headless', async () => {
    browser = await chromium.launch({ executablePath: EXE, headless: true, timeout: 60000,
      args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'] });
  });
  if (!launched) return;
  try {
    await test('cluster: two pages through nginx have their streams on different hosts', async () => {
      A = await openPage(browser, 'A', `Ann ${RUN.slice(-4)}`);
      let c = await waitStreams(1);
      hostA = c[1] === 1 ? 1 : 2;
      assert(c[hostA] === 1, `A's stream is on no host (${JSON.stringify(c)})`);
      B = await openPage(browser, 'B', `Ben ${RUN.slice(-4)}`);
      // nginx picks the host, round robin; reload B until its stream is on the other one. A page load
      // makes a fixed number of requests, so when that number is even B's stream lands on A's host
      // every time: one request of our own between reloads moves nginx's turn on by one.
      for (let i = 0; i < 20 && (c = await waitStreams(2))[3 - hostA] === 0; i++) {
        await fetch(BASE + '/', { cache: 'no-store' }).then((r) => r.text()).catch(() => {});
        await B.page.reload({ waitUntil: 'domcontentloaded' });
        await waitForState(B.page, 'connected', 'B');
      }
      hostB = 3 - hostA;
      assert(c[hostB] === 1 && c[hostA] === 1, `B's stream never landed on host ${hostB}: ${JSON.stringify(c)}`);
      log(`    A's stream on host ${hostA}, B's on host ${hostB}`);
    });

    await test('cluster: the pages chat across hosts, each message once, in stream order', async () => {
      const a1 = `from A on host ${hostA} ${RUN}`, b1 = `from B on host ${hostB} ${RUN}`;
      await send(A.page, a1);
      await waitForMessage(B.page, a1, 'B');
      await send(B.page, b1);
      await waitForMessage(A.page, b1, 'A');
      await waitForMessage(B.page, b1, 'B');
      for (const [p, who] of [[A.page, 'A'], [B.page, 'B']]) {
        assert(await messageItem(p, a1).count() === 1, `${who} shows A's message twice`);
        assert(await messageItem(p, b1).count() === 1, `${who} shows B's message twice`);
      }
      const ia = await checkIds(A.page, 'A'), ib = await checkIds(B.page, 'B');
      assert(JSON.stringify(ia) === JSON.stringify(ib), `A and B show different ids: ${ia} / ${ib}`);
      await A.page.screenshot({ path: path.join(SHOTS, 'cluster-a.png') });
      await B.page.screenshot({ path: path.join(SHOTS, 'cluster-b.png') });
    });

    await test('cluster: a post whose answer is lost is sent again with its key and stored once', async () => {
      let lost = 0, posts = 0;
      const keys = [];
      await A.page.route('**/messages', async (route) => {
        if (route.request().method() !== 'POST') return route.continue();
        posts++;
        keys.push(JSON.parse(route.request().postData() || '{}').key);
        if (lost === 0) {
          lost++;
          await route.fetch();                     // the server stores it...
          return route.abort('connectionreset');   // ...and the page never hears back
        }
        return route.continue();
      });
      const t = `answer lost ${RUN}`;
      await send(A.page, t);
      await waitForMessage(B.page, t, 'B');
      await waitForMessage(A.page, t, 'A');
      // the page sends it again (same key) and, answered, empties the input
      await A.page.waitForFunction(() => document.querySelector('[data-testid="message-input"]').value === '',
        null, { timeout: WAIT });
      await A.page.unroute('**/messages');
      assert(lost === 1 && posts === 2, `${posts} posts went out, expected the first and one retry`);
      assert(keys[0] && keys[0] === keys[1], `the retry's key ${keys[1]} is not the first's ${keys[0]}`);
      const err = (await A.page.textContent('[data-testid="error"]').catch(() => '')).trim();
      assert(!err, `A shows an error: ${err}`);
      for (const [p, who] of [[A.page, 'A'], [B.page, 'B']]) {
        assert(await messageItem(p, t).count() === 1, `${who} shows the retried message ${await messageItem(p, t).count()} times`);
      }
      const ia = await checkIds(A.page, 'A'), ib = await checkIds(B.page, 'B');
      assert(ia.length === 3 && JSON.stringify(ia) === JSON.stringify(ib), `A and B show ${ia} / ${ib}`);
    });

    await test('cluster: B\'s host is SIGKILLed; B reconnects through nginx and the chat goes on', async () => {
      execFileSync(process.env.CLUSTER_TOOL, ['--dir', process.env.CLUSTER_DIR, 'host-kill', String(hostB)]);
      const a2 = `A after host ${hostB} died ${RUN}`, b2 = `B after host ${hostB} died ${RUN}`;
      await send(A.page, a2);
      await waitForMessage(A.page, a2, 'A');
      await waitForMessage(B.page, a2, 'B');
      await waitForState(B.page, 'connected', 'B');
      await send(B.page, b2);
      await waitForMessage(A.page, b2, 'A');
      await waitForMessage(B.page, b2, 'B');
      const ia = await checkIds(A.page, 'A'), ib = await checkIds(B.page, 'B');
      assert(JSON.stringify(ia) === JSON.stringify(ib), `A and B show different ids: ${ia} / ${ib}`);
      assert(ia.length === 5, `the pages show ${ia.length} messages, expected 5`);
    });

    await test('cluster: no uncaught JavaScript errors in the pages', async () => {
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
  log('not ok - the cluster browser test finished in time (killed after 120 s)');
  log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
  process.exit(1);
}, 120000);

main()
  .catch((err) => { failed++; log('not ok - cluster test script crashed'); log('    ' + (err && err.stack || err)); })
  .finally(() => {
    clearTimeout(watchdog);
    log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
    process.exit(failed > 0 ? 1 : 0);
  });
