// The Gatehouse image in tests: build it (deploy/image/build.sh, with the debug binary), run
// it with rootful Podman, and reach the test IdP from inside it.
//
//   const image = buildImage();                       // 'localhost/gatehouse:e2e'
//   const ctr = await runContainer(image, { name, args, idp });   // ctr.exec(...), ctr.logs(), ctr.stop()

import { execFileSync, spawn, spawnSync } from 'node:child_process';
import path from 'node:path';

import { REPO_ROOT, gatehouseBin } from './gatehouse.mjs';

export const CONTAINERS_CONF = process.env.CONTAINERS_CONF || path.join(REPO_ROOT, 'deploy/image/containers.conf');
const ENV = { ...process.env, CONTAINERS_CONF };

/** `podman ARGS…`: stdout, or throws with stderr. */
export function podman(args, { input, timeoutMs = 120_000 } = {}) {
  return execFileSync('podman', args, { env: ENV, input, timeout: timeoutMs, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
}

/** `podman ARGS…` → { code, stdout, stderr }, never throws. */
export function podmanStatus(args, { timeoutMs = 60_000 } = {}) {
  try {
    return { code: 0, stdout: podman(args, { timeoutMs }), stderr: '' };
  } catch (e) {
    return { code: e.status ?? -1, stdout: String(e.stdout ?? ''), stderr: String(e.stderr ?? e.message) };
  }
}

/** Builds the image from the Debian-made base with this checkout's gatehouse binary. */
export function buildImage(tag = 'localhost/gatehouse:e2e') {
  execFileSync(path.join(REPO_ROOT, 'deploy/image/build.sh'), ['--gatehouse', gatehouseBin(), '--tag', tag], {
    env: ENV,
    stdio: ['ignore', 'inherit', 'inherit'],
    timeout: 600_000,
  });
  return tag;
}

/**
 * `podman run -d` the image; then, when `idp` is given, makes the IdP's loopback issuer work
 * inside: the IdP also listens on the container network's gateway, and a forwarder in the
 * container's network namespace carries its 127.0.0.1:<port> there.
 */
export async function runContainer(image, { name, args = [], idp, cmd = [] }) {
  podmanStatus(['rm', '-f', '-v', name]);
  podman(['run', '-d', '--name', name, '--health-interval', 'disable', ...args, image, ...cmd]);
  const ctr = {
    name,
    inspect: (format) => podman(['inspect', '-f', format, name]).trim(),
    /** What the container wrote (Gatehouse logs to stderr), both streams. */
    logs: () => {
      const r = spawnSync('podman', ['logs', name], { env: ENV, encoding: 'utf8', timeout: 30_000 });
      return `${r.stdout ?? ''}${r.stderr ?? ''}`;
    },
    exec: (argv, opts = {}) => podmanStatus(['exec', ...(opts.user ? ['--user', opts.user] : []), name, ...argv]),
    health: () => podmanStatus(['healthcheck', 'run', name]).code,
    /** [{ user, huser, args }] of the container's processes, from `podman top`. */
    top: () =>
      podman(['top', name, 'user', 'huser', 'args'])
        .trim()
        .split('\n')
        .slice(1)
        .map((line) => {
          const [user, huser, ...rest] = line.trim().split(/\s+/);
          return { user, huser, args: rest.join(' ') };
        }),
    forwarder: null,
    /** (Again, after a restart: a new network namespace.) See runContainer. */
    forwardIdp: async (provider = idp) => {
      ctr.forwarder?.kill('SIGTERM');
      const pid = ctr.inspect('{{.State.Pid}}');
      const gateway = ctr.inspect('{{.NetworkSettings.Gateway}}');
      if (!pid || pid === '0' || !gateway) throw new Error(`container ${name} is not running (pid ${pid}, gateway ${gateway}):\n${ctr.logs()}`);
      await provider.alsoListen(gateway);
      const child = spawn('nsenter', [`--net=/proc/${pid}/ns/net`, process.execPath, path.join(REPO_ROOT, 'tests/harness/forward.mjs'), '127.0.0.1', String(provider.port), gateway, String(provider.port)], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      ctr.forwarder = child;
      await new Promise((resolve, reject) => {
        child.stdout.once('data', resolve);
        child.once('exit', (code) => reject(new Error(`forwarder exited (${code})`)));
      });
    },
    stop: async () => {
      ctr.forwarder?.kill('SIGTERM');
      podmanStatus(['stop', '-t', '10', name], { timeoutMs: 30_000 });
      podmanStatus(['rm', '-f', '-v', name]);
    },
  };
  if (idp) await ctr.forwardIdp(idp);
  return ctr;
}
