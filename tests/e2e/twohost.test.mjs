// Two-host mode: sign-in happens on auth.localhost (authenticate_service_url), and the
// route host receives its session through a sealed one-time handoff.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { assertNoSessionCookieSet, assertRedirectsToIdp, sessionCookiesIn, startStack } from '../harness/stack.mjs';

const A = 'assistant.localhost';
let s;
let gh;

before(async () => {
  s = await startStack({ gatehouses: { two: { twoHost: true } } });
  gh = s.gh.two;
});

after(async () => {
  await s?.stop();
});

test('a route host sends a browser without a session to the auth host with the original URL as return_url', async () => {
  const start = gh.url(A, '/two/path?y=2');
  const r = await s.client().get(start);
  assert.equal(r.status, 302);
  const loc = new URL(r.location);
  assert.equal(loc.origin, gh.url('auth.localhost', '').replace(/\/$/, ''));
  assert.equal(loc.pathname, '/.gatehouse/sign_in');
  assert.equal(loc.searchParams.get('return_url'), start);
});

test('the auth host sets _pomerium_login and sends the browser to the IdP with its own /oauth2/callback', async () => {
  const start = gh.url(A, '/two/path?y=2');
  const r = await s.client().get(gh.url('auth.localhost', `/.gatehouse/sign_in?return_url=${encodeURIComponent(start)}&binding=some-binding`));
  assertRedirectsToIdp(r, s);
  const q = new URL(r.location).searchParams;
  assert.equal(q.get('redirect_uri'), gh.url('auth.localhost', '/oauth2/callback'));
  assert.equal(q.get('code_challenge_method'), 'S256');
  const login = r.setCookies.find((c) => c.name === '_pomerium_login');
  assert.ok(login?.value && login.attrs.secure && login.attrs.httponly, 'Secure HttpOnly _pomerium_login');
});

test('two-host sign-in hands the session to the route host and lands on the original URL', async () => {
  const start = gh.url(A, '/two/path?y=2');
  const c = s.client();
  const { response, chain } = await c.login('alice', 'alice-pass', start);
  const handoff = chain.find((r) => new URL(r.url).hostname === A && new URL(r.url).pathname === '/.gatehouse/callback');
  assert.ok(handoff, `went through ${A}/.gatehouse/callback: ${chain.map((r) => r.url).join('\n')}`);
  assert.ok(new URL(handoff.url).searchParams.get('handoff'), 'with a handoff token');
  assert.equal(handoff.status, 302);
  assert.equal(handoff.location, start);
  assert.ok(sessionCookiesIn(handoff).length >= 1, 'route host sets _pomerium');
  assert.equal(response.status, 200);
  assert.equal(response.url, start);
  assert.equal(s.upstream.last().headers['x-pomerium-claim-email'], 'alice@example.com');
});

test('a handoff URL replayed in another browser does not create a session', async () => {
  const start = gh.url(A, '/two/replay');
  const c = s.client();
  const { chain } = await c.login('alice', 'alice-pass', start);
  const handoff = chain.find((r) => new URL(r.url).pathname === '/.gatehouse/callback' && new URL(r.url).hostname === A);
  assert.ok(handoff);
  const hits = s.upstream.hits();
  const replay = await s.client().get(handoff.url);
  assert.notEqual(replay.status, 200);
  assertNoSessionCookieSet(replay);
  assert.equal(s.upstream.hits(), hits);
});

test('a return_url to a host that is not a configured route is refused with 400, never redirected', async () => {
  for (const evil of ['https://evil.test/', 'https://evil.test:443/x', '//evil.test/', 'https://assistant.localhost.evil.test/']) {
    const r = await s.client().get(gh.url('auth.localhost', `/.gatehouse/sign_in?return_url=${encodeURIComponent(evil)}&binding=some-binding`));
    assert.equal(r.status, 400, `${evil}: got ${r.status} ${r.location ?? ''}`);
    assert.ok(!r.location || !r.location.includes('evil.test'), `${evil}: Location ${r.location}`);
  }
});
