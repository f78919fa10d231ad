// The IdP rotates its signing key: Gatehouse has cached the old JWKS, sees an ID token with a
// `kid` it does not know, fetches the JWKS again and accepts the token. Refetches are rate
// limited (at most one per 10 s), so the test waits that long after the first sign-in.

import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';

import { startIdp } from '../harness/idp.mjs';
import { CLIENT_ID, redirectUrisFor, startStack } from '../harness/stack.mjs';

const A = 'assistant.localhost';
let s;
let rotated;

before(async () => {
  s = await startStack({ testHooks: false });
});

after(async () => {
  await rotated?.close();
  await s?.stop();
});

test('after the IdP rotates its signing key, the next sign-in still works (JWKS refetched on unknown kid)', async () => {
  const first = await s.client().login('alice', 'alice-pass', s.gh.main.url(A, '/before-rotation'));
  assert.equal(first.response.status, 200);
  const oldKid = s.idp.publicJwk.kid;

  // Same issuer (same port), new key.
  const port = Number(new URL(s.idp.issuer).port);
  await s.idp.close();
  rotated = await startIdp({
    port,
    clients: [{ client_id: CLIENT_ID, client_secret: s.clientSecret, redirect_uris: redirectUrisFor(s.specs.main.port) }],
  });
  assert.notEqual(rotated.publicJwk.kid, oldKid);
  await sleep(10_500);

  const hits = s.upstream.hits();
  const second = await s.client().login('alice', 'alice-pass', s.gh.main.url(A, '/after-rotation'));
  assert.equal(second.response.status, 200, `sign-in after rotation: ${second.response.status} ${second.response.body?.slice?.(0, 200)}`);
  assert.equal(s.upstream.hits(), hits + 1);
  assert.equal(s.upstream.last().headers['x-pomerium-claim-email'], 'alice@example.com');
  assert.match(s.gh.main.logs(), /identity provider keys refreshed/);
});
