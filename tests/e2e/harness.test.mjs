// The harness's own parts work without Gatehouse: the IdP (code flow + PKCE, claims,
// wrong password, tamper hook), the echo upstream, and the throwaway certificates.

import assert from 'node:assert/strict';
import { createHash, createPrivateKey, randomBytes, X509Certificate } from 'node:crypto';
import { after, before, test } from 'node:test';
import * as jose from 'jose';

import { makeCerts } from '../harness/certs.mjs';
import { Client, request } from '../harness/client.mjs';
import { startIdp } from '../harness/idp.mjs';
import { startUpstream } from '../harness/upstream.mjs';

const CLIENT_ID = 'harness-client';
const CLIENT_SECRET = randomBytes(16).toString('hex');
const REDIRECT_URI = 'https://assistant.localhost:1/.gatehouse/callback';

let idp;
let upstream;

before(async () => {
  idp = await startIdp({
    testHooks: true,
    clients: [{ client_id: CLIENT_ID, client_secret: CLIENT_SECRET, redirect_uris: [REDIRECT_URI] }],
  });
  upstream = await startUpstream();
});

after(async () => {
  await idp?.close();
  await upstream?.close();
});

/** Run the authorization-code flow as a relying party would; returns the token response. */
async function codeFlow({ user = 'alice', password = `${user}-pass`, verifier = randomBytes(32).toString('base64url'), tokenVerifier } = {}) {
  const discovery = await (await fetch(`${idp.issuer}/.well-known/openid-configuration`)).json();
  const state = randomBytes(8).toString('hex');
  const nonce = randomBytes(8).toString('hex');
  const auth = new URL(discovery.authorization_endpoint);
  auth.search = new URLSearchParams({
    response_type: 'code',
    client_id: CLIENT_ID,
    redirect_uri: REDIRECT_URI,
    scope: 'openid email profile',
    state,
    nonce,
    code_challenge: createHash('sha256').update(verifier).digest('base64url'),
    code_challenge_method: 'S256',
  }).toString();

  const c = new Client();
  const { next, response } = await c.login(user, password, auth.href, { stopAt: (u) => u.startsWith(REDIRECT_URI) });
  if (!next) return { loginPage: response };
  const cb = new URL(next);
  assert.equal(cb.searchParams.get('state'), state);
  const code = cb.searchParams.get('code');
  assert.ok(code, `no code in ${next}`);

  const basic = Buffer.from(`${encodeURIComponent(CLIENT_ID)}:${encodeURIComponent(CLIENT_SECRET)}`).toString('base64');
  const tokenRes = await fetch(discovery.token_endpoint, {
    method: 'POST',
    headers: { authorization: `Basic ${basic}`, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI, code_verifier: tokenVerifier ?? verifier }),
  });
  return { discovery, nonce, status: tokenRes.status, body: await tokenRes.json() };
}

test('idp: code flow with PKCE returns an ID token with email, name and groups, signed by the published key', async () => {
  const { discovery, nonce, status, body } = await codeFlow();
  assert.equal(status, 200, JSON.stringify(body));
  const jwks = jose.createRemoteJWKSet(new URL(discovery.jwks_uri));
  const { payload, protectedHeader } = await jose.jwtVerify(body.id_token, jwks, { issuer: idp.issuer, audience: CLIENT_ID });
  assert.equal(protectedHeader.kid, idp.privateJwk.kid);
  assert.equal(payload.sub, 'alice');
  assert.equal(payload.nonce, nonce);
  assert.equal(payload.email, 'alice@example.com');
  assert.equal(payload.email_verified, true);
  assert.equal(payload.name, 'Alice Example');
  assert.deepEqual(payload.groups, ['team-it', 'team-admins']);
  assert.deepEqual(discovery.code_challenge_methods_supported, ['S256']);
});

test('idp: a wrong password re-shows the login form with an error', async () => {
  const { loginPage } = await codeFlow({ user: 'alice', password: 'nope' });
  assert.equal(loginPage.status, 200);
  assert.match(loginPage.body, /Invalid login or password/);
  assert.match(loginPage.body, /name="password"/);
});

test('idp: a wrong PKCE verifier is refused at the token endpoint', async () => {
  const { status, body } = await codeFlow({ tokenVerifier: randomBytes(32).toString('base64url') });
  assert.equal(status, 400);
  assert.equal(body.error, 'invalid_grant');
});

test('idp: eve has email_verified false', async () => {
  const { body } = await codeFlow({ user: 'eve' });
  assert.equal(jose.decodeJwt(body.id_token).email_verified, false);
});

test('idp: the tamper hook re-signs only the next ID token, with the IdP key', async () => {
  await request(`${idp.issuer}/__test/tamper`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ aud: 'someone-else', exp_offset: -3600 }),
  });
  const { discovery, body } = await codeFlow();
  const jwks = jose.createRemoteJWKSet(new URL(discovery.jwks_uri));
  const { payload } = await jose.jwtVerify(body.id_token, jwks, { issuer: idp.issuer, currentDate: new Date(Date.now() - 7200_000) });
  assert.equal(payload.aud, 'someone-else');
  assert.ok(payload.exp < Date.now() / 1000 - 3000);

  const second = await codeFlow();
  assert.equal(jose.decodeJwt(second.body.id_token).aud, CLIENT_ID);
});

test('upstream: echoes JSON headers, greets by email in HTML, counts hits, streams /sse', async () => {
  upstream.reset();
  const r = await request(`${upstream.url}/x?y=1`, { headers: { accept: 'application/json', 'X-Test': 'a' } });
  assert.equal(r.status, 200);
  assert.deepEqual({ method: r.json().method, url: r.json().url, x: r.json().headers['x-test'] }, { method: 'GET', url: '/x?y=1', x: 'a' });
  const html = await request(`${upstream.url}/`, { headers: { accept: 'text/html', 'x-pomerium-claim-email': '<b>a@example.com</b>' } });
  assert.match(html.body, /Hello &lt;b&gt;a@example.com&lt;\/b&gt;/);
  assert.equal(upstream.hits(), 2);
  assert.equal(upstream.last().headers['x-pomerium-claim-email'], '<b>a@example.com</b>');
  const t0 = Date.now();
  const sse = await request(`${upstream.url}/sse`, { headers: { accept: 'text/event-stream' } });
  assert.equal((sse.body.match(/^event: tick$/gm) ?? []).length, 5);
  assert.ok(Date.now() - t0 >= 800);
});

test('certs: leaf covers every test host and 127.0.0.1 and chains to the throwaway CA', async () => {
  const certs = await makeCerts();
  const { readFileSync } = await import('node:fs');
  const leaf = new X509Certificate(readFileSync(certs.cert));
  const ca = new X509Certificate(certs.caPem);
  assert.ok(leaf.verify(ca.publicKey));
  for (const h of ['assistant.localhost', 'auth.localhost', 'public.localhost', 'other.localhost', 'localhost']) {
    assert.ok(leaf.checkHost(h), h);
  }
  assert.ok(leaf.checkIP('127.0.0.1'));
  // The key is EC P-256 in PKCS#8 PEM: re-exporting it as such gives the file back.
  const keyPem = readFileSync(certs.key, 'utf8');
  const key = createPrivateKey(keyPem);
  assert.equal(key.asymmetricKeyType, 'ec');
  assert.equal(key.asymmetricKeyDetails.namedCurve, 'prime256v1');
  assert.equal(key.export({ type: 'pkcs8', format: 'pem' }), keyPem);
});
