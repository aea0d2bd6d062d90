// The dashboard's cluster panel in headless Chromium (playwright-core from
// tests/e2e/oidc/node_modules, Debian's /usr/bin/chromium, a fresh profile):
//
//   node dashboard_cluster.mjs PAGE_URL NODES
//
// 1. opens PAGE_URL (an admin API without a token) and waits until the node list shows NODES
//    rows, each on the same revision, and the etcd line says "connected"; prints
//    {"step":"listed", ...} and waits for a line on stdin (the test stops etcd meanwhile);
// 2. waits until the etcd line says "unreachable" and prints {"step":"lost", ...}.
//
// Every wait is bounded; only the page's origin is reached.

import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import readline from 'node:readline';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '..', 'oidc', 'package.json'));
const { chromium } = require('playwright-core');

const [pageUrl, nodes] = process.argv.slice(2);
const STEP = 15_000;
setTimeout(() => {
  process.stderr.write('dashboard_cluster.mjs: no result within 60 s\n');
  process.exit(1);
}, 60_000).unref();
const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once('line', resolve));
const origin = new URL(pageUrl).origin;
const pageErrors = [];

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1'],
});
try {
  const context = await browser.newContext();
  await context.route('**/*', (r) => (new URL(r.request().url()).origin === origin ? r.continue() : r.abort()));
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(String(err)));
  await page.goto(pageUrl, { timeout: STEP });
  await page.waitForFunction((n) => {
    const rows = [...document.querySelectorAll('#cluster-nodes tbody tr[data-node]')];
    const line = document.getElementById('cluster-etcd');
    return rows.length === Number(n) && rows.every((r) => r.innerText.includes('yes')) &&
      line.dataset.state === 'ok';
  }, nodes, { timeout: STEP });
  const listed = {
    step: 'listed',
    etcd: await page.locator('#cluster-etcd').textContent(),
    nodes: await page.locator('#cluster-nodes').innerText(),
  };
  process.stdout.write(`${JSON.stringify(listed)}\n`);
  await nextLine();
  await page.waitForFunction(() => document.getElementById('cluster-etcd').textContent.includes('unreachable'),
    null, { timeout: STEP });
  process.stdout.write(`${JSON.stringify({
    step: 'lost',
    etcd: await page.locator('#cluster-etcd').textContent(),
    pageErrors,
  })}\n`);
} finally {
  await browser.close();
  lines.close();
}
