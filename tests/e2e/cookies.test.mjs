// A session cookie that is not exactly what this Gatehouse sealed is no session at all:
// the browser goes to the IdP, an API call gets 401, and the upstream is never hit.

import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';

import { assertRedirectsToIdp, assertUnauthenticatedJson, sessionCookieHeader, startStack } from '../harness/stack.mjs';

const A = 'assistant.localhost';
let s;

before(async () => {
  s = await startStack({
    gatehouses: {
      main: {},
      otherKey: {}, // same IdP and routes, its own random cookie_secret
      short: { cookieExpire: '3s' },
    },
  });
});

after(async () => {
  await s?.stop();
});

async function sessionFor(name, user = 'alice') {
  const c = s.client();
  const { response } = await c.login(user, `${user}-pass`, s.gh[name].url(A, '/'));
  assert.equal(response.status, 200, `login on ${name}: ${response.status}`);
  return { c, cookie: sessionCookieHeader(c.jar, A), value: c.jar.get(A, '_pomerium') };
}

/** Send `cookie` (a full Cookie header) to `name` as a browser and as an API client. */
async function assertNoSession(name, cookie) {
  const gh = s.gh[name];
  const hits = s.upstream.hits();
  const browser = await s.client().get(gh.url(A, '/private'), { cookies: cookie });
  assertRedirectsToIdp(browser, s, 'browser:');
  const api = await s.client().get(gh.url(A, '/api/private'), { cookies: cookie, headers: { accept: 'application/json' } });
  assertUnauthenticatedJson(api, 'API:');
  assert.equal(s.upstream.hits(), hits, 'the upstream was hit');
}

const flip = (v, i = Math.floor(v.length / 2)) => `${v.slice(0, i)}${v[i] === 'A' ? 'B' : 'A'}${v.slice(i + 1)}`;

test('an untouched session cookie is accepted (control for the refusals below)', async () => {
  const { cookie } = await sessionFor('main');
  const hits = s.upstream.hits();
  const r = await s.client().get(s.gh.main.url(A, '/private'), { cookies: cookie, headers: { accept: 'application/json' } });
  assert.equal(r.status, 200);
  assert.equal(s.upstream.hits(), hits + 1);
});

test('a session cookie with one character changed is treated as no session', async () => {
  const { c, value } = await sessionFor('main');
  const rest = sessionCookieHeader(c.jar, A).split('; ').filter((p) => !p.startsWith('_pomerium='));
  for (const i of [0, Math.floor(value.length / 2), value.length - 1]) {
    await assertNoSession('main', [`_pomerium=${flip(value, i)}`, ...rest].join('; '));
  }
});

test('a truncated session cookie is treated as no session', async () => {
  const { c, value } = await sessionFor('main');
  const rest = sessionCookieHeader(c.jar, A).split('; ').filter((p) => !p.startsWith('_pomerium='));
  await assertNoSession('main', [`_pomerium=${value.slice(0, -8)}`, ...rest].join('; '));
  await assertNoSession('main', `_pomerium=${value.slice(0, 20)}`);
});

test('a session cookie sealed by a Gatehouse with another cookie_secret is treated as no session', async () => {
  const { cookie } = await sessionFor('otherKey');
  const ok = await s.client().get(s.gh.otherKey.url(A, '/x'), { cookies: cookie, headers: { accept: 'application/json' } });
  assert.equal(ok.status, 200, 'the cookie works where it was made');
  await assertNoSession('main', cookie);
});

test('an expired session cookie is treated as no session', async () => {
  const { cookie } = await sessionFor('short');
  const fresh = await s.client().get(s.gh.short.url(A, '/x'), { cookies: cookie, headers: { accept: 'application/json' } });
  assert.equal(fresh.status, 200, 'valid right after sign-in');
  await sleep(4_000);
  await assertNoSession('short', cookie);
});

test('the login-state cookie moved into the session cookie name is refused', async () => {
  const start = await s.client().get(s.gh.main.url(A, '/x'));
  const login = start.setCookies.find((c) => c.name === '_pomerium_login');
  assert.ok(login?.value, '_pomerium_login set');
  await assertNoSession('main', `_pomerium=${login.value}`);
});

test('a session cookie moved into another cookie name is not a session', async () => {
  const { value } = await sessionFor('main');
  await assertNoSession('main', `_pomerium_login=${value}`);
  await assertNoSession('main', `_pomerium_csrf=${value}`);
});

test('a session too big for one cookie is split into _pomerium, _pomerium_1, … and works', async () => {
  const c = s.client();
  const { response, chain } = await c.login('carol', 'carol-pass', s.gh.main.url(A, '/many-groups'));
  assert.equal(response.status, 200);
  const callback = chain.find((r) => new URL(r.url).pathname === '/.gatehouse/callback');
  const names = callback.setCookies.filter((x) => x.value && /^_pomerium(_\d+)?$/.test(x.name)).map((x) => x.name);
  assert.ok(names.includes('_pomerium') && names.includes('_pomerium_1'), `chunked: ${names.join(', ')}`);
  for (const x of callback.setCookies.filter((y) => names.includes(y.name))) {
    assert.ok(x.value.length <= 3600, `${x.name} is ${x.value.length} bytes`);
  }
  const groups = s.upstream.last().headers['x-pomerium-claim-groups'].split(',');
  assert.equal(groups.length, 150);
  assert.equal(groups[149], 'project-group-149');
  // Without its second chunk the session is no session.
  const first = sessionCookieHeader(c.jar, A).split('; ').filter((p) => !p.startsWith('_pomerium_1='));
  await assertNoSession('main', first.join('; '));
});
