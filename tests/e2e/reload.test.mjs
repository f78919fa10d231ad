// Hot reload: named policies in policies/, watched with the config file. A policy change
// reaches a signed-in person's next request; a broken file changes nothing but the log and
// the metric; open streams survive a reload unless their person is no longer allowed.

import assert from 'node:assert/strict';
import https from 'node:https';
import { after, before, test } from 'node:test';

import { loopbackLookup } from '../harness/client.mjs';
import { freePort } from '../harness/gatehouse.mjs';
import { sessionCookieHeader, startStack } from '../harness/stack.mjs';

const TEAM_BOTH = `# who may use the assistant
- allow:
    or:
      - email: { is: alice@example.com }
      - email: { is: bob@example.com }
`;
const TEAM_BOB_ONLY = `- allow:
    or:
      - email: { is: bob@example.com }
`;
// An unknown criterion on line 3: the reload must fail and keep the old policy.
const TEAM_BROKEN = `- allow:
    or:
      - emial: { is: alice@example.com }
`;

let s;
let gh;
let metricsPort;
const clients = {};

before(async () => {
  metricsPort = await freePort();
  s = await startStack({
    gatehouses: {
      main: {
        files: { 'policies/team.yaml': TEAM_BOTH, 'policies/team.test.yaml': 'not a policy: skipped\n' },
        extra: {
          policies_dir: 'policies',
          metrics_address: `127.0.0.1:${metricsPort}`,
        },
        lazy: true,
      },
    },
  });
  // The standard routes, with the assistant under the named policy `team`.
  const base = s.config('main');
  base.routes = [
    { from: 'https://assistant.localhost', to: s.upstream.url, pass_identity_headers: true, policy: 'team' },
    { from: 'https://public.localhost', to: s.upstream.url, allow_public_unauthenticated_access: true },
  ];
  s.config = () => base;
  gh = await s.start('main');
  for (const user of ['alice', 'bob']) {
    const c = s.client();
    const { response } = await c.login(user, `${user}-pass`, gh.url('assistant.localhost', '/'));
    assert.equal(response.status, 200, `${user} signs in: ${response.body.slice(0, 200)}`);
    clients[user] = c;
  }
});

after(async () => {
  await s?.stop();
});

const get = (user, p = '/') => clients[user].get(gh.url('assistant.localhost', p), { headers: { accept: 'application/json' } });

async function metrics() {
  const r = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
  return r.text();
}

/** Polls `check` every 50 ms until it returns true; returns the ms it took. */
async function within(ms, what, check) {
  const start = Date.now();
  for (;;) {
    if (await check()) return Date.now() - start;
    if (Date.now() - start > ms) assert.fail(`${what}: not within ${ms} ms\n--- gatehouse log tail\n${gh.logs().slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Opens an SSE stream through Gatehouse as `user`; resolves the counts when it ends. */
function openStream(user, p) {
  const events = [];
  let ended = false;
  const done = new Promise((resolve) => {
    const req = https.request({
      host: 'assistant.localhost',
      port: gh.port,
      path: p,
      lookup: loopbackLookup,
      ca: s.certs.caPem,
      agent: false,
      headers: { cookie: sessionCookieHeader(clients[user].jar, 'assistant.localhost'), accept: 'text/event-stream' },
    }, (res) => {
      assert.equal(res.statusCode, 200);
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        for (const m of chunk.matchAll(/^id: (\d+)$/gm)) events.push({ n: Number(m[1]), at: Date.now() });
      });
      const finish = (how) => { if (!ended) { ended = true; resolve({ events, how, at: Date.now() }); } };
      res.on('end', () => finish('end'));
      res.on('error', () => finish('error'));
      res.on('close', () => finish('close'));
    });
    req.on('error', () => { if (!ended) { ended = true; resolve({ events, how: 'error', at: Date.now() }); } });
    req.end();
  });
  return { events, done };
}

/** Opens a WebSocket through Gatehouse as `user`: `send(text)` resolves the echo. */
function openWebSocket(user) {
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: 'assistant.localhost',
      port: gh.port,
      path: '/ws',
      lookup: loopbackLookup,
      ca: s.certs.caPem,
      agent: false,
      headers: {
        cookie: sessionCookieHeader(clients[user].jar, 'assistant.localhost'),
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': Buffer.from('0123456789abcdef').toString('base64'),
      },
    });
    req.on('upgrade', (res, socket) => {
      let closed = false;
      const closedP = new Promise((r) => socket.on('close', () => { closed = true; r(Date.now()); }));
      socket.on('error', () => {});
      const send = (text) => new Promise((res2, rej2) => {
        if (closed) return rej2(new Error('closed'));
        let got = '';
        const onData = (d) => {
          got += d.toString('utf8');
          if (got.length >= text.length) { socket.off('data', onData); res2(got); }
        };
        socket.on('data', onData);
        socket.write(text);
        setTimeout(() => { socket.off('data', onData); rej2(new Error(`no echo of ${text}`)); }, 2_000);
      });
      resolve({ status: res.statusCode, send, closed: () => closed, closedP, end: () => socket.destroy() });
    });
    req.on('response', (res) => reject(new Error(`no upgrade: ${res.statusCode}`)));
    req.on('error', reject);
    req.end();
  });
}

const reloadsIn = (text) => Number(/gatehouse_config_reloads_total\{result="success"\} (\d+)/.exec(text)?.[1] ?? 0);

test('named policy: both people are let in by policies/team.yaml; the .test.yaml beside it is not a policy', async () => {
  assert.equal((await get('alice')).status, 200);
  assert.equal((await get('bob')).status, 200);
  assert.match(await metrics(), /gatehouse_config_last_reload_successful 1/);
});

test('an SSE stream through Gatehouse survives an unrelated reload', async () => {
  const before = reloadsIn(await metrics());
  const stream = openStream('alice', '/sse?n=30&every=100');
  await within(2_000, 'first events', () => stream.events.length >= 3);
  // An unrelated change: a new policy file nobody uses yet.
  gh.write('policies/unused.yaml', '- allow: { or: [ { email: { is: carol@example.com } } ] }\n');
  await within(2_000, 'the reload', async () => reloadsIn(await metrics()) > before);
  const { events, how } = await stream.done;
  assert.equal(events.length, 30, `every event arrived (${how})`);
  assert.deepEqual(events.map((e) => e.n), Array.from({ length: 30 }, (_, i) => i + 1));
});

test('a WebSocket through Gatehouse survives an unrelated reload', async () => {
  const ws = await openWebSocket('bob');
  assert.equal(ws.status, 101);
  assert.equal(await ws.send('hello-1'), 'hello-1');
  const before = reloadsIn(await metrics());
  gh.write('policies/unused.yaml', '- allow: { or: [ { email: { is: dave@example.com } } ] }\n');
  await within(2_000, 'the reload', async () => reloadsIn(await metrics()) > before);
  assert.equal(await ws.send('hello-2'), 'hello-2', 'still open after the reload');
  ws.end();
});

test('a broken policy file keeps the old policy serving; the error is logged at file:line:col and the metric drops', async () => {
  gh.write('policies/team.yaml', TEAM_BROKEN);
  await within(2_000, 'the failed reload in the log', () => /config reload failed/.test(gh.logs()));
  assert.match(gh.logs(), /team\.yaml:3:9: .*unknown criterion `emial`/);
  assert.match(await metrics(), /gatehouse_config_last_reload_successful 0/);
  assert.match(await metrics(), /gatehouse_config_reloads_total\{result="failure"\} [1-9]/);
  // Still the old policy: both are let in.
  assert.equal((await get('alice')).status, 200);
  assert.equal((await get('bob')).status, 200);
  // Fixing the file recovers.
  gh.write('policies/team.yaml', TEAM_BOTH);
  await within(2_000, 'the metric back at 1', async () => /gatehouse_config_last_reload_successful 1/.test(await metrics()));
});

test('a policy change denies a signed-in person on their next request, within 2 s, with the new reason; her open streams are ended', async () => {
  const stream = openStream('alice', '/sse?n=600&every=100');
  const ws = await openWebSocket('alice');
  assert.equal(await ws.send('before'), 'before');
  const bobWs = await openWebSocket('bob');
  await within(2_000, 'first events', () => stream.events.length >= 2);
  const changedAt = Date.now();
  gh.write('policies/team.yaml', TEAM_BOB_ONLY);
  await within(2_000, 'alice denied', async () => (await get('alice')).status === 403);
  const page = await clients.alice.get(gh.url('assistant.localhost', '/'), { headers: { accept: 'text/html' } });
  assert.equal(page.status, 403);
  assert.match(page.body, /no rule of this route allows alice@example\.com/);
  assert.equal((await get('bob')).status, 200, 'bob is still allowed');
  const { events, at } = await stream.done;
  assert.ok(events.length < 600, `the stream was ended early (${events.length} events)`);
  assert.ok(at - changedAt < 3_000, `ended ${at - changedAt} ms after the change`);
  assert.match(gh.logs(), /ended an open stream/);
  await Promise.race([ws.closedP, new Promise((r) => setTimeout(r, 3_000))]);
  assert.ok(ws.closed(), "alice's WebSocket was ended too");
  assert.equal(await bobWs.send('bob-still-here'), 'bob-still-here', "bob's WebSocket is untouched");
  bobWs.end();
  // Put it back for the tests after this one.
  gh.write('policies/team.yaml', TEAM_BOTH);
  await within(2_000, 'alice allowed again', async () => (await get('alice')).status === 200);
});

test('SIGHUP reloads the config', async () => {
  const before = reloadsIn(await metrics());
  process.kill(gh.pid, 'SIGHUP');
  await within(2_000, 'a reload after SIGHUP', async () => reloadsIn(await metrics()) > before);
  assert.match(gh.logs(), /trigger="?SIGHUP/);
  assert.equal(gh.exited(), null, 'still running');
});

test('the config file itself is watched: a route added there serves at once; a broken config file keeps the old one', async () => {
  const cfg = s.config('main');
  const yaml = (await import('../harness/gatehouse.mjs')).toYaml;
  const withOther = { ...cfg, routes: [...cfg.routes, { from: 'https://other.localhost', to: s.upstream.url, allow_public_unauthenticated_access: true }] };
  gh.write('gatehouse.yaml', yaml(withOther));
  await within(2_000, 'the new route', async () => (await clients.bob.get(gh.url('other.localhost', '/x'))).status === 200);
  gh.write('gatehouse.yaml', `${yaml(withOther)}routes_typo: 1\n`);
  await within(2_000, 'the failed reload', async () => /gatehouse_config_last_reload_successful 0/.test(await metrics()));
  assert.match(gh.logs(), /gatehouse\.yaml:\d+:1: unknown key `routes_typo`/);
  assert.equal((await clients.bob.get(gh.url('other.localhost', '/x'))).status, 200, 'old config still serving');
});

test("signing out ends that person's open streams (in every browser), and nobody else's", async () => {
  // A second browser for alice.
  const alice2 = s.client();
  const { response } = await alice2.login('alice', 'alice-pass', gh.url('assistant.localhost', '/'));
  assert.equal(response.status, 200);
  clients.alice2 = alice2;
  const mine = openStream('alice', '/sse?n=600&every=100');
  const myOther = openStream('alice2', '/sse?n=600&every=100');
  const bobs = openStream('bob', '/sse?n=30&every=100');
  await within(2_000, 'streams flowing', () => mine.events.length >= 2 && myOther.events.length >= 2 && bobs.events.length >= 2);
  const page = await clients.alice.get(gh.url('assistant.localhost', '/.gatehouse/'), { headers: { accept: 'text/html' } });
  const token = /name="csrf_token"[^>]*value="([^"]*)"|value="([^"]*)"[^>]*name="csrf_token"/.exec(page.body);
  assert.ok(token, 'csrf token on the user page');
  const out = await clients.alice.post(gh.url('assistant.localhost', '/.gatehouse/sign_out'), { csrf_token: token[1] ?? token[2] });
  assert.equal(out.status, 302, out.body.slice(0, 300));
  const signedOutAt = Date.now();
  const [a, b] = await Promise.all([mine.done, myOther.done]);
  assert.ok(a.events.length < 600 && a.at - signedOutAt < 2_000, `this browser's stream ended (${a.events.length} events)`);
  assert.ok(b.events.length < 600 && b.at - signedOutAt < 2_000, `the other browser's stream ended (${b.events.length} events)`);
  const bob = await bobs.done;
  assert.equal(bob.events.length, 30, "bob's stream ran to its end");
});
