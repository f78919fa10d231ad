// One OpenCode server per person (issue 5), end to end: the real OpenCode from npm
// (opencode-ai, installed by tests/harness/install-deps.sh), the real IdP, real TLS, a local
// stand-in LLM that streams, and real Chromium for the web UI. Run as root (CI does) so each
// person's backend runs as their own uid.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chownSync, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium } from 'playwright-core';

import { A, backendProcesses, backendStack, eventually, homeOf, OPENCODE, openSse } from '../harness/backends.mjs';
import { loopbackLookup, request } from '../harness/client.mjs';
import { freePort, toYaml } from '../harness/gatehouse.mjs';
import { REPLY, startLlm } from '../harness/llm.mjs';

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const IS_ROOT = process.getuid?.() === 0;
const JSON_API = { accept: 'application/json' };

if (!existsSync(OPENCODE)) {
  throw new Error(`OpenCode binary missing at ${OPENCODE}: run tests/harness/install-deps.sh (installs npm opencode-ai)`);
}

async function signedIn(s, user) {
  const c = s.client();
  const { response } = await c.login(user, `${user}-pass`, s.gh.main.url(A, '/.gatehouse/'));
  assert.equal(response.status, 200, `${user} signed in: ${response.status} ${response.body.slice(0, 300)}`);
  return c;
}

const api = (s, c, method, p, body, headers = {}) =>
  c.request(s.gh.main.url(A, p), {
    method,
    body: body === undefined ? undefined : JSON.stringify(body),
    headers: { ...JSON_API, ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
    timeoutMs: 90_000,
  });

/** Plain HTTP to a backend port directly (no Gatehouse). */
function direct(port, p, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: p, headers, agent: false, timeout: 10_000 }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

describe('backends: two people, each their own OpenCode', () => {
  let llm;
  let s;
  let alice;
  let bob;

  before(async () => {
    llm = await startLlm();
    s = await backendStack(llm);
    [alice, bob] = await Promise.all([signedIn(s, 'alice'), signedIn(s, 'bob')]);
  });
  after(async () => {
    await s?.stop();
    await llm?.close();
  });

  test('each person gets their own process, uid and private data directory', async () => {
    const [ra, rb] = await Promise.all([api(s, alice, 'GET', '/global/health'), api(s, bob, 'GET', '/global/health')]);
    assert.equal(ra.status, 200, ra.body.slice(0, 300));
    assert.equal(rb.status, 200, rb.body.slice(0, 300));
    assert.equal(ra.json().healthy, true);
    const procs = backendProcesses(s.dataRoot);
    assert.equal(procs.length, 2, JSON.stringify(procs));
    const [pa, pb] = procs;
    assert.notEqual(pa.home, pb.home);
    assert.ok(!pa.home.includes('alice') && !pb.home.includes('bob'), 'directories are not named after the email');
    if (IS_ROOT) {
      assert.notEqual(pa.uid, pb.uid, 'alice and bob run as different uids');
      for (const p of procs) {
        assert.ok(p.uid >= 62000 && p.uid <= 62099, `uid ${p.uid} in the range`);
      }
    }
  });

  test("alice's session is not visible to bob", async () => {
    const created = await api(s, alice, 'POST', '/session', { title: 'alice-private-session' });
    assert.equal(created.status, 200, created.body.slice(0, 300));
    const id = created.json().id;
    const mine = (await api(s, alice, 'GET', '/session')).json();
    assert.ok(mine.some((x) => x.id === id), 'alice sees her session');
    const theirs = await api(s, bob, 'GET', '/session');
    assert.equal(theirs.status, 200);
    assert.ok(!theirs.json().some((x) => x.id === id || x.title === 'alice-private-session'), 'bob does not see it');
  });

  test("alice's backend cannot read bob's files through OpenCode's file API", { skip: !IS_ROOT && 'needs root (one uid per person)' }, async () => {
    await api(s, bob, 'GET', '/global/health');
    const bobHome = homeOf(s, 'bob');
    const bobUid = statSync(bobHome).uid;
    assert.equal(statSync(bobHome).mode & 0o777, 0o700, "bob's directory is private");
    const secret = path.join(bobHome, 'bob-secret.txt');
    writeFileSync(secret, 'the secret of bob', { mode: 0o600 });
    chownSync(secret, bobUid, bobUid);
    const q = `/file/content?path=bob-secret.txt&directory=${encodeURIComponent(bobHome)}`;
    const own = await api(s, bob, 'GET', q);
    assert.match(own.body, /the secret of bob/, 'bob reads his own file (the probe works)');
    const other = await api(s, alice, 'GET', q);
    assert.doesNotMatch(other.body, /the secret of bob/, `alice's backend read bob's file: ${other.status} ${other.body.slice(0, 200)}`);
  });

  test('a backend port without the password is refused; through Gatehouse the client never needs it', async () => {
    const procs = backendProcesses(s.dataRoot);
    assert.ok(procs.length >= 1);
    for (const p of procs) {
      assert.equal(await direct(p.port, '/global/health'), 401);
      assert.equal(await direct(p.port, '/session'), 401);
      assert.equal(await direct(p.port, '/session', { authorization: `Basic ${Buffer.from('opencode:guess').toString('base64')}` }), 401);
    }
    // A client's own Authorization is replaced, not forwarded.
    const r = await api(s, alice, 'GET', '/global/health', undefined, { authorization: `Basic ${Buffer.from('opencode:guess').toString('base64')}` });
    assert.equal(r.status, 200);
  });

  test('a cross-origin POST through Gatehouse is refused and changes nothing', async () => {
    const r = await alice.request(s.gh.main.url(A, '/session'), {
      method: 'POST',
      body: JSON.stringify({ title: 'csrf-made-this' }),
      headers: { 'content-type': 'text/plain', origin: 'https://evil.test', accept: '*/*' },
    });
    assert.equal(r.status, 403);
    assert.match(r.body, /another site/);
    const same = await api(s, alice, 'POST', '/session', { title: 'same-origin-ok' }, { origin: s.origin });
    assert.equal(same.status, 200, 'a same-origin POST passes');
    const list = (await api(s, alice, 'GET', '/session')).json();
    assert.ok(!list.some((x) => x.title === 'csrf-made-this'));
  });

  test("a prompt's reply events arrive while the LLM produces them", async () => {
    llm.wordDelayMs = 150;
    const events = openSse(s, alice, '/global/event');
    await eventually('event stream open', () => events.events.length > 0);
    assert.equal(events.status, 200);
    const session = (await api(s, alice, 'POST', '/session', { title: 'streaming' })).json();
    const sent = await api(s, alice, 'POST', `/session/${session.id}/prompt_async`, { parts: [{ type: 'text', text: 'Say hello' }] });
    assert.ok(sent.status === 204 || sent.status === 200, `prompt_async: ${sent.status} ${sent.body.slice(0, 200)}`);
    const deltas = () => events.events.filter((e) => e.data?.payload?.type === 'message.part.delta' && e.data.payload.properties?.sessionID === session.id);
    await eventually('reply fully streamed', () => deltas().map((e) => e.data.payload.properties.delta).join('').includes('buffered'), { timeoutMs: 60_000 });
    events.close();
    const d = deltas();
    const words = REPLY.split(' ').length;
    assert.ok(d.length >= words / 2, `${d.length} delta events for ${words} words`);
    const spread = d.at(-1).at - d[0].at;
    assert.ok(spread >= (words - 2) * llm.wordDelayMs * 0.5, `deltas spread over ${spread} ms, not delivered at once`);
  });

  test('the user page shows the backend running, with a restart button', async () => {
    const r = await alice.get(s.gh.main.url(A, '/.gatehouse/'));
    assert.equal(r.status, 200);
    assert.match(r.body, /Your assistant/);
    assert.match(r.body, /running since/);
    assert.match(r.body, /action="\/\.gatehouse\/backend\/restart"/);
  });

  test("static assets are compressed for browsers that accept it; event streams never are", async () => {
    await api(s, alice, 'GET', '/global/health'); // started (a navigation would get the starting page)
    const index = await alice.get(s.gh.main.url(A, '/'));
    assert.equal(index.status, 200);
    const asset = /(?:src|href)="(\/assets\/[^"]+\.js)"/.exec(index.body)?.[1];
    assert.ok(asset, `an /assets/ script in ${index.body.slice(0, 300)}`);
    const gz = await alice.get(s.gh.main.url(A, asset), { headers: { 'accept-encoding': 'gzip' } });
    assert.equal(gz.status, 200);
    assert.equal(gz.headers['content-encoding'], 'gzip');
    const br = await alice.get(s.gh.main.url(A, asset), { headers: { 'accept-encoding': 'br' } });
    assert.equal(br.headers['content-encoding'], 'br');
    const plain = await alice.get(s.gh.main.url(A, asset));
    assert.equal(plain.headers['content-encoding'], undefined, 'no compression unless asked');
    const events = openSse(s, alice, '/global/event', { 'accept-encoding': 'gzip, br' });
    await eventually('event stream open', () => events.events.length > 0);
    events.close();
    assert.equal(events.status, 200);
    assert.equal(events.headers['content-encoding'], undefined, 'an event stream must not be compressed (it would hold events back)');
  });

  test("the backend's password never appears in Gatehouse's logs", async () => {
    const procs = backendProcesses(s.dataRoot);
    assert.ok(procs.length >= 2);
    for (const p of procs) {
      const env = readFileSync(`/proc/${p.pid}/environ`, 'latin1').split('\0');
      const password = env.find((e) => e.startsWith('OPENCODE_SERVER_PASSWORD='))?.slice('OPENCODE_SERVER_PASSWORD='.length);
      assert.ok(password && password.length >= 32, 'a long random password');
      assert.ok(!s.gh.main.logs().includes(password), 'password in the logs');
      assert.ok(!s.gh.main.logs().includes(Buffer.from(`opencode:${password}`).toString('base64')), 'Basic credentials in the logs');
    }
  });

  test('the restart button restarts only with the page\'s CSRF token', async () => {
    await api(s, alice, 'GET', '/global/health');
    const home = homeOf(s, 'alice');
    const before = backendProcesses(s.dataRoot).find((p) => p.home === home);
    assert.ok(before, "alice's backend runs");
    const forged = await alice.post(s.gh.main.url(A, '/.gatehouse/backend/restart'), { csrf_token: 'forged', pool: 'assistant' });
    assert.equal(forged.status, 403);
    assert.equal(backendProcesses(s.dataRoot).find((p) => p.home === home)?.pid, before.pid, 'a forged restart changed nothing');
    const page = await alice.get(s.gh.main.url(A, '/.gatehouse/'));
    const token = /action="\/\.gatehouse\/backend\/restart"><input type="hidden" name="csrf_token" value="([^"]+)"/.exec(page.body)?.[1];
    assert.ok(token, 'the restart form carries a CSRF token');
    const ok = await alice.post(s.gh.main.url(A, '/.gatehouse/backend/restart'), { csrf_token: token, pool: 'assistant' }, { headers: { origin: s.origin } });
    assert.equal(ok.status, 303);
    const after = await eventually('a new backend for alice', () => {
      const p = backendProcesses(s.dataRoot).find((x) => x.home === home);
      return p && p.pid !== before.pid ? p : null;
    }, { timeoutMs: 60_000 });
    assert.equal(after.uid, before.uid, 'alice keeps her uid across restarts');
    assert.equal((await api(s, alice, 'GET', '/global/health')).status, 200);
  });

  test("the terminal WebSocket works through Gatehouse, and its shell runs as the person's own uid", async () => {
    await api(s, alice, 'GET', '/global/health');
    const pty = await api(s, alice, 'POST', '/pty', {}, { origin: s.origin });
    assert.equal(pty.status, 200, pty.body.slice(0, 300));
    const id = pty.json().id;
    // OpenCode checks the ticket request's Origin against Host: Gatehouse keeps the Host.
    const t = await api(s, alice, 'POST', `/pty/${id}/connect-token`, {}, { origin: s.origin, 'x-opencode-ticket': '1' });
    assert.equal(t.status, 200, t.body.slice(0, 300));
    const u = new URL(s.gh.main.url(A, `/pty/${id}/connect?ticket=${encodeURIComponent(t.json().ticket)}`));
    // Opens the terminal's WebSocket as alice's browser would from a page of `origin`.
    const upgrade = (origin) => new Promise((resolve, reject) => {
      const req = https.request({
        host: u.hostname,
        port: u.port,
        path: `${u.pathname}${u.search}`,
        ca: s.certs.caPem,
        servername: u.hostname,
        lookup: loopbackLookup,
        agent: false,
        headers: {
          connection: 'Upgrade',
          upgrade: 'websocket',
          'sec-websocket-version': '13',
          'sec-websocket-key': randomBytes(16).toString('base64'),
          origin,
          cookie: alice.jar.header(u.hostname),
        },
      });
      req.on('upgrade', (r, sock) => resolve({ res: r, socket: sock }));
      req.on('response', (r) => { r.resume(); resolve({ res: r, socket: null }); });
      req.on('error', reject);
      req.end();
    });
    // Another site's page opening the terminal with alice's cookies is refused by Gatehouse
    // (cross-site WebSocket hijacking), before OpenCode sees the ticket.
    const hijack = await upgrade('https://evil.test');
    hijack.socket?.destroy();
    assert.equal(hijack.res.statusCode, 403, 'a cross-site WebSocket upgrade is refused');
    const { res, socket } = await upgrade(s.origin);
    assert.equal(res.statusCode, 101);
    let seen = '';
    socket.on('data', (d) => { seen += d.toString('latin1'); });
    // One masked text frame: `id -u` and a newline.
    const payload = Buffer.from('id -u\n');
    const mask = randomBytes(4);
    const frame = Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, Buffer.from(payload.map((b, i) => b ^ mask[i % 4]))]);
    socket.write(frame);
    const uid = statSync(homeOf(s, 'alice')).uid;
    await eventually(`the shell answers with uid ${uid}`, () => new RegExp(`\\b${uid}\\b`).test(seen), { timeoutMs: 15_000 });
    socket.destroy();
    if (IS_ROOT) assert.notEqual(uid, 0);
  });

  test('a config reload keeps running backends; pool changes wait for a restart; a new pool is refused', async () => {
    await api(s, alice, 'GET', '/global/health');
    const home = homeOf(s, 'alice');
    const pid = backendProcesses(s.dataRoot).find((p) => p.home === home)?.pid;
    assert.ok(pid);
    const gh = s.gh.main;
    const original = s.config('main');
    const reloads = () => gh.logs().split('\n').filter((l) => l.includes('config reloaded')).length;
    const write = (cfg) => writeFileSync(gh.configFile, toYaml(cfg));
    try {
      // Routes change: reloaded, the backend keeps running.
      let n = reloads();
      write({ ...original, routes: [...original.routes, { from: 'https://other.localhost', to_backend: 'assistant' }] });
      await eventually('reloaded', () => reloads() > n);
      assert.equal(backendProcesses(s.dataRoot).find((p) => p.home === home)?.pid, pid, 'a reload restarted the backend');
      assert.equal((await api(s, alice, 'GET', '/global/health')).status, 200);
      // A pool setting changes: named as restart-only, the running pool keeps its settings.
      n = reloads();
      const pool = original.backends.assistant;
      write({ ...original, backends: { assistant: { ...pool, idle_timeout: '5m' } } });
      await eventually('reloaded with a restart-only note', () => reloads() > n && /take effect only after a restart/.test(gh.logs()) && /keys=.*backends/.test(gh.logs()));
      // A new pool: the reload fails and the old config keeps serving.
      write({ ...original, backends: { ...original.backends, second: { ...pool, ports: '39990-39999' } }, routes: [...original.routes, { from: 'https://other.localhost', to_backend: 'second' }] });
      await eventually('reload refused', () => /pool `second` is not running; new pools take effect after a restart/.test(gh.logs()));
      assert.equal((await api(s, alice, 'GET', '/global/health')).status, 200);
    } finally {
      write(original);
    }
  });

  test("real Chromium: a new person signs in and lands in a session of their own workspace, where a prompt gets the LLM's reply", async () => {
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    try {
      const context = await browser.newContext({ ignoreHTTPSErrors: true });
      const page = await context.newPage();
      const failed = [];
      page.on('response', (r) => { if (r.status() >= 400 && r.url().includes(A)) failed.push(`${r.status()} ${r.url()}`); });
      const url = s.gh.main.url(A, '/');
      await page.goto(url);
      await page.waitForURL((u) => u.href.startsWith(`${s.idp.issuer}/interaction/`), { timeout: 15_000 });
      await page.fill('input[name="login"]', 'carol');
      await page.fill('input[name="password"]', 'carol-pass');
      await page.click('button[type="submit"]');
      // Carol is new: the landing goes to a session in her workspace; the "starting" page
      // continues by itself to OpenCode's UI, which opens a new session there.
      const workspace = path.join(homeOf(s, 'carol'), 'workspace');
      const landing = `/${Buffer.from(workspace).toString('base64url')}/session`;
      await page.waitForURL(/\/new-session\?draftId=/, { timeout: 60_000 });
      const html = await page.content();
      assert.match(html, /assets\//, 'OpenCode index.html loaded');
      const api = await page.evaluate(async () => (await fetch('/global/health')).json());
      assert.equal(api.healthy, true, "the UI's own API calls go through Gatehouse to carol's backend");
      assert.ok(statSync(path.join(workspace, '.git')).isDirectory(), 'the workspace is a repository of its own');
      assert.equal(statSync(workspace).mode & 0o777, 0o700);
      // "New session" works at once: a prompt makes a session in the workspace and gets the reply.
      // (The prompt takes a message only once the app knows the model.)
      await page.locator('[data-action="prompt-model"]').first().waitFor({ timeout: 30_000 });
      const created = page.waitForResponse((r) => r.request().method() === 'POST' && new URL(r.url()).pathname === '/session', { timeout: 30_000 });
      await page.locator('[data-component="prompt-input"]').first().click();
      await page.keyboard.type('Say hello');
      await page.keyboard.press('Enter');
      const res = await created;
      assert.equal(res.status(), 200);
      assert.equal(new URL(res.url()).searchParams.get('directory'), workspace);
      await page.getByText(REPLY.split(',')[0]).first().waitFor({ timeout: 30_000 });
      // Carol's first visit saw the "starting" page (503 with a refresh) at the landing; nothing else failed.
      const starting = `503 ${s.gh.main.url(A, landing)}`;
      assert.ok(failed.includes(starting), `the starting page was shown first: ${failed.join(' ')}`);
      assert.deepEqual(failed.filter((f) => f !== starting && !/favicon/.test(f)), [], 'no other failed requests');
      // Only a page load of exactly `/` lands there: an API call to / and any other page are OpenCode's.
      const other = await page.evaluate(async () => (await fetch('/', { redirect: 'manual' })).status);
      assert.equal(other, 200);
      await context.close();
    } finally {
      await browser.close();
    }
  });
});

describe('backends: lifecycle with short timeouts and one backend at most', () => {
  let llm;
  let s;
  let metricsPort;
  /** gatehouse_backends{pool="assistant",state} now, as { starting, running, stopping }. */
  const byState = async () => {
    const text = (await request(`http://127.0.0.1:${metricsPort}/metrics`)).body;
    const n = (state) => Number(new RegExp(`^gatehouse_backends\\{pool="assistant",state="${state}"\\} (\\d+)$`, 'm').exec(text)?.[1] ?? NaN);
    return { starting: n('starting'), running: n('running'), stopping: n('stopping') };
  };

  before(async () => {
    llm = await startLlm();
    metricsPort = await freePort();
    s = await backendStack(llm, { idle_timeout: '3s', start_timeout: '20s', max_backends: 1 }, {}, { metrics_address: `127.0.0.1:${metricsPort}` });
  });
  after(async () => {
    await s?.stop();
    await llm?.close();
  });

  test('concurrent first requests of one person start exactly one process', async () => {
    const alice = await signedIn(s, 'alice');
    assert.deepEqual(await byState(), { starting: 0, running: 0, stopping: 0 });
    const pending = Promise.all(Array.from({ length: 5 }, () => api(s, alice, 'GET', '/global/health')));
    // OpenCode takes seconds to start: the metrics see it starting meanwhile.
    await eventually('the metrics show one backend starting', async () => (await byState()).starting === 1, { timeoutMs: 10_000, everyMs: 50 });
    const rs = await pending;
    assert.deepEqual(rs.map((r) => r.status), [200, 200, 200, 200, 200]);
    assert.equal(backendProcesses(s.dataRoot).length, 1);
    assert.deepEqual(await byState(), { starting: 0, running: 1, stopping: 0 });
  });

  test('a browser navigation during a start sees the starting page, which continues by itself', async () => {
    const bob = await signedIn(s, 'bob');
    // Alice's backend is idle (3 s): stopping it makes room for bob's (max_backends 1).
    await eventually('alice stopped when idle', () => backendProcesses(s.dataRoot).length === 0, { timeoutMs: 15_000 });
    assert.equal((await byState()).running, 0, 'the metrics saw it stop');
    const r = await bob.get(s.gh.main.url(A, '/'));
    assert.equal(r.status, 503);
    assert.match(r.body, /Starting your assistant/);
    assert.match(r.body, /http-equiv="refresh"/);
    await eventually('bob started', async () => (await bob.get(s.gh.main.url(A, '/'))).status === 200, { timeoutMs: 30_000 });
  });

  test('pool full: another person gets a 503 page that says so, while the running one is in use', async () => {
    const bob = await signedIn(s, 'bob');
    const stream = openSse(s, bob, '/global/event');
    await eventually('bob streaming', () => stream.events.length > 0, { timeoutMs: 30_000 });
    const alice = await signedIn(s, 'alice');
    const r = await alice.get(s.gh.main.url(A, '/session'), { headers: JSON_API, timeoutMs: 30_000 });
    assert.equal(r.status, 503);
    assert.match(r.body, /in use/);
    // A browser navigation gets the same page, not a "starting" page that reloads forever.
    const nav = await alice.get(s.gh.main.url(A, '/'));
    assert.equal(nav.status, 503);
    assert.match(nav.body, /in use/);
    assert.doesNotMatch(nav.body, /http-equiv="refresh"/);
    stream.close();
  });

  test('an SSE stream held longer than every configured timeout stays open, and its backend is not stopped', async () => {
    const bob = await signedIn(s, 'bob');
    const stream = openSse(s, bob, '/global/event');
    await eventually('stream open', () => stream.events.length > 0, { timeoutMs: 30_000 });
    const pid = backendProcesses(s.dataRoot)[0]?.pid;
    // idle_timeout 3 s, start_timeout 20 s, OpenCode heartbeat 10 s: hold 22 s.
    await new Promise((r) => setTimeout(r, 22_000));
    assert.equal(stream.ended, false, 'the stream was cut');
    assert.ok(stream.events.some((e) => e.data?.payload?.type === 'server.heartbeat'), 'heartbeats arrived');
    assert.equal(backendProcesses(s.dataRoot)[0]?.pid, pid, 'the backend was stopped under an open stream');
    stream.close();
  });

  test('a short idle_timeout stops an idle backend but not one whose agent is busy', async () => {
    const bob = await signedIn(s, 'bob');
    const session = (await api(s, bob, 'POST', '/session', { title: 'busy' })).json();
    llm.wordDelayMs = 600; // ~9 s of streaming: busy much longer than idle_timeout
    const sent = await api(s, bob, 'POST', `/session/${session.id}/prompt_async`, { parts: [{ type: 'text', text: 'work' }] });
    assert.ok(sent.status === 204 || sent.status === 200);
    const pid = backendProcesses(s.dataRoot)[0]?.pid;
    await eventually('the LLM is asked', () => llm.requests.length > 0, { timeoutMs: 30_000 });
    // No request for > idle_timeout, but the agent is working: kept.
    await new Promise((r) => setTimeout(r, 5_000));
    assert.equal(backendProcesses(s.dataRoot)[0]?.pid, pid, 'a busy backend was stopped');
    // Once the reply is done it is idle: stopped.
    await eventually('idle backend stopped', () => backendProcesses(s.dataRoot).length === 0, { timeoutMs: 40_000 });
    llm.wordDelayMs = 150;
  });

  test('a killed backend is started again on the next request', async () => {
    const bob = await signedIn(s, 'bob');
    assert.equal((await api(s, bob, 'GET', '/global/health')).status, 200);
    const [p] = backendProcesses(s.dataRoot);
    process.kill(p.pid, 'SIGKILL');
    await eventually('killed', () => backendProcesses(s.dataRoot).length === 0);
    await new Promise((r) => setTimeout(r, 500));
    const r = await api(s, bob, 'GET', '/global/health');
    assert.equal(r.status, 200, r.body.slice(0, 300));
    const [again] = backendProcesses(s.dataRoot);
    assert.ok(again && again.pid !== p.pid);
  });

  test('SIGTERM to Gatehouse leaves no backend process', async () => {
    const bob = await signedIn(s, 'bob');
    assert.equal((await api(s, bob, 'GET', '/global/health')).status, 200);
    assert.equal(backendProcesses(s.dataRoot).length, 1);
    await s.gh.main.stop();
    await eventually('no backend left', () => backendProcesses(s.dataRoot).length === 0, { timeoutMs: 10_000 });
  });
});
