// Per-person backends (issue 5): what Gatehouse adds to a cold start, the memory of an idle
// backend, and N simultaneous first requests. Run by bench/backends.sh (see there).
//
// 1. Cold start of a bare OpenCode server: spawn → first 200 on GET /global/health (polled
//    every 50 ms, 300 ms per try), fresh directories and password each time; and the same
//    with Gatehouse's readiness rule (wait for the "listening" line, then poll), which is
//    the fair base for "what Gatehouse adds".
// 2. First request through Gatehouse for a new person: GET /global/health with the session
//    cookie → first byte of the answer (the person has no backend; Gatehouse starts one).
//    Rounds of 1 and 2 alternate, so both see the same machine.
//    Separate processes vary by ±250 ms here, so the run also reports Gatehouse's own part:
//    the first byte minus the spawn-to-ready time the supervisor logged for that start.
// 3. RSS of one idle backend, 5 s after its start.
// 4. N people's first requests at the same time (max_starting as configured).

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';

import { A, backendProcesses, backendStack, OPENCODE } from '../tests/harness/backends.mjs';
import { loopbackLookup } from '../tests/harness/client.mjs';
import { freePort } from '../tests/harness/gatehouse.mjs';
import { startLlm } from '../tests/harness/llm.mjs';

const ROUNDS = Number(process.env.ROUNDS ?? 5);
const N = Number(process.env.N ?? 4);
const PEOPLE = ['alice', 'bob', 'carol', 'mallory'];

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const ms = (x) => `${Math.round(x)} ms`;

function healthOnce(port, auth) {
  return new Promise((resolve) => {
    const req = http.request({ host: '127.0.0.1', port, path: '/global/health', headers: { authorization: auth }, agent: false, timeout: 300 }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
    req.end();
  });
}

/**
 * Spawn a bare OpenCode with fresh dirs; ms from spawn to the first 200. `waitLine`: first
 * wait for its "listening" stdout line, as Gatehouse does (connections made before it hang).
 */
async function bareColdStart({ waitLine = false } = {}) {
  const root = mkdtempSync(path.join(os.tmpdir(), 'gatehouse-bench-bare-'));
  const xdg = { XDG_CONFIG_HOME: '.config', XDG_DATA_HOME: '.local/share', XDG_STATE_HOME: '.local/state', XDG_CACHE_HOME: '.cache' };
  for (const d of Object.values(xdg)) mkdirSync(path.join(root, d), { recursive: true });
  const port = await freePort();
  const password = randomBytes(24).toString('base64url');
  const auth = `Basic ${Buffer.from(`opencode:${password}`).toString('base64')}`;
  const env = {
    PATH: '/usr/local/bin:/usr/bin:/bin',
    HOME: root,
    ...Object.fromEntries(Object.entries(xdg).map(([k, v]) => [k, path.join(root, v)])),
    OPENCODE_SERVER_PASSWORD: password,
    OPENCODE_DISABLE_MODELS_FETCH: '1',
    OPENCODE_DISABLE_AUTOUPDATE: '1',
    npm_config_registry: 'http://127.0.0.1:9/',
  };
  const t0 = performance.now();
  const child = spawn(OPENCODE, ['serve', '--hostname', '127.0.0.1', '--port', String(port)], { cwd: root, env, stdio: ['ignore', waitLine ? 'pipe' : 'ignore', 'ignore'], detached: true });
  if (waitLine) {
    await new Promise((resolve) => {
      let out = '';
      child.stdout.on('data', (d) => {
        out += d;
        if (out.includes('server listening')) resolve();
      });
    });
    child.stdout.resume();
  }
  let took;
  for (;;) {
    if ((await healthOnce(port, auth)) === 200) {
      took = performance.now() - t0;
      break;
    }
    if (performance.now() - t0 > 60_000) throw new Error('bare OpenCode did not start within 60 s');
    await new Promise((r) => setTimeout(r, 50));
  }
  process.kill(-child.pid, 'SIGTERM');
  await new Promise((r) => child.on('exit', r));
  rmSync(root, { recursive: true, force: true });
  return took;
}

/** ms from sending GET /global/health through Gatehouse to the answer's first byte. */
function firstByte(s, client) {
  const u = new URL(s.gh.main.url(A, '/global/health'));
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = https.request(
      { host: u.hostname, port: u.port, path: u.pathname, ca: s.certs.caPem, servername: u.hostname, lookup: loopbackLookup, agent: false, headers: { accept: 'application/json', cookie: client.jar.header(u.hostname) } },
      (res) => {
        res.once('data', () => {
          const t = performance.now() - t0;
          res.resume();
          res.on('end', () => (res.statusCode === 200 ? resolve(t) : reject(new Error(`status ${res.statusCode}`))));
        });
      },
    );
    req.on('error', reject);
    req.end();
  });
}

async function signIn(s, user) {
  const c = s.client();
  const { response } = await c.login(user, `${user}-pass`, s.gh.main.url(A, '/.gatehouse/'));
  if (response.status !== 200) throw new Error(`${user} could not sign in: ${response.status}`);
  return c;
}

const rssKb = (pid) => Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);

const llm = await startLlm();
const bare = [];
const bareLine = [];
const through = [];
const overhead = [];
let idleRss = [];
try {
  console.log(`cold start: ${ROUNDS} rounds, bare OpenCode and Gatehouse alternating`);
  for (let i = 0; i < ROUNDS; i += 1) {
    bare.push(await bareColdStart());
    bareLine.push(await bareColdStart({ waitLine: true }));
    const s = await backendStack(llm, {}, { allow_any_authenticated_user: true });
    try {
      const c = await signIn(s, 'alice');
      through.push(await firstByte(s, c));
      // The supervisor logs its own spawn-to-ready time: the rest is Gatehouse's part.
      const startMs = Number(/backend started.*start_ms=(\d+)/.exec(s.gh.main.logs())?.[1]);
      overhead.push(through.at(-1) - startMs);
      if (i === 0) {
        await new Promise((r) => setTimeout(r, 5_000));
        idleRss = backendProcesses(s.dataRoot).map((p) => rssKb(p.pid));
      }
    } finally {
      await s.stop();
    }
    console.log(`  round ${i + 1}: bare ${ms(bare.at(-1))}, bare waiting for its line ${ms(bareLine.at(-1))}, through Gatehouse ${ms(through.at(-1))}`);
  }

  console.log(`\n${N} people's first requests at the same time (max_starting 2, the default)`);
  const s = await backendStack(llm, {}, { allow_any_authenticated_user: true });
  let together;
  try {
    const clients = await Promise.all(PEOPLE.slice(0, N).map((u) => signIn(s, u)));
    const t0 = performance.now();
    const each = await Promise.all(clients.map((c) => firstByte(s, c)));
    together = { all: performance.now() - t0, each };
  } finally {
    await s.stop();
  }

  const mb = median(bare);
  const ml = median(bareLine);
  const mt = median(through);
  console.log('\n| measure | value |\n|---|---|');
  console.log(`| bare OpenCode cold start (health polled from spawn), median of ${ROUNDS} | ${ms(mb)} |`);
  console.log(`| bare OpenCode cold start (wait for its line, then health), median of ${ROUNDS} | ${ms(ml)} |`);
  console.log(`| first request through Gatehouse (new person), median of ${ROUNDS} | ${ms(mt)} |`);
  console.log(`| difference to bare, polled from spawn | ${ms(mt - mb)} |`);
  console.log(`| difference to bare, same readiness as Gatehouse | ${ms(mt - ml)} |`);
  console.log(`| Gatehouse's own part of its first request (first byte minus the backend's spawn-to-ready), median | ${ms(median(overhead))} |`);
  console.log(`| RSS of one idle backend, 5 s after start | ${idleRss.map((k) => `${Math.round(k / 1024)} MB`).join(', ')} |`);
  console.log(`| ${N} simultaneous first requests: all answered after | ${ms(together.all)} |`);
  console.log(`| ... each (sorted) | ${together.each.sort((a, b) => a - b).map(ms).join(', ')} |`);
} finally {
  await llm.close();
}
