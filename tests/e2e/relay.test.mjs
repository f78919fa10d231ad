// The LLM relay (issue 12): people's provider keys stay in Gatehouse and reach the provider
// only through the relay; their OpenCode holds a relay token that works nowhere else.
// Real OpenCode, the real IdP (oidc-provider), real TLS, nftables, and the stand-in LLM
// (tests/harness/llm.mjs), which is NOT in the pool's egress.allow: a chat can only reach
// it through the relay. Run as root (CI does): each person's backend has a uid of its own,
// and the relay checks the connecting socket's uid.
//
// Persistent mode (keys encrypted in the state store) is its own describe at the end; see
// the note there.

import assert from 'node:assert/strict';

import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import http from 'node:http';

import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { A, backendProcesses, eventually, homeOf, openSse } from '../harness/backends.mjs';

import { REPLY, startLlm } from '../harness/llm.mjs';

import {
  IS_ROOT,
  KEY_COOKIE,
  MODEL,
  newKey,
  relayStack,
  signedIn,
  api,
  setKeyViaApi,
  fakeRow,
  postUserForm,
  shell,
  backendConfig,
  relayTokenOf,
  relayFromShell,
  relayFromHere,
  assertRelayRefusal,
  chat,
  filesHolding,
  processesHolding,
  shellFinds,
  waitForLog,
  dumpLogs,
  logTail,
} from '../harness/relay.mjs';

// =====================================================================================

describe('the LLM relay, ephemeral keys (the default)', { skip: !IS_ROOT && 'needs root (per-person uids, nftables)' }, () => {
  let llm;
  let s;
  let alice;
  let bob;
  let aliceToken;
  const aliceKey = newKey('alice');
  const bobKey = newKey('bob');
  const claudeKey = newKey('alice-claude');

  before(async () => {
    llm = await startLlm();
    llm.wordDelayMs = 20;
    // `claude`: an Anthropic-style provider (x-api-key), relayed to the same stand-in.
    s = await relayStack(llm, { providers: { claude: { style: 'anthropic', base_url: llm.url } } });
    [alice, bob] = await Promise.all([signedIn(s, 'alice'), signedIn(s, 'bob')]);
  });
  after(async () => {
    dumpLogs(s, 'ephemeral');
    await s?.stop();
    await llm?.close();
  });

  test('the backend\'s OpenCode config sends the relayed provider to the relay with a relay token, keeping the operator\'s model; the stand-in itself is out of reach', async () => {
    const cfg = await backendConfig(s, alice);
    assert.equal(cfg.model, 'fake/fake-model', 'the operator\'s model choice is kept');
    assert.equal(cfg.provider?.fake?.npm, '@ai-sdk/openai-compatible', 'the operator\'s provider settings are kept');
    assert.ok(cfg.provider?.fake?.models?.['fake-model'], 'the operator\'s models are kept');
    assert.equal(cfg.provider.fake.options.baseURL, `http://127.0.0.1:${s.relayPort}/p/fake`);
    aliceToken = cfg.provider.fake.options.apiKey;
    assert.match(aliceToken ?? '', /^ghr_[A-Za-z0-9_-]{43}$/, `a relay token, got ${aliceToken}`);
    assert.equal(cfg.provider?.claude?.options?.baseURL, `http://127.0.0.1:${s.relayPort}/p/claude`, 'every relayed provider is in the config from the start');
    assert.equal(cfg.provider.claude.options.apiKey, aliceToken);
    const bobToken = await relayTokenOf(s, bob);
    assert.notEqual(bobToken, aliceToken, 'each backend has its own token');
    // Not in egress.allow: the only way to the stand-in is the relay.
    const u = new URL(llm.url);
    const direct = await shell(s, alice, `if timeout 5 bash -c 'exec 3<>/dev/tcp/${u.hostname}/${u.port}' 2>/dev/null; then echo OPEN; else echo REFUSED; fi`);
    assert.match(direct.output, /REFUSED/, 'the stand-in LLM is reachable from the backend without the relay');
  });

  test('without a key: the relay answers 401 no-key naming the keys page, and a chat never reaches the stand-in', async () => {
    const row = await fakeRow(s, alice);
    assert.equal(row?.connected, false, `fake is listed, not connected: ${JSON.stringify(row)}`);
    const r = await relayFromShell(s, alice, { token: aliceToken });
    assertRelayRefusal(r, 401, 'no-key');
    assert.match(r.json.error.message, /\/\.gatehouse\/providers/, `the message says where to add a key: ${r.json.error.message}`);
    const seen = llm.seen.length;
    const c = await chat(s, llm, alice, `nokey-${randomBytes(4).toString('hex')}`);
    assert.equal(c.requests.length, 0, 'the stand-in was asked without a key');
    assert.equal(llm.seen.length, seen, 'nothing reached the stand-in');
    assert.match(c.body, /no API key|no-key|\.gatehouse\/providers/, `the chat shows the relay's message: ${c.body.slice(0, 600)}`);
    assert.doesNotMatch(c.body, new RegExp(REPLY.split(' ').slice(0, 3).join(' ')), 'no reply without a key');
  });

  test('a key entered through the keys API reaches the stand-in as alice\'s Bearer on her chat; the page shows only its last four', async () => {
    const r = await setKeyViaApi(s, alice, aliceKey);
    assert.equal(r.json().last4, aliceKey.slice(-4));
    assert.equal(r.json().mode, 'ephemeral');
    assert.ok(!r.body.includes(aliceKey), 'the answer holds the key');
    const cookie = r.setCookies.find((x) => x.name === KEY_COOKIE);
    assert.ok(cookie?.value, `the key cookie ${KEY_COOKIE} is set: ${r.setCookies.map((x) => x.raw).join(' | ')}`);
    assert.ok(cookie.attrs.httponly && cookie.attrs.secure, `HttpOnly and Secure: ${cookie.raw}`);
    assert.ok(!cookie.value.includes(aliceKey) && !Buffer.from(cookie.value, 'base64').includes(aliceKey), 'the key cookie is sealed');

    const page = await alice.get(s.gh.main.url(A, '/.gatehouse/providers'));
    assert.equal(page.status, 200);
    assert.match(page.body, new RegExp(`…${aliceKey.slice(-4)}`), 'the keys page shows the last four');
    assert.ok(!page.body.includes(aliceKey.slice(0, -4)), 'the keys page shows more than the last four');
    const user = await alice.get(s.gh.main.url(A, '/.gatehouse/'));
    assert.match(user.body, /fake[\s\S]{0,200}connected[\s\S]{0,80}ephemeral/, 'the user page lists the provider as connected, in ephemeral mode');

    const c = await chat(s, llm, alice, `alice-${randomBytes(4).toString('hex')}`);
    assert.equal(c.status, 200, c.body.slice(0, 300));
    assert.ok(c.requests.length >= 1, `the stand-in was asked (status ${c.status}: ${c.body.slice(0, 300)})`);
    for (const q of c.requests) {
      assert.equal(q.headers.authorization, `Bearer ${aliceKey}`, `alice's key as the Bearer on ${q.path}`);
      assert.equal(q.path, '/v1/chat/completions');
      assert.equal(q.headers.cookie, undefined, 'no cookie reaches the provider');
    }
    assert.ok(c.body.includes('word by word'), `the reply came back: ${c.body.slice(0, 300)}`);
  });

  test('a key entered through OpenCode\'s own dialog (PUT /auth/fake) stays in Gatehouse and reaches the stand-in as bob\'s; alice\'s chats keep alice\'s', async () => {
    const put = await api(s, bob, 'PUT', '/auth/fake', { type: 'api', key: bobKey });
    assert.equal(put.status, 200, `PUT /auth/fake: ${put.status} ${put.body.slice(0, 300)}`);
    assert.equal(put.body.trim(), 'true', 'answered as OpenCode would');
    assert.ok(put.setCookies.some((x) => x.name === KEY_COOKIE && x.value), 'the key cookie is set in bob\'s browser');
    assert.equal((await fakeRow(s, bob))?.last4, bobKey.slice(-4), 'the keys API lists bob\'s key');
    const authJson = path.join(homeOf(s, 'bob'), '.local/share/opencode/auth.json');
    assert.ok(!existsSync(authJson) || !readFileSync(authJson, 'utf8').includes(bobKey), 'the key reached OpenCode\'s auth.json');

    const b = await chat(s, llm, bob, `bob-${randomBytes(4).toString('hex')}`);
    assert.ok(b.requests.length >= 1, `bob's chat reached the stand-in (status ${b.status}: ${b.body.slice(0, 300)})`);
    for (const q of b.requests) assert.equal(q.headers.authorization, `Bearer ${bobKey}`, 'bob\'s chat carries bob\'s key');
    const a = await chat(s, llm, alice, `alice2-${randomBytes(4).toString('hex')}`);
    assert.ok(a.requests.length >= 1);
    for (const q of a.requests) assert.equal(q.headers.authorization, `Bearer ${aliceKey}`, 'alice\'s chat carries alice\'s key, not bob\'s');
    // Nothing the stand-in ever got carried a key it should not have.
    for (const q of llm.seen) {
      assert.ok([undefined, `Bearer ${aliceKey}`, `Bearer ${bobKey}`].includes(q.headers.authorization), `unexpected credential reached the stand-in: ${q.headers.authorization}`);
      assert.doesNotMatch(q.headers.authorization ?? '', /ghr_|not-a-real-key/, 'a relay token or the config\'s placeholder key reached the provider');
    }
  });

  test('an Anthropic-style provider: no key → 401 no-key; with alice\'s key it reaches the stand-in as x-api-key on /messages only; an unknown provider → 404', async () => {
    const body = { model: 'claude-fake', max_tokens: 50, messages: [{ role: 'user', content: 'hi' }] };
    const none = await relayFromShell(s, alice, { method: 'POST', p: '/p/claude/messages', token: aliceToken, header: 'x-api-key', body });
    assertRelayRefusal(none, 401, 'no-key', 'a provider with no key:');
    assert.match(none.json.error.message, /\/\.gatehouse\/providers/, `the message says where to add a key: ${none.json.error.message}`);
    assert.match(none.json.error.message, /claude/, 'the message names the provider');

    await setKeyViaApi(s, alice, claudeKey, 'claude');
    const r = await relayFromShell(s, alice, { method: 'POST', p: '/p/claude/messages', token: aliceToken, header: 'x-api-key', body });
    assert.equal(r.status, 200, `POST /p/claude/messages: ${r.body.slice(0, 300)}`);
    assert.match(r.body, /word by word/);
    const q = llm.requests.at(-1);
    assert.equal(q.path, '/v1/messages');
    assert.equal(q.headers['x-api-key'], claudeKey, 'Anthropic style: the key as x-api-key');
    assert.equal(q.headers.authorization, undefined, 'and no Authorization (the token is not passed on)');
    const seen = llm.seen.length;
    assertRelayRefusal(await relayFromShell(s, alice, { method: 'POST', p: '/p/claude/chat/completions', token: aliceToken, body }), 403, 'path-not-relayed', 'an OpenAI path on an Anthropic provider:');
    assertRelayRefusal(await relayFromShell(s, alice, { method: 'POST', p: '/p/claude/messages/batches', token: aliceToken, body }), 403, 'path-not-relayed', 'message batches:');
    assertRelayRefusal(await relayFromShell(s, alice, { p: '/p/nope/models', token: aliceToken }), 404, 'unknown-provider', 'a provider the pool does not relay:');
    assert.equal(llm.seen.length, seen, 'a refused request reached the stand-in');
    // bob has no claude key: alice's is not his.
    const bobToken = await relayTokenOf(s, bob);
    assertRelayRefusal(await relayFromShell(s, bob, { method: 'POST', p: '/p/claude/messages', token: bobToken, body }), 401, 'no-key', 'bob, who has no claude key:');
  });

  test('the keys are found nowhere outside Gatehouse: files, processes, logs, OpenCode\'s API, or what alice\'s own agent shell can print', async () => {
    const keys = [aliceKey, bobKey, claudeKey];
    assert.ok((await fakeRow(s, alice))?.connected && (await fakeRow(s, bob))?.connected, 'both keys are set (the test looks for something that exists)');
    assert.ok(llm.requests.some((q) => q.headers.authorization === `Bearer ${aliceKey}`), 'alice\'s key was used');

    const data = filesHolding(s.dataRoot, keys);
    assert.ok(data.files > 5, `the data root holds the backends' files (${data.files})`);
    assert.deepEqual(data.found, [], 'a key in a file under the data root');
    const state = filesHolding(s.stateDir, keys);
    assert.deepEqual(state.found, [], 'a key in a file under the state directory');
    const procs = processesHolding(keys);
    assert.ok(procs.seen > 20);
    assert.deepEqual(procs.found, [], 'a key in a process\'s environment or command line');
    for (const k of keys) assert.ok(!s.logs().includes(k), 'a key in Gatehouse\'s logs');

    for (const [who, c] of [['alice', alice], ['bob', bob]]) {
      for (const p of ['/config/providers', '/provider']) {
        const r = await api(s, c, 'GET', p);
        assert.equal(r.status, 200, `${who} GET ${p}: ${r.status} ${r.body.slice(0, 200)}`);
        assert.match(r.body, /"fake"/, `${who} GET ${p} lists the relayed provider`);
        for (const k of keys) assert.ok(!r.body.includes(k), `${who}'s OpenCode hands a key back from GET ${p}`);
      }
    }

    // The scan can find things: alice's relay token is in her environment (by design).
    const control = await shellFinds(s, alice, aliceToken);
    assert.ok(control.includes('FOUND env'), `the shell scan finds the relay token in the environment: ${control.join(', ')}`);
    assert.ok(control.some((l) => /^FOUND \/proc\/\d+\/environ$/.test(l)), `and in its processes' environ: ${control.join(', ')}`);
    for (const [who, k] of [['alice', aliceKey], ['bob', bobKey], ['alice (claude)', claudeKey]]) {
      assert.deepEqual(await shellFinds(s, alice, k), [], `alice's agent shell can print ${who}'s key`);
    }
  });

  test('alice\'s relay token: refused from bob\'s uid and from the test process (wrong-peer), outside the allow-list (path-not-relayed); works from her own shell; logged without the token', async () => {
    const own = await relayFromShell(s, alice, { token: aliceToken });
    assert.equal(own.status, 200, `alice's own GET /p/fake/models: ${own.body.slice(0, 300)}`);
    assert.match(own.body, /fake-model/);
    const models = llm.seen.filter((q) => q.path === '/v1/models').at(-1);
    assert.equal(models?.headers.authorization, `Bearer ${aliceKey}`, 'the token was replaced by alice\'s key');
    const viaApiKey = await relayFromShell(s, alice, { token: aliceToken, header: 'x-api-key' });
    assert.equal(viaApiKey.status, 200, `the token in x-api-key: ${viaApiKey.body.slice(0, 300)}`);

    const seen = llm.seen.length;
    const fromBob = await relayFromShell(s, bob, { token: aliceToken });
    assertRelayRefusal(fromBob, 403, 'wrong-peer', 'alice\'s token from bob\'s agent shell:');
    const fromBobChat = await relayFromShell(s, bob, { method: 'POST', p: '/p/fake/chat/completions', token: aliceToken, body: { model: 'fake-model', stream: false, messages: [{ role: 'user', content: 'hi' }] } });
    assertRelayRefusal(fromBobChat, 403, 'wrong-peer', 'a completion with alice\'s token from bob\'s shell:');
    const fromHere = await relayFromHere(s, { headers: { authorization: `Bearer ${aliceToken}` } });
    assertRelayRefusal(fromHere, 403, 'wrong-peer', 'alice\'s token from the test process (root):');
    const outside = await relayFromShell(s, alice, { method: 'POST', p: '/p/fake/files', token: aliceToken, body: { purpose: 'fine-tune' } });
    assertRelayRefusal(outside, 403, 'path-not-relayed', 'POST /p/fake/files from alice\'s own shell:');
    const sneaky = await relayFromShell(s, alice, { method: 'POST', p: '/p/fake/chat/completions/../../files', token: aliceToken, body: {} });
    assert.ok(sneaky.status >= 400, `a dot-dot path is not relayed: ${sneaky.status}`);
    const noToken = await relayFromShell(s, alice, {});
    assertRelayRefusal(noToken, 401, 'unknown-token', 'no token:');
    const guessed = await relayFromShell(s, alice, { token: `ghr_${randomBytes(32).toString('base64url').slice(0, 43)}` });
    assertRelayRefusal(guessed, 401, 'unknown-token', 'a made-up token:');
    assert.equal(llm.seen.length, seen, 'a refused request reached the stand-in');

    await waitForLog(s, /wrong-peer|another uid/, 'the wrong-peer refusal');
    await waitForLog(s, /path-not-relayed|style does not need/, 'the path refusal');
    assert.ok(!s.logs().includes(aliceToken), `the relay token is in Gatehouse's logs:\n${logTail(s, new RegExp(aliceToken.slice(0, 12)))}`);
  });

  test('a streamed completion through the relay arrives token by token: raw from the shell, and as OpenCode\'s delta events through Gatehouse', async () => {
    llm.wordDelayMs = 150;
    try {
      const words = REPLY.split(' ').length;
      const raw = await relayFromShell(s, alice, {
        method: 'POST',
        p: '/p/fake/chat/completions',
        token: aliceToken,
        body: { model: 'fake-model', stream: true, messages: [{ role: 'user', content: 'stream please' }] },
      });
      assert.equal(raw.status, 200, raw.body.slice(0, 300));
      const chunks = raw.lines.filter((l) => /^data: \{/.test(l.line) && /"content":"[^"]/.test(l.line));
      assert.ok(chunks.length >= words - 1, `${chunks.length} content chunks for ${words} words`);
      const rawSpread = chunks.at(-1).at - chunks[0].at;
      assert.ok(rawSpread >= (words - 2) * llm.wordDelayMs * 0.6, `the relay's chunks spread over ${rawSpread.toFixed(0)} ms, not delivered at once`);
      const gaps = chunks.slice(1).map((c, i) => c.at - chunks[i].at);
      const bunched = gaps.filter((g) => g < llm.wordDelayMs * 0.3).length;
      assert.ok(bunched <= gaps.length / 3, `most chunks arrive one by one (${bunched} of ${gaps.length} gaps under ${llm.wordDelayMs * 0.3} ms)`);

      const events = openSse(s, alice, '/global/event');
      await eventually('event stream open', () => events.events.length > 0);
      const session = (await api(s, alice, 'POST', '/session', { title: 'streaming through the relay' })).json();
      const sent = await api(s, alice, 'POST', `/session/${session.id}/prompt_async`, { model: MODEL, parts: [{ type: 'text', text: 'Say hello' }] });
      assert.ok(sent.status === 204 || sent.status === 200, `prompt_async: ${sent.status} ${sent.body.slice(0, 200)}`);
      const deltas = () => events.events.filter((e) => e.data?.payload?.type === 'message.part.delta' && e.data.payload.properties?.sessionID === session.id);
      try {
        await eventually('reply fully streamed', () => deltas().map((e) => e.data.payload.properties.delta).join('').includes('buffered'), { timeoutMs: 60_000 });
      } finally {
        events.close();
      }
      const d = deltas();
      assert.ok(d.length >= words / 2, `${d.length} delta events for ${words} words`);
      const spread = d.at(-1).at - d[0].at;
      assert.ok(spread >= (words - 2) * llm.wordDelayMs * 0.5, `OpenCode's deltas spread over ${spread} ms, not delivered at once`);
      await waitForLog(s, /gatehouse::relay.*relay.*provider="?fake.*model="?fake-model.*status=200/, 'the relay\'s audit line');
      assert.ok(!s.logs().includes('stream please'), 'the prompt is in the logs');
    } finally {
      llm.wordDelayMs = 20;
    }
  });

  test('cross-site writes change no key; OpenCode\'s provider OAuth is refused with provider-oauth-refused', async () => {
    const evil = 'https://evil.example';
    const csrf = /name="csrf_token" value="([^"]+)"/.exec((await alice.get(s.gh.main.url(A, '/.gatehouse/providers'))).body)?.[1];
    assert.ok(csrf, 'the keys page has a form with a csrf_token');
    const evilKey = newKey('evil');
    const before = await fakeRow(s, alice);
    assert.equal(before?.last4, aliceKey.slice(-4));

    const form = await alice.post(s.gh.main.url(A, '/.gatehouse/providers'), { csrf_token: csrf, provider: 'fake', key: evilKey, action: 'set' }, { headers: { origin: evil } });
    assert.equal(form.status, 403, `cross-site form post (set): ${form.status}`);
    const formRemove = await alice.post(s.gh.main.url(A, '/.gatehouse/providers'), { csrf_token: csrf, provider: 'fake', action: 'remove' }, { headers: { origin: evil } });
    assert.equal(formRemove.status, 403, `cross-site form post (remove): ${formRemove.status}`);
    const noToken = await alice.post(s.gh.main.url(A, '/.gatehouse/providers'), { provider: 'fake', key: evilKey, action: 'set' }, { headers: { origin: s.origin } });
    assert.equal(noToken.status, 403, `a form post without csrf_token: ${noToken.status}`);
    const put = await api(s, alice, 'PUT', '/.gatehouse/api/providers/fake', { key: evilKey }, { origin: evil });
    assert.equal(put.status, 403, `cross-site PUT /.gatehouse/api/providers/fake: ${put.status}`);
    const del = await api(s, alice, 'DELETE', '/.gatehouse/api/providers/fake', undefined, { origin: evil });
    assert.equal(del.status, 403, `cross-site DELETE /.gatehouse/api/providers/fake: ${del.status}`);
    const auth = await alice.request(s.gh.main.url(A, '/auth/fake'), { method: 'PUT', body: JSON.stringify({ type: 'api', key: evilKey }), headers: { 'content-type': 'text/plain', origin: evil, accept: '*/*' } });
    assert.equal(auth.status, 403, `cross-site PUT /auth/fake: ${auth.status}`);
    const authDel = await alice.request(s.gh.main.url(A, '/auth/fake'), { method: 'DELETE', headers: { origin: evil, accept: '*/*' } });
    assert.equal(authDel.status, 403, `cross-site DELETE /auth/fake: ${authDel.status}`);
    for (const r of [form, formRemove, put, del, auth, authDel]) {
      assert.ok(!r.setCookies.some((x) => x.name === KEY_COOKIE), 'a refused write set the key cookie');
    }
    const after = await fakeRow(s, alice);
    assert.deepEqual(after, before, 'the key changed');
    const c = await chat(s, llm, alice, `after-csrf-${randomBytes(4).toString('hex')}`);
    assert.ok(c.requests.length >= 1 && c.requests.every((q) => q.headers.authorization === `Bearer ${aliceKey}`), 'alice\'s chat still carries her own key');

    // Same-origin form post (the page's own): replaces the key; then back.
    const replaced = newKey('alice-form');
    const ok = await alice.post(s.gh.main.url(A, '/.gatehouse/providers'), { csrf_token: csrf, provider: 'fake', key: replaced, action: 'set' }, { headers: { origin: s.origin } });
    assert.ok(ok.status === 303 || ok.status === 200, `same-origin form post: ${ok.status} ${ok.body.slice(0, 200)}`);
    assert.equal((await fakeRow(s, alice))?.last4, replaced.slice(-4), 'the page\'s own form changes the key');
    await setKeyViaApi(s, alice, aliceKey);

    for (const [method, p] of [['GET', '/provider/openai/oauth/authorize'], ['POST', '/provider/openai/oauth/authorize'], ['POST', '/provider/fake/oauth/callback'], ['GET', '/provider/anthropic/oauth/callback?code=x']]) {
      const r = await alice.request(s.gh.main.url(A, p), { method, headers: { origin: s.origin, accept: 'text/html' }, body: method === 'POST' ? '{}' : undefined });
      assert.equal(r.status, 403, `${method} ${p}: ${r.status} ${r.body.slice(0, 200)}`);
      assert.match(r.body, /\/\.gatehouse\/providers/, `${method} ${p}: the page says where to add a key instead`);
    }
    await waitForLog(s, /path=\/provider\/openai\/oauth\/authorize status=403 .*decision="?provider-oauth-refused/, 'the access line decision=provider-oauth-refused');
  });

  test('after alice\'s backend stopped (the Restart button), her old relay token is refused: 401 unknown-token', async () => {
    const old = aliceToken;
    assert.equal((await relayFromShell(s, alice, { token: old })).status, 200, 'the token works before the stop');
    const before = backendProcesses(s.dataRoot).find((p) => p.home === homeOf(s, 'alice'));
    const r = await postUserForm(s, alice, 'backend/restart', { pool: 'assistant' });
    assert.ok(r.status < 400, `restart: ${r.status}`);
    await eventually('alice\'s backend was started anew', () => {
      const now = backendProcesses(s.dataRoot).find((p) => p.home === homeOf(s, 'alice'));
      return now && now.pid !== before?.pid;
    }, { timeoutMs: 30_000 });
    aliceToken = await relayTokenOf(s, alice);
    assert.notEqual(aliceToken, old, 'a new backend start gets a new token');
    const stale = await relayFromShell(s, alice, { token: old });
    assertRelayRefusal(stale, 401, 'unknown-token', 'the stopped backend\'s token from alice\'s new shell:');
    const staleHere = await relayFromHere(s, { headers: { authorization: `Bearer ${old}` } });
    assertRelayRefusal(staleHere, 401, 'unknown-token', 'the stopped backend\'s token from the test process:');
    await waitForLog(s, /gatehouse::relay.*(unknown|stale).*token|refused="?unknown-token/i, 'the unknown-token log line');
    const fresh = await relayFromShell(s, alice, { token: aliceToken });
    assert.equal(fresh.status, 200, `the new token works: ${fresh.body.slice(0, 300)}`);
  });

  test('a Gatehouse restart wipes memory; the next request from the browser with the key cookie restores it (a new browser has none)', async () => {
    assert.ok(alice.jar.get(A, KEY_COOKIE), 'alice\'s browser holds the key cookie');
    await s.restart();
    // A new browser of alice's first: nothing in memory, nothing to restore from.
    const other = await signedIn(s, 'alice');
    assert.equal((await fakeRow(s, other))?.connected, false, 'after a restart, memory holds no key');
    const page = await other.get(s.gh.main.url(A, '/.gatehouse/providers'));
    assert.match(page.body, /another browser|enter the key again/i, 'the keys page says a new browser needs the key again');
    // alice's own browser (same session, same cookie_secret) restores it.
    const row = await fakeRow(s, alice);
    assert.equal(row?.connected, true, `the key cookie restored alice's key: ${JSON.stringify(row)}\n${logTail(s)}`);
    assert.equal(row.last4, aliceKey.slice(-4));
    aliceToken = await relayTokenOf(s, alice);
    const c = await chat(s, llm, alice, `restored-${randomBytes(4).toString('hex')}`);
    assert.ok(c.requests.length >= 1 && c.requests.every((q) => q.headers.authorization === `Bearer ${aliceKey}`), `the restored key reaches the stand-in: ${c.body.slice(0, 300)}`);
  });

  test('sign-out deletes the key cookie in that browser and the key from memory', async () => {
    assert.ok(alice.jar.get(A, KEY_COOKIE), 'alice\'s browser holds the key cookie before');
    const keyCookie = alice.jar.get(A, KEY_COOKIE);
    const r = await postUserForm(s, alice, 'sign_out');
    assert.ok(r.status < 400, `sign-out: ${r.status}`);
    const cleared = r.setCookies.find((x) => x.name === KEY_COOKIE);
    assert.ok(cleared, `sign-out sets ${KEY_COOKIE}: ${r.setCookies.map((x) => x.raw).join(' | ')}`);
    assert.equal(cleared.attrs['max-age'], '0', `the key cookie is deleted: ${cleared.raw}`);
    assert.equal(alice.jar.get(A, KEY_COOKIE), undefined);

    alice = await signedIn(s, 'alice');
    assert.equal((await fakeRow(s, alice))?.connected, false, 'the key is still in memory after sign-out');
    aliceToken = await relayTokenOf(s, alice);
    assertRelayRefusal(await relayFromShell(s, alice, { token: aliceToken }), 401, 'no-key', 'a relay call after sign-out:');
    const c = await chat(s, llm, alice, `signed-out-${randomBytes(4).toString('hex')}`);
    assert.equal(c.requests.length, 0, 'a chat after sign-out still reached the stand-in');
    // The signed-out browser's key cookie, sent again with a new session, restores nothing.
    alice.jar.set(A, KEY_COOKIE, keyCookie);
    assert.equal((await fakeRow(s, alice))?.connected, false, 'a key cookie from the signed-out session restored the key');
    alice.jar.delete(A, KEY_COOKIE);
    // bob is someone else: his key stays.
    assert.equal((await fakeRow(s, bob))?.connected, true, 'alice\'s sign-out took bob\'s key');
  });

  test('"sign out of every browser": another browser\'s key cookie does not restore the key', async () => {
    const one = await signedIn(s, 'alice');
    const two = await signedIn(s, 'alice');
    const twoKey = newKey('alice-two');
    // Browser two sets its key with the keys page's form.
    const csrf = /name="csrf_token" value="([^"]+)"/.exec((await two.get(s.gh.main.url(A, '/.gatehouse/providers'))).body)?.[1];
    const set = await two.post(s.gh.main.url(A, '/.gatehouse/providers'), { csrf_token: csrf, provider: 'fake', key: twoKey, action: 'set' }, { headers: { origin: s.origin } });
    assert.ok(set.status === 303 || set.status === 200, `the keys form: ${set.status} ${set.body.slice(0, 200)}`);
    assert.ok(two.jar.get(A, KEY_COOKIE), 'browser two holds a key cookie');
    aliceToken = await relayTokenOf(s, two);
    const works = await relayFromShell(s, two, { token: aliceToken });
    assert.equal(works.status, 200, 'the key works before');
    assert.equal(llm.seen.at(-1).headers.authorization, `Bearer ${twoKey}`);

    const out = await postUserForm(s, one, 'sign_out_everywhere');
    assert.ok(out.status < 400, `sign out of every browser: ${out.status}`);
    const stale = two.jar.get(A, KEY_COOKIE);
    assert.ok(stale, 'browser two still holds its key cookie (nothing told it)');
    await signedIn(s, 'alice', two);
    assert.equal(two.jar.get(A, KEY_COOKIE), stale, 'browser two sends its old key cookie');
    const row = await fakeRow(s, two);
    assert.equal(row?.connected, false, `browser two's key cookie restored the key after "sign out of every browser": ${JSON.stringify(row)}`);
    aliceToken = await relayTokenOf(s, two);
    const seen = llm.seen.length;
    assertRelayRefusal(await relayFromShell(s, two, { token: aliceToken }), 401, 'no-key', 'a relay call after "sign out of every browser":');
    assert.equal(llm.seen.length, seen);
  });

  test('the relay limits each person\'s requests: 429 rate-limited with Retry-After past the pool\'s rate, another person unaffected', async () => {
    alice = await signedIn(s, 'alice', alice); // "sign out of every browser" ended her session here too
    const token = await relayTokenOf(s, alice);
    const request = Buffer.from(`GET /p/fake/models HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`).toString('base64');
    const r = await shell(s, alice, `req=$(echo ${request} | base64 -d; echo x); req=\${req%x}
for i in $(seq 1 140); do
  exec 3<>/dev/tcp/127.0.0.1/${s.relayPort} || { echo CONNECT-FAILED; continue; }
  printf '%s' "$req" >&3
  tr -d '\\r' <&3 | grep -ioE '^HTTP/[0-9.]+ [0-9]+|^retry-after: *[0-9]+|"code":"[a-z-]+"' | tr '\\n' ' '; echo
  exec 3<&-
done`);
    const lines = r.output.split('\n').filter((l) => l.startsWith('HTTP/'));
    assert.equal(lines.length, 140, `140 answers: ${r.output.slice(0, 300)}`);
    const limited = lines.filter((l) => / 429 /.test(l));
    assert.ok(limited.length >= 1, `no 429 after 140 requests in a row; statuses: ${[...new Set(lines.map((l) => l.slice(9, 12)))].join(',')}`);
    assert.ok(limited.length <= 40, `the default limit (120 a minute) allows most of them: ${limited.length} refused`);
    // (The limit refills 2 a second: a request made later through the agent shell, which
    // takes seconds, may be let in again, so the refusals are read from the burst itself.)
    assert.ok(limited.every((l) => /"code":"rate-limited"/.test(l)), `each 429 says rate-limited: ${limited[0]}`);
    assert.ok(limited.every((l) => /retry-after: *\d+/i.test(l)), `every 429 has Retry-After: ${limited[0]}`);
    // bob has his own budget.
    const bobs = await relayFromShell(s, bob, { token: await relayTokenOf(s, bob) });
    assert.equal(bobs.status, 200, `bob is not limited by alice's requests: ${bobs.body.slice(0, 200)}`);
  });
});
