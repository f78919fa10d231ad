// The shipped image, run for real (issue 14): built from the Debian-made base with this
// checkout's debug binary (deploy/image/build.sh), started with rootful Podman in each of the
// two documented modes (README, "Container"), and used as a person would: sign in through the
// mapped 443, get their own OpenCode under their own uid, which maps to an unprivileged host
// uid. Needs root, podman, runc and mmdebstrap (tests/harness/install-deps.sh installs them).

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { agentShell, viaClient } from '../harness/agent.mjs';
import { eventually } from '../harness/backends.mjs';
import { makeCerts } from '../harness/certs.mjs';
import { Client, request } from '../harness/client.mjs';
import { buildImage, podman, podmanStatus, runContainer } from '../harness/container.mjs';
import { REPO_ROOT, freePort, toYaml } from '../harness/gatehouse.mjs';
import { startIdp } from '../harness/idp.mjs';
import { CLIENT_ID, newCookieSecret } from '../harness/stack.mjs';

const A = 'assistant.localhost';
const P = 'public.localhost';
// The persons' uids inside, and where the user namespace puts them on the host.
const UIDS = [200000, 200099];
const HOST_BASE = 1_000_000;
const USERNS = [`--uidmap=0:${HOST_BASE}:300000`, `--gidmap=0:${HOST_BASE}:300000`];
// The capabilities the supervisor needs with backends (docs/confinement.md).
const BACKEND_CAPS = ['NET_BIND_SERVICE', 'NET_ADMIN', 'SETUID', 'SETGID', 'CHOWN', 'FOWNER', 'DAC_READ_SEARCH', 'KILL'];
const SUFFIX = randomBytes(4).toString('hex');

test('the registry Dockerfile builds the same runtime image as the tested one', () => {
  const read = (f) => readFileSync(path.join(REPO_ROOT, f), 'utf8');
  const MARK = '# --- the runtime image';
  // Everything after the marker, except where the binaries come from.
  const runtime = (text) => text.slice(text.indexOf(MARK)).split('\n').filter((l) => !l.startsWith('COPY '));
  const tested = read('deploy/image/Dockerfile');
  const registry = read('deploy/Dockerfile');
  assert.ok(tested.includes(MARK) && registry.includes(MARK));
  assert.deepEqual(runtime(registry), runtime(tested));
  const copies = (text) => text.split('\n').filter((l) => l.startsWith('COPY --chmod')).map((l) => l.split(' ').at(-1));
  assert.deepEqual(copies(registry), copies(tested), 'the same binaries in the same places');
  // The same Debian packages in both bases.
  const built = /^PACKAGES="([^"]+)"/m.exec(read('deploy/image/build.sh'))[1].split(',');
  const installed = /AS base\n[^]*?apt-get install -y --no-install-recommends ([^\\&]+)/.exec(registry)[1].trim().split(/\s+/);
  assert.deepEqual(installed.sort(), built.sort());
});

describe('the image (podman, Debian-made base, debug binary)', { skip: process.getuid() !== 0 && 'needs root (rootful podman)' }, () => {
  let image;
  let idp;
  let certs;
  let dir;
  const ports = {};
  const secrets = { cookie_secret: newCookieSecret(), idp_client_secret: randomBytes(24).toString('base64url') };
  const made = { containers: [], secrets: [], volumes: [] };

  before(async () => {
    image = buildImage();
    dir = mkdtempSync(path.join(os.tmpdir(), 'gatehouse-image-e2e-'));
    certs = await makeCerts();
    for (const k of ['backends443', 'backends80', 'plain443', 'plain80']) ports[k] = await freePort();
    idp = await startIdp({
      clients: [{
        client_id: CLIENT_ID,
        client_secret: secrets.idp_client_secret,
        redirect_uris: [A, P].flatMap((h) => [ports.backends443, ports.plain443].map((p) => `https://${h}:${p}/.gatehouse/callback`)),
      }],
    });
    for (const [name, value] of Object.entries(secrets)) {
      const secret = `gatehouse-e2e-${SUFFIX}-${name}`;
      podmanStatus(['secret', 'rm', secret]);
      const file = path.join(dir, name);
      writeFileSync(file, value, { mode: 0o600 });
      podman(['secret', 'create', secret, file]);
      rmSync(file);
      made.secrets.push(secret);
    }
  });

  after(async () => {
    for (const c of made.containers) await c.stop();
    for (const s of made.secrets) podmanStatus(['secret', 'rm', s]);
    for (const v of made.volumes) podmanStatus(['volume', 'rm', '-f', v]);
    // The base stays cached for the next run; this image is made again each time.
    if (image) podmanStatus(['rmi', '-f', image]);
    await idp?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** A config directory and a certificate directory for one container, mounted read-only. */
  function configDirs(name, config) {
    const etc = path.join(dir, name, 'etc');
    const tls = path.join(dir, name, 'certs');
    mkdirSync(etc, { recursive: true });
    mkdirSync(tls, { recursive: true });
    writeFileSync(path.join(etc, 'config.yaml'), toYaml(config), { mode: 0o600 });
    copyFileSync(certs.cert, path.join(tls, 'tls.crt'));
    copyFileSync(certs.key, path.join(tls, 'tls.key'));
    chmodSync(path.join(tls, 'tls.key'), 0o600);
    // `U`: podman hands the files to the container's user (root inside = an unprivileged host uid).
    return [`--volume=${etc}:/etc/gatehouse:ro,U`, `--volume=${tls}:/etc/ssl/gatehouse:ro,U`];
  }

  const secretArgs = (user) =>
    Object.keys(secrets).map((k) => `--secret=gatehouse-e2e-${SUFFIX}-${k},target=${k},uid=${user},gid=${user},mode=0400`);

  const baseConfig = (extra) => ({
    address: '0.0.0.0:443',
    http_redirect_addr: '0.0.0.0:80',
    health_check_addr: '127.0.0.1:9090',
    certificate_file: '/etc/ssl/gatehouse/tls.crt',
    certificate_key_file: '/etc/ssl/gatehouse/tls.key',
    idp_provider: 'oidc',
    idp_provider_url: idp.issuer,
    idp_client_id: CLIENT_ID,
    idp_client_secret_file: '/run/secrets/idp_client_secret',
    cookie_secret_file: '/run/secrets/cookie_secret',
    allowed_domains: ['example.com'],
    state_dir: '/var/lib/gatehouse/state',
    ...extra,
  });

  async function start(name, { config, args, port443, port80 }) {
    const volume = `gatehouse-e2e-${SUFFIX}-${name}`;
    podman(['volume', 'create', volume]);
    made.volumes.push(volume);
    const ctr = await runContainer(image, {
      name: `gatehouse-e2e-${SUFFIX}-${name}`,
      idp,
      args: [
        `--publish=127.0.0.1:${port443}:443`,
        `--publish=127.0.0.1:${port80}:80`,
        `--volume=${volume}:/var/lib/gatehouse`,
        ...configDirs(name, config),
        ...args,
      ],
    });
    made.containers.push(ctr);
    await eventually(`${name}: the image's HEALTHCHECK says healthy`, () => ctr.health() === 0, { timeoutMs: 60_000, everyMs: 1000 })
      .catch((e) => { throw new Error(`${e.message}\n--- logs\n${ctr.logs()}`); });
    return ctr;
  }

  describe('with per-person backends: root inside a user namespace, the named capabilities', () => {
    let ctr;
    let c;
    before(async () => {
      ctr = await start('backends', {
        port443: ports.backends443,
        port80: ports.backends80,
        config: baseConfig({
          backends: {
            assistant: {
              command: ['/usr/local/bin/opencode', 'serve', '--hostname', '127.0.0.1', '--port', '{port}'],
              ports: '4101-4120',
              data_root: '/var/lib/gatehouse/backends',
              uids: `${UIDS[0]}-${UIDS[1]}`,
            },
          },
          routes: [{ from: `https://${A}`, to_backend: 'assistant' }],
        }),
        args: ['--user=0:0', ...USERNS, '--cap-drop=all', ...BACKEND_CAPS.map((cap) => `--cap-add=${cap}`), ...secretArgs(0)],
      });
    });

    test('port 80 (mapped) redirects to https', async () => {
      const r = await request(`http://${A}:${ports.backends80}/x?y=1`);
      assert.ok([301, 308].includes(r.status), `status ${r.status}`);
      assert.match(r.location, new RegExp(`^https://${A.replace('.', '\\.')}(:\\d+)?/x\\?y=1$`));
    });

    test('a person signs in through 443 (mapped) and works in their own OpenCode, under their own uid', async () => {
      const origin = `https://${A}:${ports.backends443}`;
      c = new Client({ ca: certs.caPem });
      const { response } = await c.login('alice', 'alice-pass', `${origin}/.gatehouse/`);
      assert.equal(response.status, 200, `signed in: ${response.status} ${response.body.slice(0, 300)}`);
      const r = await agentShell(viaClient(c, origin), 'id -u; id -G; pwd', { literal: true });
      assert.equal(r.exitCode, 0, r.output);
      const [uid, groups, pwd] = r.output.trim().split('\n');
      assert.ok(Number(uid) >= UIDS[0] && Number(uid) <= UIDS[1], `the agent runs as uid ${uid}`);
      assert.equal(groups, uid, 'no supplementary groups');
      assert.match(pwd, /^\/var\/lib\/gatehouse\/backends\/[0-9a-f]{32}\/workspace$/, 'the agent starts in the workspace');
      // Seen from the host, that uid is an unprivileged one of the user namespace.
      const server = ctr.top().find((p) => /opencode serve/.test(p.args) && p.user === uid);
      assert.ok(server, `the person's OpenCode in podman top:\n${JSON.stringify(ctr.top(), null, 1)}`);
      assert.equal(Number(server.huser), HOST_BASE + Number(uid), 'host uid = the namespace base + the uid inside');
      const gatehouse = ctr.top().find((p) => /gatehouse serve/.test(p.args));
      assert.equal(gatehouse.user, 'root');
      assert.equal(Number(gatehouse.huser), HOST_BASE, "the container's root is no root on the host");
    });

    test("the person's agent reads no secret, state or other home, and reaches no other loopback port", async () => {
      const origin = `https://${A}:${ports.backends443}`;
      const r = await agentShell(viaClient(c, origin), [
        'for f in /run/secrets/cookie_secret /run/secrets/idp_client_secret /etc/gatehouse/config.yaml /etc/ssl/gatehouse/tls.key; do cat "$f" >/dev/null 2>&1 && echo "READ $f" || echo "denied $f"; done',
        'ls /var/lib/gatehouse/state >/dev/null 2>&1 && echo "READ state" || echo "denied state"',
        'bash -c "echo > /dev/tcp/127.0.0.1/9090" 2>/dev/null && echo "REACHED health" || echo "blocked health"',
        'env | grep -ci secret || true',
      ].join('\n'), { literal: true });
      assert.doesNotMatch(r.output, /READ|REACHED/, r.output);
      assert.match(r.output, /denied \/run\/secrets\/cookie_secret/);
      assert.match(r.output, /blocked health/);
      assert.match(r.output.trim().split('\n').at(-1), /^0$/, 'no secret in the environment');
    });

    test('secrets from files never appear in the logs', () => {
      const logs = ctr.logs();
      if (process.env.GATEHOUSE_E2E_SHOW_LOGS) console.log(logs);
      assert.match(logs, /listening|ready|serving/i, 'the logs are there');
      for (const [k, v] of Object.entries(secrets)) assert.ok(!logs.includes(v), `${k} in the logs`);
    });

    test('after a restart the session still holds (state volume) and the backend starts again in its home', async () => {
      const origin = `https://${A}:${ports.backends443}`;
      const before = (await agentShell(viaClient(c, origin), 'echo kept > ~/.restart-mark; pwd', { literal: true })).output.trim();
      const r = podmanStatus(['restart', '-t', '20', ctr.name], { timeoutMs: 60_000 });
      assert.equal(r.code, 0, r.stderr);
      await ctr.forwardIdp();
      await eventually('healthy again', () => ctr.health() === 0, { timeoutMs: 60_000, everyMs: 1000 });
      const after = await agentShell(viaClient(c, origin), 'cat ~/.restart-mark; pwd; id -u', { literal: true });
      assert.equal(after.exitCode, 0, after.output);
      assert.match(after.output, /^kept\n/, 'the home survived, and the same cookie still signs alice in');
      assert.equal(after.output.split('\n')[1], before);
    });

    test('SIGTERM (podman stop) stops Gatehouse and its backends at once, through tini', () => {
      const t0 = Date.now();
      const r = podmanStatus(['stop', '-t', '20', ctr.name], { timeoutMs: 40_000 });
      assert.equal(r.code, 0, r.stderr);
      assert.ok(Date.now() - t0 < 15_000, `stopped in ${Date.now() - t0} ms`);
      assert.equal(ctr.inspect('{{.State.ExitCode}}'), '0', ctr.logs().slice(-2000));
    });
  });

  describe('without backends: the default non-root user, NET_BIND_SERVICE only', () => {
    let ctr;
    before(async () => {
      ctr = await start('plain', {
        port443: ports.plain443,
        port80: ports.plain80,
        config: baseConfig({
          routes: [{ from: `https://${P}`, to: 'http://127.0.0.1:9', allow_public_unauthenticated_access: true }],
        }),
        args: ['--cap-drop=all', '--cap-add=NET_BIND_SERVICE', ...secretArgs(10001)],
      });
    });

    test('runs as uid 10001 and answers on 443 (mapped)', async () => {
      const g = ctr.top().find((p) => /gatehouse serve/.test(p.args));
      assert.ok(g, JSON.stringify(ctr.top()));
      assert.equal(g.user, 'gatehouse');
      const r = await request(`https://${P}:${ports.plain443}/.gatehouse/readyz`, { ca: certs.caPem });
      assert.equal(r.status, 200, r.body);
      const up = await request(`https://${P}:${ports.plain443}/`, { ca: certs.caPem });
      assert.equal(up.status, 502, 'the public route answers (its upstream is down)');
    });

    test("the HEALTHCHECK's own command answers inside: gatehouse health --check alive", () => {
      const r = ctr.exec(['/usr/local/bin/gatehouse', 'health', '--config', '/etc/gatehouse/config.yaml', '--check', 'alive']);
      assert.equal(r.code, 0, r.stderr);
    });
  });
});
