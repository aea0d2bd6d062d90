// The same login as login.mjs, in headless Chromium (playwright-core, Debian's /usr/bin/chromium,
// a fresh profile):
//
//   node browser.mjs START_URL [THEN_URL] [--user alice] [--password x]
//
// It opens START_URL, fills and submits the provider's login form, accepts its consent (and
// confirms a logout page), waits until the page has left the provider and finished loading, then
// visits THEN_URL in the same context when given (session reuse), and prints one JSON object:
//
//   { "url": FINAL_URL, "status": N, "body": PAGE_TEXT,
//     "cookies": [ { name, value, domain, path, secure, httpOnly, sameSite, expires } ... ] }
//
// `status` is that of the last document response that was not a redirect; `expires` is in
// milliseconds since the epoch, null for a session cookie. Only loopback addresses are reached:
// every other request (the provider's pages import a web font) is aborted before it leaves.

import { chromium } from 'playwright-core';

function usage(msg) {
  process.stderr.write(`${msg}\nusage: node browser.mjs START_URL [THEN_URL] [--user NAME] [--password P]\n`);
  process.exit(2);
}

const opts = { user: 'alice', password: 'x' };
const urls = [];
{
  const args = process.argv.slice(2);
  for (let i = 0; i < args.length; i += 1) {
    const a = args[i];
    if (a === '--user' || a === '--password') {
      i += 1;
      if (i >= args.length) usage(`${a} needs a value`);
      opts[a.slice(2)] = args[i];
    } else if (a.startsWith('--')) {
      usage(`unexpected argument ${a}`);
    } else {
      urls.push(a);
    }
  }
  if (urls.length < 1 || urls.length > 2) usage('one or two URLs');
}

const STEP = 15_000;
setTimeout(() => {
  process.stderr.write('browser.mjs: no result within 90 s\n');
  process.exit(1);
}, 90_000).unref();

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);

let browser;
try {
  browser = await chromium.launch({
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
  const context = await browser.newContext();
  await context.route('**/*', (route) => {
    const { hostname } = new URL(route.request().url());
    return LOOPBACK.has(hostname) ? route.continue() : route.abort('blockedbyclient');
  });
  const page = await context.newPage();
  let status = null;
  page.on('response', (res) => {
    const req = res.request();
    if (req.isNavigationRequest() && req.frame() === page.mainFrame() && (res.status() < 300 || res.status() >= 400)) {
      status = res.status();
    }
  });

  // Submits the provider's forms on the current page until there are none; then waits for the
  // page to leave the provider's origin and finish loading.
  async function walk() {
    let formOrigin = null;
    for (let n = 0; n < 10; n += 1) {
      let submit = null;
      if (await page.locator('input[name="login"]').count()) {
        await page.fill('input[name="login"]', opts.user);
        await page.fill('input[name="password"]', opts.password);
        submit = page.locator('button[type="submit"]').first();
      } else if (await page.locator('input[name="prompt"][value="consent"]').count()) {
        submit = page.locator('button[type="submit"]').first();
      } else if (await page.locator('form[id="op.logoutForm"]').count()) {
        submit = page.locator('button[name="logout"]');
      }
      if (!submit) break;
      formOrigin = new URL(page.url()).origin;
      await Promise.all([
        page.waitForNavigation({ waitUntil: 'load', timeout: STEP }),
        submit.click({ timeout: STEP }),
      ]);
    }
    if (formOrigin) {
      await page.waitForURL((u) => u.origin !== formOrigin, { timeout: STEP, waitUntil: 'load' });
    }
    await page.waitForLoadState('load', { timeout: STEP });
  }

  for (const url of urls) {
    await page.goto(url, { waitUntil: 'load', timeout: STEP });
    await walk();
  }

  const body = await page.locator('body').innerText({ timeout: STEP }).catch(() => '');
  const cookies = (await context.cookies()).map((c) => ({
    name: c.name,
    value: c.value,
    domain: c.domain,
    path: c.path,
    secure: c.secure,
    httpOnly: c.httpOnly,
    sameSite: c.sameSite,
    expires: c.expires > 0 ? Math.round(c.expires * 1000) : null,
  }));
  process.stdout.write(`${JSON.stringify({ url: page.url(), status, body, cookies })}\n`);
  await browser.close();
  process.exit(0);
} catch (e) {
  process.stderr.write(`browser.mjs: ${e.stack ?? e}\n`);
  await browser?.close().catch(() => {});
  process.exit(1);
}
