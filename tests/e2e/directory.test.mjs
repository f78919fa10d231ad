// Google Workspace groups from the Directory API, against a local stand-in that speaks the
// same protocol and checks the service account's signed assertion (tests/harness/directory.mjs).
// Gatehouse signs in with `idp_provider: google` (issuer pointed at the test IdP) and reads
// groups with `idp_service_account`, passed in the environment as Pomerium operators do.
//
// Groups (people are looked up by their Google user id, the ID token's `sub`, never by an
// email address they could claim): alice is in team-a (page 1) and all-staff (page 2); team-a is in eng (nested), and
// eng is in team-a again (a cycle). bob is in all-staff only. The group route lets in `eng`.

import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import * as jose from 'jose';

import { startDirectory } from '../harness/directory.mjs';
import { runCheck, toYaml } from '../harness/gatehouse.mjs';
import { startStack } from '../harness/stack.mjs';

const A = 'assistant.localhost'; // no group rule (top-level allowed_domains)
const G = 'other.localhost'; // `groups: has: eng@example.com`
const REFRESH_S = 1;
const MAX_STALE_S = 4;

let dir;
let s;

function directoryConfig(upstreamUrl) {
  return {
    idp_provider: 'google',
    idp_refresh_directory_interval: `${REFRESH_S}s`,
    idp_refresh_directory_timeout: '2s',
    idp_directory_max_stale: `${MAX_STALE_S}s`,
    idp_directory_url: dir.url,
    routes: [
      { from: `https://${A}`, to: upstreamUrl, pass_identity_headers: true },
      {
        from: `https://${G}`,
        to: upstreamUrl,
        pass_identity_headers: true,
        policy: [{ allow: { or: [{ groups: { has: 'eng@example.com' } }] } }],
      },
    ],
  };
}

before(async () => {
  dir = await startDirectory({
    pageSize: 1,
    members: {
      // People by their user id (the ID token's `sub`), as the Directory API knows them.
      alice: ['team-a@example.com', 'all-staff@example.com'],
      'team-a@example.com': ['eng@example.com'],
      'eng@example.com': ['team-a@example.com'],
      bob: ['all-staff@example.com'],
    },
  });
  const good = dir.serviceAccount();
  const forged = dir.unregisteredAccount();
  // The upstream's URL is known only once the stack starts: start lazily, then fill it in.
  s = await startStack({
    gatehouses: {
      main: { lazy: true, env: { IDP_SERVICE_ACCOUNT: good.base64 } },
      forged: { lazy: true, env: { IDP_SERVICE_ACCOUNT: forged.base64 } },
    },
  });
  for (const name of ['main', 'forged']) {
    s.specs[name].extra = directoryConfig(s.upstream.url);
    await s.start(name);
  }
});

after(async () => {
  await s?.stop();
  await dir?.close();
});

async function signIn(gh, user, host) {
  const c = s.client();
  const { response } = await c.login(user, `${user}-pass`, gh.url(host, '/'));
  return { c, response };
}

/** The access line is written after the response: wait a moment for it. */
async function waitForLog(gh, re) {
  for (let i = 0; i < 50 && !re.test(gh.logs()); i += 1) await sleep(100);
  assert.match(gh.logs(), re);
}

const groupsHeader = () => (s.upstream.last().headers['x-pomerium-claim-groups'] ?? '').split(',').filter(Boolean);

test('groups from the directory (paged, nested, with a cycle) reach the upstream and decide group rules', async () => {
  const gh = s.gh.main;
  const before = dir.stats();
  const { c, response } = await signIn(gh, 'alice', G);
  assert.equal(response.status, 200, `alice on the group route: ${response.status} ${response.body.slice(0, 300)}`);
  const expected = ['team-a@example.com', 'all-staff@example.com', 'eng@example.com', 'id-team-a', 'id-all-staff', 'id-eng'];
  assert.deepEqual(groupsHeader(), expected, 'emails then ids; the ID token groups (team-it) are not used');

  // The identity JWT carries the same groups and verifies against Gatehouse's JWKS.
  const jwt = s.upstream.last().headers['x-pomerium-jwt-assertion'];
  const jwks = jose.createLocalJWKSet((await c.get(gh.url(G, '/.well-known/pomerium/jwks.json'))).json());
  const { payload } = await jose.jwtVerify(jwt, jwks, { audience: G });
  assert.deepEqual(payload.groups, expected);

  // The user page shows them too.
  const me = (await c.get(gh.url(G, '/.gatehouse/user'), { headers: { accept: 'application/json' } })).json();
  assert.deepEqual(me.groups, expected);

  const after = dir.stats();
  // Since start: the readiness check (every 5 s) or the first lookup fetched it.
  assert.equal(after.tokens, 1, 'one access token since start, reused for every call and every readiness check');
  assert.ok(after.lists - before.lists >= 5, `paged and nested lists: ${after.lists - before.lists}`);

  const bob = await signIn(gh, 'bob', G);
  assert.equal(bob.response.status, 403, `bob on the group route: ${bob.response.status}`);
  assert.match(bob.response.body, /no rule of this route allows bob@example\.com/);
  await waitForLog(gh, /user="?bob@example\.com"? decision="?not-allowed/);
});

test('Google: a consumer account registered with a work address (no hd) passes no domain rule; a Workspace account does', async () => {
  const gh = s.gh.main;
  // Both addresses are example.com and verified; only alice's ID token says hd=example.com.
  const alice = await signIn(gh, 'alice', A);
  assert.equal(alice.response.status, 200, `alice (Workspace): ${alice.response.status}`);
  const dana = await signIn(gh, 'dana', A);
  assert.equal(dana.response.status, 403, `dana (consumer): ${dana.response.status} ${dana.response.body.slice(0, 300)}`);
  assert.match(dana.response.body, /dana@example\.com is not one of its domain(&#39;|')s Google Workspace accounts/);
  await waitForLog(gh, /user="?dana@example\.com"? decision="?domain-not-verified/);
});

test('directory unreachable: the last groups serve within idp_directory_max_stale, then group routes refuse saying why, other routes keep working', async () => {
  const gh = s.gh.main;
  const { c, response } = await signIn(gh, 'alice', G); // groups fetched at sign-in
  assert.equal(response.status, 200);
  // A session on the route without group rules too (each route host has its own cookie).
  assert.equal((await c.login('alice', 'alice-pass', gh.url(A, '/'))).response.status, 200);
  await dir.down();
  try {
    // Older than the refresh interval: the background refresh fails, the last groups serve.
    await sleep(REFRESH_S * 1000 + 300);
    for (let i = 0; i < 2; i += 1) {
      const r = await c.get(gh.url(G, `/stale-${i}`));
      assert.equal(r.status, 200, `within the stale window: ${r.status} ${r.body.slice(0, 200)}`);
      assert.ok(groupsHeader().includes('eng@example.com'));
      await sleep(300);
    }
    await waitForLog(gh, /directory lookup failed; using the last groups/);

    // Past max stale: fail closed on the group route, with the reason in words and in the log.
    await sleep((MAX_STALE_S + 1) * 1000);
    const hits = s.upstream.hits();
    const refused = await c.get(gh.url(G, '/too-stale'));
    assert.equal(refused.status, 403, `past the stale window: ${refused.status}`);
    assert.match(refused.body, /your groups could not be checked: the group directory has not answered since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC/);
    assert.match(refused.body, /Try again in a few minutes/, 'not "ask for a policy change"');
    assert.equal(s.upstream.hits(), hits, 'the upstream was not reached');
    await waitForLog(gh, /path=\/too-stale status=403 .*decision="?groups-unavailable/);

    // A route whose rules do not use groups still works (with no groups sent).
    const other = await c.get(gh.url(A, '/no-group-rule'));
    assert.equal(other.status, 200);
    assert.deepEqual(groupsHeader(), []);
    assert.equal(s.upstream.last().headers['x-pomerium-claim-email'], 'alice@example.com');
  } finally {
    await dir.up();
  }

  // The directory answers again: the group route works again (after the short retry pause).
  let status = 0;
  for (let i = 0; i < 30 && status !== 200; i += 1) {
    await sleep(200);
    status = (await c.get(gh.url(G, '/recovered'))).status;
  }
  assert.equal(status, 200, 'after the directory is back');
});

test('a directory that accepts requests but never answers: a request waits at most the timeout, then group routes refuse', async () => {
  const gh = s.gh.main;
  const { c, response } = await signIn(gh, 'alice', G);
  assert.equal(response.status, 200);
  assert.equal((await c.login('alice', 'alice-pass', gh.url(A, '/'))).response.status, 200);
  dir.hang(true);
  try {
    await sleep((MAX_STALE_S + 1) * 1000);
    // The client gives up after 10 s; Gatehouse's timeout (2 s) ends the wait well before.
    const refused = await c.get(gh.url(G, '/hung'), { timeoutMs: 10_000 });
    assert.equal(refused.status, 403);
    assert.match(refused.body, /your groups could not be checked/);
    await waitForLog(gh, /directory lookup failed; routes that use groups refuse this person.*(timed out|took longer than idp_refresh_directory_timeout)/);
    const other = await c.get(gh.url(A, '/hung-other'), { timeoutMs: 10_000 });
    assert.equal(other.status, 200, 'a route without group rules still works');
  } finally {
    dir.hang(false);
  }
});

test('after a Gatehouse restart the empty cache fetches groups on the next request', async () => {
  const { c, response } = await signIn(s.gh.main, 'alice', G);
  assert.equal(response.status, 200);
  await s.gh.main.stop();
  const gh = await s.start('main');
  const lists = dir.stats().lists;
  const r = await c.get(gh.url(G, '/after-restart'));
  assert.equal(r.status, 200, `same session after restart: ${r.status} ${r.body.slice(0, 200)}`);
  assert.ok(groupsHeader().includes('eng@example.com'));
  assert.ok(dir.stats().lists > lists, 'looked up again');
});

test('a forged assertion (a key the directory does not know) is refused by the stand-in, and Gatehouse fails closed', async () => {
  const gh = s.gh.forged;
  const before = dir.stats();
  const { c, response } = await signIn(gh, 'alice', G);
  assert.equal(response.status, 403, `group route with a forged key: ${response.status}`);
  assert.match(response.body, /your groups could not be checked/);
  const after = dir.stats();
  assert.ok(after.refused > before.refused, 'the stand-in refused the assertion');
  assert.equal(after.tokens, before.tokens, 'no access token was issued');
  assert.ok(after.refusals.slice(before.refusals.length).every((why) => why === 'Invalid JWT Signature.'), after.refusals.join(', '));
  assert.match(gh.logs(), /token endpoint refused the service account \(HTTP 400\): invalid_grant \(Invalid JWT Signature\.\)/);

  const other = await c.login('alice', 'alice-pass', gh.url(A, '/'));
  assert.equal(other.response.status, 200, 'a route without group rules still lets alice in');
});

test('logs never hold the service-account key, an assertion or an access token', () => {
  const logs = s.gh.main.logs() + s.gh.forged.logs();
  assert.ok(dir.issuedTokens().length > 0);
  for (const token of dir.issuedTokens()) assert.ok(!logs.includes(token), 'an access token was logged');
  assert.ok(!logs.includes('PRIVATE KEY'), 'a key was logged');
  assert.ok(!logs.includes(dir.serviceAccount().base64.slice(0, 40)), 'the key JSON was logged');
  assert.ok(!/eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+/.test(logs.replace(/x-pomerium-jwt-assertion/gi, '')), 'a JWT was logged');
});

test('gatehouse check refuses a service-account key that is not RSA, at its place, without printing it', async () => {
  const { generateKeyPairSync } = await import('node:crypto');
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' });
  const json = { ...dir.serviceAccount().json, private_key: ec };
  const base64 = Buffer.from(JSON.stringify(json)).toString('base64');
  const config = { ...s.config('main'), idp_service_account: base64 };
  const r = runCheck(toYaml(config));
  assert.equal(r.code, 1, `check should fail:\n${r.stdout}\n${r.stderr}`);
  assert.match(r.stderr, /gatehouse\.yaml:\d+:\d+: idp_service_account: the key's `private_key` is not an RSA private key/);
  assert.ok(!r.stderr.includes(base64.slice(0, 40)) && !r.stderr.includes('PRIVATE KEY-----'), r.stderr);

  const broken = runCheck(toYaml({ ...s.config('main'), idp_service_account: 'bm90IGpzb24=' }));
  assert.equal(broken.code, 1);
  assert.match(broken.stderr, /gatehouse\.yaml:\d+:\d+: idp_service_account: does not decode to JSON/);
});
