// The LLM relay (issue 12) from a real browser: a person enters their provider key on
// Gatehouse's keys page in Chromium, sees only its last four characters, and their
// assistant's chat (the real OpenCode, through the relay) reaches the stand-in LLM with
// that key. OpenCode's own provider dialog call (`PUT /auth/<id>`, made by the page's
// script) is answered by Gatehouse. A page on another site cannot change the key.
// Run as root (CI does): backends run as uids of their own.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import http from 'node:http';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

import { A, backendStack, eventually, OPENCODE } from '../harness/backends.mjs';
import { newPage, signInWithBrowser } from '../harness/browser.mjs';
import { freePort } from '../harness/gatehouse.mjs';
import { startLlm } from '../harness/llm.mjs';

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

if (!existsSync(OPENCODE)) {
  throw new Error(`OpenCode binary missing at ${OPENCODE}: run tests/harness/install-deps.sh`);
}

let s;
let llm;
let browser;
let evil;

before(async () => {
  llm = await startLlm();
  llm.wordDelayMs = 5;
  const relayPort = await freePort();
  s = await backendStack(
    llm,
    { egress: { allow: [] }, relay: { providers: { fake: { style: 'openai', base_url: llm.url } } } },
    {},
    { relay_address: `127.0.0.1:${relayPort}` },
  );
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  // Another site: a page whose form posts to the keys page as soon as it loads.
  evil = http.createServer((req, res) => {
    const target = s.gh.main.url(A, '/.gatehouse/providers');
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(`<form id=f method=post action="${target}"><input name=provider value=fake><input name=action value=set><input name=key value=sk-evil-0000></form><script>document.getElementById('f').submit()</script>`);
  });
  await new Promise((r) => evil.listen(0, '127.0.0.1', r));
});

after(async () => {
  await browser?.close();
  await new Promise((r) => (evil ? evil.close(r) : r()));
  await s?.stop();
  await llm?.close();
});

/** A chat made by the page's own script, as OpenCode's web app does: the reply's text. */
async function chatFromPage(page, text) {
  return page.evaluate(async (text) => {
    const session = await (await fetch('/session', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })).json();
    const r = await fetch(`/session/${session.id}/message`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: { providerID: 'fake', modelID: 'fake-model' }, parts: [{ type: 'text', text }] }),
    });
    return { status: r.status, body: await r.text() };
  }, text);
}

test('a key entered on the keys page in Chromium reaches the provider as that person\'s key, and the page shows only its last four characters', { timeout: 240_000 }, async () => {
  const { context, page } = await newPage(browser);
  try {
    const keysUrl = s.gh.main.url(A, '/.gatehouse/providers');
    await signInWithBrowser(page, s.idp.issuer, keysUrl, 'alice', 'alice-pass');
    assert.match(await page.content(), /no key/);
    const key = `sk-browser-${randomBytes(12).toString('hex')}`;
    await page.fill('input[name="key"]', key);
    await Promise.all([page.waitForURL(keysUrl), page.click('form:has(input[name="key"]) button[type="submit"]')]);
    const html = await page.content();
    assert.match(html, new RegExp(`…${key.slice(-4)}`), 'the page shows the last four characters');
    assert.ok(!html.includes(key.slice(0, -4)), 'the page never shows the key');
    const cookies = await context.cookies(keysUrl);
    const keyCookie = cookies.find((c) => c.name === '_pomerium_keys');
    assert.ok(keyCookie?.httpOnly && keyCookie.secure, `an HttpOnly, Secure key cookie: ${JSON.stringify(cookies.map((c) => c.name))}`);
    assert.ok(!keyCookie.value.includes(key) && !Buffer.from(keyCookie.value, 'base64url').toString('latin1').includes(key), 'the cookie is sealed');

    // The assistant (its page's scripts) chats; the stand-in sees alice's key.
    // The first visit starts alice's backend (a "Starting" page that reloads itself).
    await eventually('alice\'s backend answers', async () => (await page.goto(s.gh.main.url(A, '/global/health')))?.status() === 200, { timeoutMs: 90_000, everyMs: 1000 });
    const before = llm.requests.length;
    const marker = `browser-${randomBytes(4).toString('hex')}`;
    const r = await chatFromPage(page, marker);
    assert.equal(r.status, 200, r.body.slice(0, 300));
    const seen = await eventually('the chat reached the stand-in', () => llm.requests.slice(before).find((q) => JSON.stringify(q.body).includes(marker)));
    assert.equal(seen.headers?.authorization, `Bearer ${key}`);

    // OpenCode's provider dialog (PUT /auth/fake from the page) replaces it.
    const key2 = `sk-dialog-${randomBytes(12).toString('hex')}`;
    const put = await page.evaluate(async (k) => {
      const res = await fetch('/auth/fake', { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ type: 'api', key: k }) });
      return { status: res.status, body: await res.text() };
    }, key2);
    assert.deepEqual(put, { status: 200, body: 'true' });
    const before2 = llm.requests.length;
    const marker2 = `dialog-${randomBytes(4).toString('hex')}`;
    assert.equal((await chatFromPage(page, marker2)).status, 200);
    const seen2 = await eventually('the second chat reached the stand-in', () => llm.requests.slice(before2).find((q) => JSON.stringify(q.body).includes(marker2)));
    assert.equal(seen2.headers?.authorization, `Bearer ${key2}`);

    // A page on another site posts the keys form: nothing changes.
    const evilPage = await context.newPage();
    await evilPage.goto(`http://127.0.0.1:${evil.address().port}/`);
    await evilPage.waitForLoadState('load');
    await new Promise((r) => setTimeout(r, 1500));
    await evilPage.close();
    const list = await page.evaluate(async () => (await fetch('/.gatehouse/api/providers')).json());
    assert.equal(list.providers[0].last4, key2.slice(-4), `the key is still the one alice set: ${JSON.stringify(list)}`);
    const before3 = llm.requests.length;
    const marker3 = `after-evil-${randomBytes(4).toString('hex')}`;
    assert.equal((await chatFromPage(page, marker3)).status, 200);
    const seen3 = await eventually('the third chat reached the stand-in', () => llm.requests.slice(before3).find((q) => JSON.stringify(q.body).includes(marker3)));
    assert.equal(seen3.headers?.authorization, `Bearer ${key2}`);
  } finally {
    await context.close();
  }
});
