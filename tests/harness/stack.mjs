// The whole test stack in one call: throwaway certs, the echo upstream, the test IdP
// (with a client whose redirect URIs cover every Gatehouse started here), and one or
// more Gatehouse processes.
//
//   const s = await startStack({ gatehouses: { main: {}, twoHost: { twoHost: true } } });
//   s.gh.main.url('assistant.localhost', '/x')   s.client()   await s.stop()

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { makeCerts } from './certs.mjs';
import { Client } from './client.mjs';
import { freePort, startGatehouse } from './gatehouse.mjs';
import { startIdp } from './idp.mjs';
import { startUpstream } from './upstream.mjs';

export const ROUTE_HOSTS = ['assistant.localhost', 'public.localhost', 'other.localhost'];
export const SESSION_COOKIE = /^_pomerium(_\d+)?$/;
export const CLIENT_ID = 'gatehouse';

export const newCookieSecret = () => randomBytes(32).toString('base64');

export function redirectUrisFor(port) {
  return [
    ...ROUTE_HOSTS.map((h) => `https://${h}:${port}/.gatehouse/callback`),
    `https://auth.localhost:${port}/oauth2/callback`,
  ];
}

/** The standard test config (see the contract in the design brief). */
export function gatehouseConfig({ port, redirectPort, certs, idp, upstream, clientSecret, cookieSecret, twoHost = false, cookieExpire = '14h', extra = {} }) {
  return {
    address: `127.0.0.1:${port}`,
    http_redirect_addr: `127.0.0.1:${redirectPort}`,
    certificates: [{ cert: certs.cert, key: certs.key }],
    authenticate_service_url: twoHost ? `https://auth.localhost:${port}` : undefined,
    idp_provider: 'oidc',
    idp_provider_url: idp.issuer,
    idp_client_id: CLIENT_ID,
    idp_client_secret: clientSecret,
    cookie_secret: cookieSecret,
    cookie_expire: cookieExpire,
    allowed_domains: ['example.com'],
    routes: [
      { from: 'https://assistant.localhost', to: upstream.url, pass_identity_headers: true },
      { from: 'https://public.localhost', to: upstream.url, allow_public_unauthenticated_access: true },
      {
        from: 'https://other.localhost',
        to: upstream.url,
        policy: [{ allow: { or: [{ email: { is: 'bob@example.com' } }] } }],
      },
    ],
    // `extra` may need the stack's parts (a route to the upstream): then it is a function.
    ...(typeof extra === 'function' ? extra({ upstream, idp }) : extra),
  };
}

/**
 * gatehouses: { name: { twoHost?, cookieSecret?, cookieExpire?, extra?, env?, files?, wrap?, lazy? } }.
 * `lazy: true` reserves ports and IdP redirect URIs but does not start it: call s.start(name).
 */
export async function startStack({ gatehouses = { main: {} }, testHooks = true } = {}) {
  const s = { gh: {}, specs: {}, clientSecret: randomBytes(24).toString('base64url') };
  const toStop = [];
  s.stop = async () => {
    for (const g of Object.values(s.gh)) await g?.stop().catch(() => {});
    for (const f of toStop.reverse()) await f().catch(() => {});
  };
  try {
    s.certs = await makeCerts();
    s.upstream = await startUpstream();
    toStop.push(() => s.upstream.close());
    for (const [name, opts] of Object.entries(gatehouses)) {
      const port = await freePort();
      const redirectPort = await freePort();
      s.specs[name] = { ...opts, port, redirectPort, cookieSecret: opts.cookieSecret ?? newCookieSecret() };
    }
    s.idp = await startIdp({
      testHooks,
      clients: [{
        client_id: CLIENT_ID,
        client_secret: s.clientSecret,
        redirect_uris: Object.values(s.specs).flatMap((g) => redirectUrisFor(g.port)),
      }],
    });
    toStop.push(() => s.idp.close());
    s.config = (name) => {
      const g = s.specs[name];
      return gatehouseConfig({ ...g, certs: s.certs, idp: s.idp, upstream: s.upstream, clientSecret: s.clientSecret });
    };
    s.start = async (name) => {
      s.gh[name] = await startGatehouse(s.config(name), { env: s.specs[name].env ?? {}, files: s.specs[name].files ?? {}, wrap: s.specs[name].wrap ?? [] });
      return s.gh[name];
    };
    for (const [name, g] of Object.entries(s.specs)) {
      if (!g.lazy) await s.start(name);
    }
  } catch (err) {
    await s.stop();
    throw err;
  }
  s.client = (headers) => new Client({ ca: s.certs.caPem, headers });
  s.authorizeUrl = () => `${s.idp.issuer}/auth`;
  return s;
}

// ---- assertions shared by the test files ----

export function sessionCookiesIn(res) {
  return res.setCookies.filter((c) => SESSION_COOKIE.test(c.name) && c.value !== '' && c.attrs['max-age'] !== '0');
}

export function assertNoSessionCookieSet(res) {
  const set = sessionCookiesIn(res);
  assert.equal(set.length, 0, `expected no session cookie, got: ${set.map((c) => c.raw).join(' | ')}`);
}

export function assertRedirectsToIdp(res, s, msg = '') {
  assert.equal(res.status, 302, `${msg} expected 302 to the IdP, got ${res.status} ${res.location ?? ''}\n${res.body.slice(0, 500)}`);
  assert.ok(res.location?.startsWith(s.authorizeUrl()), `${msg} expected Location at ${s.authorizeUrl()}, got ${res.location}`);
}

export function assertUnauthenticatedJson(res, msg = '') {
  assert.equal(res.status, 401, `${msg} expected 401, got ${res.status} ${res.location ?? ''}`);
  assert.match(res.headers['content-type'] ?? '', /json/, msg);
  assert.equal(res.json().error, 'unauthenticated', msg);
}

/** The session cookie header value for `host` from a jar (all chunks, in order). */
export function sessionCookieHeader(jar, host) {
  return Object.entries(jar.all(host))
    .filter(([k]) => SESSION_COOKIE.test(k))
    .map(([k, v]) => `${k}=${v}`)
    .join('; ');
}
