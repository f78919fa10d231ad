// IdP ID tokens as bearer credentials (issue 13), opt-in per route with Pomerium's
// `bearer_token_format: idp_identity_token`: verified as at sign-in (signature, issuer,
// audience, expiry), decided by the route's policy like a cookie, never passed upstream.
// The ID tokens come from the real test IdP (oidc-provider) by a real code flow with PKCE;
// its test hook re-signs one with a claim changed (another audience, an old expiry).

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';

import { eventually } from '../harness/backends.mjs';
import { CLIENT_ID, startStack } from '../harness/stack.mjs';
import { request } from '../harness/client.mjs';
import { assertTokenRefused } from '../harness/tokens.mjs';

const OPT_IN = 'assistant.localhost';
const EXTRA_AUD = 'other.localhost';
const NO_OPT_IN = 'public.localhost';

describe('IdP ID tokens as bearers', () => {
  let s;
  before(async () => {
    s = await startStack({
      gatehouses: {
        main: {
          extra: ({ upstream }) => ({
            routes: [
              { from: `https://${OPT_IN}`, to: upstream.url, pass_identity_headers: true, bearer_token_format: 'idp_identity_token' },
              {
                from: `https://${EXTRA_AUD}`,
                to: upstream.url,
                pass_identity_headers: true,
                bearer_token_format: 'idp_identity_token',
                idp_token_audiences: ['cli-app'],
                allowed_users: ['bob@example.com'],
              },
              { from: `https://${NO_OPT_IN}`, to: upstream.url, pass_identity_headers: true },
            ],
          }),
        },
      },
    });
  });
  after(async () => s?.stop());

  /** An ID token for `user` by the authorization-code flow with PKCE; `tamper` changes claims. */
  async function idToken(user, tamper) {
    const verifier = randomBytes(32).toString('base64url');
    const challenge = createHash('sha256').update(verifier).digest('base64url');
    const redirect = s.gh.main.url(OPT_IN, '/.gatehouse/callback');
    const q = new URLSearchParams({
      client_id: CLIENT_ID, response_type: 'code', scope: 'openid email profile', redirect_uri: redirect,
      state: randomBytes(8).toString('hex'), nonce: randomBytes(8).toString('hex'),
      code_challenge: challenge, code_challenge_method: 'S256',
    });
    const { next } = await s.client().login(user, `${user}-pass`, `${s.authorizeUrl()}?${q}`, { stopAt: (u) => u.startsWith(redirect) });
    assert.ok(next, `the IdP sent ${user} back with a code`);
    const code = new URL(next).searchParams.get('code');
    if (tamper) {
      const t = await fetch(`${s.idp.issuer}/__test/tamper`, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(tamper),
      });
      assert.equal(t.status, 204);
    }
    const r = await fetch(`${s.idp.issuer}/token`, {
      method: 'POST',
      headers: { authorization: `Basic ${Buffer.from(`${CLIENT_ID}:${s.clientSecret}`).toString('base64')}` },
      body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: redirect, code_verifier: verifier }),
    });
    const body = await r.json();
    assert.ok(body.id_token, `token endpoint: ${JSON.stringify(body).slice(0, 200)}`);
    return body.id_token;
  }

  const bearer = (host, p, token) => request(s.gh.main.url(host, p), {
    ca: s.certs.caPem, headers: { accept: 'application/json', authorization: `Bearer ${token}` },
  });

  test('an ID token from the IdP opens an opted-in route, with the same identity headers as a cookie', async () => {
    const t = await idToken('alice');
    s.upstream.reset();
    const r = await bearer(OPT_IN, '/api/x', t);
    assert.equal(r.status, 200, r.body.slice(0, 300));
    const seen = s.upstream.last();
    assert.equal(seen.headers['x-pomerium-claim-email'], 'alice@example.com');
    assert.ok(seen.headers['x-pomerium-jwt-assertion'], 'the signed identity JWT');
    assert.equal(seen.headers.authorization, undefined, 'the ID token is consumed, not passed upstream');
    await eventually('the access line says idp-jwt', () => /credential="?idp-jwt/.test(s.gh.main.logs()), { timeoutMs: 5_000 });
  });

  test('the route\'s policy decides: a listed extra audience is accepted, a person the policy does not allow is not', async () => {
    const forCli = await idToken('bob', { aud: 'cli-app' });
    assert.equal((await bearer(EXTRA_AUD, '/', forCli)).status, 200, 'bob, audience cli-app, listed on this route');
    const aliceCli = await idToken('alice', { aud: 'cli-app' });
    const denied = await bearer(EXTRA_AUD, '/', aliceCli);
    assert.equal(denied.status, 403, 'alice is not in allowed_users');
    // The extra audience is this route's only.
    await assertTokenRefused(await bearer(OPT_IN, '/', forCli), 'idp-token-refused', 'cli-app audience on a route that does not list it');
  });

  test('wrong audience, expired, tampered and foreign tokens are refused with 401 JSON', async () => {
    await assertTokenRefused(await bearer(OPT_IN, '/', await idToken('alice', { aud: 'someone-else' })), 'idp-token-refused', 'wrong audience');
    await assertTokenRefused(await bearer(OPT_IN, '/', await idToken('alice', { exp_offset: -7200 })), 'idp-token-refused', 'expired');
    const t = await idToken('alice');
    const [h, p, sig] = t.split('.');
    const claims = JSON.parse(Buffer.from(p, 'base64url'));
    const forged = `${h}.${Buffer.from(JSON.stringify({ ...claims, email: 'bob@example.com' })).toString('base64url')}.${sig}`;
    await assertTokenRefused(await bearer(OPT_IN, '/', forged), 'idp-token-refused', 'claims changed after signing');
    await assertTokenRefused(await bearer(OPT_IN, '/', 'not-a-jwt'), 'idp-token-refused', 'garbage');
  });

  test('without the opt-in an ID token is not a credential: it passes to the app and Gatehouse asks to sign in', async () => {
    const t = await idToken('alice');
    const r = await bearer(NO_OPT_IN, '/', t);
    assert.equal(r.status, 401);
    assert.equal(r.json().error, 'unauthenticated');
  });
});
