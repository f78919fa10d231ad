// Request metrics and access-log fields (issue 14): requests by route, status and decision,
// a latency histogram, sign-ins by result and reason, build_info; the access log's client
// address, request id (sent upstream as X-Request-Id, never the client's) and user agent.
// Secrets never appear in the metrics or the log.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { eventually } from '../harness/backends.mjs';
import { request } from '../harness/client.mjs';
import { freePort } from '../harness/gatehouse.mjs';
import { startStack } from '../harness/stack.mjs';

const A = 'assistant.localhost';
let s;
let metricsPort;

before(async () => {
  metricsPort = await freePort();
  s = await startStack({ gatehouses: { main: { extra: { metrics_address: `127.0.0.1:${metricsPort}` } } } });
});
after(async () => s?.stop());

const metrics = async () => (await request(`http://127.0.0.1:${metricsPort}/metrics`)).body;
const value = (text, re) => Number(re.exec(text)?.[1] ?? 0);
const okRequests = (text) => value(text, /gatehouse_requests_total\{route="https:\/\/assistant\.localhost",status="200",decision="domain-allowed"\} (\d+)/);

test('requests, latency and sign-ins move as requests are made; build_info is there', async () => {
  const before = await metrics();
  assert.match(before, /gatehouse_build_info\{version="[0-9.]+"\} 1/);
  const c = s.client();
  const { response } = await c.login('alice', 'alice-pass', s.gh.main.url(A, '/x'));
  assert.equal(response.status, 200);
  for (let i = 0; i < 3; i += 1) assert.equal((await c.get(s.gh.main.url(A, '/y'))).status, 200);
  // A callback with no sign-in in progress: a failed sign-in, by reason.
  const bad = await request(s.gh.main.url(A, '/.gatehouse/callback?state=x&code=y'), { ca: s.certs.caPem });
  assert.equal(bad.status, 400);

  const after = await eventually('the metrics moved', async () => {
    const t = await metrics();
    return okRequests(t) >= okRequests(before) + 4 && t;
  }, { timeoutMs: 5_000 });
  assert.ok(value(after, /gatehouse_sign_ins_total\{result="success",reason="-"\} (\d+)/) >= 1, 'a successful sign-in is counted');
  assert.ok(value(after, /gatehouse_sign_ins_total\{result="failure",reason="login-cookie-missing"\} (\d+)/) >= 1, 'a failed one by its reason');
  const count = value(after, /gatehouse_request_duration_seconds_count\{route="https:\/\/assistant\.localhost"\} (\d+)/);
  assert.ok(count >= 4, `the latency histogram counts requests: ${count}`);
  assert.match(after, /gatehouse_request_duration_seconds_bucket\{le="0\.001",route="https:\/\/assistant\.localhost"\}|gatehouse_request_duration_seconds_bucket\{route="https:\/\/assistant\.localhost",le="0\.001"\}/);
});

test('the access log has the client address, the request id sent upstream as X-Request-Id, and the user agent', async () => {
  const c = s.client();
  await c.login('bob', 'bob-pass', s.gh.main.url(A, '/'));
  s.upstream.reset();
  const r = await c.get(s.gh.main.url(A, '/traced'), { headers: { 'x-request-id': 'client-chosen', 'user-agent': 'metrics-e2e/1.0' } });
  assert.equal(r.status, 200);
  const sent = s.upstream.last().headers['x-request-id'];
  assert.match(sent, /^[0-9a-f]{16}$/, 'Gatehouse sends its own request id upstream');
  assert.notEqual(sent, 'client-chosen');
  const line = await eventually('the access line', () => s.gh.main.logs().split('\n').find((l) => l.includes('path=/traced')), { timeoutMs: 5_000 });
  assert.match(line, /client="?127\.0\.0\.1"?/);
  assert.ok(line.includes(sent), `the access line has the request id ${sent}: ${line}`);
  assert.match(line, /user_agent="?metrics-e2e\/1\.0"?/);
});

test('no secret of the config is in the metrics or the log', async () => {
  const text = await metrics();
  const logs = s.gh.main.logs();
  for (const secret of [s.specs.main.cookieSecret, s.clientSecret]) {
    assert.ok(!text.includes(secret), 'a secret in the metrics');
    assert.ok(!logs.includes(secret), 'a secret in the log');
  }
});
