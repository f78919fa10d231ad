// An address the identity provider has not verified never speaks for the person (issue 11):
// on a route that lets any signed-in person in, eve (email_verified: false at the IdP) gets
// through, but the upstream receives no X-Pomerium-Claim-Email and a JWT that says
// email_verified: false; alice's verified address is passed as before.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import * as jose from 'jose';

import { startStack } from '../harness/stack.mjs';

const A = 'assistant.localhost';
let s;

before(async () => {
  s = await startStack({
    gatehouses: {
      main: {
        extra: ({ upstream }) => ({
          routes: [
            { from: `https://${A}`, to: upstream.url, allow_any_authenticated_user: true, pass_identity_headers: true },
          ],
        }),
      },
    },
  });
});
after(async () => {
  await s?.stop();
});

async function upstreamHeadersFor(user) {
  const c = s.client();
  const { response } = await c.login(user, `${user}-pass`, s.gh.main.url(A, '/whoami'));
  assert.equal(response.status, 200, `${user}: ${response.status}`);
  return s.upstream.last().headers;
}

test('a verified address is passed in the header and the JWT', async () => {
  const h = await upstreamHeadersFor('alice');
  assert.equal(h['x-pomerium-claim-email'], 'alice@example.com');
  const jwt = jose.decodeJwt(h['x-pomerium-jwt-assertion']);
  assert.equal(jwt.email, 'alice@example.com');
  assert.equal(jwt.email_verified, true);
});

test('an unverified address is not sent as the person\'s email, and the JWT says so', async () => {
  const h = await upstreamHeadersFor('eve');
  assert.equal(h['x-pomerium-claim-email'], undefined, 'an unverified address was sent as X-Pomerium-Claim-Email');
  assert.ok(h['x-pomerium-claim-user'], 'the person is still identified by their IdP subject');
  const jwt = jose.decodeJwt(h['x-pomerium-jwt-assertion']);
  assert.equal(jwt.email_verified, false);
});
