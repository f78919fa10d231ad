// The LLM relay (issue 12), persistent keys and the idle stop: see relay.test.mjs for the
// ephemeral mode. Run as root (CI does).

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';

import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { A, backendProcesses, eventually } from '../harness/backends.mjs';

import { startLlm } from '../harness/llm.mjs';
import { newCookieSecret } from '../harness/stack.mjs';
import {
  IS_ROOT,
  KEY_COOKIE,
  newKey,
  relayStack,
  signedIn,
  setKeyViaApi,
  fakeRow,
  shell,
  relayTokenOf,
  relayFromShell,
  assertRelayRefusal,
  chat,
  filesHolding,
  processesHolding,
  waitForLog,
  dumpLogs,
  logTail,
} from '../harness/relay.mjs';

// =====================================================================================
// Persistent mode (`relay.keys: persistent`): keys AES-256-GCM encrypted in the state store
// (<state_dir>/gatehouse.sqlite3, read and tampered with through the sqlite3 CLI). One stack,
// restarted with different secrets; the tests run in order and build on each other: set a
// key, restart, rotate, a wrong secret, a tampered row.

/** The state store's tables that look like they hold provider keys (by name or by a provider column), with their columns. */
function keyTables(db) {
  const q = (sql) => execFileSync('sqlite3', [db, sql], { encoding: 'utf8' }).split('\n').filter(Boolean);
  return q("SELECT name FROM sqlite_master WHERE type='table'")
    .map((t) => ({ name: t, columns: q(`SELECT name FROM pragma_table_info('${t}')`) }))
    .filter((t) => /key|provider|secret|credential/i.test(t.name) || t.columns.some((c) => /provider/i.test(c)))
    .map((t) => ({ ...t, rows: Number(q(`SELECT count(*) FROM "${t.name}"`)[0]) }));
}

/**
 * Changes every stored ciphertext of `tables` by one byte (blob columns) or one character in
 * its middle (long text columns that name no person, provider or time); returns how many
 * values changed.
 */
function tamper(db, tables) {
  let changed = 0;
  const run = (sql) => Number(execFileSync('sqlite3', [db, `${sql}; SELECT changes();`], { encoding: 'utf8' }).trim().split('\n').at(-1));
  for (const t of tables) {
    for (const col of t.columns) {
      const c = `"${col}"`;
      changed += run(`UPDATE "${t.name}" SET ${c} = substr(${c}, 1, length(${c}) - 1) || CASE WHEN substr(${c}, -1, 1) = X'00' THEN X'01' ELSE X'00' END WHERE typeof(${c}) = 'blob' AND length(${c}) > 0`);
      if (!/provider|person|user|email|sub|id$|_at$|at_ms|time|created|updated|mode/i.test(col)) {
        // One character in the middle (the ciphertext of an encoded sealed value, not its header).
        const mid = `(length(${c}) / 2)`;
        changed += run(`UPDATE "${t.name}" SET ${c} = substr(${c}, 1, ${mid}) || CASE WHEN substr(${c}, ${mid} + 1, 1) = 'A' THEN 'B' ELSE 'A' END || substr(${c}, ${mid} + 2) WHERE typeof(${c}) = 'text' AND length(${c}) >= 16`);
      }
    }
  }
  return changed;
}

describe('the LLM relay, persistent keys (encrypted in the state store)', { skip: !IS_ROOT && 'needs root (per-person uids, nftables)' }, () => {
  let llm;
  let s;
  let alice;
  const key = newKey('persist');
  let db;
  const secrets = { first: undefined, second: newCookieSecret(), wrong: newCookieSecret() };

  /** Restarts Gatehouse with `cookieSecret` (and `previous`); alice signs in again unless her session still opens. */
  async function restartWith(cookieSecret, previous) {
    s.specs.main.cookieSecret = cookieSecret;
    if (previous) s.specs.main.extra.cookie_secret_previous = previous;
    else delete s.specs.main.extra.cookie_secret_previous;
    await s.restart();
  }

  /** A relay call from alice's shell with her current token. */
  async function aliceRelay() {
    const token = await relayTokenOf(s, alice);
    return relayFromShell(s, alice, { token });
  }

  before(async () => {
    llm = await startLlm();
    llm.wordDelayMs = 20;
    s = await relayStack(llm, { keys: 'persistent' });
    secrets.first = s.specs.main.cookieSecret;
    db = path.join(s.stateDir, 'gatehouse.sqlite3');
    alice = await signedIn(s, 'alice');
  });
  after(async () => {
    dumpLogs(s, 'persistent');
    await s?.stop();
    await llm?.close();
  });

  test('a key is stored only as ciphertext: it works, the store holds a row for it, no file holds the key, no key cookie is set', async () => {
    const r = await setKeyViaApi(s, alice, key);
    assert.equal(r.json().mode, 'persistent');
    assert.ok(!r.setCookies.some((x) => x.name === KEY_COOKIE && x.value), 'persistent mode sets no key cookie');
    const c = await chat(s, llm, alice, `persist-${randomBytes(4).toString('hex')}`);
    assert.ok(c.requests.length >= 1 && c.requests.every((q) => q.headers.authorization === `Bearer ${key}`), `the key reaches the stand-in: ${c.body.slice(0, 300)}`);
    assert.ok(existsSync(db), `the state store ${db}`);
    const tables = keyTables(db);
    assert.ok(tables.some((t) => t.rows >= 1), `a table of stored keys with a row: ${JSON.stringify(tables)}`);
    assert.deepEqual(filesHolding(s.stateDir, [key]).found, [], 'the key in plaintext in the state directory');
    assert.deepEqual(filesHolding(s.dataRoot, [key]).found, [], 'the key under the data root');
    assert.deepEqual(processesHolding([key]).found, []);
    assert.ok(!s.logs().includes(key), 'the key in the logs');
  });

  test('the key survives a Gatehouse restart (same secret): a chat after it carries the key; a new browser sees it connected', async () => {
    await restartWith(secrets.first);
    const fresh = await signedIn(s, 'alice');
    const row = await fakeRow(s, fresh);
    assert.equal(row?.connected, true, `after the restart, a new browser lists the key: ${JSON.stringify(row)}`);
    assert.equal(row.mode, 'persistent');
    assert.equal(row.last4, key.slice(-4));
    const c = await chat(s, llm, alice, `survived-${randomBytes(4).toString('hex')}`);
    assert.ok(c.requests.length >= 1, `after the restart, the chat reached the stand-in: ${c.body.slice(0, 400)}\n${logTail(s)}`);
    for (const q of c.requests) assert.equal(q.headers.authorization, `Bearer ${key}`);
  });

  test('rotation: a new cookie_secret with cookie_secret_previous: [old] keeps sessions and the key; the key is re-encrypted, so it still opens once the old secret is gone', async () => {
    await restartWith(secrets.second, [secrets.first]);
    const rotationStart = s.gh.main.logs();
    const page = await alice.get(s.gh.main.url(A, '/.gatehouse/'));
    assert.equal(page.status, 200, `alice's session sealed with the old secret still opens: ${page.status}`);
    const r = await aliceRelay();
    assert.equal(r.status, 200, `the stored key opens after rotation: ${r.body.slice(0, 300)}\n${logTail(s)}`);
    assert.equal(llm.seen.at(-1).headers.authorization, `Bearer ${key}`);

    await restartWith(secrets.second);
    alice = await signedIn(s, 'alice', s.client());
    const again = await aliceRelay();
    assert.equal(again.status, 200, `re-encrypted under the new secret: ${again.body.slice(0, 300)}\n${logTail(s)}`);
    assert.equal(llm.seen.at(-1).headers.authorization, `Bearer ${key}`);
    // The operator is told at start that stored keys were re-encrypted.
    assert.match(rotationStart, /re-encrypted|resealed/i, `the start with cookie_secret_previous logs the re-encryption; its log:\n${rotationStart.split('\n').slice(0, 25).join('\n')}`);
  });

  test('a wrong master secret: the relay answers 500 key-unreadable with a clear message, and the log names the fix', async () => {
    await restartWith(secrets.wrong);
    const wrongStart = s.gh.main.logs();
    alice = await signedIn(s, 'alice', s.client());
    const seen = llm.seen.length;
    const r = await aliceRelay();
    assertRelayRefusal(r, 500, 'key-unreadable', 'a key stored under another secret:');
    assert.match(r.json.error.message, /secret|decrypt|cannot be read|unreadable/i, `a clear message: ${r.json.error.message}`);
    assert.match(r.json.error.message, /\/\.gatehouse\/providers|again|cookie_secret|provider_key_secret/i, `the message says what to do: ${r.json.error.message}`);
    assert.equal(llm.seen.length, seen, 'nothing reached the stand-in');
    await waitForLog(s, /cookie_secret|provider_key_secret/, 'a log line naming the secret to fix');
    assert.ok(!s.logs().includes(key));
    // At start, before anyone asks: rows no configured secret opens are named in the log.
    assert.match(wrongStart, /provider key[\s\S]*(unreadable|cannot be (read|decrypted))/i, `the start logs the stored keys no secret opens; its log:\n${wrongStart.split('\n').slice(0, 25).join('\n')}`);
  });

  test('a tampered row: the relay answers 500 key-unreadable (the right secret, a changed ciphertext)', async () => {
    await s.gh.main.stop();
    s.pastLogs.push(s.gh.main.logs());
    const tables = keyTables(db).filter((t) => t.rows >= 1);
    assert.ok(tables.length >= 1, `a table of stored keys with a row: ${JSON.stringify(keyTables(db))}`);
    const changed = tamper(db, tables);
    assert.ok(changed >= 1, `a ciphertext blob was changed (tables ${JSON.stringify(tables)})`);
    s.specs.main.cookieSecret = secrets.second;
    await s.start('main');
    alice = await signedIn(s, 'alice', s.client());
    const seen = llm.seen.length;
    const r = await aliceRelay();
    assertRelayRefusal(r, 500, 'key-unreadable', 'a tampered row:');
    assert.match(r.json.error.message, /changed|tampered|cannot be (read|decrypted)|not a sealed key/i, `a clear message: ${r.json.error.message}`);
    assert.equal(llm.seen.length, seen, 'nothing reached the stand-in');
  });
});

// An idle stop wipes the person's keys from memory; the browser's key cookie brings them back
// at its next request. Shown with two clients of the same session: the browser (with the key
// cookie) and a script (the session cookie only), which can use a key only while memory
// holds it.
describe('the LLM relay, an idle stop', { skip: !IS_ROOT && 'needs root (per-person uids, nftables)' }, () => {
  let llm;
  let s;

  before(async () => {
    llm = await startLlm();
    llm.wordDelayMs = 5;
    s = await relayStack(llm, { pool: { idle_timeout: '3s' } });
  });
  after(async () => {
    dumpLogs(s, 'idle');
    await s?.stop();
    await llm?.close();
  });

  test('an idle stop wipes the key from memory (a script without the key cookie gets no-key); the browser\'s key cookie restores it', async () => {
    const browser = await signedIn(s, 'alice');
    const key = newKey('alice-idle');
    await setKeyViaApi(s, browser, key);
    const script = s.client();
    script.jar = browser.jar.clone();
    script.jar.delete(A, KEY_COOKIE);
    assert.ok(script.jar.get(A, '_pomerium'), 'the script has the session cookie');

    // While the backend runs, memory holds the key: the script's chat carries it.
    const first = await chat(s, llm, script, `idle-before-${randomBytes(4).toString('hex')}`);
    assert.equal(first.requests.length, 1, `the chat reached the stand-in: ${first.body.slice(0, 300)}`);
    assert.equal(first.requests[0].headers.authorization, `Bearer ${key}`);

    // Idle: the backend stops, and the keys leave memory (the sweeper, 10 s after last use).
    await eventually('the backend stopped on idle', () => backendProcesses(s.dataRoot).length === 0, { timeoutMs: 60_000, everyMs: 500 });
    await eventually('the keys left memory', () => /provider keys wiped from memory/.test(s.logs()), { timeoutMs: 40_000, everyMs: 500 });

    // The script (no key cookie) starts the backend again: its chat gets no key.
    const seen = llm.seen.length;
    const without = await chat(s, llm, script, `idle-after-${randomBytes(4).toString('hex')}`);
    assert.equal(without.requests.length, 0, 'no key after the idle stop without the cookie');
    assert.equal(llm.seen.length, seen, 'nothing reached the stand-in');
    assert.match(without.body, /no API key|no-key|\.gatehouse\/providers/, `the chat shows the relay's message: ${without.body.slice(0, 400)}`);

    // The browser's next request restores it from the key cookie.
    const restored = await chat(s, llm, browser, `idle-restored-${randomBytes(4).toString('hex')}`);
    assert.equal(restored.requests.length, 1, `the browser's chat reached the stand-in: ${restored.body.slice(0, 300)}`);
    assert.equal(restored.requests[0].headers.authorization, `Bearer ${key}`);
  });
});
