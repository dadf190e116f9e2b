// tools/browser/notes.test.mjs -- headless-browser test of the notes example (examples/notes).
//
// Run by tools/browser-test, which starts the app with tools/notes-demo (its own PostgreSQL and
// Redis) and sets:
//   NOTES_URL        base URL of the running app (required), e.g. http://127.0.0.1:40123
//   SCREENSHOT_DIR   where notes.png goes (default: build/browser)
//   CHROMIUM         the browser binary (default: /usr/bin/chromium)
//   TEST_TIMEOUT_MS  per wait (default: 10000)
// Prints "ok - NAME" / "not ok - NAME" per test case and ends with one line
// "N passed, N failed, N skipped"; exits 1 when anything failed.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

const BASE = (process.env.NOTES_URL || '').replace(/\/+$/, '');
const SHOTS = process.env.SCREENSHOT_DIR || 'build/browser';
const EXE = process.env.CHROMIUM || '/usr/bin/chromium';
const WAIT = Number(process.env.TEST_TIMEOUT_MS || 10000);
const RUN = `${process.pid}-${Date.now().toString(36)}`;  // makes every title unique to this run

let passed = 0, failed = 0, skipped = 0;
const pageErrors = [];

function log(...a) { console.log(...a); }
function assert(cond, msg) { if (!cond) throw new Error('assertion failed: ' + msg); }

async function test(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    passed++;
    log(`ok - notes: ${name} (${Date.now() - t0} ms)`);
    return true;
  } catch (err) {
    failed++;
    log(`not ok - notes: ${name} (${Date.now() - t0} ms)`);
    log(String(err && err.stack || err).split('\n').map((l) => '    ' + l).join('\n'));
    return false;
  }
}

// the <li> of the note whose title is exactly `title`
function noteItem(page, title) {
  const exact = new RegExp('^' + title.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + '$');
  return page.locator('#notes > li.note').filter({ has: page.locator('h2.title', { hasText: exact }) });
}

async function titles(page) {
  return page.$$eval('#notes > li.note h2.title', (hs) => hs.map((h) => h.textContent));
}

async function api(method, url, body) {
  const res = await fetch(BASE + url, {
    method, headers: { 'Content-Type': 'application/json' }, body: body && JSON.stringify(body),
  });
  assert(res.ok, `${method} ${url}: HTTP ${res.status}`);
  return res.status === 204 ? null : res.json();
}

async function steps(page) {
  const first = `Shopping ${RUN}`, edited = `Shopping, edited ${RUN}`;

  await test('the page loads with its style and an empty list', async () => {
    await page.goto(BASE + '/', { waitUntil: 'load', timeout: WAIT });
    assert(await page.title() === 'Notes', `title is ${JSON.stringify(await page.title())}`);
    const bg = await page.$eval('body', (b) => getComputedStyle(b).backgroundColor);
    assert(bg === 'rgb(244, 244, 240)', `style.css not applied (body background ${bg})`);
    await page.waitForSelector('#empty', { state: 'visible', timeout: WAIT });
  });

  await test('a note added in the form is listed', async () => {
    await page.fill('#new-title', first);
    await page.fill('#new-body', 'milk\neggs');
    await page.click('#add');
    await noteItem(page, first).waitFor({ state: 'visible', timeout: WAIT });
    assert(await noteItem(page, first).locator('.body').textContent() === 'milk\neggs', 'body shown');
    assert(await page.inputValue('#new-title') === '', 'the form is cleared');
    assert(await page.isHidden('#empty'), '"No notes yet." hidden');
  });

  await test('an input the API refuses shows its error', async () => {
    await page.fill('#new-title', '   ');
    await page.click('#add');
    await page.waitForSelector('#error:has-text("title must not be empty")', { timeout: WAIT });
    assert((await titles(page)).length === 1, 'nothing was added');
  });

  await test('a note edited in place keeps its new text after a reload', async () => {
    const li = noteItem(page, first);
    assert(await li.locator('form.editor').isHidden(), 'the editor is hidden until Edit');
    await li.locator('button.edit').click();
    assert(await li.locator('h2.title').isHidden(), 'the note is hidden while edited');
    await li.locator('.edit-title').fill(edited);
    await li.locator('.edit-body').fill('bread');
    await li.locator('button.save').click();
    await noteItem(page, edited).waitFor({ state: 'visible', timeout: WAIT });
    assert(await page.isHidden('#error'), 'the earlier error is gone');
    await page.reload({ waitUntil: 'load' });
    await noteItem(page, edited).waitFor({ state: 'visible', timeout: WAIT });
    assert(await noteItem(page, edited).locator('.body').textContent() === 'bread', 'body saved');
    assert(await noteItem(page, first).count() === 0, 'old title gone');
  });

  await test('"Load more" brings the next page (keyset cursor)', async () => {
    for (let i = 1; i <= 11; i++) await api('POST', '/api/notes', { title: `bulk ${i} ${RUN}` });
    await page.reload({ waitUntil: 'load' });
    await noteItem(page, `bulk 11 ${RUN}`).waitFor({ state: 'visible', timeout: WAIT });
    await page.waitForSelector('#more', { state: 'visible', timeout: WAIT });
    assert((await titles(page)).length === 10, 'a first page of 10');
    await page.click('#more');
    await noteItem(page, edited).waitFor({ state: 'visible', timeout: WAIT });
    const all = await titles(page);
    assert(all.length === 12 && new Set(all).size === 12, `12 distinct notes, got ${all.length}`);
    assert(await page.isHidden('#more'), '"Load more" hidden on the last page');
  });

  await test('a note deleted in the page is gone, also after a reload', async () => {
    const status = await noteItem(page, edited).count();
    assert(status === 1, 'the note is there first');
    await noteItem(page, edited).locator('button.delete').click();
    await noteItem(page, edited).waitFor({ state: 'detached', timeout: WAIT });
    const list = await api('GET', '/api/notes?limit=100');
    assert(!list.notes.some((n) => n.title === edited), 'the API no longer lists it');
    await page.reload({ waitUntil: 'load' });
    await noteItem(page, `bulk 11 ${RUN}`).waitFor({ state: 'visible', timeout: WAIT });
    assert(await noteItem(page, edited).count() === 0, 'not listed after a reload');
  });
}

async function main() {
  if (!BASE) { console.error('notes.test.mjs: NOTES_URL is not set'); process.exit(2); }
  fs.mkdirSync(SHOTS, { recursive: true });
  let browser;
  const launched = await test('chromium starts headless', async () => {
    browser = await chromium.launch({
      executablePath: EXE, headless: true, timeout: 60000,
      args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
             '--disable-component-update', '--disable-sync'],
    });
  });
  if (!launched) return;
  const context = await browser.newContext({ viewport: { width: 900, height: 900 } });
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(String(err)));
  try {
    await steps(page);
    await page.screenshot({ path: path.join(SHOTS, 'notes.png'), fullPage: true }).catch(() => {});
    await test('no uncaught JavaScript errors in the page', async () => {
      assert(pageErrors.length === 0, pageErrors.join('; '));
    });
  } finally {
    await context.close().catch(() => {});
    await browser.close().catch(() => {});
  }
}

const watchdog = setTimeout(() => {
  failed++;
  log('not ok - notes: the browser test finished in time (killed after 120 s)');
  log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
  process.exit(1);
}, 120000);

main()
  .catch((err) => { failed++; log('not ok - notes: test script crashed'); log('    ' + (err && err.stack || err)); })
  .finally(() => {
    clearTimeout(watchdog);
    log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
    process.exit(failed > 0 ? 1 : 0);
  });
