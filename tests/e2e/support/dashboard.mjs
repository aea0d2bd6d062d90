// Drives the admin dashboard in headless Chromium (playwright-core from tests/e2e/oidc/node_modules,
// Debian's /usr/bin/chromium, a fresh profile):
//
//   node dashboard.mjs PAGE_URL TOKEN ROUTE TARGET EXPLAIN_URL SCREENSHOT
//
// 1. opens PAGE_URL, waits for the token notice, types TOKEN in the token field;
// 2. waits for the row of ROUTE and for TARGET shown healthy, then prints {"step":"loaded"} and
//    waits for a line on stdin (the test stops TARGET's backend meanwhile);
// 3. waits for TARGET shown unhealthy (bounded), and measures how long that took;
// 4. asks the explain box about GET EXPLAIN_URL and waits for its answer;
// 5. saves a full-page screenshot to SCREENSHOT and prints one JSON object with what it saw:
//    console errors and page errors (after the token was typed, and before), requests to
//    anything but the page's origin, the texts read.
//
// Every wait is bounded; only loopback addresses are reached.

import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import readline from 'node:readline';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '..', 'oidc', 'package.json'));
const { chromium } = require('playwright-core');

const [pageUrl, token, route, target, explainUrl, screenshot] = process.argv.slice(2);
if (!screenshot) {
  process.stderr.write('usage: node dashboard.mjs PAGE_URL TOKEN ROUTE TARGET EXPLAIN_URL SCREENSHOT\n');
  process.exit(2);
}

const STEP = 15_000;
setTimeout(() => {
  process.stderr.write('dashboard.mjs: no result within 120 s\n');
  process.exit(1);
}, 120_000).unref();

const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once('line', resolve));

const origin = new URL(pageUrl).origin;
const seen = { before: [], after: [], pageErrors: [], foreign: [] };
let tokenTyped = false;

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
  ],
});
try {
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
  await context.route('**/*', (r) => {
    const url = r.request().url();
    if (new URL(url).origin !== origin) {
      seen.foreign.push(url);
      return r.abort('blockedbyclient');
    }
    return r.continue();
  });
  const page = await context.newPage();
  page.on('console', (msg) => {
    if (msg.type() === 'error') (tokenTyped ? seen.after : seen.before).push(msg.text());
  });
  page.on('pageerror', (err) => seen.pageErrors.push(String(err)));

  const response = await page.goto(pageUrl, { timeout: STEP });
  const headers = response.headers();

  await page.locator('#token-needed').waitFor({ state: 'visible', timeout: STEP });
  const statusBeforeToken = await page.locator('#status').textContent();
  tokenTyped = true;
  await page.fill('#token', token);
  await page.click('#token-save');

  const routeRow = page.locator(`#routes tr[data-route="${route}"]`);
  await routeRow.waitFor({ timeout: STEP });
  const targetRow = page.locator(`#upstreams tr[data-target="${target}"]`);
  await page.locator(`#upstreams tr[data-target="${target}"][data-state="healthy"]`).waitFor({ timeout: STEP });
  const tokenNoticeHidden = await page.locator('#token-needed').isHidden();
  process.stdout.write(`${JSON.stringify({ step: 'loaded' })}\n`);

  await nextLine();
  const stopped = Date.now();
  await page.locator(`#upstreams tr[data-target="${target}"][data-state="unhealthy"]`).waitFor({ timeout: STEP });
  const unhealthyAfterMs = Date.now() - stopped;
  const targetText = await targetRow.innerText();

  await page.fill('#explain-method', 'GET');
  await page.fill('#explain-url', explainUrl);
  await page.fill('#explain-headers', 'X-Trace: dashboard');
  await page.click('#explain-go');
  const answer = page.locator('#explain-out[data-state="answer"]');
  await answer.waitFor({ timeout: STEP });
  const explainText = await answer.textContent();

  // Rates come from two readings: let the page take one more before the picture.
  await page.waitForFunction(() => document.getElementById('total-rate').textContent !== '–', null, { timeout: STEP });
  const routeText = await routeRow.innerText();
  const totalRate = await page.locator('#total-rate').textContent();
  const reloadsText = await page.locator('#reloads').innerText();
  const hash = await page.locator('#hash').textContent();
  await page.screenshot({ path: screenshot, fullPage: true });

  process.stdout.write(`${JSON.stringify({
    step: 'done',
    headers,
    statusBeforeToken,
    tokenNoticeHidden,
    consoleErrorsBeforeToken: seen.before,
    consoleErrors: seen.after,
    pageErrors: seen.pageErrors,
    foreignRequests: seen.foreign,
    unhealthyAfterMs,
    targetText,
    explainText,
    routeText,
    totalRate,
    reloadsText,
    hash,
  })}\n`);
} finally {
  await browser.close();
  lines.close();
}
