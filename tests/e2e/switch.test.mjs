// "Sign out and switch account" (issue 14, first use): the next sign-in asks the IdP to let
// the person choose (prompt=login for an OIDC provider, select_account for Google) instead
// of signing the same account straight back in from the IdP's own session. Real IdP
// (oidc-provider, which keeps its session in a cookie), real TLS.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { findIdpLoginForm } from '../harness/client.mjs';
import { startStack } from '../harness/stack.mjs';

const ONLY_BOB = 'other.localhost';
let s;

before(async () => {
  s = await startStack();
});
after(async () => s?.stop());

/** Alice, signed in, on the route only bob may use: the 403 page and its switch form's token. */
async function aliceRefused(c) {
  const { response } = await c.login('alice', 'alice-pass', s.gh.main.url(ONLY_BOB, '/'));
  assert.equal(response.status, 403, `alice is refused on ${ONLY_BOB}`);
  const m = /<input type="hidden" name="csrf_token" value="([^"]+)"><input type="hidden" name="switch" value="1">/.exec(response.body);
  assert.ok(m, 'the 403 page offers "Sign out and switch account"');
  return m[1];
}

test('after "Sign out and switch account" the IdP shows its login form, and another account gets in', async () => {
  const c = s.client();
  const csrf = await aliceRefused(c);
  const out = await c.post(s.gh.main.url(ONLY_BOB, '/.gatehouse/sign_out'), { csrf_token: csrf, switch: '1' }, { headers: { origin: s.gh.main.url(ONLY_BOB, '').replace(/\/$/, '') } });
  assert.equal(out.status, 302, out.body.slice(0, 200));
  assert.ok(out.setCookies.some((k) => k.name === '_pomerium_switch' && k.value === '1'), 'the switch marker is set');

  const start = await c.get(s.gh.main.url(ONLY_BOB, '/'));
  assert.equal(start.status, 302);
  assert.equal(new URL(start.location).searchParams.get('prompt'), 'login', `the IdP is asked to show its login form: ${start.location}`);
  assert.ok(start.setCookies.some((k) => k.name === '_pomerium_switch' && k.attrs['max-age'] === '0'), 'the marker is used once');
  const { response } = await c.follow(start.location);
  assert.ok(findIdpLoginForm(response.body), 'the IdP shows its login form although alice is still signed in there');

  // That form, filled in as bob, brings bob back to the route.
  const { response: asBob } = await c.login('bob', 'bob-pass', start.location);
  assert.equal(asBob.status, 200, 'bob gets in');
});

test('a plain sign-out does not ask: the IdP signs the same account straight back in', async () => {
  const c = s.client();
  const csrf = await aliceRefused(c);
  const out = await c.post(s.gh.main.url(ONLY_BOB, '/.gatehouse/sign_out'), { csrf_token: csrf }, { headers: { origin: s.gh.main.url(ONLY_BOB, '').replace(/\/$/, '') } });
  assert.equal(out.status, 302);
  assert.ok(!out.setCookies.some((k) => k.name === '_pomerium_switch' && k.value === '1'));
  const start = await c.get(s.gh.main.url(ONLY_BOB, '/'));
  assert.equal(new URL(start.location).searchParams.get('prompt'), null);
  const { response } = await c.follow(start.location);
  assert.equal(response.status, 403, 'alice is back without a login form');
});
