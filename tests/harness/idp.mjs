// A real OpenID Provider (oidc-provider, certified) on 127.0.0.1 for tests and the demo.
//
//   import { startIdp } from './idp.mjs';
//   const idp = await startIdp({ clients: [{ client_id, client_secret, redirect_uris }] });
//
// CLI (demo):
//   node tests/harness/idp.mjs --port 9000 --client-id gatehouse-demo \
//        --client-secret S --redirect-uri https://auth.localhost:8443/oauth2/callback
//
// Login pages are our own: GET /interaction/:uid shows a form (fields `login`, `password`);
// POST /interaction/:uid/login checks the user table and finishes login and consent at once.
// With `testHooks: true`, POST /__test/tamper {claim: value, exp_offset: -3600} makes the NEXT
// token response's id_token be re-signed with this IdP's own key with those claims changed.

import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import path from 'node:path';

// Packages live in tests/e2e/node_modules; resolve them from there so the CLI works from anywhere.
const require = createRequire(path.join(import.meta.dirname, '..', 'e2e', 'package.json'));
const importDep = async (name) => import(pathToFileURL(require.resolve(name)).href);
const { default: Provider } = await importDep('oidc-provider');
const jose = await importDep('jose');

export const DEFAULT_USERS = {
  alice: {
    password: 'alice-pass',
    email: 'alice@example.com',
    email_verified: true,
    // Google's Workspace domain claim: ignored by the generic OIDC provider, checked by
    // Gatehouse's `google` one (tests/e2e/directory.test.mjs).
    hd: 'example.com',
    name: 'Alice Example',
    groups: ['team-it', 'team-admins'],
  },
  bob: {
    password: 'bob-pass',
    email: 'bob@example.com',
    email_verified: true,
    hd: 'example.com',
    name: 'Bob Example',
    groups: ['team-it'],
  },
  mallory: {
    password: 'mallory-pass',
    email: 'mallory@evil.test',
    email_verified: true,
    name: 'Mallory Outsider',
    groups: [],
  },
  eve: {
    password: 'eve-pass',
    email: 'eve@example.com',
    email_verified: false,
    name: 'Eve Unverified',
    groups: ['team-it'],
  },
  // A consumer Google account registered with a work address: verified, but no `hd`.
  dana: {
    password: 'dana-pass',
    email: 'dana@example.com',
    email_verified: true,
    name: 'Dana Consumer',
    groups: [],
  },
  // Enough groups that Gatehouse's session no longer fits one cookie (it is chunked).
  carol: {
    password: 'carol-pass',
    email: 'carol@example.com',
    email_verified: true,
    name: 'Carol Many-Groups',
    groups: Array.from({ length: 150 }, (_, i) => `project-group-${String(i).padStart(3, '0')}`),
  },
};

const escapeHtml = (s) =>
  String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);

function loginPage({ uid, clientId, error, login }) {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>Test IdP sign-in</title></head>
<body>
<h1>Sign in to the test IdP</h1>
<p>Application: <code>${escapeHtml(clientId)}</code></p>
${error ? `<p id="error" role="alert" style="color:#b00">${escapeHtml(error)}</p>` : ''}
<form id="login" method="post" action="/interaction/${escapeHtml(uid)}/login" autocomplete="off">
  <label>Login <input name="login" id="login-input" value="${escapeHtml(login ?? '')}" autofocus></label>
  <label>Password <input name="password" id="password-input" type="password"></label>
  <button type="submit" id="submit">Sign in</button>
</form>
</body></html>`;
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8');
  if ((req.headers['content-type'] || '').includes('application/json')) {
    return text ? JSON.parse(text) : {};
  }
  return Object.fromEntries(new URLSearchParams(text));
}

function decodeJwtPart(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

/**
 * Start the IdP. Resolves to { issuer, url, close(), stats(), users, privateJwk, publicJwk }.
 * clients: oidc-provider client metadata; defaults fill in code flow + client_secret_basic.
 */
export async function startIdp({ port = 0, host = '127.0.0.1', clients = [], users = DEFAULT_USERS, testHooks = false, alg = 'ES256' } = {}) {
  const { privateKey } = await jose.generateKeyPair(alg, { extractable: true });
  const privateJwk = { ...(await jose.exportJWK(privateKey)), kid: `idp-${randomBytes(6).toString('hex')}`, alg, use: 'sig' };
  const { d: _d, p: _p, q: _q, dp: _dp, dq: _dq, qi: _qi, ...publicJwk } = privateJwk;

  const stats = { authorize: 0, resume: 0, token: 0, loginForms: 0, logins: 0, failedLogins: 0, userinfo: 0 };
  let pendingTamper = null;
  const issued = []; // every token response body sent (for redaction checks)

  // Bind first so the issuer carries the real port.
  const http = await import('node:http');
  const server = http.createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  const actualPort = server.address().port;
  const issuer = `http://${host}:${actualPort}`;

  const provider = new Provider(issuer, {
    clients: clients.map((c) => ({
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: alg,
      ...c,
    })),
    jwks: { keys: [privateJwk] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified', 'hd'],
      profile: ['name', 'groups'],
    },
    conformIdTokenClaims: false,
    ttl: { AccessToken: 600, AuthorizationCode: 60, Grant: 3600, IdToken: 3600, Interaction: 600, Session: 3600 },
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
    },
    interactions: {
      url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    async findAccount(_ctx, id) {
      const user = users[id];
      if (!user) return undefined;
      return {
        accountId: id,
        async claims() {
          return {
            sub: id,
            email: user.email,
            email_verified: user.email_verified,
            ...(user.hd ? { hd: user.hd } : {}),
            name: user.name,
            groups: user.groups,
          };
        },
      };
    },
    async renderError(ctx, out, _error) {
      ctx.type = 'html';
      ctx.body = `<!doctype html><html><body><h1>IdP error</h1><pre>${escapeHtml(JSON.stringify(out, null, 2))}</pre></body></html>`;
    },
  });
  provider.proxy = false;
  // Quiet by default; the provider emits 'server_error' etc. that tests may want to see.
  provider.on('server_error', (_ctx, err) => console.error('[idp] server_error', err));

  // Our own routes and the tamper hook, in front of the provider's router.
  provider.use(async (ctx, next) => {
    const { path: p, method } = ctx;

    if (p === '/auth') stats.authorize += 1;
    else if (p.startsWith('/auth/')) stats.resume += 1;
    if (p === '/me') stats.userinfo += 1;

    if (testHooks && p === '/__test/tamper' && method === 'POST') {
      pendingTamper = await readForm(ctx.req);
      ctx.status = 204;
      return;
    }
    if (testHooks && p === '/__test/tamper' && method === 'DELETE') {
      pendingTamper = null;
      ctx.status = 204;
      return;
    }
    if (testHooks && p === '/__test/stats' && method === 'GET') {
      ctx.body = stats;
      return;
    }

    let m = /^\/interaction\/([^/]+)$/.exec(p);
    if (m && method === 'GET') {
      const details = await provider.interactionDetails(ctx.req, ctx.res);
      stats.loginForms += 1;
      ctx.type = 'html';
      ctx.set('cache-control', 'no-store');
      ctx.body = loginPage({ uid: details.uid, clientId: details.params.client_id });
      return;
    }

    m = /^\/interaction\/([^/]+)\/login$/.exec(p);
    if (m && method === 'POST') {
      const details = await provider.interactionDetails(ctx.req, ctx.res);
      const form = await readForm(ctx.req);
      const accountId = String(form.login ?? '');
      const user = Object.hasOwn(users, accountId) ? users[accountId] : undefined;
      if (!user || user.password !== form.password) {
        stats.failedLogins += 1;
        ctx.status = 200;
        ctx.type = 'html';
        ctx.set('cache-control', 'no-store');
        ctx.body = loginPage({ uid: details.uid, clientId: details.params.client_id, error: 'Invalid login or password.', login: accountId });
        return;
      }
      stats.logins += 1;
      const grant = new provider.Grant({ accountId, clientId: details.params.client_id });
      grant.addOIDCScope(String(details.params.scope ?? 'openid'));
      if (details.params.claims) {
        const requested = JSON.parse(details.params.claims);
        const names = new Set([...Object.keys(requested.id_token ?? {}), ...Object.keys(requested.userinfo ?? {})]);
        if (names.size) grant.addOIDCClaims([...names]);
      }
      const grantId = await grant.save();
      ctx.respond = false; // interactionFinished writes the raw response itself
      await provider.interactionFinished(
        ctx.req,
        ctx.res,
        { login: { accountId }, consent: { grantId } },
        { mergeWithLastSubmission: false },
      );
      return;
    }

    const isToken = p === '/token' && method === 'POST';
    await next();
    if (isToken) {
      stats.token += 1;
      if (ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
        issued.push({ id_token: ctx.body.id_token, access_token: ctx.body.access_token, refresh_token: ctx.body.refresh_token });
      }
      if (pendingTamper && ctx.status === 200 && ctx.body && typeof ctx.body === 'object' && ctx.body.id_token) {
        const tamper = pendingTamper;
        pendingTamper = null;
        ctx.body = { ...ctx.body, id_token: await resign(ctx.body.id_token, tamper) };
        issued.at(-1).id_token = ctx.body.id_token;
      }
    }
  });

  async function resign(idToken, tamper) {
    const [h] = idToken.split('.');
    const header = decodeJwtPart(h);
    const claims = decodeJwtPart(idToken.split('.')[1]);
    const { exp_offset: expOffset, ...changes } = tamper;
    Object.assign(claims, changes);
    if (typeof expOffset === 'number') {
      const now = Math.floor(Date.now() / 1000);
      claims.exp = now + expOffset;
      claims.iat = Math.min(claims.iat, claims.exp - 60);
    }
    const key = await jose.importJWK(privateJwk, alg);
    return new jose.CompactSign(Buffer.from(JSON.stringify(claims)))
      .setProtectedHeader({ alg: header.alg, kid: header.kid, typ: header.typ })
      .sign(key);
  }

  server.on('request', provider.callback());
  const extraServers = [];

  return {
    issuer,
    url: issuer,
    port: actualPort,
    provider,
    users,
    privateJwk,
    publicJwk,
    stats: () => ({ ...stats }),
    resetStats: () => { for (const k of Object.keys(stats)) stats[k] = 0; },
    tamperNext: (t) => { pendingTamper = t; },
    issued: () => issued.map((t) => ({ ...t })),
    /**
     * Also answer on `host:port` (the same provider, the same issuer): for a Gatehouse in a
     * container, which reaches this IdP through a forwarder on its own loopback.
     */
    alsoListen: async (host, port = actualPort) => {
      if (extraServers.some((srv) => srv.address()?.address === host && srv.address()?.port === port)) return;
      const extra = http.createServer(provider.callback());
      await new Promise((resolve, reject) => {
        extra.once('error', reject);
        extra.listen(port, host, resolve);
      });
      extraServers.push(extra);
    },
    close: () =>
      Promise.all([server, ...extraServers].map((srv) => new Promise((resolve) => {
        srv.closeAllConnections?.();
        srv.close(() => resolve());
      }))).then(() => {}),
  };
}

function parseArgs(argv) {
  const out = { port: 9000, redirectUris: [], testHooks: false };
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    const val = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--port') out.port = Number(val());
    else if (a === '--host') out.host = val();
    else if (a === '--client-id') out.clientId = val();
    else if (a === '--client-secret') out.clientSecret = val();
    else if (a === '--redirect-uri') out.redirectUris.push(val());
    else if (a === '--test-hooks') out.testHooks = true;
    else if (a === '--help' || a === '-h') out.help = true;
    else throw new Error(`unknown argument: ${a}`);
  }
  return out;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const args = parseArgs(process.argv.slice(2));
  if (args.help || !args.clientId || !args.clientSecret || args.redirectUris.length === 0) {
    console.error('usage: node tests/harness/idp.mjs --port 9000 --client-id ID --client-secret SECRET --redirect-uri URI [--redirect-uri URI ...] [--test-hooks]');
    process.exit(args.help ? 0 : 2);
  }
  const idp = await startIdp({
    port: args.port,
    host: args.host,
    testHooks: args.testHooks,
    clients: [{ client_id: args.clientId, client_secret: args.clientSecret, redirect_uris: args.redirectUris }],
  });
  console.log(`test IdP listening: issuer ${idp.issuer} (client ${args.clientId})`);
  const stop = async () => {
    await idp.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
