// Run the real `gatehouse` binary for tests.
//
//   const gh = await startGatehouse(configObjectOrYamlText, { env });
//   gh.url('assistant.localhost')  // → https://assistant.localhost:<port>
//   gh.logs()                      // everything it wrote to stdout+stderr so far
//   gh.write('policies/team.yaml', text)  // (re)write a file next to the config
//   await gh.stop()                // SIGTERM, SIGKILL after 5 s
//   startGatehouse(cfg, { wrap: ['setpriv', '--inh-caps=-all'] })  // run under a program that execs it
//
//   const { code, stdout, stderr } = runCheck(configPathOrYamlText, env);

import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const REPO_ROOT = path.resolve(import.meta.dirname, '..', '..');

export function gatehouseBin() {
  const bin = process.env.GATEHOUSE_BIN || 'target/debug/gatehouse';
  return path.resolve(REPO_ROOT, bin);
}

/**
 * A port that was free a moment ago: a random one in 20000-29999, below the kernel's
 * ephemeral range (32768-60999 here), so no client socket can hold it when a test starts
 * Gatehouse again on the same port (a restart once failed for 30 s that way).
 */
const handedOut = new Set(); // never the same port twice in one test process

export async function freePort(host = '127.0.0.1') {
  for (let tries = 0; tries < 200; tries += 1) {
    const port = 20000 + Math.floor(Math.random() * 10000);
    if (handedOut.has(port)) continue;
    const free = await new Promise((resolve) => {
      const srv = net.createServer();
      srv.unref();
      srv.once('error', () => resolve(false));
      srv.listen(port, host, () => srv.close(() => resolve(true)));
    });
    if (free) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error('no free port in 20000-29999');
}

// ---- a minimal YAML emitter for plain config objects (strings are always double-quoted) ----

function yamlScalar(v) {
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'boolean' || typeof v === 'number') return String(v);
  return JSON.stringify(String(v)); // a JSON string is a valid YAML double-quoted scalar
}

function yamlLines(value, indent) {
  const pad = ' '.repeat(indent);
  if (Array.isArray(value)) {
    if (value.length === 0) return [`${pad}[]`];
    const out = [];
    for (const item of value) {
      if (item !== null && typeof item === 'object' && !(Array.isArray(item) && item.length === 0)) {
        const inner = yamlLines(item, indent + 2);
        out.push(`${pad}- ${inner[0].trimStart()}`, ...inner.slice(1));
      } else {
        out.push(`${pad}- ${Array.isArray(item) ? '[]' : yamlScalar(item)}`);
      }
    }
    return out;
  }
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value).filter(([, v]) => v !== undefined);
    if (entries.length === 0) return [`${pad}{}`];
    const out = [];
    for (const [k, v] of entries) {
      if (v !== null && typeof v === 'object' && !(Array.isArray(v) && v.length === 0) && !(Object.keys(v).length === 0)) {
        out.push(`${pad}${k}:`, ...yamlLines(v, Array.isArray(v) ? indent + 2 : indent + 2));
      } else if (Array.isArray(v)) {
        out.push(`${pad}${k}: []`);
      } else if (v !== null && typeof v === 'object') {
        out.push(`${pad}${k}: {}`);
      } else {
        out.push(`${pad}${k}: ${yamlScalar(v)}`);
      }
    }
    return out;
  }
  return [`${pad}${yamlScalar(value)}`];
}

export function toYaml(obj) {
  return `${yamlLines(obj, 0).join('\n')}\n`;
}

// ---- processes ----

const live = new Set();
let exitHookInstalled = false;
function installExitHook() {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of live) {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

function portOf(addr) {
  const m = /:(\d+)\s*$/.exec(String(addr ?? ''));
  return m ? Number(m[1]) : undefined;
}

function yamlTopLevel(text, key) {
  const m = new RegExp(`^${key}:\\s*["']?([^"'\\s#]+)`, 'm').exec(text);
  return m?.[1];
}

function healthOnce(port, timeoutMs) {
  return new Promise((resolve) => {
    const req = https.request(
      { host: '127.0.0.1', port, path: '/.gatehouse/health', method: 'GET', rejectUnauthorized: false, agent: false, timeout: timeoutMs },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => resolve(0));
    req.end();
  });
}

/**
 * Write the config to a fresh temp dir and run `gatehouse serve --config <file>` from the
 * repo root. `config` is an object (ports are filled in when `address` / `http_redirect_addr`
 * are missing) or YAML text. `files` ({ 'policies/x.yaml': text }) are written next to the
 * config first. `wrap` ([program, ...args]) runs Gatehouse under a program that execs it
 * (setpriv), so the pid stays Gatehouse's. Resolves when /.gatehouse/health answers 200.
 */
export async function startGatehouse(config, { env = {}, readyTimeoutMs = 30_000, bin = gatehouseBin(), args = [], files = {}, wrap = [] } = {}) {
  installExitHook();
  if (!existsSync(bin)) {
    throw new Error(`gatehouse binary not found at ${bin}: run \`cargo build -p gatehouse\` or set GATEHOUSE_BIN`);
  }
  const dir = mkdtempSync(path.join(os.tmpdir(), 'gatehouse-run-'));
  const file = path.join(dir, 'gatehouse.yaml');
  let yaml;
  let port;
  let redirectPort;
  if (typeof config === 'string') {
    yaml = config;
    // The state store goes in this run's own directory unless the test names one.
    if (yamlTopLevel(yaml, 'state_dir') === undefined) yaml += '\nstate_dir: state\n';
    port = portOf(yamlTopLevel(yaml, 'address'));
    redirectPort = portOf(yamlTopLevel(yaml, 'http_redirect_addr'));
  } else {
    const cfg = { ...config };
    // The state store goes in this run's own directory unless the test names one.
    if (cfg.state_dir === undefined) cfg.state_dir = 'state';
    if (!cfg.address) cfg.address = `127.0.0.1:${await freePort()}`;
    if (cfg.http_redirect_addr === undefined) cfg.http_redirect_addr = `127.0.0.1:${await freePort()}`;
    port = portOf(cfg.address);
    redirectPort = portOf(cfg.http_redirect_addr);
    yaml = toYaml(cfg);
  }
  if (!port) throw new Error('startGatehouse: config has no address with a port');
  const write = (rel, text) => {
    const target = path.join(dir, rel);
    mkdirSync(path.dirname(target), { recursive: true });
    writeFileSync(target, text);
  };
  for (const [rel, text] of Object.entries(files)) write(rel, text);
  // It holds secrets: readable by Gatehouse alone (serve refuses otherwise when backends run).
  writeFileSync(file, yaml, { mode: 0o600 });

  let output = '';
  const argv = [...wrap.slice(1), bin, 'serve', '--config', file, ...args];
  const child = spawn(wrap[0] ?? bin, wrap.length ? argv : argv.slice(1), {
    cwd: REPO_ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  child.stdout.on('data', (d) => { output += d.toString('utf8'); });
  child.stderr.on('data', (d) => { output += d.toString('utf8'); });
  let exited = null;
  const exitPromise = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      live.delete(child);
      resolve(exited);
    });
    child.on('error', (err) => {
      exited = { code: null, signal: null, error: String(err) };
      live.delete(child);
      resolve(exited);
    });
  });

  const stop = async () => {
    if (exited) return exited;
    try {
      process.kill(child.pid, 'SIGTERM');
    } catch {
      return exitPromise;
    }
    const timer = setTimeout(() => {
      try {
        process.kill(child.pid, 'SIGKILL');
      } catch {
        // gone
      }
      // Pingora's graceful stop waits its 5 s grace period, then stops the backends and
      // removes their firewall table: give it that, and a margin.
    }, 15_000);
    const result = await exitPromise;
    clearTimeout(timer);
    return result;
  };

  const deadline = Date.now() + readyTimeoutMs;
  let lastStatus = 0;
  for (;;) {
    if (exited) {
      throw new Error(`gatehouse exited before it was ready (${JSON.stringify(exited)}):\n--- config ${file}\n${yaml}--- output\n${output}`);
    }
    lastStatus = await healthOnce(port, 1_000);
    if (lastStatus === 200) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`gatehouse not healthy after ${readyTimeoutMs} ms (last status ${lastStatus}):\n--- config ${file}\n${yaml}--- output\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }

  return {
    pid: child.pid,
    port,
    redirectPort,
    dir,
    configFile: file,
    yaml,
    url: (host = 'localhost', p = '/') => `https://${host}:${port}${p}`,
    logs: () => output,
    write,
    exited: () => exited,
    stop,
  };
}

/**
 * `gatehouse check --config FILE`. Pass a path, or YAML text (written to a temp
 * `gatehouse.yaml`). `env` is added to (not replacing) the current environment unless
 * `{ clean: true }`: then only PATH/HOME plus `env` are passed.
 */
export function runCheck(configPathOrText, env = {}, { clean = false, bin = gatehouseBin() } = {}) {
  let file = configPathOrText;
  if (configPathOrText.includes('\n')) {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'gatehouse-check-'));
    file = path.join(dir, 'gatehouse.yaml');
    writeFileSync(file, configPathOrText);
  }
  const baseEnv = clean ? { PATH: process.env.PATH, HOME: process.env.HOME } : process.env;
  const r = spawnSync(bin, ['check', '--config', file], {
    cwd: REPO_ROOT,
    env: { ...baseEnv, ...env },
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, file };
}
