// A real OpenID Provider for the end-to-end tests: the OpenID Certified `oidc-provider` package
// on 127.0.0.1, configured from a JSON file (see README.md for its shape).
//
//   node provider.mjs CONFIG.json        (or OIDC_PROVIDER_CONFIG=CONFIG.json node provider.mjs)
//
// It binds first (port 0 unless the config names one), builds the Provider with the issuer
// `http://127.0.0.1:PORT`, then prints one line on stdout, `issuer http://127.0.0.1:PORT`.
// Every request is logged to stderr as one line, `request METHOD PATH STATUS`, written before the
// response leaves. A line `sync N` on stdin is answered with `sync N` on stderr, after every
// request line logged so far, so a reader knows it has seen them all. It exits when stdin closes
// and on SIGTERM or SIGINT.

import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createInterface } from 'node:readline';

import Provider from 'oidc-provider';

const path = process.argv[2] || process.env.OIDC_PROVIDER_CONFIG;
if (!path) {
  process.stderr.write('usage: node provider.mjs CONFIG.json\n');
  process.exit(2);
}
const config = JSON.parse(readFileSync(path, 'utf8'));

function exit(code) {
  // Pending stdio writes to pipes are synchronous on Linux, so nothing logged is lost.
  process.exit(code);
}
process.on('SIGTERM', () => exit(0));
process.on('SIGINT', () => exit(0));
process.stdin.on('end', () => exit(0));
process.stdin.on('close', () => exit(0));
createInterface({ input: process.stdin }).on('line', (line) => {
  const m = /^sync (\S+)$/.exec(line.trim());
  if (m) process.stderr.write(`sync ${m[1]}\n`);
});

const server = createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(config.port ?? 0, '127.0.0.1', resolve);
});
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

// Signing keys: the configured JWKS (private keys), or a fresh RSA key for this run.
function freshKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: `k-${randomUUID().slice(0, 8)}`, use: 'sig', alg: 'RS256' };
}
const jwks = config.jwks ?? { keys: [freshKey()] };

// Accounts by login name. Any login name works (devInteractions accept any name and any
// password); a name without an entry is its own `sub` and has no other claims. oidc-provider
// takes `sub` from the account id, and devInteractions make the login name the account id, so
// the login form's `login` field is rewritten to the entry's `sub` before they see it (below),
// and findAccount answers for that id.
const accounts = config.accounts ?? {};
const subOf = (login) => accounts[login]?.sub ?? login;
async function findAccount(_ctx, id) {
  const entry = Object.values(accounts).find((e) => e.sub === id) ?? accounts[id] ?? {};
  return {
    accountId: id,
    async claims() {
      return { ...entry, sub: id };
    },
  };
}

const clients = (config.clients ?? []).map((c) => ({
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic',
  ...c,
}));

// JWT access tokens. oidc-provider issues a JWT access token only for a resource server, named by
// a resource indicator (RFC 8707): `resource.indicator` in the config turns it on. The indicator
// is then the default resource of every authorization request (no `resource` parameter needed),
// the authorization code grant and the refresh grant use the granted resource, and
// getResourceServerInfo describes it with `accessTokenFormat: 'jwt'`: the access token is a JWT
// signed with the provider's keys (RS256 unless `resource.alg` says otherwise), `aud` = the
// audience (the indicator unless `resource.audience` is set), `scope` = the requested scopes that
// the resource server knows (`resource.scope`), `client_id`, `sub`, `iss`, `exp`, `jti`. Such a
// token is NOT accepted at the userinfo endpoint (it is meant for the resource server), so
// ID token claims are used instead (conformIdTokenClaims is off by default, below).
// Without `resource`, access tokens are opaque and work at userinfo.
const resource = config.resource;
const resourceIndicators = resource
  ? {
      enabled: true,
      async defaultResource(_ctx, _client, oneOf) {
        return oneOf ?? resource.indicator;
      },
      async useGrantedResource() {
        return true;
      },
      async getResourceServerInfo(_ctx, indicator) {
        if (indicator !== resource.indicator) {
          throw new Provider.errors.InvalidTarget();
        }
        return {
          scope: resource.scope ?? '',
          audience: resource.audience ?? resource.indicator,
          accessTokenTTL: resource.ttl ?? config.ttl?.AccessToken ?? 3600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: resource.alg ?? 'RS256' } },
        };
      },
    }
  : { enabled: false };

// `resource.claims`: account claims copied into the JWT access tokens (e.g. email, groups).
async function extraTokenClaims(ctx, token) {
  if (!resource?.claims || token.kind !== 'AccessToken' || !token.resourceServer) return undefined;
  const account = await findAccount(ctx, token.accountId);
  const claims = await account.claims();
  return Object.fromEntries(resource.claims.filter((c) => c in claims).map((c) => [c, claims[c]]));
}

const page = (title, body) => `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${title}</title></head><body>${body}</body></html>`;

const ttl = {
  AccessToken: 3600,
  AuthorizationCode: 60,
  IdToken: 3600,
  RefreshToken: 14 * 24 * 3600,
  Session: 14 * 24 * 3600,
  Grant: 14 * 24 * 3600,
  Interaction: 3600,
  ...(config.ttl ?? {}),
};

const provider = new Provider(issuer, {
  clients,
  jwks,
  findAccount,
  extraTokenClaims,
  ttl,
  claims: config.claims ?? {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username', 'given_name', 'family_name'],
    groups: ['groups'],
  },
  // Claims for the granted scopes go into the ID token even when an access token is issued.
  conformIdTokenClaims: config.conformIdTokenClaims ?? false,
  cookies: { keys: config.cookieKeys ?? ['portico-e2e-cookie-key'] },
  pkce: { required: () => true },
  // true: a refresh token with every code exchange, without `offline_access` (which also needs
  // `prompt=consent` on the authorization request to be kept).
  ...(config.issueRefreshToken
    ? { issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token') }
    : {}),
  ...(config.rotateRefreshToken !== undefined
    ? { rotateRefreshToken: () => !!config.rotateRefreshToken }
    : {}),
  features: {
    devInteractions: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators,
    rpInitiatedLogout: {
      enabled: true,
      async logoutSource(ctx, form) {
        ctx.body = page('Logout Request', `${form}<button autofocus type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button><button type="submit" form="op.logoutForm">No, stay signed in</button>`);
      },
      async postLogoutSuccessSource(ctx) {
        ctx.body = page('Sign-out Success', '<h1>Sign-out Success</h1>');
      },
    },
  },
});

provider.use(async (ctx, next) => {
  try {
    await next();
  } finally {
    process.stderr.write(`request ${ctx.method} ${ctx.path} ${ctx.status}\n`);
  }
});

for (const event of ['server_error', 'interaction.error', 'grant.error']) {
  provider.on(event, (_ctx, err) => process.stderr.write(`error ${event} ${err?.message ?? err}\n`));
}

// The login form's name becomes the account's `sub` (see findAccount). The body is read here and
// handed on as `req.body`, which oidc-provider's body parser takes when the stream is consumed.
provider.use(async (ctx, next) => {
  if (ctx.method === 'POST' && ctx.path.startsWith('/interaction/') && ctx.is('application/x-www-form-urlencoded')) {
    const chunks = [];
    let size = 0;
    for await (const chunk of ctx.req) {
      size += chunk.length;
      if (size > 64 * 1024) ctx.throw(413);
      chunks.push(chunk);
    }
    const form = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
    if (form.get('prompt') === 'login' && form.has('login')) form.set('login', subOf(form.get('login')));
    ctx.req.body = form.toString();
  }
  return next();
});

server.on('request', provider.callback());
process.stdout.write(`issuer ${issuer}\n`);
