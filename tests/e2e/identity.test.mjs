// What a signed-in person's requests carry, and which ones another site may make (issue 11):
// - an address the identity provider has not verified never speaks for the person: eve
//   (email_verified: false at the IdP) gets through a route that lets anyone signed in, but
//   the upstream receives no X-Pomerium-Claim-Email and a JWT that says email_verified: false;
// - another site's page cannot write (POST, WebSocket) to a signed-in static route with the
//   person's cookie, unless the route says its upstream serves other sites
//   (`cors_allow_preflight`).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import * as jose from 'jose';

import { startStack } from '../harness/stack.mjs';

const A = 'assistant.localhost';
const CORS = 'public.localhost';
let s;

before(async () => {
  s = await startStack({
    gatehouses: {
      main: {
        extra: ({ upstream }) => ({
          routes: [
            { from: `https://${A}`, to: upstream.url, allow_any_authenticated_user: true, pass_identity_headers: true },
            { from: `https://${CORS}`, to: upstream.url, allow_any_authenticated_user: true, cors_allow_preflight: true },
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

test('another site cannot POST or open a WebSocket to a signed-in static route', async () => {
  const c = s.client();
  await c.login('alice', 'alice-pass', s.gh.main.url(A, '/'));
  const hits = s.upstream.hits();
  const evil = { origin: 'https://evil.example', 'content-type': 'text/plain' };
  const post = await c.request(s.gh.main.url(A, '/transfer'), { method: 'POST', body: 'x', headers: evil });
  assert.equal(post.status, 403, `cross-site POST: ${post.status}`);
  const ws = await c.request(s.gh.main.url(A, '/socket'), {
    headers: { origin: 'https://evil.example', connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==' },
  });
  assert.equal(ws.status, 403, `cross-site WebSocket: ${ws.status}`);
  const site = await c.request(s.gh.main.url(A, '/transfer'), { method: 'POST', body: 'x', headers: { origin: `https://${A}:${new URL(s.gh.main.url(A, '/')).port}` } });
  assert.equal(site.status, 200, `same-origin POST: ${site.status}`);
  assert.equal(s.upstream.hits(), hits + 1, 'only the same-origin POST reached the upstream');
});

test('with cors_allow_preflight the upstream decides: cross-site POST and preflight pass', async () => {
  const c = s.client();
  await c.login('alice', 'alice-pass', s.gh.main.url(CORS, '/'));
  const hits = s.upstream.hits();
  const post = await c.request(s.gh.main.url(CORS, '/api'), { method: 'POST', body: 'x', headers: { origin: 'https://evil.example', 'content-type': 'text/plain' } });
  assert.equal(post.status, 200, `cross-site POST with the opt-out: ${post.status}`);
  const preflight = await s.client().request(s.gh.main.url(CORS, '/api'), {
    method: 'OPTIONS',
    headers: { origin: 'https://evil.example', 'access-control-request-method': 'POST' },
  });
  assert.equal(preflight.status, 200, `a preflight without a session: ${preflight.status}`);
  assert.equal(s.upstream.hits(), hits + 2);
});

test('a 64 KB header gets a 431 page and never reaches the upstream', async () => {
  const hits = s.upstream.hits();
  const r = await s.client().request(s.gh.main.url(CORS, '/x'), { headers: { 'x-big': 'a'.repeat(64 * 1024) } });
  assert.equal(r.status, 431, `status ${r.status}`);
  assert.equal(s.upstream.hits(), hits);
});
