// Helpers of the LLM relay's end-to-end tests (issue 12): tests/e2e/relay.test.mjs and
// relay-persistent.test.mjs. Each file runs on its own (node's per-file timeout).

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, lstatSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { agentShell, viaClient } from './agent.mjs';
import { A, backendProcesses, backendStack, eventually, homeOf, OPENCODE, openSse } from './backends.mjs';
import { freePort } from './gatehouse.mjs';
import { REPLY, startLlm } from './llm.mjs';
import { newCookieSecret } from './stack.mjs';

export const IS_ROOT = process.getuid?.() === 0;
export const KEY_COOKIE = '_pomerium_keys';
export const JSON_API = { accept: 'application/json' };
export const MODEL = { providerID: 'fake', modelID: 'fake-model' };

if (!existsSync(OPENCODE)) {
  throw new Error(`OpenCode binary missing at ${OPENCODE}: run tests/harness/install-deps.sh (installs npm opencode-ai)`);
}

/** A provider key nobody could guess, with a recognisable prefix (it is what we look for). */
export const newKey = (who) => `sk-test-${who}-${randomBytes(18).toString('hex')}`;
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- the stack ----

/** A backend stack whose pool relays `fake` (the stand-in), with the stand-in outside egress. */
export async function relayStack(llm, { keys = 'ephemeral', providers = {}, pool = {}, top = {} } = {}) {
  const relayPort = await freePort();
  const stateDir = mkdtempSync(path.join(os.tmpdir(), 'gatehouse-relay-state-'));
  const s = await backendStack(
    llm,
    {
      idle_timeout: '1h',
      egress: { allow: [] },
      relay: { keys, providers: { fake: { style: 'openai', base_url: llm.url }, ...providers } },
      ...pool,
    },
    {},
    { relay_address: `127.0.0.1:${relayPort}`, state_dir: stateDir, ...top },
  );
  s.relayPort = relayPort;
  s.stateDir = stateDir;
  // Gatehouse's output of every run (a restart starts a new process with its own output).
  s.pastLogs = [];
  s.logs = () => s.pastLogs.join('') + s.gh.main.logs();
  s.restart = async () => {
    await s.gh.main.stop();
    s.pastLogs.push(s.gh.main.logs());
    await s.start('main');
  };
  const stop = s.stop;
  s.stop = async () => {
    await stop();
    rmSync(stateDir, { recursive: true, force: true });
  };
  return s;
}

export async function signedIn(s, user, c = s.client()) {
  const { response } = await c.login(user, `${user}-pass`, s.gh.main.url(A, '/.gatehouse/'));
  assert.equal(response.status, 200, `${user} signed in: ${response.status} ${response.body.slice(0, 300)}`);
  return c;
}

/** A JSON request through Gatehouse on the backend route, same-origin like the web UI's. */
export const api = (s, c, method, p, body, headers = {}) =>
  c.request(s.gh.main.url(A, p), {
    method,
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    headers: { ...JSON_API, origin: s.origin, ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
    timeoutMs: 120_000,
  });

/** Sets the person's key for `fake` through the keys API (as the keys page's script would). */
export async function setKeyViaApi(s, c, key, provider = 'fake') {
  const r = await api(s, c, 'PUT', `/.gatehouse/api/providers/${provider}`, { key });
  assert.equal(r.status, 200, `PUT /.gatehouse/api/providers/${provider}: ${r.status} ${r.body.slice(0, 300)}`);
  return r;
}

/** GET /.gatehouse/api/providers: the `fake` row. */
export async function fakeRow(s, c) {
  const r = await api(s, c, 'GET', '/.gatehouse/api/providers');
  assert.equal(r.status, 200, `GET /.gatehouse/api/providers: ${r.status} ${r.body.slice(0, 300)}`);
  return r.json().providers.find((p) => p.id === 'fake');
}

/** The csrf_token of a form on the user page whose action is `action`. */
export async function userPageToken(s, c, action) {
  const page = await c.get(s.gh.main.url(A, '/.gatehouse/'));
  assert.equal(page.status, 200, `user page: ${page.status}`);
  const m = new RegExp(`action="/\\.gatehouse/${action}"><input type="hidden" name="csrf_token" value="([^"]+)"`).exec(page.body);
  assert.ok(m, `the user page has the ${action} form`);
  return m[1];
}

export async function postUserForm(s, c, action, fields = {}) {
  const csrf = await userPageToken(s, c, action);
  return c.post(s.gh.main.url(A, `/.gatehouse/${action}`), { csrf_token: csrf, ...fields }, { headers: { origin: s.origin } });
}

/** Runs `command` in the person's own agent shell, exactly as written; { output, exitCode }. */
export const shell = (s, c, command) => agentShell(viaClient(c, s.origin), command, { literal: true });

/** The backend's OpenCode config, as its own shell sees it. */
export async function backendConfig(s, c) {
  const r = await shell(s, c, 'printf "%s" "$OPENCODE_CONFIG_CONTENT"');
  try {
    return JSON.parse(r.output);
  } catch {
    throw new Error(`OPENCODE_CONFIG_CONTENT is no JSON: ${r.output.slice(0, 300)}`);
  }
}

export const relayTokenOf = async (s, c) => (await backendConfig(s, c)).provider?.fake?.options?.apiKey;

/** Parses a raw HTTP/1.1 response (chunked or not) into { status, headers, body, json }. */
export function parseHttp(raw) {
  const text = raw.replace(/\r/g, '');
  const head = text.indexOf('\n\n');
  const lines = (head < 0 ? text : text.slice(0, head)).split('\n');
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '')?.[1]);
  const headers = {};
  for (const l of lines.slice(1)) {
    const i = l.indexOf(':');
    if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  let body = head < 0 ? '' : text.slice(head + 2);
  if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
    body = body.split('\n').filter((l) => !/^[0-9a-f]+$/i.test(l)).join('\n');
  }
  let json;
  try {
    json = JSON.parse(body.slice(body.indexOf('{'), body.lastIndexOf('}') + 1));
  } catch {
    // not JSON
  }
  return { status, headers, body, json };
}

/**
 * One HTTP request to the relay from the person's own agent shell (bash /dev/tcp: the
 * backend may have no curl). Every line of the answer is stamped with the time it arrived:
 * { status, headers, body, json, lines: [{ at (ms), line }] }.
 */
export async function relayFromShell(s, c, { method = 'GET', p = '/p/fake/models', token, body, header = 'authorization' } = {}) {
  const payload = body === undefined ? '' : JSON.stringify(body);
  const auth = token === undefined ? '' : header === 'authorization' ? `Authorization: Bearer ${token}\r\n` : `${header}: ${token}\r\n`;
  const request = `${method} ${p} HTTP/1.1\r\nHost: 127.0.0.1:${s.relayPort}\r\n${auth}`
    + (payload ? `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(payload)}\r\n` : '')
    + `Connection: close\r\n\r\n${payload}`;
  const script = `exec 3<>/dev/tcp/127.0.0.1/${s.relayPort} || { echo CONNECT-FAILED; exit 0; }
echo ${Buffer.from(request).toString('base64')} | base64 -d >&3
while IFS= read -r -t 30 l <&3 || [[ -n $l ]]; do printf '%s %s\\n' "$EPOCHREALTIME" "$l"; done`;
  const r = await shell(s, c, script);
  assert.doesNotMatch(r.output, /CONNECT-FAILED/, `the relay (127.0.0.1:${s.relayPort}) is reachable from the backend`);
  const lines = r.output.split('\n').filter(Boolean).map((l) => {
    const i = l.indexOf(' ');
    return { at: Number(l.slice(0, i).replace(',', '.')) * 1000, line: l.slice(i + 1) };
  });
  return { ...parseHttp(lines.map((l) => l.line).join('\n')), lines, output: r.output };
}

/** A plain HTTP request to the relay from the test process itself (root). */
export function relayFromHere(s, { method = 'GET', p = '/p/fake/models', headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: s.relayPort, path: p, method, headers, agent: false, timeout: 15_000 }, (res) => {
      const chunks = [];
      res.on('data', (d) => chunks.push(d));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try {
          json = JSON.parse(text);
        } catch {
          // not JSON
        }
        resolve({ status: res.statusCode, headers: res.headers, body: text, json });
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

/** The relay's refusal: status and code, from its JSON error. */
export function assertRelayRefusal(r, status, code, msg = '') {
  assert.equal(r.status, status, `${msg} expected ${status} ${code}, got ${r.status}: ${String(r.body).slice(0, 300)}`);
  assert.equal(r.json?.error?.code, code, `${msg} expected code ${code}: ${String(r.body).slice(0, 300)}`);
  assert.equal(r.json?.error?.type, 'gatehouse_relay', msg);
}

/**
 * A chat through the person's backend (as the web UI makes one). `marker` goes in the
 * prompt, so the stand-in's requests for this chat are told apart from any other's.
 * Resolves to { status, body, requests (the stand-in's completions that carry the marker) }.
 */
export async function chat(s, llm, c, marker) {
  const created = await api(s, c, 'POST', '/session', { title: `relay ${marker}` });
  assert.equal(created.status, 200, `POST /session: ${created.status} ${created.body.slice(0, 300)}`);
  const r = await api(s, c, 'POST', `/session/${created.json().id}/message`, {
    model: MODEL,
    parts: [{ type: 'text', text: `hi ${marker}` }],
  });
  return { status: r.status, body: r.body, requests: llm.requests.filter((q) => JSON.stringify(q.body).includes(marker)) };
}

/** Every file under `dir` (as root) that holds one of `needles`: [ 'path: needle' ]. */
export function filesHolding(dir, needles) {
  const found = [];
  let files = 0;
  const walk = (d) => {
    let names;
    try {
      names = readdirSync(d);
    } catch {
      return;
    }
    for (const name of names) {
      const p = path.join(d, name);
      let st;
      try {
        st = lstatSync(p);
      } catch {
        continue;
      }
      if (st.isDirectory()) walk(p);
      else if (st.isFile()) {
        files += 1;
        let buf;
        try {
          buf = readFileSync(p);
        } catch {
          continue;
        }
        for (const n of needles) if (buf.includes(n)) found.push(`${p}: ${n}`);
      }
    }
  };
  walk(dir);
  return { found, files };
}

/** Every process's environ and cmdline that holds one of `needles`. */
export function processesHolding(needles) {
  const found = [];
  let seen = 0;
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    for (const f of ['environ', 'cmdline']) {
      let buf;
      try {
        buf = readFileSync(`/proc/${pid}/${f}`);
      } catch {
        continue;
      }
      seen += 1;
      for (const n of needles) if (buf.includes(n)) found.push(`/proc/${pid}/${f}: ${n}`);
    }
  }
  return { found, seen };
}

/**
 * What the person's own agent shell can print that holds `needle`: its environment, files
 * under its home, its processes' environ and cmdline. The needle never appears in a command
 * line (grep reads it from a pipe), so the scan does not find itself.
 */
export async function shellFinds(s, c, needle) {
  const n = `<(printf %s ${Buffer.from(needle).toString('base64')} | base64 -d)`;
  const r = await shell(s, c, [
    `env | grep -qF -f ${n} && echo "FOUND env"`,
    `grep -rlF -f ${n} "$HOME" 2>/dev/null | sed 's/^/FOUND file /'`,
    `for p in /proc/[0-9]*; do for f in environ cmdline; do if tr '\\0' '\\n' < "$p/$f" 2>/dev/null | grep -qF -f ${n}; then echo "FOUND $p/$f"; fi; done; done`,
    'echo "SCANNED home files: $(find "$HOME" -type f 2>/dev/null | wc -l), readable environs: $(cat /proc/[0-9]*/environ 2>/dev/null | tr "\\0" "\\n" | grep -c "^HOME=")"',
  ].join('\n'));
  assert.match(r.output, /SCANNED home files: [1-9]\d*, readable environs: [1-9]/, `the scan ran: ${r.output.slice(-300)}`);
  return r.output.split('\n').filter((l) => l.startsWith('FOUND'));
}

/** The access line is written after the response: poll for it. */
export async function waitForLog(s, re, what = String(re)) {
  await eventually(`log line ${what}`, () => re.test(s.logs()), { timeoutMs: 5_000, everyMs: 100 }).catch(() => {
    const tail = s.logs().split('\n').slice(-15).join('\n');
    assert.fail(`no log line ${what}; the log's end:\n${tail}`);
  });
}

/** RELAY_TEST_LOGS=<dir>: keep Gatehouse's output of each describe there (for reports). */
export function dumpLogs(s, name) {
  const dir = process.env.RELAY_TEST_LOGS;
  if (dir && s) writeFileSync(path.join(dir, `gatehouse-${name}.log`), s.logs());
}

export const logTail = (s, re = /relay|provider|key/i, n = 12) => s.logs().split('\n').filter((l) => re.test(l)).slice(-n).join('\n');
