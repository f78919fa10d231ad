// Hardening: non-canonical paths, the two-host handoff bound to its browser, spoofed
// forwarding/identity headers, odd Cookie headers, upstream Set-Cookie for Gatehouse's own
// cookies, deny rules for unverified emails, and an authenticate host that is also a route.
// Each refusal comes with a control showing the legitimate case still works.

import assert from 'node:assert/strict';
import https from 'node:https';
import http2 from 'node:http2';
import { after, before, test } from 'node:test';

import { BROWSER_ACCEPT, parseSetCookie } from '../harness/client.mjs';
import { runCheck, toYaml } from '../harness/gatehouse.mjs';
import {
  assertNoSessionCookieSet,
  gatehouseConfig,
  sessionCookieHeader,
  sessionCookiesIn,
  startStack,
} from '../harness/stack.mjs';

const A = 'assistant.localhost';
const P = 'public.localhost';
const AUTH = 'auth.localhost';
const JSON_ACCEPT = { accept: 'application/json' };
/** `é` as UTF-8 bytes, spelled so node writes those bytes on the wire (header strings go out as latin1). */
const E_ACUTE_UTF8 = Buffer.from('é', 'utf8').toString('latin1');

let s;

before(async () => {
  s = await startStack({
    gatehouses: {
      main: {},
      two: { twoHost: true },
      deny: { lazy: true },
      capped: { extra: { max_connections_per_client: 3 } },
    },
  });
  s.specs.deny.extra = {
    routes: [
      {
        from: `https://${A}`,
        to: s.upstream.url,
        pass_identity_headers: true,
        allow_any_authenticated_user: true,
        policy: [{ deny: { or: [{ email: { is: 'eve@example.com' } }] } }],
      },
    ],
  };
  await s.start('deny');
});

after(async () => {
  await s?.stop();
});

/** A client signed in as `user` on gatehouse `name`, host A. */
async function signedIn(name = 'main', user = 'alice') {
  const c = s.client();
  const { response } = await c.login(user, `${user}-pass`, s.gh[name].url(A, '/'));
  assert.equal(response.status, 200, `login as ${user} on ${name}: ${response.status} ${response.body.slice(0, 300)}`);
  return c;
}

/** GET with the path sent byte for byte (node's URL would normalise it). */
function rawGet(gh, host, path, { headers = {}, cookies } = {}) {
  const h = { host: `${host}:${gh.port}`, accept: BROWSER_ACCEPT, 'user-agent': 'gatehouse-e2e', ...headers };
  if (cookies) h.cookie = cookies;
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: '127.0.0.1', port: gh.port, servername: host, ca: s.certs.caPem, path, method: 'GET', headers: h, agent: false },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () =>
          resolve({
            status: res.statusCode,
            headers: res.headers,
            body: Buffer.concat(chunks).toString('utf8'),
            setCookies: (res.headers['set-cookie'] ?? []).map(parseSetCookie),
          }),
        );
      },
    );
    req.setTimeout(10_000, () => req.destroy(new Error(`timeout: GET ${host}${path}`)));
    req.on('error', reject);
    req.end();
  });
}

/** The same over HTTP/2 (`:path` sent as given). */
function rawGetH2(gh, host, path) {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`https://127.0.0.1:${gh.port}`, { ca: s.certs.caPem, servername: host });
    session.on('error', reject);
    const req = session.request({ ':method': 'GET', ':path': path, ':authority': `${host}:${gh.port}`, accept: BROWSER_ACCEPT });
    let status;
    let headers;
    const chunks = [];
    req.on('response', (h) => {
      status = h[':status'];
      headers = h;
    });
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      session.close();
      resolve({ status, headers, body: Buffer.concat(chunks).toString('utf8') });
    });
    req.on('error', reject);
    req.end();
  });
}

// ---- 1. non-canonical paths ----

const NON_CANONICAL = [
  '/public/../secret',
  '/a/../b',
  '/a/./b',
  '/a/..',
  '/a/.',
  '/..',
  '/../etc/passwd',
  '//a',
  '/a//b',
  '/a/b//',
  '/a\\b',
  '/a\\..\\b',
  '/%2e%2e/secret',
  '/a/%2E%2E/b',
  '/a/%2e/b',
  '/a%2Fb',
  '/a%2fb',
  '/a%5cb',
  '/a%5Cb',
  '/%61dmin',
  '/%41dmin',
  '/%7Euser',
  '/%7euser',
  '/a%2Db',
  '/a%5fb',
  '/a%30',
  '/.gatehouse/../secret',
  '/x/..?y=1',
  // Path parameters and NUL (issue 11): `/public/..;/admin` is `/admin` to Tomcat.
  '/public/..;/admin',
  '/admin;jsessionid=x',
  '/a%3Bb',
  '/file%00.txt',
];

function assertRefusedPath(r, path, msg) {
  assert.equal(r.status, 400, `${msg} ${JSON.stringify(path)}: expected 400, got ${r.status} ${r.headers.location ?? ''}`);
  assert.match(r.headers['content-type'] ?? '', /text\/html/, `${msg} ${JSON.stringify(path)}: an HTML page`);
  assert.ok(!r.headers.location, `${msg} ${JSON.stringify(path)}: not a redirect`);
}

test('non-canonical paths on the public route are refused with a 400 page and never reach the upstream', async () => {
  for (const path of NON_CANONICAL) {
    const hits = s.upstream.hits();
    const r = await rawGet(s.gh.main, P, path);
    assertRefusedPath(r, path, 'public:');
    assert.equal(s.upstream.hits(), hits, `public: ${JSON.stringify(path)} reached the upstream as ${s.upstream.last()?.url}`);
  }
});

test('non-canonical paths on an authenticated route are refused with a 400 page even with a valid session', async () => {
  const c = await signedIn('main');
  const cookies = sessionCookieHeader(c.jar, A);
  for (const path of NON_CANONICAL) {
    const hits = s.upstream.hits();
    const r = await rawGet(s.gh.main, A, path, { cookies });
    assertRefusedPath(r, path, 'signed in:');
    assert.equal(s.upstream.hits(), hits, `signed in: ${JSON.stringify(path)} reached the upstream as ${s.upstream.last()?.url}`);
  }
});

test('non-canonical paths over HTTP/2 are refused with 400 and never reach the upstream', async () => {
  for (const path of ['/public/../secret', '/%61dmin', '//a', '/a/./b']) {
    const hits = s.upstream.hits();
    const r = await rawGetH2(s.gh.main, P, path);
    assert.equal(r.status, 400, `h2 ${path}: got ${r.status}`);
    assert.equal(s.upstream.hits(), hits, `h2 ${path} reached the upstream`);
  }
});

test('canonical paths with query strings and escapes of reserved characters still reach the upstream unchanged', async () => {
  const c = await signedIn('main');
  const cookies = sessionCookieHeader(c.jar, A);
  const ok = [
    '/',
    '/a/b/',
    '/a/b?x=1&y=../z',
    '/search?q=a%2Fb%2F..%2Fc&next=%2Fhome',
    '/files/my%20file.txt',
    '/what%3Fnot-a-query',
    '/a%2Bb',
    '/100%25',
    '/a/.well-known/x',
    '/a/..b/c.',
    '/a/...',
  ];
  for (const [host, opts] of [[P, {}], [A, { cookies }]]) {
    for (const path of ok) {
      const hits = s.upstream.hits();
      const r = await rawGet(s.gh.main, host, path, { ...opts, headers: JSON_ACCEPT });
      assert.equal(r.status, 200, `${host} ${path}: got ${r.status} ${r.body.slice(0, 200)}`);
      assert.equal(s.upstream.hits(), hits + 1, `${host} ${path}: upstream hit once`);
      assert.equal(s.upstream.last().url, path, `${host}: upstream saw the path as sent`);
    }
  }
});

// ---- 2. the two-host handoff is bound to the browser that started sign-in ----

const isRouteCallback = (r) => new URL(r.url).hostname === A && new URL(r.url).pathname === '/.gatehouse/callback';

test('two-host sign-in sets a host-only Secure HttpOnly _pomerium_handoff cookie, passes binding=, and still signs the browser in', async () => {
  const gh = s.gh.two;
  const start = gh.url(A, '/bound?z=1');
  const c = s.client();
  const { response, chain } = await c.login('alice', 'alice-pass', start);
  const first = chain[0];
  assert.equal(first.status, 302);
  const loc = new URL(first.location);
  assert.equal(loc.hostname, AUTH);
  assert.equal(loc.pathname, '/.gatehouse/sign_in');
  assert.equal(loc.searchParams.get('return_url'), start);
  assert.ok(loc.searchParams.get('binding'), `binding= in ${first.location}`);
  const hc = first.setCookies.find((x) => x.name === '_pomerium_handoff');
  assert.ok(hc?.value, `route host sets _pomerium_handoff: ${first.setCookies.map((x) => x.raw).join(' | ')}`);
  assert.ok(hc.attrs.secure && hc.attrs.httponly, `Secure HttpOnly: ${hc.raw}`);
  assert.equal(hc.attrs.domain, undefined, `host-only (no Domain): ${hc.raw}`);
  const handoff = chain.find(isRouteCallback);
  assert.ok(handoff, `went through ${A}/.gatehouse/callback`);
  assert.equal(handoff.status, 302);
  assert.equal(handoff.location, start);
  assert.ok(sessionCookiesIn(handoff).length >= 1, 'route host sets _pomerium');
  assert.equal(response.status, 200);
  assert.equal(response.url, start);
  assert.equal(s.upstream.last().headers['x-pomerium-claim-email'], 'alice@example.com');
});

/** The attacker, signed in at the auth host, mints a handoff URL for a route with a binding of its choosing. */
async function attackerHandoffUrl(binding) {
  const gh = s.gh.two;
  const attacker = s.client();
  const { response } = await attacker.login('bob', 'bob-pass', gh.url(A, '/attacker'));
  assert.equal(response.status, 200, 'the attacker is signed in');
  const target = gh.url(A, '/victim-lands-here');
  const r = await attacker.get(gh.url(AUTH, `/.gatehouse/sign_in?return_url=${encodeURIComponent(target)}&binding=${encodeURIComponent(binding)}`));
  assert.equal(r.status, 302, `the auth host answers a signed-in attacker with a handoff redirect, got ${r.status}`);
  const u = new URL(r.location);
  assert.equal(u.hostname, A);
  assert.equal(u.pathname, '/.gatehouse/callback');
  assert.ok(u.searchParams.get('handoff'), `handoff= in ${r.location}`);
  return { url: r.location, target };
}

async function assertVictimRefused(victim, url, target) {
  const gh = s.gh.two;
  const hits = s.upstream.hits();
  const r = await victim.get(url);
  assert.equal(r.status, 400, `expected 400, got ${r.status} ${r.location ?? ''}`);
  assert.match(r.headers['content-type'] ?? '', /text\/html/);
  assert.match(r.body, /Sign-in failed/);
  assertNoSessionCookieSet(r);
  assert.equal(s.upstream.hits(), hits, 'the upstream was hit');
  const after = await victim.get(target);
  assert.equal(after.status, 302, 'the victim still has no session');
  assert.equal(new URL(after.location).origin, new URL(gh.url(AUTH)).origin, 'sent to the auth host to sign in');
}

test('login CSRF: a handoff minted by an attacker (binding of its choosing) is refused in a fresh victim browser', async () => {
  // Each binding is new: a sign-in link (and so its binding) works only once.
  for (const binding of ['attacker-chosen-1', 'x']) {
    const { url, target } = await attackerHandoffUrl(binding);
    await assertVictimRefused(s.client(), url, target);
  }
});

test('login CSRF: a handoff minted by an attacker is refused in a victim browser holding its own _pomerium_handoff', async () => {
  const victim = s.client();
  const started = await victim.get(s.gh.two.url(A, '/victim-start'));
  assert.equal(started.status, 302);
  assert.ok(victim.jar.get(A, '_pomerium_handoff'), 'the victim has its own _pomerium_handoff');
  const victimBinding = new URL(started.location).searchParams.get('binding');
  for (const binding of ['attacker-chosen-2', victimBinding === null ? 'none' : `${victimBinding}x`]) {
    const { url, target } = await attackerHandoffUrl(binding);
    await assertVictimRefused(victim, url, target);
  }
});

test('a handoff opened without the _pomerium_handoff cookie, in the browser that started sign-in, is refused', async () => {
  const gh = s.gh.two;
  const c = s.client();
  const start = gh.url(A, '/no-cookie');
  const { next } = await c.login('alice', 'alice-pass', start, { stopAt: (u) => new URL(u).hostname === A && new URL(u).pathname === '/.gatehouse/callback' });
  assert.ok(next, 'stopped before the handoff');
  c.jar.delete(A, '_pomerium_handoff');
  await assertVictimRefused(c, next, start);
});

test('a sign-in link works once: replayed later by someone signed in at the auth host, it mints no handoff', async () => {
  const gh = s.gh.two;
  const victim = s.client();
  const start = gh.url(A, '/leaked-link');
  const { response, chain } = await victim.login('alice', 'alice-pass', start);
  assert.equal(response.status, 200, 'the victim signed in normally');
  const signInUrl = chain[0].location;
  assert.match(signInUrl, /\/\.gatehouse\/sign_in\?/);
  // The link leaks (history, a screenshot); the attacker, signed in as bob, opens it.
  const attacker = s.client();
  await attacker.login('bob', 'bob-pass', gh.url(A, '/attacker-2'));
  const r = await attacker.get(signInUrl);
  assert.equal(r.status, 400, `expected 400, got ${r.status} ${r.location ?? ''}`);
  assert.ok(!r.location, `no handoff minted: ${r.location}`);
  assert.match(r.body, /already used/);
});

test('the auth host refuses sign_in without binding= with 400, signed in or not', async () => {
  const gh = s.gh.two;
  const url = gh.url(AUTH, `/.gatehouse/sign_in?return_url=${encodeURIComponent(gh.url(A, '/x'))}`);
  const fresh = await s.client().get(url);
  assert.equal(fresh.status, 400, `not signed in: got ${fresh.status} ${fresh.location ?? ''}`);
  assert.ok(!fresh.location, 'not sent to the IdP');
  assert.ok(!fresh.setCookies.some((x) => x.name === '_pomerium_login' && x.value), 'no login started');
  const signed = s.client();
  await signed.login('bob', 'bob-pass', gh.url(A, '/'));
  const r = await signed.get(url);
  assert.equal(r.status, 400, `signed in: got ${r.status} ${r.location ?? ''}`);
  assert.ok(!r.location, `no handoff minted: ${r.location}`);
});

// ---- 3. spoofed forwarding and underscore identity headers ----

const SPOOF = {
  X_Pomerium_Claim_Email: 'ceo@example.com',
  X_POMERIUM_JWT_ASSERTION: 'forged',
  x_gatehouse_x: 'spoofed',
  Forwarded: 'for=203.0.113.9;host=evil.test;proto=http',
  'X-Real-IP': '203.0.113.9',
  'X-Forwarded-Port': '6666',
  'X-Forwarded-Prefix': '/evil-prefix',
  'X-Forwarded-Server': 'evil.test',
  // Underscore spellings of the forwarding headers and URL rewrites (issue 11).
  X_Forwarded_For: '203.0.113.9',
  X_Forwarded_Host: 'evil.test',
  'X-Original-URL': '/evil-prefix/admin',
  X_Rewrite_URL: '/evil-prefix/admin',
};

function assertNoSpoofReached(h, where) {
  const underscored = Object.keys(h).filter((k) => /^x_(pomerium|gatehouse|forwarded|rewrite|original|real)_/.test(k));
  assert.equal(h['x-original-url'], undefined, `${where}: X-Original-URL reached the upstream`);
  assert.deepEqual(underscored, [], `${where}: underscore identity headers reached the upstream`);
  assert.equal(h.forwarded, undefined, `${where}: Forwarded reached the upstream`);
  assert.equal(h['x-forwarded-port'] === '6666', false, `${where}: X-Forwarded-Port reached the upstream`);
  for (const marker of ['203.0.113.9', 'evil.test', '/evil-prefix', 'ceo@example.com', 'forged', 'spoofed']) {
    const found = Object.entries(h).filter(([, v]) => String(v).includes(marker));
    assert.deepEqual(found, [], `${where}: ${marker} reached the upstream`);
  }
}

test('client-sent underscore identity headers and Forwarded/X-Real-IP/X-Forwarded-* never reach the upstream on the public route', async () => {
  const hits = s.upstream.hits();
  const r = await s.client().get(s.gh.main.url(P, '/spoof'), { headers: { ...JSON_ACCEPT, ...SPOOF } });
  assert.equal(r.status, 200);
  assert.equal(s.upstream.hits(), hits + 1);
  assertNoSpoofReached(s.upstream.last().headers, 'public');
});

test('client-sent underscore identity headers and Forwarded/X-Real-IP/X-Forwarded-* never reach the upstream on an authenticated route', async () => {
  const c = await signedIn('main', 'bob');
  const hits = s.upstream.hits();
  const r = await c.get(s.gh.main.url(A, '/spoof'), { headers: { ...JSON_ACCEPT, ...SPOOF } });
  assert.equal(r.status, 200);
  assert.equal(s.upstream.hits(), hits + 1);
  const h = s.upstream.last().headers;
  assert.equal(h['x-pomerium-claim-email'], 'bob@example.com', 'the real identity is passed');
  assertNoSpoofReached(h, 'authenticated');
});

// ---- 4. Cookie headers with non-ASCII bytes; Gatehouse's cookies stay with Gatehouse ----

const cookiePairs = (header) =>
  String(header ?? '')
    .split(';')
    .map((p) => p.trim())
    .filter(Boolean)
    .map((p) => [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)]);

test('a non-ASCII cookie next to the session cookie does not break the session', async () => {
  const c = await signedIn('main');
  const session = sessionCookieHeader(c.jar, A);
  for (const cookies of [`${session}; t=${E_ACUTE_UTF8}`, `t=${E_ACUTE_UTF8}; ${session}`]) {
    const hits = s.upstream.hits();
    const r = await s.client().get(s.gh.main.url(A, '/utf8-cookie'), { cookies, headers: JSON_ACCEPT });
    assert.equal(r.status, 200, `${cookies.slice(0, 20)}…: got ${r.status} ${r.location ?? ''}`);
    assert.equal(s.upstream.hits(), hits + 1, 'the upstream was hit');
    assert.equal(s.upstream.last().headers['x-pomerium-claim-email'], 'alice@example.com');
    const sent = cookiePairs(s.upstream.last().headers.cookie);
    assert.deepEqual(sent.filter(([k]) => k.startsWith('_pomerium')), [], 'the session cookie is not passed on');
    const t = sent.find(([k]) => k === 't');
    assert.ok(t, `the other cookie passes: ${s.upstream.last().headers.cookie}`);
    assert.equal(Buffer.from(t[1], 'latin1').toString('utf8'), 'é', 'byte for byte');
  }
});

test("on the public route Gatehouse's own cookies are removed and other cookies (ASCII) pass", async () => {
  const cookies = '_pomerium=abc; app=1; _pomerium_1=def; _pomerium_login=ghi; _pomerium_handoff=jkl; theme=dark';
  const hits = s.upstream.hits();
  const r = await s.client().get(s.gh.main.url(P, '/cookies'), { cookies, headers: JSON_ACCEPT });
  assert.equal(r.status, 200);
  assert.equal(s.upstream.hits(), hits + 1);
  assert.deepEqual(cookiePairs(s.upstream.last().headers.cookie), [['app', '1'], ['theme', 'dark']]);
});

test("on the public route Gatehouse's own cookies are removed and other cookies, including a non-ASCII one, pass", async () => {
  const cookies = `_pomerium=abc; app=1; _pomerium_1=def; t=${E_ACUTE_UTF8}; _pomerium_login=ghi; _pomerium_handoff=jkl`;
  const hits = s.upstream.hits();
  const r = await s.client().get(s.gh.main.url(P, '/cookies-utf8'), { cookies, headers: JSON_ACCEPT });
  assert.equal(r.status, 200, `got ${r.status}`);
  assert.equal(s.upstream.hits(), hits + 1);
  const sent = cookiePairs(s.upstream.last().headers.cookie);
  assert.deepEqual(sent.map(([k]) => k), ['app', 't'], `upstream got: ${s.upstream.last().headers.cookie}`);
  assert.equal(Buffer.from(sent[1][1], 'latin1').toString('utf8'), 'é');
});

// ---- 5. an upstream cannot set Gatehouse's cookies ----

function assertOnlyAppCookie(r, where) {
  const names = r.setCookies.map((x) => x.name);
  assert.ok(names.includes('app'), `${where}: app=1 passes: ${names}`);
  const evil = r.setCookies.filter((x) => x.value === 'evil');
  assert.deepEqual(evil.map((x) => x.raw), [], `${where}: upstream's _pomerium cookies reached the browser`);
}

test("an upstream's Set-Cookie for _pomerium / _pomerium_login is removed on the public route; others pass", async () => {
  const hits = s.upstream.hits();
  const r = await s.client().get(s.gh.main.url(P, '/set-cookie'), { headers: JSON_ACCEPT });
  assert.equal(r.status, 200);
  assert.equal(s.upstream.hits(), hits + 1);
  assertOnlyAppCookie(r, 'public');
  assert.deepEqual(r.setCookies.map((x) => x.name).filter((n) => n.startsWith('_pomerium')), [], 'no _pomerium* Set-Cookie at all');
});

test("an upstream's Set-Cookie for _pomerium / _pomerium_login is removed on an authenticated route and the session keeps working", async () => {
  const c = await signedIn('main');
  const hits = s.upstream.hits();
  const r = await c.get(s.gh.main.url(A, '/set-cookie'), { headers: JSON_ACCEPT });
  assert.equal(r.status, 200);
  assert.equal(s.upstream.hits(), hits + 1);
  assertOnlyAppCookie(r, 'authenticated');
  assert.notEqual(c.jar.get(A, '_pomerium'), 'evil');
  const again = await c.get(s.gh.main.url(A, '/after'), { headers: JSON_ACCEPT });
  assert.equal(again.status, 200, 'still signed in');
  assert.equal(s.upstream.last().headers['x-pomerium-claim-email'], 'alice@example.com');
});

// ---- 6. deny rules apply to unverified emails ----

test('a deny rule refuses a person whose email is not verified, on an allow_any_authenticated_user route (403 page)', async () => {
  const gh = s.gh.deny;
  const c = s.client();
  const hits = s.upstream.hits();
  const { response } = await c.login('eve', 'eve-pass', gh.url(A, '/denied'));
  assert.equal(response.status, 403, `eve got ${response.status} ${response.location ?? ''}`);
  assert.match(response.headers['content-type'] ?? '', /text\/html/);
  assert.match(response.body, /eve@example\.com/);
  assert.equal(s.upstream.hits(), hits, 'the upstream was hit');
  const api = await c.get(gh.url(A, '/api'), { headers: JSON_ACCEPT });
  assert.equal(api.status, 403, 'an API call is refused too');
  assert.equal(s.upstream.hits(), hits, 'the upstream was hit');
});

test('the same route lets alice in (control for the deny rule)', async () => {
  const gh = s.gh.deny;
  const c = s.client();
  const { response } = await c.login('alice', 'alice-pass', gh.url(A, '/allowed'));
  assert.equal(response.status, 200);
  assert.equal(s.upstream.last().url, '/allowed');
  assert.equal(s.upstream.last().headers['x-pomerium-claim-email'], 'alice@example.com');
});

// ---- 7. gatehouse check: the authenticate host must not be a route host ----

function twoHostConfig(authenticateServiceUrl) {
  const cfg = gatehouseConfig({
    port: 8443,
    redirectPort: 8080,
    certs: s.certs,
    idp: s.idp,
    upstream: s.upstream,
    clientSecret: s.clientSecret,
    cookieSecret: s.specs.main.cookieSecret,
    twoHost: true,
  });
  if (authenticateServiceUrl) cfg.authenticate_service_url = authenticateServiceUrl;
  return toYaml(cfg);
}

test('gatehouse check accepts a two-host config whose authenticate host is not a route (control)', () => {
  const r = runCheck(twoHostConfig());
  assert.equal(r.code, 0, `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
});

for (const [label, url, routeHost] of [
  ['the same host and port', `https://${A}:8443`, A],
  ['the same host without a port', `https://${A}`, A],
  ['the public route host', `https://${P}:8443`, P],
  ['the same host in other letter case', 'https://Assistant.LOCALHOST:8443', A],
]) {
  test(`gatehouse check refuses authenticate_service_url on a route's from host (${label}), naming both`, () => {
    const r = runCheck(twoHostConfig(url));
    assert.equal(r.code, 1, `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
    assert.match(r.stderr, /authenticate_service_url/, `names authenticate_service_url:\n${r.stderr}`);
    assert.ok(r.stderr.toLowerCase().includes(routeHost), `names the route host ${routeHost}:\n${r.stderr}`);
    assert.match(r.stderr, /route|from/i, `names the route:\n${r.stderr}`);
  });
}

/** Opens an event stream on the public route and resolves once its headers arrived. */
function openStream(gh, path) {
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: '127.0.0.1', port: gh.port, servername: P, ca: s.certs.caPem, path, headers: { host: `${P}:${gh.port}` }, agent: false },
      (res) => resolve({ status: res.statusCode, close: () => req.destroy() }),
    );
    req.setTimeout(10_000, () => req.destroy(new Error('timeout opening a stream')));
    req.on('error', (e) => (e.code === 'ECONNRESET' ? undefined : reject(e)));
    req.end();
  });
}

test('max_connections_per_client: past the cap one address gets 429 (never proxied); a slot frees when a stream ends', async () => {
  const gh = s.gh.capped;
  const streams = [];
  for (let i = 0; i < 3; i += 1) {
    const st = await openStream(gh, `/sse?n=100&every=100&i=${i}`);
    assert.equal(st.status, 200, `stream ${i}`);
    streams.push(st);
  }
  const hits = s.upstream.requests.length;
  const refused = await rawGet(gh, P, '/fourth');
  assert.equal(refused.status, 429, `the fourth request at once: ${refused.status}`);
  assert.match(refused.body, /more requests open at once than Gatehouse allows/);
  assert.ok(refused.headers['retry-after'], 'with Retry-After');
  assert.ok(!s.upstream.requests.slice(hits).some((r) => r.url === '/fourth'), 'never reached the upstream');
  // The access line is written after the response: wait for it.
  for (let i = 0; i < 50 && !/path=\/fourth status=429/.test(gh.logs()); i += 1) {
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.match(gh.logs(), /too many open requests from one address/);
  assert.match(gh.logs(), /path=\/fourth status=429 .*decision="?too-many-connections/);

  streams.pop().close();
  let after;
  for (let i = 0; i < 50; i += 1) {
    after = await rawGet(gh, P, '/fifth');
    if (after.status === 200) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(after.status, 200, 'room again once a stream closed');
  for (const st of streams) st.close();
});
