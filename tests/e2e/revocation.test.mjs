// Sessions that end when the person says so, and cookies that cannot be planted:
// sign-out revokes the session id (a copied cookie is refused afterwards, also after a
// restart, and on every route host of the two-host flow), "Sign out of every browser" ends
// every session of that person, an own cookie sent twice (cookie tossing) is refused,
// sign-in `state` is single-use, and `cookie_host_prefix` names the cookies `__Host-…`.

import assert from 'node:assert/strict';
import { readFileSync, existsSync, mkdtempSync, statSync } from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';

import { newPage as newBrowserPage, signInWithBrowser } from '../harness/browser.mjs';
import { Client } from '../harness/client.mjs';
import { runCheck, toYaml } from '../harness/gatehouse.mjs';
import {
  assertNoSessionCookieSet,
  assertRedirectsToIdp,
  assertUnauthenticatedJson,
  sessionCookieHeader,
  sessionCookiesIn,
  startStack,
} from '../harness/stack.mjs';

const A = 'assistant.localhost';
const O = 'other.localhost'; // its policy lets in bob@example.com only
const AUTH = 'auth.localhost';
const JSON_ACCEPT = { accept: 'application/json' };
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const HOST_COOKIE = '__Host-gatehouse';

let s;
let browser;
let tosser;
let stateDir;

before(async () => {
  // An absolute state_dir for the restart test: the same store after the restart.
  stateDir = path.join(mkdtempSync(path.join(os.tmpdir(), 'gatehouse-revocation-')), 'state');
  s = await startStack({
    gatehouses: {
      main: {},
      persist: { extra: { state_dir: stateDir } },
      two: { twoHost: true },
      prefix: { extra: { cookie_host_prefix: true } },
      twoPrefix: { twoHost: true, extra: { cookie_host_prefix: true } },
    },
  });
  tosser = await startTosser(s.certs);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  await tosser?.close();
  await s?.stop();
});

// ---- helpers ----

/**
 * Another HTTPS service on 127.0.0.1 (any *.localhost name; cookies ignore ports, so it
 * shares the cookie jar of assistant.localhost). GET /toss?name=N&value=V&attrs=A answers
 * with `Set-Cookie: N=V; A`.
 */
async function startTosser(certs) {
  const srv = https.createServer({ cert: readFileSync(certs.cert), key: readFileSync(certs.key) }, (req, res) => {
    const u = new URL(req.url, 'https://tosser');
    if (u.pathname !== '/toss') {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not here');
      return;
    }
    const cookie = `${u.searchParams.get('name')}=${u.searchParams.get('value')}; ${u.searchParams.get('attrs')}`;
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'set-cookie': cookie });
    res.end('<!doctype html><title>Another app</title><p>Nothing to see here.</p>');
  });
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
  return {
    port: srv.address().port,
    close: () => new Promise((resolve) => { srv.closeAllConnections?.(); srv.close(() => resolve()); }),
  };
}

/** A raw client signed in as `user`, landing on `host`. */
async function signedIn(name, user = 'alice', host = A, p = '/') {
  const c = s.client();
  const { response } = await c.login(user, `${user}-pass`, s.gh[name].url(host, p));
  assert.equal(response.status, 200, `login as ${user} on ${name}/${host} ended with ${response.status}: ${response.body.slice(0, 300)}`);
  return c;
}

function csrfFrom(body) {
  const m = /<input[^>]*name="csrf_token"[^>]*value="([^"]*)"|<input[^>]*value="([^"]*)"[^>]*name="csrf_token"/.exec(body);
  return m?.[1] ?? m?.[2];
}

const originOf = (gh, host) => gh.url(host, '');

/** Post one of the user page's forms the way the page does (same origin, its csrf_token). */
async function postUserForm(c, gh, action, { host = A, token, origin } = {}) {
  const userPage = await c.get(gh.url(host, '/.gatehouse/'));
  assert.equal(userPage.status, 200, `user page: ${userPage.status}`);
  assert.match(userPage.body, new RegExp(`<form[^>]*action="/\\.gatehouse/${action}"`), `the user page has the ${action} form`);
  const csrf = token ?? csrfFrom(userPage.body);
  assert.ok(csrf, 'csrf_token on the user page');
  return c.post(gh.url(host, `/.gatehouse/${action}`), { csrf_token: csrf }, { headers: { origin: origin ?? originOf(gh, host) } });
}

/** `cookie` (a Cookie header) is no session on `host`: a page visit is sent to sign in, an API call gets 401, nothing reaches the upstream. */
async function assertRefused(gh, cookie, { host = A, msg = '', signInAt = 'idp' } = {}) {
  const hits = s.upstream.hits();
  const nav = await s.client().get(gh.url(host, '/refused-page'), { cookies: cookie });
  if (signInAt === 'idp') {
    assertRedirectsToIdp(nav, s, `${msg} page visit:`);
  } else {
    assert.equal(nav.status, 302, `${msg} page visit: expected 302, got ${nav.status}`);
    assert.ok(nav.location?.startsWith(gh.url(AUTH, '/.gatehouse/sign_in?')), `${msg} sent to the auth host to sign in, got ${nav.location}`);
  }
  assertUnauthenticatedJson(await s.client().get(gh.url(host, '/api/refused'), { cookies: cookie, headers: JSON_ACCEPT }), `${msg} API:`);
  assert.equal(s.upstream.hits(), hits, `${msg} the upstream was hit`);
}

/** `cookie` is a working session on `host`: an API call reaches the upstream (as `email`, if given). */
async function assertAccepted(gh, cookie, email, { host = A, msg = '' } = {}) {
  const hits = s.upstream.hits();
  const r = await s.client().get(gh.url(host, '/api/accepted'), { cookies: cookie, headers: JSON_ACCEPT });
  assert.equal(r.status, 200, `${msg} expected 200, got ${r.status} ${r.location ?? ''} ${r.body.slice(0, 200)}`);
  assert.equal(s.upstream.hits(), hits + 1, `${msg} reached the upstream`);
  // (only routes with pass_identity_headers say who it is)
  if (email) assert.equal(s.upstream.last().headers['x-pomerium-claim-email'], email, msg);
}

async function waitForLog(gh, re) {
  for (let i = 0; i < 50 && !re.test(gh.logs()); i += 1) await sleep(100);
  assert.match(gh.logs(), re);
}

const isCallback = (u) => new URL(u).pathname === '/.gatehouse/callback';

/** The 400 page for an own cookie sent twice, with Set-Cookie headers deleting `deleted`. */
function assertDuplicateRefusal(r, name, { deleted = ['_pomerium'], msg = '' } = {}) {
  assert.equal(r.status, 400, `${msg} expected 400, got ${r.status} ${r.location ?? ''}`);
  assert.ok(!r.location, `${msg} no redirect: ${r.location}`);
  assert.match(r.headers['content-type'] ?? '', /text\/html/, msg);
  assert.ok(r.body.includes(`Your browser sent two cookies named ${name}`), `${msg} page names ${name}: ${r.body.slice(0, 600)}`);
  assertNoSessionCookieSet(r);
  for (const n of deleted) {
    const del = r.setCookies.find((c) => c.name === n && c.value === '' && c.attrs['max-age'] === '0');
    assert.ok(del, `${msg} deletes ${n}: ${r.headers['set-cookie']}`);
  }
}

const newPage = () => newBrowserPage(browser);

/** Go to `url`, sign in on the IdP's form, wait to be back at `url`. */
const browserSignIn = (page, url, user, password) => signInWithBrowser(page, s.idp.issuer, url, user, password);

/** fetch() from inside the page, as the app's own script would (the browser adds its cookies). */
function pageFetchStatus(page, p) {
  return page.evaluate(async (url) => (await fetch(url, { headers: { accept: 'application/json' } })).status, p);
}

// ---- sign-out revokes the session ----

test('after sign-out, a copy of the session cookie taken before is refused; another browser of the same person stays signed in', async () => {
  const gh = s.gh.main;
  const c = await signedIn('main', 'alice');
  const elsewhere = await signedIn('main', 'alice');
  const copy = sessionCookieHeader(c.jar, A);
  await assertAccepted(gh, copy, 'alice@example.com', { msg: 'the copy before sign-out:' });

  const out = await postUserForm(c, gh, 'sign_out');
  assert.equal(out.status, 302, `sign-out: ${out.status} ${out.body.slice(0, 300)}`);
  assert.equal(new URL(out.location).pathname, '/.gatehouse/signed_out');

  await assertRefused(gh, copy, { msg: 'the copy after sign-out:' });
  await assertAccepted(gh, sessionCookieHeader(elsewhere.jar, A), 'alice@example.com', { msg: 'the other browser:' });
});

test('a sign-out is remembered across a restart (same state_dir and cookie_secret): the copied cookie stays refused, other sessions keep working', async () => {
  const gh = s.gh.persist;
  const c = await signedIn('persist', 'alice');
  const kept = await signedIn('persist', 'bob');
  const copy = sessionCookieHeader(c.jar, A);
  const keptCookie = sessionCookieHeader(kept.jar, A);
  await assertAccepted(gh, copy, 'alice@example.com', { msg: 'before sign-out:' });
  const out = await postUserForm(c, gh, 'sign_out');
  assert.equal(out.status, 302, `sign-out: ${out.status}`);
  await assertRefused(gh, copy, { msg: 'before the restart:' });

  const db = path.join(stateDir, 'gatehouse.sqlite3');
  assert.ok(existsSync(db), `the state store is at ${db}`);
  assert.equal(statSync(stateDir).mode & 0o777, 0o700, 'state_dir is private to Gatehouse');

  await gh.stop();
  const again = await s.start('persist');
  assert.equal(again.port, gh.port, 'restarted on the same address');
  assert.notEqual(again.pid, gh.pid, 'a new process');

  await assertRefused(again, copy, { msg: 'after the restart:' });
  await assertAccepted(again, keptCookie, 'bob@example.com', { msg: 'a session that was not signed out, after the restart:' });
});

test('two-host: sign-out on one route host also ends the session that browser holds on another route host and on the auth host', async () => {
  const gh = s.gh.two;
  const c = await signedIn('two', 'bob', A, '/first');
  // On to the second route host: handed the same session by the auth host, no new login.
  const authorize = s.idp.stats().authorize;
  const second = await c.follow(gh.url(O, '/second'));
  assert.equal(second.response.status, 200, `other.localhost: ${second.response.status}`);
  assert.equal(second.response.url, gh.url(O, '/second'));
  assert.equal(s.idp.stats().authorize, authorize, 'handed over without the IdP');
  const copied = c.jar.clone(); // every cookie this browser holds, before sign-out
  const onOther = sessionCookieHeader(c.jar, O);
  await assertAccepted(gh, onOther, null, { host: O, msg: 'other.localhost before sign-out:' });

  const out = await postUserForm(c, gh, 'sign_out', { host: A });
  assert.equal(out.status, 302, `sign-out: ${out.status}`);
  const done = await c.follow(out.location);
  assert.equal(done.response.status, 200, `signed-out page: ${done.chain.map((r) => `${r.status} ${r.url}`).join(' -> ')}`);

  // The same browser still holds its other.localhost cookie: it is no session any more.
  assert.ok(sessionCookieHeader(c.jar, O), 'the browser still has its other.localhost cookie');
  await assertRefused(gh, sessionCookieHeader(c.jar, O), { host: O, signInAt: 'auth', msg: 'other.localhost after sign-out:' });

  // All the cookies copied before sign-out (route hosts and auth host) lead to the IdP,
  // never to a handoff of the ended session.
  const hits = s.upstream.hits();
  const thief = new Client({ ca: s.certs.caPem, jar: copied });
  const { chain, next } = await thief.follow(gh.url(O, '/after'), { stopAt: (u) => u.startsWith(s.idp.issuer) });
  assert.ok(next?.startsWith(s.authorizeUrl()), `sent to the IdP: ${chain.map((r) => `${r.status} ${r.url}`).join(' -> ')} -> ${next}`);
  assert.ok(!chain.some((r) => new URL(r.url).searchParams.has('handoff')), 'no handoff');
  assert.equal(s.upstream.hits(), hits, 'the upstream was hit');
  assertUnauthenticatedJson(await thief.get(gh.url(A, '/api/after'), { headers: JSON_ACCEPT }), 'assistant.localhost copy:');
});

// ---- sign out of every browser ----

test('"Sign out of every browser" ends every session of that person in every browser, not another person\'s; signing in again works', async () => {
  const gh = s.gh.main;
  const first = await signedIn('main', 'alice');
  const second = await signedIn('main', 'alice');
  const bob = await signedIn('main', 'bob');
  // No pause: sessions begun within the same second as the click end too.
  const firstCopy = sessionCookieHeader(first.jar, A);
  const secondCookie = sessionCookieHeader(second.jar, A);
  const bobCookie = sessionCookieHeader(bob.jar, A);

  // Not from Gatehouse's own page: refused, and nothing ends.
  const bobsToken = csrfFrom((await bob.get(gh.url(A, '/.gatehouse/'))).body);
  for (const [what, opts] of [
    ["bob's csrf_token", { token: bobsToken }],
    ['a wrong csrf_token', { token: 'wrong' }],
    ['another origin', { origin: 'https://evil.test' }],
  ]) {
    const r = await postUserForm(first, gh, 'sign_out_everywhere', opts);
    assert.equal(r.status, 403, `${what}: ${r.status} ${r.location ?? ''}`);
  }
  await assertAccepted(gh, secondCookie, 'alice@example.com', { msg: 'after the refused forms:' });

  const out = await postUserForm(first, gh, 'sign_out_everywhere');
  assert.equal(out.status, 302, `sign out everywhere: ${out.status} ${out.body.slice(0, 300)}`);
  assert.equal(new URL(out.location).pathname, '/.gatehouse/signed_out');
  await assertRefused(gh, firstCopy, { msg: 'the browser that clicked:' });
  await assertRefused(gh, secondCookie, { msg: "alice's other browser:" });
  await assertAccepted(gh, bobCookie, 'bob@example.com', { msg: "bob's session:" });

  // Signing in again right away works (no loop through the IdP).
  const again = await signedIn('main', 'alice');
  await assertAccepted(gh, sessionCookieHeader(again.jar, A), 'alice@example.com', { msg: 'a new sign-in:' });
  await assertRefused(gh, secondCookie, { msg: 'the old session, later:' });
});

test('browser: "Sign out of every browser" in one browser signs alice out in another', async () => {
  const gh = s.gh.main;
  const one = await newPage();
  const two = await newPage();
  try {
    await browserSignIn(one.page, gh.url(A, '/one'), 'alice', 'alice-pass');
    await browserSignIn(two.page, gh.url(A, '/two'), 'alice', 'alice-pass');
    assert.equal(await pageFetchStatus(two.page, '/api/two-before'), 200, 'the second browser is signed in');

    await one.page.goto(gh.url(A, '/.gatehouse/'));
    await Promise.all([
      one.page.waitForURL((u) => u.pathname === '/.gatehouse/signed_out', { timeout: 10_000 }),
      one.page.click('form[action="/.gatehouse/sign_out_everywhere"] button, form[action="/.gatehouse/sign_out_everywhere"] [type="submit"]'),
    ]);
    assert.match(await one.page.content(), /signed out/i);

    const hits = s.upstream.hits();
    assert.equal(await pageFetchStatus(two.page, '/api/two-after'), 401, 'the second browser is signed out');
    assert.equal(s.upstream.hits(), hits, 'the upstream was hit');

    const authorize = s.idp.stats().authorize;
    two.visited.length = 0;
    await two.page.goto(gh.url(A, '/two-again'));
    await two.page.waitForURL((u) => u.href === gh.url(A, '/two-again') || u.href.startsWith(`${s.idp.issuer}/interaction/`), { timeout: 15_000 });
    assert.ok(s.idp.stats().authorize > authorize, 'a page visit goes to the IdP to sign in again');
    assert.ok(two.visited.some((u) => u.startsWith(`${s.idp.issuer}/auth`)), `redirected to the IdP: ${two.visited.join(' ')}`);
  } finally {
    await one.context.close();
    await two.context.close();
  }
});

// ---- cookie tossing ----

test('browser: a session cookie planted by another app on the same host name (cookie tossing) is refused with a 400 page, never used', async () => {
  const gh = s.gh.main;
  const { context, page } = await newPage();
  try {
    await browserSignIn(page, gh.url(A, '/private/page'), 'alice', 'alice-pass');
    assert.equal(await page.textContent('#hello'), 'Hello alice@example.com');

    // Bob's real session, which he wants alice to use without knowing it (so her work lands in his account).
    const bob = await signedIn('main', 'bob');
    const bobValue = bob.jar.get(A, '_pomerium');
    assert.ok(!bob.jar.get(A, '_pomerium_1'), "bob's session fits in one cookie");
    await assertAccepted(gh, `_pomerium=${bobValue}`, 'bob@example.com', { msg: "bob's cookie alone is his session:" });

    // Another app on assistant.localhost (another port: cookies ignore ports) plants it
    // under a longer path, so the browser sends it first there.
    const q = new URLSearchParams({ name: '_pomerium', value: bobValue, attrs: 'Path=/private; Secure; HttpOnly; SameSite=Lax' });
    await page.goto(`https://${A}:${tosser.port}/toss?${q}`);
    const both = (await context.cookies(gh.url(A, '/private/page'))).filter((c) => c.name === '_pomerium');
    assert.equal(both.length, 2, `the browser holds two _pomerium cookies for /private: ${JSON.stringify(both)}`);

    const seen = s.upstream.requests.length;
    const res = await page.goto(gh.url(A, '/private/page'));
    assert.equal(res.status(), 400);
    assert.match(await page.textContent('body'), /Your browser sent two cookies named _pomerium/);
    const after = s.upstream.requests.slice(seen);
    assert.deepEqual(after.map((r) => r.url), [], 'nothing reached the upstream');
    await waitForLog(gh, /path=\/private\/page status=400 .*decision="?duplicate-cookie/);

    // Gatehouse deleted the cookie it can delete (its own, Path=/): the person signs in again.
    const left = (await context.cookies(gh.url(A, '/'))).filter((c) => c.name === '_pomerium');
    assert.deepEqual(left.map((c) => c.path), [], `no _pomerium at Path=/ is left: ${JSON.stringify(left)}`);
  } finally {
    await context.close();
  }
});

test('a request carrying _pomerium twice (a valid session and another value, either order) is refused with 400, not proxied, and the cookies are deleted', async () => {
  const gh = s.gh.main;
  const alice = await signedIn('main', 'alice');
  const bob = await signedIn('main', 'bob');
  const valid = sessionCookieHeader(alice.jar, A);
  const bobValue = bob.jar.get(A, '_pomerium');
  const cases = [
    ['junk first', `_pomerium=junk; ${valid}`],
    ['junk last', `${valid}; _pomerium=junk`],
    ["another person's session first", `_pomerium=${bobValue}; ${valid}`],
    ['the same value twice', `${valid}; ${valid}`],
  ];
  for (const [i, [what, cookie]] of cases.entries()) {
    const hits = s.upstream.hits();
    const page = await s.client().get(gh.url(A, `/tossed-${i}`), { cookies: cookie });
    assertDuplicateRefusal(page, '_pomerium', { msg: `${what}, page:`, deleted: ['_pomerium', '_pomerium_1', '_pomerium_login'] });
    const api = await s.client().get(gh.url(A, `/api/tossed-${i}`), { cookies: cookie, headers: JSON_ACCEPT });
    assert.equal(api.status, 400, `${what}, API: ${api.status}`);
    assert.equal(s.upstream.hits(), hits, `${what}: the upstream was hit`);
    await waitForLog(gh, new RegExp(`path=/tossed-${i} status=400 .*decision="?duplicate-cookie`));
  }
  // Control: the valid cookie alone, and with another app's cookie twice, is a session.
  await assertAccepted(gh, valid, 'alice@example.com', { msg: 'the valid cookie alone:' });
  await assertAccepted(gh, `app=1; ${valid}; app=2`, 'alice@example.com', { msg: "another app's cookie twice is its own business:" });
});

test('a chunk, the login cookie or the handoff cookie sent twice is refused the same way', async () => {
  const gh = s.gh.main;
  const valid = sessionCookieHeader((await signedIn('main', 'alice')).jar, A);
  for (const name of ['_pomerium_1', '_pomerium_login', '_pomerium_handoff']) {
    const hits = s.upstream.hits();
    const r = await s.client().get(gh.url(A, '/twice'), { cookies: `${valid}; ${name}=a; ${name}=b` });
    assertDuplicateRefusal(r, name, { msg: `${name}:` });
    assert.equal(s.upstream.hits(), hits, `${name}: the upstream was hit`);
  }
  // A sign-in callback with the login cookie twice is refused before the IdP is asked.
  const c = s.client();
  const { next } = await c.login('alice', 'alice-pass', gh.url(A, '/login-twice'), { stopAt: isCallback });
  const login = c.jar.get(A, '_pomerium_login');
  const tokens = s.idp.stats().token;
  const r = await s.client().get(next, { cookies: `_pomerium_login=${login}; _pomerium_login=${login}` });
  assertDuplicateRefusal(r, '_pomerium_login', { deleted: ['_pomerium_login'] });
  assert.equal(s.idp.stats().token, tokens, 'the IdP token endpoint was not called');
});

test('two-host: the auth host refuses its cookies sent twice, and a handoff with _pomerium_handoff twice is refused (the same handoff with one cookie works)', async () => {
  const gh = s.gh.two;
  const start = gh.url(A, '/handoff-twice');

  // Stop the sign-in at the handoff to the route host.
  const c = s.client();
  const atHandoff = (u) => new URL(u).hostname === A && isCallback(u);
  const { next, chain } = await c.login('alice', 'alice-pass', start, { stopAt: atHandoff });
  assert.ok(next && new URL(next).searchParams.get('handoff'), `stopped at the handoff: ${chain.map((r) => r.url).join(' -> ')}`);
  const binding = c.jar.get(A, '_pomerium_handoff');
  assert.ok(binding, 'the route host set _pomerium_handoff');

  // The auth host, with its session cookie twice: no sign-in, no handoff.
  const authCookie = sessionCookieHeader(c.jar, AUTH);
  assert.ok(authCookie, 'the auth host holds a session');
  const signIn = gh.url(AUTH, `/.gatehouse/sign_in?return_url=${encodeURIComponent(start)}&binding=another-binding`);
  const authorize = s.idp.stats().authorize;
  const tossed = await s.client().get(signIn, { cookies: `_pomerium=junk; ${authCookie}` });
  assertDuplicateRefusal(tossed, '_pomerium', { msg: 'auth host:', deleted: ['_pomerium', '_pomerium_login'] });
  assert.equal(s.idp.stats().authorize, authorize, 'not sent to the IdP');
  const loginTwice = await s.client().get(gh.url(AUTH, '/oauth2/callback?code=x&state=y'), { cookies: '_pomerium_login=a; _pomerium_login=b' });
  assertDuplicateRefusal(loginTwice, '_pomerium_login', { msg: 'auth host callback:', deleted: ['_pomerium_login'] });

  // The handoff, with the binding cookie twice: refused, nothing proxied, no session.
  const hits = s.upstream.hits();
  const twice = await s.client().get(next, { cookies: `_pomerium_handoff=${binding}; _pomerium_handoff=other` });
  assertDuplicateRefusal(twice, '_pomerium_handoff', { msg: 'handoff:', deleted: ['_pomerium_handoff'] });
  assert.equal(s.upstream.hits(), hits, 'the upstream was hit');
  await waitForLog(gh, /path=\/\.gatehouse\/callback status=400 .*decision="?duplicate-cookie/);

  // Control: the same handoff with the browser's one cookie signs in.
  const ok = await c.get(next);
  assert.equal(ok.status, 302, `the handoff with one cookie: ${ok.status} ${ok.body.slice(0, 300)}`);
  assert.equal(ok.location, start);
  assert.ok(sessionCookiesIn(ok).length >= 1, 'sets the session');
});

test('two-host: the access log records the auth host\'s duplicate-cookie refusals as decision=duplicate-cookie', async () => {
  const gh = s.gh.two;
  const signIn = gh.url(AUTH, `/.gatehouse/sign_in?return_url=${encodeURIComponent(gh.url(A, '/logged'))}&binding=log-binding`);
  const r = await s.client().get(signIn, { cookies: '_pomerium=a; _pomerium=b' });
  assert.equal(r.status, 400);
  const cb = await s.client().get(gh.url(AUTH, '/oauth2/callback?code=x&state=y'), { cookies: '_pomerium_login=a; _pomerium_login=b' });
  assert.equal(cb.status, 400);
  await waitForLog(gh, /host=auth\.localhost path=\/\.gatehouse\/sign_in status=400 .*decision="?duplicate-cookie/);
  await waitForLog(gh, /host=auth\.localhost path=\/oauth2\/callback status=400 .*decision="?duplicate-cookie/);
});

// ---- sign-in state is single-use ----

test('a sign-in callback replayed with its state and login cookie (and another code) is refused without asking the IdP', async () => {
  const gh = s.gh.main;

  // Control: a junk code with a state that was never used does reach the IdP's token endpoint.
  const fresh = s.client();
  const { next: freshNext } = await fresh.login('alice', 'alice-pass', gh.url(A, '/state-control'), { stopAt: isCallback });
  const junkFresh = new URL(freshNext);
  junkFresh.searchParams.set('code', 'junk-code-1');
  let tokens = s.idp.stats().token;
  const refused = await fresh.get(junkFresh.href);
  assert.equal(refused.status, 400);
  assert.equal(s.idp.stats().token, tokens + 1, 'an unused state: the code is taken to the IdP');

  // The real flow: the first callback redeems the code.
  const c = s.client();
  const start = gh.url(A, '/state-once');
  const { next } = await c.login('alice', 'alice-pass', start, { stopAt: isCallback });
  const login = c.jar.get(A, '_pomerium_login');
  const state = new URL(next).searchParams.get('state');
  assert.ok(login && state, 'login cookie and state captured');
  tokens = s.idp.stats().token;
  const first = await c.get(next);
  assert.equal(first.status, 302, `the first callback: ${first.status} ${first.body.slice(0, 300)}`);
  assert.equal(first.location, start);
  assert.equal(s.idp.stats().token, tokens + 1, 'the first callback redeemed the code');

  // Replayed with the same state and login cookie, another code: refused, IdP not asked.
  const replay = s.client();
  replay.jar.set(A, '_pomerium_login', login);
  const hits = s.upstream.hits();
  const res = await replay.get(gh.url(A, `/.gatehouse/callback?code=junk-code-2&state=${encodeURIComponent(state)}`));
  assert.equal(s.idp.stats().token, tokens + 1, 'the IdP token endpoint was not called again');
  assert.equal(res.status, 400, `replay: ${res.status} ${res.location ?? ''}`);
  assert.match(res.body, /Sign-in failed/);
  assertNoSessionCookieSet(res);
  assert.equal(s.upstream.hits(), hits, 'the upstream was hit');
  assertRedirectsToIdp(await replay.get(start), s, 'after the replay there is no session:');
});

// ---- __Host- cookies ----

/** Each of `names` was set in `responses` as a host-only __Host- cookie: Secure, Path=/, no Domain. */
function assertHostOnlyCookies(responses, names) {
  const set = responses.flatMap((r) => r.setCookies.filter((c) => c.value !== '').map((c) => ({ ...c, host: new URL(r.url).hostname })));
  for (const name of names) {
    const found = set.filter((c) => c.name === name);
    assert.ok(found.length >= 1, `${name} was set: ${set.map((c) => `${c.host}: ${c.name}`).join(', ')}`);
    for (const c of found) {
      assert.ok(c.attrs.secure, `${name} Secure: ${c.raw}`);
      assert.equal(c.attrs.path, '/', `${name} Path=/: ${c.raw}`);
      assert.equal(c.attrs.domain, undefined, `${name} has no Domain: ${c.raw}`);
      assert.ok(c.attrs.httponly, `${name} HttpOnly: ${c.raw}`);
    }
  }
  const pomerium = set.filter((c) => c.name.startsWith('_pomerium'));
  assert.deepEqual(pomerium.map((c) => c.raw), [], 'no _pomerium cookie is set');
}

test('cookie_host_prefix: sign-in sets __Host-gatehouse_login and __Host-gatehouse (Secure, Path=/, no Domain); the session works and is refused when sent twice', async () => {
  const gh = s.gh.prefix;
  const c = s.client();
  const start = gh.url(A, '/prefixed');
  const { response, chain } = await c.login('alice', 'alice-pass', start);
  assert.equal(response.status, 200, `sign-in: ${response.status}`);
  assert.equal(response.url, start);
  assert.match(response.body, /Hello alice@example\.com/);
  assertHostOnlyCookies(chain, ['__Host-gatehouse_login', HOST_COOKIE]);

  const cookie = `${HOST_COOKIE}=${c.jar.get(A, HOST_COOKIE)}`;
  await assertAccepted(gh, cookie, 'alice@example.com', { msg: 'the __Host- session:' });
  const hits = s.upstream.hits();
  const r = await s.client().get(gh.url(A, '/prefixed-twice'), { cookies: `${HOST_COOKIE}=junk; ${cookie}` });
  assertDuplicateRefusal(r, HOST_COOKIE, { deleted: [HOST_COOKIE, '__Host-gatehouse_login'] });
  assert.equal(s.upstream.hits(), hits, 'the upstream was hit');
});

test('cookie_host_prefix, two-host: __Host-gatehouse_handoff on the route host, __Host-gatehouse on the auth host and the route host', async () => {
  const gh = s.gh.twoPrefix;
  const c = s.client();
  const start = gh.url(A, '/two-prefixed');
  const { response, chain } = await c.login('alice', 'alice-pass', start);
  assert.equal(response.status, 200, `sign-in: ${response.status}`);
  assert.equal(response.url, start);
  assertHostOnlyCookies(chain, ['__Host-gatehouse_handoff', '__Host-gatehouse_login', HOST_COOKIE]);
  assert.ok(c.jar.get(AUTH, HOST_COOKIE), 'the auth host has its session');
  assert.ok(c.jar.get(A, HOST_COOKIE), 'the route host has its session');
  const handoff = chain.find((r) => new URL(r.url).hostname === A && isCallback(r.url));
  assert.ok(handoff, 'went through the handoff');
});

test('browser: with cookie_host_prefix, Chromium accepts the __Host- cookies and alice signs in and stays signed in', async () => {
  const gh = s.gh.prefix;
  const { context, page } = await newPage();
  try {
    const start = gh.url(A, '/chromium-prefixed');
    await browserSignIn(page, start, 'alice', 'alice-pass');
    assert.equal(await page.textContent('#hello'), 'Hello alice@example.com');
    const cookies = await context.cookies(gh.url(A, '/'));
    const session = cookies.find((c) => c.name === HOST_COOKIE);
    assert.ok(session, `Chromium holds ${HOST_COOKIE}: ${cookies.map((c) => c.name).join(', ')}`);
    assert.equal(session.domain, A, 'host-only');
    assert.equal(session.path, '/');
    assert.ok(session.secure && session.httpOnly);
    assert.deepEqual(cookies.filter((c) => c.name.startsWith('_pomerium')).map((c) => c.name), []);

    const authorize = s.idp.stats().authorize;
    await page.goto(gh.url(A, '/chromium-prefixed-again'));
    assert.equal(await page.textContent('#hello'), 'Hello alice@example.com');
    assert.equal(s.idp.stats().authorize, authorize, 'no new sign-in');
  } finally {
    await context.close();
  }
});

test('gatehouse check refuses cookie_host_prefix together with cookie_domain (a __Host- cookie cannot carry a Domain)', () => {
  const base = { ...s.config('prefix'), state_dir: undefined };
  const ok = runCheck(toYaml(base));
  assert.equal(ok.code, 0, `without cookie_domain the config is fine:\n${ok.stdout}${ok.stderr}`);
  const bad = runCheck(toYaml({ ...base, cookie_domain: 'localhost' }));
  assert.equal(bad.code, 1, `exit code ${bad.code}:\n${bad.stdout}${bad.stderr}`);
  assert.match(`${bad.stdout}${bad.stderr}`, /cannot carry a Domain/);
  assert.match(`${bad.stdout}${bad.stderr}`, /cookie_domain/);
});
