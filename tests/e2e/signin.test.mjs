// Sign-in, identity headers, pages and refusals, driven by a plain HTTPS client against the
// real Gatehouse binary, the real test IdP and the echo upstream (single-host mode: each
// route host runs its own callback at /.gatehouse/callback).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import * as jose from 'jose';

import { request } from '../harness/client.mjs';
import {
  assertNoSessionCookieSet,
  assertRedirectsToIdp,
  assertUnauthenticatedJson,
  sessionCookiesIn,
  startStack,
} from '../harness/stack.mjs';

let s;
let gh;
const A = 'assistant.localhost';
const JSON_ACCEPT = { accept: 'application/json' };

before(async () => {
  s = await startStack({ gatehouses: { main: {} } });
  gh = s.gh.main;
});

after(async () => {
  await s?.stop();
});

/** A client signed in as `user` on `host`. */
async function signedIn(user = 'alice', host = A) {
  const c = s.client();
  const { response } = await c.login(user, `${user}-pass`, gh.url(host, '/'));
  assert.equal(response.status, 200, `login as ${user} on ${host} ended with ${response.status}: ${response.body.slice(0, 300)}`);
  return c;
}

const isCallback = (u) => new URL(u).pathname === '/.gatehouse/callback';

/** Run a login up to (not including) the callback; `mutate` may rewrite the callback URL. */
async function callbackWith({ user = 'alice', tamper, mutate = (u) => u } = {}) {
  const c = s.client();
  const start = gh.url(A, '/callback-test');
  if (tamper) {
    const t = await request(`${s.idp.issuer}/__test/tamper`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(tamper),
    });
    assert.equal(t.status, 204);
  }
  try {
    const { next } = await c.login(user, `${user}-pass`, start, { stopAt: isCallback });
    assert.ok(next, 'the IdP did not redirect to the Gatehouse callback');
    const loginCookie = c.jar.get(A, '_pomerium_login');
    const hits = s.upstream.hits();
    const res = await c.get(mutate(next));
    return { c, res, start, next, hits, loginCookie };
  } finally {
    s.idp.tamperNext(null);
  }
}

async function assertSignInFailed({ c, res, start, hits }) {
  assert.equal(res.status, 400, `expected 400, got ${res.status} ${res.location ?? ''}`);
  assert.match(res.headers['content-type'] ?? '', /text\/html/);
  assert.match(res.body, /Sign-in failed/);
  assertNoSessionCookieSet(res);
  assert.equal(s.upstream.hits(), hits, 'the upstream was hit');
  assertRedirectsToIdp(await c.get(start), s, 'after a failed callback there is still no session:');
}

// ---- the happy path ----

test('a browser request without a session is redirected to the IdP with code flow, PKCE S256, state and nonce', async () => {
  const hits = s.upstream.hits();
  const res = await s.client().get(gh.url(A, '/some/path?x=1'));
  assertRedirectsToIdp(res, s);
  const q = new URL(res.location).searchParams;
  assert.equal(q.get('response_type'), 'code');
  assert.equal(q.get('client_id'), 'gatehouse');
  assert.equal(q.get('redirect_uri'), gh.url(A, '/.gatehouse/callback'));
  assert.ok(q.get('scope').split(' ').includes('openid'), q.get('scope'));
  assert.ok(q.get('state')?.length >= 16, 'state');
  assert.ok(q.get('nonce')?.length >= 16, 'nonce');
  assert.match(q.get('code_challenge') ?? '', /^[A-Za-z0-9_-]{43}$/);
  assert.equal(q.get('code_challenge_method'), 'S256');
  const login = res.setCookies.find((c) => c.name === '_pomerium_login');
  assert.ok(login?.value, 'sets _pomerium_login');
  assert.ok(login.attrs.secure, '_pomerium_login is Secure');
  assert.ok(login.attrs.httponly, '_pomerium_login is HttpOnly');
  assert.equal(s.upstream.hits(), hits);
});

test('an API call without a session gets 401 JSON, not a redirect', async () => {
  const hits = s.upstream.hits();
  assertUnauthenticatedJson(await s.client().get(gh.url(A, '/api/x'), { headers: JSON_ACCEPT }), 'Accept: application/json');
  assertUnauthenticatedJson(
    await s.client().get(gh.url(A, '/api/x'), { headers: { authorization: 'Bearer not-a-token' } }),
    'Authorization header:',
  );
  assert.equal(s.upstream.hits(), hits);
});

test('signing in sets a Secure HttpOnly SameSite=Lax session cookie and returns to the exact original URL', async () => {
  const start = gh.url(A, '/some/path?x=1');
  const c = s.client();
  const { response, chain } = await c.login('alice', 'alice-pass', start);
  const cb = chain.find((r) => new URL(r.url).pathname === '/.gatehouse/callback');
  assert.ok(cb, 'went through /.gatehouse/callback');
  assert.equal(cb.status, 302);
  assert.equal(cb.location, start);
  const set = sessionCookiesIn(cb);
  assert.ok(set.length >= 1, 'callback sets _pomerium');
  assert.equal(set[0].name, '_pomerium');
  for (const ck of set) {
    assert.ok(ck.attrs.secure, `${ck.name} Secure`);
    assert.ok(ck.attrs.httponly, `${ck.name} HttpOnly`);
    assert.equal(String(ck.attrs.samesite).toLowerCase(), 'lax', `${ck.name} SameSite=Lax`);
  }
  assert.equal(response.status, 200);
  assert.equal(response.url, start);
  assert.match(response.body, /Hello alice@example\.com/);
  assert.equal(s.upstream.last().url, '/some/path?x=1');
});

test('the upstream receives the identity headers and a JWT that verifies against the JWKS', async () => {
  const c = await signedIn('alice');
  const r = await c.get(gh.url(A, '/api/whoami'), { headers: JSON_ACCEPT });
  assert.equal(r.status, 200);
  const h = s.upstream.last().headers;
  assert.equal(h['x-pomerium-claim-email'], 'alice@example.com');
  assert.equal(h['x-pomerium-claim-user'], 'alice');
  assert.equal(h['x-pomerium-claim-groups'], 'team-it,team-admins');
  const jwt = h['x-pomerium-jwt-assertion'];
  assert.ok(jwt, 'x-pomerium-jwt-assertion');

  // Fetched without a session, from another route host.
  const jwksRes = await s.client().get(gh.url('public.localhost', '/.well-known/pomerium/jwks.json'), { headers: JSON_ACCEPT });
  assert.equal(jwksRes.status, 200);
  const { payload, protectedHeader } = await jose.jwtVerify(jwt, jose.createLocalJWKSet(jwksRes.json()), {
    audience: 'assistant.localhost',
    algorithms: ['ES256'],
  });
  assert.ok(protectedHeader.kid, 'kid');
  const now = Date.now() / 1000;
  assert.ok(payload.iss, 'iss');
  assert.equal(payload.sub, 'alice');
  assert.equal(payload.user, 'alice');
  assert.equal(payload.email, 'alice@example.com');
  assert.equal(payload.name, 'Alice Example');
  assert.deepEqual(payload.groups, ['team-it', 'team-admins']);
  assert.ok(payload.jti, 'jti');
  assert.ok(payload.iat <= now + 5, 'iat');
  assert.ok(payload.exp > now && payload.exp <= now + 3600 + 5, `exp within 1 h: ${payload.exp - now}`);
});

test('the public route is reachable without signing in', async () => {
  const hits = s.upstream.hits();
  const r = await s.client().get(gh.url('public.localhost', '/open'), { headers: JSON_ACCEPT });
  assert.equal(r.status, 200);
  assert.equal(s.upstream.hits(), hits + 1);
  assert.equal(r.json().url, '/open');
});

test('client-sent X-Pomerium-* headers never reach the upstream on a public route', async () => {
  const r = await s.client().get(gh.url('public.localhost', '/spoof'), {
    headers: {
      ...JSON_ACCEPT,
      'X-Pomerium-Claim-Email': 'ceo@example.com',
      'x-pomerium-jwt-assertion': 'forged',
      'X-POMERIUM-CLAIM-GROUPS': 'team-admins',
      'x-Pomerium-Anything': '1',
    },
  });
  assert.equal(r.status, 200);
  const leaked = Object.keys(s.upstream.last().headers).filter((k) => k.startsWith('x-pomerium-'));
  assert.deepEqual(leaked, []);
});

test('client-sent X-Pomerium-* headers are replaced by the real identity on an authenticated route', async () => {
  const c = await signedIn('bob');
  const r = await c.get(gh.url(A, '/spoof'), {
    headers: {
      ...JSON_ACCEPT,
      'X-Pomerium-Claim-Email': 'alice@example.com',
      'X-POMERIUM-CLAIM-GROUPS': 'team-admins',
      'x-pomerium-jwt-assertion': 'forged',
      'X-Pomerium-Claim-Extra': 'spoofed',
    },
  });
  assert.equal(r.status, 200);
  const h = s.upstream.last().headers;
  assert.equal(h['x-pomerium-claim-email'], 'bob@example.com');
  assert.equal(h['x-pomerium-claim-groups'], 'team-it');
  assert.notEqual(h['x-pomerium-jwt-assertion'], 'forged');
  assert.equal(h['x-pomerium-claim-extra'], undefined);
  assert.equal(jose.decodeJwt(h['x-pomerium-jwt-assertion']).email, 'bob@example.com');
});

// ---- endpoints and pages ----

test('/.gatehouse/health answers 200 without a session on every host', async () => {
  for (const host of [A, 'public.localhost', 'other.localhost', 'auth.localhost', 'localhost']) {
    const r = await s.client().get(gh.url(host, '/.gatehouse/health'));
    assert.equal(r.status, 200, host);
  }
});

test('an unknown host gets a 404 page and never reaches the upstream', async () => {
  const hits = s.upstream.hits();
  const r = await s.client().get(gh.url('localhost', '/anything'));
  assert.equal(r.status, 404);
  assert.match(r.headers['content-type'] ?? '', /text\/html/);
  assert.equal(s.upstream.hits(), hits);
});

test('the user page shows email, name, groups, expiry and a sign-out form with a CSRF token', async () => {
  const c = await signedIn('alice');
  for (const prefix of ['/.gatehouse/', '/.pomerium/']) {
    const r = await c.get(gh.url(A, prefix));
    assert.equal(r.status, 200, prefix);
    assert.match(r.headers['content-type'] ?? '', /text\/html/);
    assert.match(r.body, /alice@example\.com/);
    assert.match(r.body, /Alice Example/);
    assert.match(r.body, /team-it/);
    assert.match(r.body, /team-admins/);
    assert.match(r.body, /<form[^>]*method="post"[^>]*action="\/\.gatehouse\/sign_out"|<form[^>]*action="\/\.gatehouse\/sign_out"[^>]*method="post"/i);
    assert.match(r.body, /<input[^>]*name="csrf_token"[^>]*>/);
    // Session expiry, shown as a date-time in the future.
    const when = /\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2})?(Z|[+-]\d{2}:?\d{2}| UTC)?/.exec(r.body);
    assert.ok(when && Date.parse(when[0].replace(' UTC', 'Z')) > Date.now(), `shows the session expiry: ${when?.[0]}`);
  }
});

test('/.gatehouse/user returns the session as JSON (and /.pomerium/user is an alias)', async () => {
  const c = await signedIn('alice');
  for (const p of ['/.gatehouse/user', '/.pomerium/user']) {
    const r = await c.get(gh.url(A, p), { headers: JSON_ACCEPT });
    assert.equal(r.status, 200, p);
    const u = r.json();
    assert.equal(u.email, 'alice@example.com');
    assert.equal(u.name, 'Alice Example');
    assert.equal(u.user, 'alice');
    assert.deepEqual(u.groups, ['team-it', 'team-admins']);
    const exp = typeof u.expires_at === 'number' ? u.expires_at * 1000 : Date.parse(u.expires_at);
    assert.ok(exp > Date.now(), `expires_at in the future: ${u.expires_at}`);
  }
});

function csrfFrom(body) {
  const m = /<input[^>]*name="csrf_token"[^>]*value="([^"]*)"|<input[^>]*value="([^"]*)"[^>]*name="csrf_token"/.exec(body);
  return m?.[1] ?? m?.[2];
}

test('sign-out without a CSRF token is refused with 403 and the session keeps working', async () => {
  const c = await signedIn('alice');
  const r = await c.post(gh.url(A, '/.gatehouse/sign_out'), {});
  assert.equal(r.status, 403);
  assert.equal((await c.get(gh.url(A, '/still-in'), { headers: JSON_ACCEPT })).status, 200);
});

test('sign-out with a wrong CSRF token is refused with 403 and the session keeps working', async () => {
  const c = await signedIn('alice');
  const other = await signedIn('bob');
  const bobsToken = csrfFrom((await other.get(gh.url(A, '/.gatehouse/'))).body);
  for (const token of ['wrong', bobsToken]) {
    const r = await c.post(gh.url(A, '/.gatehouse/sign_out'), { csrf_token: token });
    assert.equal(r.status, 403, `token ${token === bobsToken ? "(bob's)" : token}`);
  }
  assert.equal((await c.get(gh.url(A, '/still-in'), { headers: JSON_ACCEPT })).status, 200);
});

test('sign-out with the right CSRF token clears the session and shows the signed-out page', async () => {
  const c = await signedIn('alice');
  const token = csrfFrom((await c.get(gh.url(A, '/.gatehouse/'))).body);
  assert.ok(token, 'csrf_token on the user page');
  const r = await c.post(gh.url(A, '/.gatehouse/sign_out'), { csrf_token: token });
  assert.equal(r.status, 302);
  assert.equal(new URL(r.location).pathname, '/.gatehouse/signed_out');
  const cleared = r.setCookies.find((ck) => ck.name === '_pomerium');
  assert.ok(cleared && cleared.value === '' && cleared.attrs['max-age'] === '0', `clears _pomerium: ${r.headers['set-cookie']}`);
  const page = await c.get(r.location);
  assert.equal(page.status, 200);
  assert.match(page.body, /signed out/i);
  assertRedirectsToIdp(await c.get(gh.url(A, '/after')), s, 'after sign-out:');
});

// ---- policy refusals ----

test('a policy denial shows a 403 page with the email, the reason and a sign-out form', async () => {
  const c = s.client();
  const hits = s.upstream.hits();
  const { response } = await c.login('alice', 'alice-pass', gh.url('other.localhost', '/secret'));
  assert.equal(response.status, 403);
  assert.match(response.headers['content-type'] ?? '', /text\/html/);
  assert.match(response.body, /alice@example\.com/);
  assert.match(response.body, /action="\/\.gatehouse\/sign_out"/);
  assert.match(response.body, /name="csrf_token"/);
  assert.match(response.body, /reason|not allowed|denied|policy/i);
  assert.equal(s.upstream.hits(), hits);
});

test('bob is let in by the email policy on other.localhost', async () => {
  const c = s.client();
  const { response } = await c.login('bob', 'bob-pass', gh.url('other.localhost', '/secret'));
  assert.equal(response.status, 200);
  assert.equal(s.upstream.last().url, '/secret');
});

test('a user outside allowed_domains is refused with a 403 page', async () => {
  const hits = s.upstream.hits();
  const { response } = await s.client().login('mallory', 'mallory-pass', gh.url(A, '/'));
  assert.equal(response.status, 403);
  assert.match(response.body, /mallory@evil\.test/);
  assert.equal(s.upstream.hits(), hits);
});

test('a user whose email is not verified signs in but gets a 403 page saying so', async () => {
  const hits = s.upstream.hits();
  const { response } = await s.client().login('eve', 'eve-pass', gh.url(A, '/'));
  assert.equal(response.status, 403);
  assert.match(response.body, /eve@example\.com/);
  assert.match(response.body, /not verified|unverified/i);
  assert.equal(s.upstream.hits(), hits);
});

// ---- callback refusals ----

test('a callback with a changed state is refused: 400 Sign-in failed and no session', async () => {
  await assertSignInFailed(await callbackWith({
    mutate: (u) => {
      const url = new URL(u);
      const st = url.searchParams.get('state');
      url.searchParams.set('state', `${st.slice(0, -1)}${st.endsWith('A') ? 'B' : 'A'}`);
      return url.href;
    },
  }));
});

test('a replayed callback (same code, state and login cookie) is refused', async () => {
  const first = await callbackWith();
  assert.equal(first.res.status, 302, 'the first callback succeeds');
  assert.ok(first.loginCookie, '_pomerium_login was set before the callback');
  const replay = s.client();
  replay.jar.set(A, '_pomerium_login', first.loginCookie);
  const hits = s.upstream.hits();
  const res = await replay.get(first.next);
  await assertSignInFailed({ c: replay, res, start: first.start, hits });
});

test('a callback without the login-state cookie is refused', async () => {
  const c = s.client();
  const start = gh.url(A, '/no-login-cookie');
  const { next } = await c.login('alice', 'alice-pass', start, { stopAt: isCallback });
  const fresh = s.client();
  const hits = s.upstream.hits();
  await assertSignInFailed({ c: fresh, res: await fresh.get(next), start, hits });
});

for (const [name, tamper] of [
  ['a wrong nonce', { nonce: 'wrong' }],
  ['a wrong audience', { aud: 'someone-else' }],
  ['a wrong issuer', { iss: 'http://evil' }],
  ['an expired ID token', { exp_offset: -3600 }],
]) {
  test(`an ID token with ${name} is refused: 400 Sign-in failed and no session`, async () => {
    await assertSignInFailed(await callbackWith({ tamper }));
  });
}

test('an authorization code from another login attempt is refused (PKCE verifier and nonce do not match)', async () => {
  // The victim's unredeemed code, replayed in the attacker's browser, whose login-state
  // cookie holds a different PKCE verifier and nonce.
  const victim = s.client();
  const { next: victimNext } = await victim.login('alice', 'alice-pass', gh.url(A, '/victim'), { stopAt: isCallback });
  const attacker = s.client();
  const start = gh.url(A, '/attacker');
  const { next } = await attacker.login('bob', 'bob-pass', start, { stopAt: isCallback });
  const injected = new URL(next);
  injected.searchParams.set('code', new URL(victimNext).searchParams.get('code'));
  const hits = s.upstream.hits();
  await assertSignInFailed({ c: attacker, res: await attacker.get(injected.href), start, hits });
});

// ---- plain HTTP ----

test('plain HTTP on the redirect port answers 308 to https with the same path, never upstream content', async () => {
  const hits = s.upstream.hits();
  const r = await request(`http://assistant.localhost:${gh.redirectPort}/some/path?x=1`);
  assert.ok([301, 308].includes(r.status), `status ${r.status}`);
  assert.equal(r.location, `https://assistant.localhost:${gh.port}/some/path?x=1`);
  assert.doesNotMatch(r.body, /Hello|x-pomerium/i);
  assert.equal(s.upstream.hits(), hits);
});

test('the redirect port answers only for hosts Gatehouse serves: another name gets 404, no redirect', async () => {
  const r = await request(`http://elsewhere.localhost:${gh.redirectPort}/x`);
  assert.equal(r.status, 404, `status ${r.status} ${r.location ?? ''}`);
  assert.ok(!r.location, `redirected to ${r.location}`);
  const health = await request(`http://elsewhere.localhost:${gh.redirectPort}/.gatehouse/health`);
  assert.equal(health.status, 200, 'health answers on any host');
});
