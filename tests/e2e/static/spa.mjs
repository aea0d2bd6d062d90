// Loads pages of a single-page app in headless Chromium (playwright-core from ../oidc, Debian's
// /usr/bin/chromium, a fresh profile) and prints, for each URL, what the page rendered:
//
//   node spa.mjs URL...   →   [ { "url": URL, "status": N, "text": RENDERED_TEXT }, ... ]
//
// Each page is awaited until its script has rendered (an element with id `ready`). Only
// loopback addresses are reached: every other request is aborted before it leaves.

import { createRequire } from 'node:module';

const require = createRequire(new URL('../oidc/package.json', import.meta.url));
const { chromium } = require('playwright-core');

const urls = process.argv.slice(2);
if (urls.length < 1) {
  process.stderr.write('usage: node spa.mjs URL...\n');
  process.exit(2);
}
setTimeout(() => {
  process.stderr.write('spa.mjs: no result within 60 s\n');
  process.exit(1);
}, 60_000).unref();

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);
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
  const context = await browser.newContext();
  await context.route('**/*', (route) => {
    const { hostname } = new URL(route.request().url());
    return LOOPBACK.has(hostname) ? route.continue() : route.abort('blockedbyclient');
  });
  const out = [];
  for (const url of urls) {
    const page = await context.newPage();
    const response = await page.goto(url, { timeout: 15_000 });
    await page.waitForSelector('#ready', { state: 'attached', timeout: 15_000 });
    out.push({ url, status: response.status(), text: await page.innerText('body') });
    await page.close();
  }
  process.stdout.write(`${JSON.stringify(out)}\n`);
} finally {
  await browser.close();
}
