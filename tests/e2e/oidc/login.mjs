// A real HTTP client that logs a user in the way a browser does, one request at a time:
//
//   node login.mjs START_URL [--user alice] [--password x] [--cookie-jar FILE] [--stop-at PREFIX]
//                  [--deny] [--header 'Name: value']... [--accept TYPE] [--max-hops N]
//
// It GETs START_URL with `Accept: text/html`, follows every redirect by hand with a cookie jar
// (cookies per host and path as a browser keeps them: the port is not part of a cookie's host;
// Path, Domain, Max-Age and Expires are honoured, Secure cookies go over https only), fills and
// submits the provider's login form, its consent form (or, with --deny, follows its Cancel link)
// and its logout confirmation, until an answer that is neither a redirect nor one of those forms.
// Then it prints one JSON object on stdout:
//
//   { "status": N, "url": FINAL_URL, "body": TEXT,
//     "cookies": [ { name, value, domain, path, secure, httpOnly, sameSite, expires } ... ],
//     "hops": [ { method, url, status, location } ... ] }
//
// With --stop-at PREFIX it stops, without requesting it, at the first redirect (or form
// submission) to a URL that starts with PREFIX, and prints that URL as `url` (and a submitted
// form's fields as `form`). With --cookie-jar FILE the jar is read first (when the file exists)
// and written back at the end, so a second run reuses the session. Exits 1 with a message on
// stderr when a request fails or the hop limit is reached.

import { existsSync, readFileSync, writeFileSync } from 'node:fs';

function usage(msg) {
  process.stderr.write(`${msg}\nusage: node login.mjs START_URL [--user NAME] [--password P] [--cookie-jar FILE] [--stop-at PREFIX] [--deny] [--header 'N: v'] [--accept TYPE] [--max-hops N]\n`);
  process.exit(2);
}

const opts = { user: 'alice', password: 'x', jar: null, stopAt: null, deny: false, headers: [], accept: 'text/html', maxHops: 40 };
let start = null;
{
  const args = process.argv.slice(2);
  for (let i = 0; i < args.length; i += 1) {
    const a = args[i];
    const value = () => {
      i += 1;
      if (i >= args.length) usage(`${a} needs a value`);
      return args[i];
    };
    switch (a) {
      case '--user': opts.user = value(); break;
      case '--password': opts.password = value(); break;
      case '--cookie-jar': opts.jar = value(); break;
      case '--stop-at': opts.stopAt = value(); break;
      case '--deny': opts.deny = true; break;
      case '--header': opts.headers.push(value()); break;
      case '--accept': opts.accept = value(); break;
      case '--max-hops': opts.maxHops = Number(value()); break;
      default:
        if (a.startsWith('--') || start !== null) usage(`unexpected argument ${a}`);
        start = a;
    }
  }
  if (start === null) usage('START_URL is missing');
}

// ---- cookie jar ----

/** @type {Array<{name:string,value:string,domain:string,hostOnly:boolean,path:string,secure:boolean,httpOnly:boolean,sameSite:string|null,expires:number|null}>} */
let jar = [];
if (opts.jar && existsSync(opts.jar)) {
  const text = readFileSync(opts.jar, 'utf8');
  if (text.trim()) jar = JSON.parse(text);
}

const now = () => Date.now();
const live = () => jar.filter((c) => c.expires === null || c.expires > now());

function defaultPath(url) {
  const p = url.pathname;
  if (!p.startsWith('/') || p.lastIndexOf('/') === 0) return '/';
  return p.slice(0, p.lastIndexOf('/'));
}

function domainMatch(host, domain) {
  return host === domain || (host.endsWith(`.${domain}`) && !/^[0-9.]+$/.test(host));
}

function pathMatch(reqPath, cookiePath) {
  if (reqPath === cookiePath) return true;
  if (!reqPath.startsWith(cookiePath)) return false;
  return cookiePath.endsWith('/') || reqPath[cookiePath.length] === '/';
}

function storeSetCookie(header, url) {
  const [pair, ...attrs] = header.split(';');
  const eq = pair.indexOf('=');
  if (eq < 0) return;
  const name = pair.slice(0, eq).trim();
  const value = pair.slice(eq + 1).trim();
  if (!name) return;
  const c = {
    name,
    value,
    domain: url.hostname,
    hostOnly: true,
    path: defaultPath(url),
    secure: false,
    httpOnly: false,
    sameSite: null,
    expires: null,
  };
  let maxAge = null;
  for (const attr of attrs) {
    const i = attr.indexOf('=');
    const key = (i < 0 ? attr : attr.slice(0, i)).trim().toLowerCase();
    const val = i < 0 ? '' : attr.slice(i + 1).trim();
    switch (key) {
      case 'path': if (val.startsWith('/')) c.path = val; break;
      case 'domain': {
        const d = val.replace(/^\./, '').toLowerCase();
        if (d) {
          if (!domainMatch(url.hostname, d)) return; // a cookie for another site: ignored
          c.domain = d;
          c.hostOnly = false;
        }
        break;
      }
      case 'max-age': if (/^-?\d+$/.test(val)) maxAge = Number(val); break;
      case 'expires': {
        const t = Date.parse(val);
        if (!Number.isNaN(t) && maxAge === null) c.expires = t;
        break;
      }
      case 'secure': c.secure = true; break;
      case 'httponly': c.httpOnly = true; break;
      case 'samesite': c.sameSite = val || null; break;
      default: break;
    }
  }
  if (maxAge !== null) c.expires = maxAge <= 0 ? 0 : now() + maxAge * 1000;
  if (c.secure && url.protocol !== 'https:') return; // only a secure origin may set one
  jar = jar.filter((o) => !(o.name === c.name && o.domain === c.domain && o.path === c.path));
  if (c.expires === null || c.expires > now()) jar.push(c);
}

function cookieHeader(url) {
  const host = url.hostname;
  const sent = live()
    .filter((c) => (c.hostOnly ? host === c.domain : domainMatch(host, c.domain)))
    .filter((c) => pathMatch(url.pathname || '/', c.path))
    .filter((c) => !c.secure || url.protocol === 'https:')
    .sort((a, b) => b.path.length - a.path.length);
  return sent.map((c) => `${c.name}=${c.value}`).join('; ');
}

// ---- HTML forms (only what the provider's pages use) ----

const decode = (s) => s
  .replace(/&quot;/g, '"').replace(/&#39;/g, "'").replace(/&#x27;/g, "'")
  .replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&#x2F;/g, '/').replace(/&amp;/g, '&');

function attrs(tag) {
  const out = {};
  for (const m of tag.matchAll(/([a-zA-Z_:.-]+)\s*(?:=\s*("([^"]*)"|'([^']*)'|([^\s>]+)))?/g)) {
    out[m[1].toLowerCase()] = decode(m[3] ?? m[4] ?? m[5] ?? '');
  }
  return out;
}

function forms(html) {
  const found = [];
  for (const m of html.matchAll(/<form\b([^>]*)>([\s\S]*?)<\/form>/gi)) {
    const a = attrs(m[1]);
    const inputs = [...m[2].matchAll(/<input\b([^>]*)>/gi)].map((i) => attrs(i[1]));
    found.push({ id: a.id ?? '', action: a.action ?? '', method: (a.method ?? 'get').toLowerCase(), inputs });
  }
  return found;
}

/** The next step a person would take on this page: a form to submit or a link to follow. */
function nextStep(html, url) {
  for (const f of forms(html)) {
    if (f.method !== 'post') continue;
    const fields = new URLSearchParams();
    for (const i of f.inputs) {
      if (i.name && (i.type ?? 'text') === 'hidden') fields.append(i.name, i.value ?? '');
    }
    const names = new Set(f.inputs.map((i) => i.name));
    const action = new URL(f.action || url.href, url);
    if (names.has('login')) {
      fields.set('login', opts.user);
      fields.set('password', opts.password);
      return { method: 'POST', url: action, body: fields };
    }
    if (fields.get('prompt') === 'consent') {
      if (opts.deny) {
        const abort = /<a\b[^>]*href="([^"]*\/abort)"/i.exec(html);
        if (abort) return { method: 'GET', url: new URL(decode(abort[1]), url) };
      }
      return { method: 'POST', url: action, body: fields };
    }
    if (f.id === 'op.logoutForm') {
      fields.set('logout', 'yes');
      return { method: 'POST', url: action, body: fields };
    }
    // response_mode=form_post: an auto-submitted form to the client's redirect_uri
    if (/\.submit\(\)/.test(html)) return { method: 'POST', url: action, body: fields };
  }
  return null;
}

// ---- the walk ----

async function request(method, url, body) {
  const headers = { accept: opts.accept, 'user-agent': 'portico-e2e-login' };
  for (const h of opts.headers) {
    const i = h.indexOf(':');
    if (i > 0) headers[h.slice(0, i).trim().toLowerCase()] = h.slice(i + 1).trim();
  }
  const cookie = cookieHeader(url);
  if (cookie) headers.cookie = cookie;
  if (body) headers['content-type'] = 'application/x-www-form-urlencoded';
  const res = await fetch(url, {
    method,
    headers,
    body: body ? body.toString() : undefined,
    redirect: 'manual',
    signal: AbortSignal.timeout(10_000),
  });
  for (const sc of res.headers.getSetCookie()) storeSetCookie(sc, url);
  return res;
}

function finish(result) {
  if (opts.jar) writeFileSync(opts.jar, JSON.stringify(live(), null, 1));
  const cookies = live().map(({ name, value, domain, path, secure, httpOnly, sameSite, expires }) => ({
    name, value, domain, path, secure, httpOnly, sameSite, expires,
  }));
  process.stdout.write(`${JSON.stringify({ ...result, cookies, hops })}\n`);
  process.exit(0);
}

const hops = [];
setTimeout(() => {
  process.stderr.write(`login.mjs: no result within 60 s\nhops: ${JSON.stringify(hops)}\n`);
  process.exit(1);
}, 60_000).unref();
let step = { method: 'GET', url: new URL(start), body: null };
try {
  for (let n = 0; ; n += 1) {
    if (n >= opts.maxHops) throw new Error(`more than ${opts.maxHops} requests`);
    const res = await request(step.method, step.url, step.body);
    const location = res.headers.get('location');
    hops.push({ method: step.method, url: step.url.href, status: res.status, location });
    if (res.status >= 300 && res.status < 400 && location) {
      await res.arrayBuffer();
      const next = new URL(location, step.url);
      if (opts.stopAt && next.href.startsWith(opts.stopAt)) {
        finish({ status: res.status, url: next.href, body: '' });
      }
      const keep = res.status === 307 || res.status === 308;
      step = keep ? { method: step.method, url: next, body: step.body } : { method: 'GET', url: next, body: null };
      continue;
    }
    const text = await res.text();
    const type = res.headers.get('content-type') ?? '';
    const following = type.includes('html') ? nextStep(text, step.url) : null;
    if (following) {
      if (opts.stopAt && following.url.href.startsWith(opts.stopAt)) {
        finish({
          status: res.status,
          url: following.url.href,
          body: text,
          form: following.body ? Object.fromEntries(following.body) : undefined,
        });
      }
      step = following;
      continue;
    }
    finish({ status: res.status, url: step.url.href, body: text });
  }
} catch (e) {
  if (opts.jar) writeFileSync(opts.jar, JSON.stringify(live(), null, 1));
  process.stderr.write(`login.mjs: ${e.message}\nhops: ${JSON.stringify(hops)}\n`);
  process.exit(1);
}
