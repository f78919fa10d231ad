// Per-person backends in tests and the bench: a stack whose assistant.localhost route
// gives each person their own real OpenCode (npm opencode-ai), and a look into /proc at the
// backend processes it started.
//
//   const s = await backendStack(llm, { idle_timeout: '3s' });   // s.dataRoot, s.origin
//   backendProcesses(s.dataRoot)   // [{ pid, uid, home, port }]

import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, linkSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';

import { loopbackLookup } from './client.mjs';
import { REPO_ROOT } from './gatehouse.mjs';
import { opencodeConfig } from './llm.mjs';
import { startStack } from './stack.mjs';

export const A = 'assistant.localhost';
const OPENCODE_IN_CHECKOUT = process.env.GATEHOUSE_OPENCODE_BIN || path.join(REPO_ROOT, 'tests/e2e/node_modules/opencode-linux-x64/bin/opencode');

/**
 * The OpenCode binary where every backend uid can run it: the checkout may sit in a 0700
 * directory (/root), so it is hard-linked (or copied) into a 0755 temp directory once.
 */
export function reachableOpencode(source = OPENCODE_IN_CHECKOUT) {
  const dir = path.join(os.tmpdir(), `gatehouse-opencode-${process.getuid()}`);
  const bin = path.join(dir, 'opencode');
  if (!existsSync(bin)) {
    mkdirSync(dir, { recursive: true });
    try {
      linkSync(source, bin);
    } catch {
      copyFileSync(source, bin);
    }
  }
  chmodSync(dir, 0o755);
  chmodSync(bin, 0o755);
  return bin;
}

export const OPENCODE = reachableOpencode();

/**
 * The capabilities a root Gatehouse with a backend pool needs, no more (measured by
 * tests/e2e/capabilities.test.mjs; docs/confinement.md, "Capabilities"). The systemd unit
 * and the compose file give exactly these (tests/e2e/deploy.test.mjs).
 */
export const SUPERVISOR_CAPABILITIES = ['net_bind_service', 'net_admin', 'setuid', 'setgid', 'chown', 'fowner', 'dac_read_search', 'kill'];

/** `egress.allow` for a stand-in service on loopback, e.g. the LLM (`http://127.0.0.1:PORT/v1`). */
export function allowOf(url) {
  const u = new URL(url);
  return `${u.hostname}:${u.port}`;
}

let portBase = 31000 + Math.floor(Math.random() * 400) * 10;

/**
 * A stack whose assistant.localhost route gives each person their own OpenCode. `gatehouse`
 * is passed on to startStack's spec (e.g. { wrap: ['setpriv', …] }).
 */
export async function backendStack(llm, pool = {}, route = {}, top = {}, gatehouse = {}) {
  const root = mkdtempSync(path.join(os.tmpdir(), 'gatehouse-backends-e2e-'));
  chmodSync(root, 0o755); // backends run as other uids and must reach their own directory
  const dataRoot = path.join(root, 'data');
  const first = portBase;
  portBase += 10;
  const base = {
    backends: {
      assistant: {
        command: [OPENCODE, 'serve', '--hostname', '127.0.0.1', '--port', '{port}'],
        ports: `${first}-${first + 9}`,
        data_root: dataRoot,
        uids: '62000-62099',
        start_timeout: '60s',
        env: { OPENCODE_CONFIG_CONTENT: opencodeConfig(llm) },
        egress: { allow: [allowOf(llm.url)] },
        ...pool,
      },
    },
    routes: [{ from: `https://${A}`, to_backend: 'assistant', ...route }],
  };
  const s = await startStack({
    gatehouses: {
      main: {
        ...gatehouse,
        // `top` may need the stack's parts (the echo upstream): then it is a function, and so
        // is `extra`. Otherwise `extra` stays an object a test may change before a restart.
        extra: typeof top === 'function' ? (parts) => ({ ...base, ...top(parts) }) : { ...base, ...top },
      },
    },
  });
  s.dataRoot = dataRoot;
  const stop = s.stop;
  s.stop = async () => {
    await stop();
    rmSync(root, { recursive: true, force: true });
  };
  s.origin = s.gh.main.url(A, '/').replace(/\/$/, '');
  return s;
}

/** Live backend processes of a data root, from /proc: [{ pid, uid, home, port }]. */
export function backendProcesses(dataRoot) {
  const out = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let env;
    let status;
    try {
      env = readFileSync(`/proc/${name}/environ`, 'latin1').split('\0');
      status = readFileSync(`/proc/${name}/status`, 'latin1');
    } catch {
      continue;
    }
    if (/^State:\s+Z/m.test(status)) continue;
    const get = (k) => env.find((e) => e.startsWith(`${k}=`))?.slice(k.length + 1);
    const home = get('HOME');
    const port = get('GATEHOUSE_BACKEND_PORT');
    if (!port || !home?.startsWith(dataRoot)) continue;
    // Only the server itself (children inherit the environment).
    const ppidHome = (() => {
      const ppid = /^PPid:\s+(\d+)/m.exec(status)?.[1];
      try {
        return readFileSync(`/proc/${ppid}/environ`, 'latin1').includes(`HOME=${home}\0`);
      } catch {
        return false;
      }
    })();
    if (ppidHome) continue;
    out.push({ pid: Number(name), uid: Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]), home, port: Number(port) });
  }
  return out;
}

/** A person's data directory: named by SHA-256(issuer "\n" subject), as the supervisor does. */
export function homeOf(s, sub) {
  const id = createHash('sha256').update(`${s.idp.issuer}\n${sub}`).digest('hex').slice(0, 32);
  return path.join(s.dataRoot, id);
}


/** A harness Client signed in as `user` (the test IdP's `<user>`/`<user>-pass`) through the route. */
export async function signedIn(s, user) {
  const c = s.client();
  const { response } = await c.login(user, `${user}-pass`, s.gh.main.url(A, '/.gatehouse/'));
  if (response.status !== 200) throw new Error(`${user} signed in: ${response.status} ${response.body.slice(0, 300)}`);
  return c;
}

/** Live processes whose real uid is `uid` (pids). */
export function processesOf(uid) {
  const out = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const status = readFileSync(`/proc/${name}/status`, 'latin1');
      if (/^State:\s+Z/m.test(status)) continue;
      if (Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]) === uid) out.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** Polls `check` until it returns something truthy (returned), or throws after the deadline. */
export async function eventually(what, check, { timeoutMs = 20_000, everyMs = 200 } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`not true within ${timeoutMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** An SSE stream through Gatehouse: { events: [{ at, data }], closed: Promise, close() }. */
export function openSse(s, c, p, headers = {}) {
  const u = new URL(s.gh.main.url(A, p));
  const stream = { events: [], ended: false };
  stream.closed = new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: u.hostname,
        port: u.port,
        path: u.pathname,
        method: 'GET',
        ca: s.certs.caPem,
        servername: u.hostname,
        lookup: loopbackLookup,
        agent: false,
        headers: { accept: 'text/event-stream', cookie: c.jar.header(u.hostname), ...headers },
      },
      (res) => {
        stream.status = res.statusCode;
        stream.headers = res.headers;
        let buf = '';
        res.setEncoding('utf8');
        res.on('data', (d) => {
          buf += d;
          let i;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
            if (data) {
              try {
                stream.events.push({ at: Date.now(), data: JSON.parse(data) });
              } catch {
                stream.events.push({ at: Date.now(), data });
              }
            }
          }
        });
        res.on('end', () => {
          stream.ended = true;
          resolve('end');
        });
        res.on('error', () => {
          stream.ended = true;
          resolve('error');
        });
      },
    );
    req.on('error', (e) => {
      stream.ended = true;
      resolve(`error: ${e.message}`);
    });
    stream.close = () => req.destroy();
    req.end();
  });
  return stream;
}
