// Gatehouse's own output never contains a secret, across a full login at debug level.

import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { sessionCookiesIn, startStack } from '../harness/stack.mjs';

const A = 'assistant.localhost';
let s;

before(async () => {
  // Gatehouse's own crates at trace, dependencies at info (what an operator debugging
  // Gatehouse would run). RUST_LOG=debug for every crate makes pingora print whole upstream
  // requests, including the identity JWT: that is pingora's choice, not tested here.
  const own = ['gatehouse', 'gatehouse_config', 'gatehouse_policy', 'gatehouse_auth', 'gatehouse_proxy'];
  s = await startStack({ gatehouses: { main: { env: { RUST_LOG: ['info', ...own.map((c) => `${c}=trace`)].join(',') } } } });
});

after(async () => {
  await s?.stop();
});

test('a full login, a proxied request and the user page log no cookie value, code, token or secret (own crates at trace)', async () => {
  const gh = s.gh.main;
  const c = s.client();
  const { response, chain } = await c.login('alice', 'alice-pass', gh.url(A, '/redaction?x=1'));
  assert.equal(response.status, 200);
  await c.get(gh.url(A, '/api/redaction'), { headers: { accept: 'application/json' } });
  await c.get(gh.url(A, '/.gatehouse/'));
  await new Promise((r) => setTimeout(r, 300)); // let the log lines arrive

  const secrets = {};
  const loginCookie = chain.flatMap((r) => r.setCookies).find((ck) => ck.name === '_pomerium_login' && ck.value);
  secrets.loginCookie = loginCookie?.value;
  for (const ck of chain.flatMap((r) => sessionCookiesIn(r))) secrets[`session cookie ${ck.name}`] = ck.value;
  const cb = chain.find((r) => new URL(r.url).pathname === '/.gatehouse/callback');
  secrets.code = new URL(cb.url).searchParams.get('code');
  secrets.state = new URL(cb.url).searchParams.get('state');
  for (const [i, t] of s.idp.issued().entries()) {
    secrets[`id_token #${i}`] = t.id_token;
    secrets[`access_token #${i}`] = t.access_token;
    if (t.refresh_token) secrets[`refresh_token #${i}`] = t.refresh_token;
  }
  secrets.clientSecret = s.clientSecret;
  secrets.cookieSecret = s.specs.main.cookieSecret;
  secrets.cookieSecretHex = Buffer.from(s.specs.main.cookieSecret, 'base64').toString('hex');
  secrets.identityJwt = s.upstream.last().headers['x-pomerium-jwt-assertion'];

  for (const [name, v] of Object.entries(secrets)) assert.ok(v && v.length >= 8, `captured ${name}`);

  const logs = gh.logs();
  const found = Object.entries(secrets)
    .filter(([, v]) => logs.includes(v) || (v.length > 40 && logs.includes(v.slice(8, 40))))
    .map(([name]) => name);
  if (found.length) {
    const dump = path.join(gh.dir, 'gatehouse.log');
    writeFileSync(dump, logs);
    const where = found.map((name) => {
      const line = logs.split('\n').find((l) => l.includes(secrets[name]) || l.includes(secrets[name].slice(8, 40)));
      return `${name}: ${line.slice(0, 300)}`;
    });
    assert.fail(`secrets in the log (full log: ${dump}):\n${where.join('\n')}`);
  }
});
