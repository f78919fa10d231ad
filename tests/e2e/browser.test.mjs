// A real person's path in real Chromium: sign in at the IdP's login page, land back on the
// page they asked for, come back without logging in, sign out with the button.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import * as jose from 'jose';
import { chromium } from 'playwright-core';

import { newPage as newBrowserPage, signInWithBrowser } from '../harness/browser.mjs';
import { startStack } from '../harness/stack.mjs';

const A = 'assistant.localhost';
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
let s;
let browser;

before(async () => {
  s = await startStack({ gatehouses: { main: {}, two: { twoHost: true } } });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  await s?.stop();
});

const newPage = () => newBrowserPage(browser);

/** Go to `url`, sign in on the IdP's form, wait to be back at `url`. */
const signIn = (page, url, user, password) => signInWithBrowser(page, s.idp.issuer, url, user, password);

test('browser: alice signs in through the IdP page and lands on the exact URL she asked for, with verified identity headers', async () => {
  const { context, page } = await newPage();
  try {
    const start = s.gh.main.url(A, '/some/path?x=1');
    await signIn(page, start, 'alice', 'alice-pass');
    assert.equal(page.url(), start);
    assert.equal(await page.textContent('#hello'), 'Hello alice@example.com');

    // Chromium also asks for /favicon.ico afterwards; look at the page request itself.
    const seen = s.upstream.requests.findLast((r) => r.url === '/some/path?x=1');
    assert.ok(seen, 'the upstream saw /some/path?x=1');
    const h = seen.headers;
    assert.equal(h['x-pomerium-claim-email'], 'alice@example.com');
    assert.equal(h['x-pomerium-claim-user'], 'alice');
    assert.equal(h['x-pomerium-claim-groups'], 'team-it,team-admins');

    const jwks = (await s.client().get(s.gh.main.url(A, '/.well-known/pomerium/jwks.json'), { headers: { accept: 'application/json' } })).json();
    const { payload } = await jose.jwtVerify(h['x-pomerium-jwt-assertion'], jose.createLocalJWKSet(jwks), { audience: 'assistant.localhost' });
    const now = Date.now() / 1000;
    assert.equal(payload.email, 'alice@example.com');
    assert.ok(payload.exp > now && payload.exp <= now + 3600 + 5, `exp within 1 h: ${payload.exp - now}`);
  } finally {
    await context.close();
  }
});

test('browser: two-host sign-in goes through auth.localhost and lands on the original URL', async () => {
  const { context, page, visited } = await newPage();
  try {
    const gh = s.gh.two;
    const start = gh.url(A, '/two/path?y=2');
    await signIn(page, start, 'alice', 'alice-pass');
    assert.equal(page.url(), start);
    assert.ok(visited.some((u) => u.startsWith(gh.url('auth.localhost', '/.gatehouse/sign_in'))), `visited auth host sign_in:\n${visited.join('\n')}`);
    assert.ok(visited.some((u) => u.startsWith(gh.url('auth.localhost', '/oauth2/callback'))), 'visited auth host callback');
    assert.ok(visited.some((u) => u.startsWith(gh.url(A, '/.gatehouse/callback?handoff='))), 'visited route host handoff');
    assert.equal(await page.textContent('#hello'), 'Hello alice@example.com');
  } finally {
    await context.close();
  }
});

test('browser: a second visit needs no login; after signing out with the button the next visit goes to the IdP', async () => {
  const { context, page, visited } = await newPage();
  try {
    const gh = s.gh.main;
    await signIn(page, gh.url(A, '/first'), 'bob', 'bob-pass');

    const before = s.idp.stats();
    visited.length = 0;
    await page.goto(gh.url(A, '/second'));
    assert.equal(page.url(), gh.url(A, '/second'));
    assert.equal(await page.textContent('#hello'), 'Hello bob@example.com');
    assert.equal(s.idp.stats().authorize, before.authorize, 'no IdP hit on the second visit');
    assert.ok(!visited.some((u) => u.startsWith(s.idp.issuer)), `no IdP navigation: ${visited.join(' ')}`);

    await page.goto(gh.url(A, '/.gatehouse/'));
    assert.match(await page.content(), /bob@example\.com/);
    await Promise.all([
      page.waitForURL((u) => u.pathname === '/.gatehouse/signed_out', { timeout: 10_000 }),
      page.click('form[action="/.gatehouse/sign_out"] [type="submit"], form[action="/.gatehouse/sign_out"] button'),
    ]);
    assert.match(await page.content(), /signed out/i);
    const cookies = await context.cookies(gh.url(A, '/'));
    assert.deepEqual(cookies.filter((c) => /^_pomerium(_\d+)?$/.test(c.name)).map((c) => c.name), [], 'session cookies gone');

    visited.length = 0;
    const authorizeBefore = s.idp.stats().authorize;
    await page.goto(gh.url(A, '/third'));
    // The IdP still remembers bob, so it may send him straight back; either way it was asked.
    assert.ok(s.idp.stats().authorize > authorizeBefore, 'the IdP authorize endpoint was hit again');
    assert.ok(visited.some((u) => u.startsWith(`${s.idp.issuer}/auth`)), `redirected to the IdP: ${visited.join(' ')}`);
  } finally {
    await context.close();
  }
});
