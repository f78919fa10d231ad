// OpenCode's own clients through Gatehouse with a personal access token (issue 13): the real
// `opencode run --attach` and `opencode attach` (the TUI, in tmux), the same npm binary as
// the backends, trusting the test CA through NODE_EXTRA_CA_CERTS. The CLI cannot resolve
// `assistant.localhost` by itself, so it reaches Gatehouse through a tiny local CONNECT
// proxy (HTTPS_PROXY) that only knows *.localhost: the route keeps its real name, SNI and
// certificate check included.
//
// OpenCode 1.18.33's `run --attach` exits as soon as its message call returns, which the
// server answers ~40 ms before the reply's last event, so its stdout is almost always empty
// (tests/harness/opencode-cli.mjs). The answer is therefore read where the person would
// see it: in the session, through their browser's cookie.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { A, backendStack, eventually } from '../harness/backends.mjs';
import { REPLY, startLlm } from '../harness/llm.mjs';
import { attachInTmux, runAttached, startLocalhostProxy } from '../harness/opencode-cli.mjs';
import { IS_ROOT, signedIn } from '../harness/relay.mjs';
import { makeToken } from '../harness/tokens.mjs';

const JSON_ACCEPT = { accept: 'application/json' };

/** Every message text of every session the person's browser sees, with its session id. */
async function texts(s, c) {
  const list = await c.request(s.gh.main.url(A, '/session'), { headers: JSON_ACCEPT, timeoutMs: 90_000 });
  assert.equal(list.status, 200, list.body.slice(0, 200));
  const out = [];
  for (const session of list.json()) {
    const m = await c.request(s.gh.main.url(A, `/session/${session.id}/message`), { headers: JSON_ACCEPT });
    for (const msg of m.json()) {
      for (const part of msg.parts ?? []) {
        if (part.type === 'text') out.push({ session: session.id, role: msg.info?.role, text: part.text });
      }
    }
  }
  return out;
}

describe('opencode run --attach and opencode attach with a token', { skip: !IS_ROOT && 'per-person backends with uids need root' }, () => {
  let llm;
  let s;
  let proxy;
  let alice;
  let bob;
  let token;

  before(async () => {
    llm = await startLlm();
    s = await backendStack(llm);
    proxy = await startLocalhostProxy();
    alice = await signedIn(s, 'alice');
    bob = await signedIn(s, 'bob');
    token = (await makeToken(s, alice, { name: 'cli' })).token;
  });
  after(async () => {
    await proxy?.close();
    await s?.stop();
    await llm?.close();
  });

  test('run --attach with the token gets the stand-in LLM\'s answer in the person\'s own backend', async () => {
    const marker = `cli-prompt-${Date.now()}`;
    const r = await runAttached(s.origin, token, `say hello ${marker}`, { ca: s.certs, proxy: proxy.url });
    assert.equal(r.code, 0, `opencode run --attach: exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
    assert.match(r.stderr, /fake-model/, 'the CLI saw the session start on the backend');
    assert.ok(llm.requests.some((q) => JSON.stringify(q.body).includes(marker)), 'the prompt reached the stand-in LLM');
    const mine = await eventually('the answer in alice\'s session', async () => {
      const t = await texts(s, alice);
      const asked = t.find((x) => x.role === 'user' && x.text.includes(marker));
      return asked && t.some((x) => x.session === asked.session && x.role === 'assistant' && x.text.includes(REPLY)) && asked;
    }, { timeoutMs: 30_000 });
    // Not in bob's backend.
    assert.ok(!(await texts(s, bob)).some((x) => x.session === mine.session || x.text.includes(marker)), 'bob does not see alice\'s CLI session');
    assert.match(s.gh.main.logs(), /credential="?token:cli/);
  });

  test('a wrong token makes run --attach fail at once, without hanging', async () => {
    const bad = `${token.slice(0, -2)}zz`;
    const r = await runAttached(s.origin, bad, 'never sent', { ca: s.certs, proxy: proxy.url, timeoutMs: 60_000 });
    assert.equal(r.timedOut, false, 'it did not hang');
    assert.notEqual(r.code, 0);
  });

  test('opencode attach in tmux shows the TUI connected to the person\'s backend; a wrong token shows 401', async () => {
    const tui = await attachInTmux(s.origin, token, { ca: s.certs, proxy: proxy.url, name: `tui-${process.pid}` });
    try {
      const screen = await tui.waitFor(/ctrl\+p commands/, 90_000);
      assert.match(screen, /Fake Model|fake-model/i, `the TUI shows the backend's model:\n${screen}`);
    } finally {
      await tui.stop();
    }
    const badTui = await attachInTmux(s.origin, `${token.slice(0, -2)}zz`, { ca: s.certs, proxy: proxy.url, name: `tui-bad-${process.pid}` });
    try {
      // OpenCode shows Gatehouse's own message from the 401 JSON.
      await badTui.waitFor(/unknown or revoked access token|401 Unauthorized/, 60_000);
    } finally {
      await badTui.stop();
    }
  });
});
