// The real OpenCode CLI clients, pointed at an https URL that wants `Basic opencode:<password>`
// (a Gatehouse route, or any proxy in front of `opencode serve`):
//
//   const r = await runAttached(url, 'pw', 'say hi', { ca: certs.caCert });   // opencode run --attach
//   // → { code, signal, timedOut, stdout, stderr }  (ANSI escapes stripped from both)
//   const tui = await attachInTmux(url, 'pw', { ca: certs.caCert, name: 'alice' }); // opencode attach
//   await tui.waitFor(/ctrl\+p commands/, 60_000);  // the TUI is drawn and has the server's config
//   await tui.send('say hi');                         // type a prompt, Enter
//   await tui.stop();                                 // kills only its own tmux session (and the CLI)
//
// Measured with OpenCode 1.18.33 (docs/opencode.md):
// - CA trust: NODE_EXTRA_CA_CERTS=<ca.pem> (Bun adds it to its roots; SSL_CERT_FILE works too).
// - Bun resolves `localhost` but not `*.localhost` (glibc getaddrinfo, no /etc/hosts entry):
//   `https://assistant.localhost:PORT` fails like an unreachable server. `startLocalhostProxy()`
//   is a CONNECT proxy that sends *.localhost to 127.0.0.1; with `proxy: p.url` the CLI reaches
//   the real name over HTTPS_PROXY (TLS stays end to end: SNI and Host are assistant.localhost).
// - `run --attach` prints the reply only if the reply's last events arrive on /event before the
//   POST /session/{id}/message answer; the server answers first, and the CLI does not wait for
//   the events when attached, so stdout is usually empty (stderr has `> build · fake-model`).
// - Every failure of `run --attach` (401, bad certificate, unreachable) is the same
//   `Error: Session not found` on stderr, exit code 1, within ~2 s.
// - The TUI takes 5–15 s to draw; a 401 ends it (exit 1) with
//   `Error: opencode server GET <url>/… → 401 Unauthorized: …`.

import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

import { OPENCODE } from './backends.mjs';

/** The OpenCode binary (the one the backends run: GATEHOUSE_OPENCODE_BIN or tests/e2e/node_modules). */
export const OPENCODE_CLI = OPENCODE;

const run = promisify(execFile);

// CSI (incl. private modes), OSC (BEL or ST terminated), and two-byte escapes.
const ANSI = /\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]/g;
export const stripAnsi = (s) => s.replace(ANSI, '');

const caPath = (ca) => (ca && typeof ca === 'object' ? ca.caCert : ca);

/**
 * The whole environment for the CLI (nothing is inherited: no OPENCODE_SERVER_PASSWORD, no
 * proxy settings, no real HOME). `ca`: CA certificate file (or makeCerts()' result); `home`: a
 * directory for HOME and the XDG dirs (created if missing); `proxy`: an http:// proxy URL for
 * HTTPS_PROXY (see startLocalhostProxy).
 */
export function cliEnv({ ca, home, proxy } = {}) {
  if (!home) throw new Error('cliEnv: home is required');
  const xdg = {
    XDG_CONFIG_HOME: path.join(home, '.config'),
    XDG_DATA_HOME: path.join(home, '.local/share'),
    XDG_CACHE_HOME: path.join(home, '.cache'),
    XDG_STATE_HOME: path.join(home, '.local/state'),
  };
  for (const d of [home, ...Object.values(xdg)]) mkdirSync(d, { recursive: true });
  const env = {
    PATH: process.env.PATH || '/usr/local/bin:/usr/bin:/bin',
    HOME: home,
    ...xdg,
    TERM: 'xterm-256color',
    LANG: 'C.UTF-8',
    OPENCODE_DISABLE_MODELS_FETCH: '1',
    OPENCODE_DISABLE_AUTOUPDATE: '1',
    npm_config_registry: 'http://127.0.0.1:9/',
  };
  const caFile = caPath(ca);
  if (caFile) env.NODE_EXTRA_CA_CERTS = caFile;
  if (proxy) env.HTTPS_PROXY = env.https_proxy = proxy;
  return env;
}

function tempHome() {
  return mkdtempSync(path.join(os.tmpdir(), 'gatehouse-occli-'));
}

/**
 * `opencode run --attach <url> -p <password> <prompt>`, stdin /dev/null, cwd the temp HOME.
 * Killed (by PID: SIGTERM, SIGKILL 2 s later) after `timeoutMs`.
 */
export function runAttached(url, password, prompt, { ca, timeoutMs = 120_000, extraArgs = [], home, proxy } = {}) {
  const ownHome = !home;
  if (ownHome) home = tempHome();
  const env = cliEnv({ ca, home, proxy });
  const args = ['run', '--attach', url, '-p', password, ...extraArgs, prompt];
  return new Promise((resolve, reject) => {
    const child = spawn(OPENCODE_CLI, args, { env, cwd: home, stdio: ['ignore', 'pipe', 'pipe'] });
    const out = [];
    const err = [];
    child.stdout.on('data', (c) => out.push(c));
    child.stderr.on('data', (c) => err.push(c));
    let timedOut = false;
    let killer;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(child.pid, 'SIGTERM');
      } catch {}
      killer = setTimeout(() => {
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {}
      }, 2000);
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      clearTimeout(killer);
      if (ownHome) rmSync(home, { recursive: true, force: true });
      resolve({
        code,
        signal,
        timedOut,
        stdout: stripAnsi(Buffer.concat(out).toString('utf8')),
        stderr: stripAnsi(Buffer.concat(err).toString('utf8')),
      });
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * `opencode attach <url> -p <password>` in a detached tmux session of its own tmux server
 * (socket `-L gatehouse-occli-<name>`), `width`×`height`, pane kept after the CLI exits so its
 * last words stay readable.
 */
export async function attachInTmux(url, password, { ca, name, home, proxy, width = 160, height = 48 } = {}) {
  if (!name || !/^[\w-]+$/.test(name)) throw new Error('attachInTmux: name must be [A-Za-z0-9_-]+');
  const ownHome = !home;
  if (ownHome) home = tempHome();
  const env = cliEnv({ ca, home, proxy });
  const socket = `gatehouse-occli-${name}`;
  const tmux = (...a) => run('tmux', ['-L', socket, ...a], { encoding: 'utf8' });
  const kv = Object.entries(env).map(([k, v]) => `${k}=${v}`);
  await tmux(
    '-f', '/dev/null', 'start-server', ';',
    'set-option', '-g', 'remain-on-exit', 'on', ';',
    'new-session', '-d', '-s', name, '-x', String(width), '-y', String(height), '-c', home,
    'env', '-i', ...kv, OPENCODE_CLI, 'attach', url, '-p', password,
  );
  const pane = async () => {
    const { stdout } = await tmux('list-panes', '-t', name, '-F', '#{pane_pid} #{pane_dead} #{pane_dead_status}');
    const [pid, dead, status] = stdout.trim().split(' ');
    return { pid: Number(pid), dead: dead === '1', status: status ? Number(status) : null };
  };
  const { pid } = await pane(); // `env` execs the CLI: this is the CLI's PID
  let stopped = false;

  const capture = async () => (await tmux('capture-pane', '-p', '-J', '-S', '-', '-t', name)).stdout;

  return {
    name,
    socket,
    pid,
    home,
    capture,
    /** Resolves with the screen once it matches; rejects when the CLI exits without it, or on timeout. */
    async waitFor(regex, timeoutMs = 60_000) {
      const until = Date.now() + timeoutMs;
      for (;;) {
        const text = await capture();
        if (regex.test(text)) return text;
        const p = await pane();
        if (p.dead) throw new Error(`opencode attach exited (status ${p.status}) without showing ${regex}:\n${text}`);
        if (Date.now() > until) throw new Error(`opencode attach did not show ${regex} within ${timeoutMs} ms:\n${text}`);
        await sleep(250);
      }
    },
    /** Types `text` (literally), then Enter unless `enter: false`. */
    async send(text, { enter = true } = {}) {
      await tmux('send-keys', '-t', name, '-l', text);
      if (enter) await tmux('send-keys', '-t', name, 'Enter');
    },
    /** The CLI's state: { pid, dead, status }. */
    pane,
    async stop() {
      if (stopped) return;
      stopped = true;
      try {
        await tmux('kill-session', '-t', name); // SIGHUP to the CLI; the private server then exits
      } catch {}
      for (let i = 0; i < 30 && existsSync(`/proc/${pid}`); i += 1) await sleep(100);
      if (existsSync(`/proc/${pid}`)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {}
      }
      if (ownHome) rmSync(home, { recursive: true, force: true });
    },
  };
}

/**
 * A CONNECT proxy on loopback that sends `localhost` and `*.localhost` to 127.0.0.1 and refuses
 * every other destination: give its `url` as `proxy` so the CLI reaches https://assistant.localhost:PORT.
 * `connects` lists the `host:port` of every tunnel asked for.
 */
export async function startLocalhostProxy() {
  const connects = [];
  const sockets = new Set();
  const server = http.createServer((req, res) => res.writeHead(405).end());
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.on('connect', (req, client, head) => {
    connects.push(req.url);
    const m = /^([^:]+):(\d+)$/.exec(req.url);
    const host = m?.[1].toLowerCase();
    if (!m || !(host === 'localhost' || host.endsWith('.localhost'))) {
      client.end('HTTP/1.1 403 Forbidden\r\n\r\n');
      return;
    }
    const up = net.connect(Number(m[2]), '127.0.0.1', () => {
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length) up.write(head);
      up.pipe(client);
      client.pipe(up);
    });
    sockets.add(up);
    up.on('close', () => sockets.delete(up));
    up.on('error', () => client.destroy());
    client.on('error', () => up.destroy());
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    connects,
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
