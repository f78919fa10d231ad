// Health for orchestrators (issue 14): /healthz, /readyz and /startupz on health_check_addr
// and on route hosts, and `gatehouse health`. Readiness follows the real IdP: it goes 503
// (saying why) while the IdP is down and back to 200 when it answers again.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { eventually } from '../harness/backends.mjs';
import { request } from '../harness/client.mjs';
import { freePort, gatehouseBin } from '../harness/gatehouse.mjs';
import { startIdp } from '../harness/idp.mjs';
import { CLIENT_ID, redirectUrisFor, startStack } from '../harness/stack.mjs';

let s;
let healthPort;

before(async () => {
  healthPort = await freePort();
  s = await startStack({ gatehouses: { main: { extra: { health_check_addr: `127.0.0.1:${healthPort}` } } } });
});
after(async () => s?.stop());

const health = (p) => request(`http://127.0.0.1:${healthPort}${p}`, { timeoutMs: 5_000 });
const cli = (check) => spawnSync(gatehouseBin(), ['health', '--config', s.gh.main.configFile, '--check', check], { encoding: 'utf8', timeout: 20_000 });

test('alive, ready and started once the IdP answers; the same on a route host; gatehouse health exits 0', async () => {
  assert.equal((await health('/healthz')).status, 200);
  await eventually('ready', async () => (await health('/readyz')).status === 200, { timeoutMs: 20_000 });
  assert.equal((await health('/startupz')).status, 200);
  const onRoute = await request(s.gh.main.url('assistant.localhost', '/.gatehouse/readyz'), { ca: s.certs.caPem });
  assert.equal(onRoute.status, 200, 'readiness on a route host, without signing in');
  const r = cli('ready');
  assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
  assert.equal((await health('/nope')).status, 404);
});

test('the IdP down: /readyz is 503 naming it, /healthz stays 200, gatehouse health exits 1; back to 200 when it returns', async () => {
  const port = Number(new URL(s.idp.issuer).port);
  await s.idp.close();
  const down = await eventually('not ready', async () => {
    const r = await health('/readyz');
    return r.status === 503 && r;
  }, { timeoutMs: 20_000 });
  assert.match(down.body, /identity provider/);
  assert.equal((await health('/healthz')).status, 200, 'still alive');
  assert.equal((await health('/startupz')).status, 200, 'it was ready once');
  const r = cli('ready');
  assert.equal(r.status, 1);
  assert.match(r.stderr, /503/);

  s.idp = await startIdp({
    port,
    testHooks: true,
    clients: [{ client_id: CLIENT_ID, client_secret: s.clientSecret, redirect_uris: redirectUrisFor(s.gh.main.port) }],
  });
  await eventually('ready again', async () => (await health('/readyz')).status === 200, { timeoutMs: 20_000 });
  assert.equal(cli('ready').status, 0);
});

test('gatehouse health without health_check_addr says what to add (exit 2)', () => {
  const file = path.join(s.gh.main.dir, 'no-health.yaml');
  writeFileSync(file, readFileSync(s.gh.main.configFile, 'utf8').replace(/^health_check_addr:.*$/m, ''));
  const r = spawnSync(gatehouseBin(), ['health', '--config', file], { encoding: 'utf8' });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /has no health_check_addr; add one/);
});
