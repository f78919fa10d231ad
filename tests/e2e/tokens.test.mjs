// Programmatic access (issue 13): personal access tokens that scripts, `opencode attach` and
// CI send instead of a browser's cookie. Real OpenCode per person (as root, each with a uid
// of its own), the real IdP, real TLS, the echo upstream as a recording static route.
// The OpenCode CLI itself (`opencode run --attach`, `opencode attach` in tmux) is in
// tokens-cli.test.mjs; IdP ID tokens as bearers in tokens-idp.test.mjs.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { agentShell, viaClient } from '../harness/agent.mjs';
import { A, backendStack, eventually, openSse } from '../harness/backends.mjs';
import { request } from '../harness/client.mjs';
import { gatehouseBin } from '../harness/gatehouse.mjs';
import { startLlm } from '../harness/llm.mjs';
import { IS_ROOT, filesHolding, signedIn } from '../harness/relay.mjs';
import { makeToken, tokenApi, tokenRequest, basic, assertTokenRefused } from '../harness/tokens.mjs';

const APP = 'other.localhost';

describe('personal access tokens', { skip: !IS_ROOT && 'per-person backends with uids need root' }, () => {
  let llm;
  let s;
  let alice;
  let bob;
  let aliceToken;
  const stateDir = mkdtempSync(path.join(os.tmpdir(), 'gatehouse-tokens-state-'));

  before(async () => {
    llm = await startLlm();
    s = await backendStack(llm, {}, {}, ({ upstream }) => ({
      state_dir: stateDir,
      routes: [
        { from: `https://${A}`, to_backend: 'assistant' },
        { from: `https://${APP}`, to: upstream.url, allow_any_authenticated_user: true, pass_identity_headers: true },
      ],
    }));
    alice = await signedIn(s, 'alice');
    bob = await signedIn(s, 'bob');
    aliceToken = (await makeToken(s, alice, { name: 'alice laptop' })).token;
  });
  after(async () => {
    await s?.stop();
    await llm?.close();
    rmSync(stateDir, { recursive: true, force: true });
  });

  test('a token is shown once, then listed by name and last characters only', async () => {
    assert.match(aliceToken, /^gatehouse_pat_[0-9a-f]{20}_[A-Za-z0-9_-]{43}$/);
    const list = await tokenApi(s, alice, 'GET');
    assert.equal(list.status, 200, list.body);
    const mine = list.json().tokens;
    assert.equal(mine.length, 1);
    assert.equal(mine[0].name, 'alice laptop');
    assert.equal(mine[0].last4, aliceToken.slice(-4));
    assert.deepEqual(mine[0].routes, [`https://${A}`], 'bound to the route it was made on');
    assert.ok(!list.body.includes(aliceToken.slice(-20)), 'the list never holds the token');
    // Bob's list is his own.
    assert.equal((await tokenApi(s, bob, 'GET')).json().tokens.length, 0);
  });

  test('curl with Bearer creates a session in the person\'s own backend, not another\'s', async () => {
    const made = await tokenRequest(s, A, '/session', aliceToken, { method: 'POST', body: '{"title":"from curl"}' });
    assert.equal(made.status, 200, `POST /session with a Bearer token: ${made.status} ${made.body.slice(0, 300)}`);
    const id = made.json().id;
    // The same session shows in alice's browser (cookie)...
    const inBrowser = await alice.request(s.gh.main.url(A, '/session'), { headers: { accept: 'application/json' }, timeoutMs: 60_000 });
    assert.ok(inBrowser.json().some((x) => x.id === id), 'alice\'s browser lists the session made with her token');
    // ... and not in bob's.
    const bobs = await bob.request(s.gh.main.url(A, '/session'), { headers: { accept: 'application/json' }, timeoutMs: 90_000 });
    assert.equal(bobs.status, 200, bobs.body.slice(0, 200));
    assert.ok(!bobs.json().some((x) => x.id === id), 'bob\'s backend does not have alice\'s session');
  });

  test('OpenCode\'s own ways of sending a password work with a token: Basic and ?auth_token=', async () => {
    const viaBasic = await request(s.gh.main.url(A, '/session'), {
      ca: s.certs.caPem, headers: { accept: 'application/json', authorization: `Basic ${basic(aliceToken)}` }, timeoutMs: 30_000,
    });
    assert.equal(viaBasic.status, 200, `Basic opencode:<token>: ${viaBasic.status} ${viaBasic.body.slice(0, 200)}`);
    for (const q of [basic(aliceToken), aliceToken]) {
      const viaQuery = await request(s.gh.main.url(A, `/session?auth_token=${encodeURIComponent(q)}`), {
        ca: s.certs.caPem, headers: { accept: 'application/json' }, timeoutMs: 30_000,
      });
      assert.equal(viaQuery.status, 200, `?auth_token=: ${viaQuery.status} ${viaQuery.body.slice(0, 200)}`);
    }
  });

  test('bob\'s token opens bob\'s backend only: what he makes with it never shows for alice', async () => {
    const bobToken = (await makeToken(s, bob, { name: 'bob ci' })).token;
    const made = await tokenRequest(s, A, '/session', bobToken, { method: 'POST', body: '{"title":"bob via token"}' });
    assert.equal(made.status, 200, made.body.slice(0, 200));
    const alices = await tokenRequest(s, A, '/session', aliceToken);
    assert.ok(!alices.json().some((x) => x.id === made.json().id), 'alice does not see bob\'s session');
    const bobs = await tokenRequest(s, A, '/session', bobToken);
    assert.ok(bobs.json().some((x) => x.id === made.json().id));
  });

  test('tampered, unknown, expired, revoked and wrong-route tokens get 401 JSON, never a Basic prompt', async () => {
    const flip = aliceToken.slice(0, -1) + (aliceToken.endsWith('A') ? 'B' : 'A');
    await assertTokenRefused(await tokenRequest(s, A, '/session', flip), 'token-refused', 'tampered');
    const unknown = `gatehouse_pat_${'0'.repeat(20)}_${'x'.repeat(43)}`;
    await assertTokenRefused(await tokenRequest(s, A, '/session', unknown), 'token-refused', 'unknown');
    await assertTokenRefused(await tokenRequest(s, A, '/session', 'gatehouse_pat_short'), 'token-refused', 'malformed');

    const short = (await makeToken(s, alice, { name: 'short', expires_in_seconds: 2 })).token;
    assert.equal((await tokenRequest(s, A, '/session', short)).status, 200, 'works before it expires');
    await new Promise((r) => setTimeout(r, 2500));
    const expired = await tokenRequest(s, A, '/session', short);
    await assertTokenRefused(expired, 'token-refused', 'expired');
    assert.match(expired.json().message, /expired/);

    const app = await tokenRequest(s, APP, '/', aliceToken);
    await assertTokenRefused(app, 'token-wrong-route', 'a token made for the assistant, used on another route');

    const doomed = await makeToken(s, alice, { name: 'doomed' });
    assert.equal((await tokenRequest(s, A, '/session', doomed.token)).status, 200);
    const del = await tokenApi(s, alice, 'DELETE', `/${doomed.id}`);
    assert.equal(del.status, 200, del.body);
    await assertTokenRefused(await tokenRequest(s, A, '/session', doomed.token), 'token-refused', 'revoked');
    // Bob cannot revoke alice's token.
    const notHis = await tokenApi(s, bob, 'DELETE', `/${(await tokenApi(s, alice, 'GET')).json().tokens[0].id}`);
    assert.equal(notHis.status, 404);
    assert.equal((await tokenRequest(s, A, '/session', aliceToken)).status, 200, 'alice\'s token still works');
    // A token does not open Gatehouse's own pages (it cannot make tokens).
    const own = await tokenRequest(s, A, '/.gatehouse/api/tokens', aliceToken, { method: 'POST', body: '{"name":"x"}' });
    assert.equal(own.status, 403);
    assert.equal(own.json().code, 'token-on-own-pages');
  });

  test('on a static route the app\'s own Authorization passes untouched; a Gatehouse token never reaches it', async () => {
    s.upstream.reset();
    const aliceApp = s.client();
    const { response } = await aliceApp.login('alice', 'alice-pass', s.gh.main.url(APP, '/.gatehouse/'));
    assert.equal(response.status, 200, 'alice signed in on the app\'s host');
    const own = await aliceApp.request(s.gh.main.url(APP, '/own-auth'), { headers: { accept: 'application/json', authorization: 'Bearer xyz' } });
    assert.equal(own.status, 200, own.body.slice(0, 200));
    assert.equal(s.upstream.last().headers.authorization, 'Bearer xyz', 'the app\'s own bearer reaches it');

    const appToken = (await makeToken(s, alice, { name: 'app', routes: [`https://${APP}`] })).token;
    const secret = appToken.slice(-43);
    const viaHeader = await tokenRequest(s, APP, '/hdr?x=1', appToken);
    assert.equal(viaHeader.status, 200, viaHeader.body.slice(0, 200));
    const seen = s.upstream.last();
    assert.equal(seen.headers.authorization, undefined, 'no Authorization upstream');
    assert.equal(seen.headers['x-pomerium-claim-email'], 'alice@example.com', 'the same identity headers as a cookie');
    assert.ok(seen.headers['x-pomerium-jwt-assertion'], 'and the signed JWT');

    const viaQuery = await request(s.gh.main.url(APP, `/q?a=1&auth_token=${encodeURIComponent(basic(appToken))}&b=2`), {
      ca: s.certs.caPem, headers: { accept: 'application/json' },
    });
    assert.equal(viaQuery.status, 200, viaQuery.body.slice(0, 200));
    assert.equal(s.upstream.last().url, '/q?a=1&b=2', 'the query token is removed, the rest kept');
    for (const r of s.upstream.requests) {
      assert.ok(!JSON.stringify(r).includes(secret), `the token reached the upstream: ${r.url}`);
      assert.ok(!JSON.stringify(r).includes(basic(appToken)), `the token reached the upstream: ${r.url}`);
    }
  });

  test('revoking a token ends the stream opened with it', async () => {
    const t = await makeToken(s, alice, { name: 'stream' });
    const stream = openSse(s, { jar: { header: () => '' } }, '/global/event', { authorization: `Bearer ${t.token}` });
    await eventually('the stream is open', () => stream.status === 200 && stream.events.length > 0, { timeoutMs: 60_000 });
    const del = await tokenApi(s, alice, 'DELETE', `/${t.id}`);
    assert.equal(del.status, 200);
    await eventually('the stream ends', () => stream.ended, { timeoutMs: 10_000 });
    await assertTokenRefused(await tokenRequest(s, A, '/global/event', t.token), 'token-refused', 'and cannot reopen');
  });

  test('the access log names the credential; the token is in no log and not in the state store', async () => {
    assert.equal((await tokenRequest(s, A, '/session', aliceToken)).status, 200);
    await eventually('an access line with the token\'s name', () => /credential=token:alice laptop|credential="token:alice laptop"/.test(s.gh.main.logs()));
    assert.match(s.gh.main.logs(), /credential="?cookie"?/);
    const secret = aliceToken.slice(-43);
    assert.ok(!s.gh.main.logs().includes(secret), 'the token is in the log');
    const held = filesHolding(stateDir, [secret, basic(aliceToken)]);
    assert.ok(held.files > 0, 'the state directory has files');
    assert.deepEqual(held.found, [], 'the token in the state directory');
    // The administrators' control socket is the only other thing there, closed to others.
    assert.equal(statSync(path.join(stateDir, 'control.sock')).mode & 0o777, 0o600);
  });

  // The threat model's attacker: alice's own (prompt-injected) agent, running shell commands
  // as her backend's uid. With a token in hand it must not find Gatehouse's secrets, her
  // token anywhere it can read, or a way to act as an administrator.
  test('from alice\'s own agent shell: her token is in no file she can read nor in her environment; the state store and the control socket are closed', async () => {
    const sock = path.join(stateDir, 'control.sock');
    const storeFile = path.join(stateDir, 'gatehouse.sqlite3');
    // Both exist, so a refusal below is a refusal and not a wrong path.
    assert.ok(statSync(sock).isSocket(), 'the control socket exists');
    assert.ok(statSync(storeFile).isFile(), 'the state store exists');
    const secret = aliceToken.slice(-43);
    const r = await agentShell(viaClient(alice, s.origin), [
      'echo "uid=$(id -u)"',
      `ls ${stateDir} >/dev/null 2>&1 && echo "state: listed" || echo "state: refused"`,
      `cat ${storeFile} >/dev/null 2>&1 && echo "store: read" || echo "store: refused"`,
      // The administrators' socket: connecting is what `gatehouse sign-out` does.
      `python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); e=s.connect_ex(sys.argv[1]); print("control:", "connected" if e == 0 else "refused errno %d" % e)' ${sock}`,
      `env | grep -c gatehouse_pat_ || true`,
      // In two halves: OpenCode keeps the command's text in its session store under $HOME,
      // so the whole secret must not appear in it.
      `a=${secret.slice(0, 20)}; b=${secret.slice(20)}; grep -rlF "$a$b" "$HOME" 2>/dev/null | head -3; echo "grep done"`,
    ].join('; '), { literal: true });
    const out = r.output;
    const uid = Number(/uid=(\d+)/.exec(out)?.[1]);
    assert.ok(uid >= 62000 && uid < 62100, `the agent runs as the person's own uid, not root:\n${out}`);
    assert.match(out, /state: refused/, out);
    assert.match(out, /store: refused/, out);
    assert.match(out, /control: refused errno (13|2)\b/, out);
    assert.match(out, /^0$/m, `a token in the agent's environment:\n${out}`);
    assert.match(out, /grep done/, out);
    assert.ok(!out.replace(/grep done[\s\S]*$/, '').split('\n').some((l) => l.startsWith('/')), `the token is in a file the agent can read:\n${out}`);
    // And alice's own token still works for alice: nothing above was refused for lack of one.
    assert.equal((await tokenRequest(s, A, '/session', aliceToken)).status, 200);
  });

  test('sign out of every browser also revokes the person\'s tokens', async () => {
    const t = await makeToken(s, bob, { name: 'bob two' });
    assert.equal((await tokenRequest(s, A, '/session', t.token)).status, 200);
    const page = await bob.get(s.gh.main.url(A, '/.gatehouse/'));
    const csrf = /action="\/\.gatehouse\/sign_out_everywhere"><input type="hidden" name="csrf_token" value="([^"]+)"/.exec(page.body)?.[1];
    assert.ok(csrf, 'the user page has the sign-out-everywhere form');
    const out = await bob.post(s.gh.main.url(A, '/.gatehouse/sign_out_everywhere'), { csrf_token: csrf }, { headers: { origin: s.origin } });
    assert.equal(out.status, 302);
    await assertTokenRefused(await tokenRequest(s, A, '/session', t.token), 'token-refused', 'after sign out everywhere');
  });

  test('an administrator\'s `gatehouse sign-out EMAIL` revokes the person\'s tokens and sessions and ends their streams', async () => {
    const t = await makeToken(s, alice, { name: 'before admin' });
    const stream = openSse(s, { jar: { header: () => '' } }, '/global/event', { authorization: `Bearer ${t.token}` });
    await eventually('the stream is open', () => stream.status === 200 && stream.events.length > 0, { timeoutMs: 60_000 });
    const r = spawnSync(gatehouseBin(), ['sign-out', '--config', s.gh.main.configFile, 'ALICE@example.com'], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 0, `gatehouse sign-out: ${r.status}\n${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /signed out everywhere/);
    await eventually('the token\'s stream ends', () => stream.ended, { timeoutMs: 10_000 });
    await assertTokenRefused(await tokenRequest(s, A, '/session', t.token), 'token-refused', 'after an administrator\'s sign-out');
    const page = await alice.request(s.gh.main.url(A, '/session'), { headers: { accept: 'application/json' } });
    assert.equal(page.status, 401, 'alice\'s browser session is ended too');
    assert.equal((await tokenApi(s, alice, 'GET')).status, 401);
    // A wrong config (no running Gatehouse behind its state_dir) is a clear error.
    const none = spawnSync(gatehouseBin(), ['sign-out', '--config', '/nonexistent/gatehouse.yaml', 'a@example.com'], { encoding: 'utf8' });
    assert.equal(none.status, 2);
  });
});
