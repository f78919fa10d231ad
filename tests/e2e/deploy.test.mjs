// The shipped deployment files (issue 14): the two systemd units verify with systemd-analyze
// and give what docs/confinement.md measured; their example configs, and the compose file's,
// pass `gatehouse check` with the secrets as files (systemd credentials, Docker secrets); the
// compose file parses with docker-compose. Backends' checks need root (uids), as CI runs.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, cpSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';

import { OPENCODE, SUPERVISOR_CAPABILITIES } from '../harness/backends.mjs';
import { makeCerts } from '../harness/certs.mjs';
import { gatehouseBin, REPO_ROOT, runCheck } from '../harness/gatehouse.mjs';

const IS_ROOT = process.getuid?.() === 0;
const DEPLOY = path.join(REPO_ROOT, 'deploy');
const has = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
const run = (cmd, args, opts = {}) => spawnSync(cmd, args, { encoding: 'utf8', timeout: 60_000, ...opts });
const tmp = (name) => mkdtempSync(path.join(os.tmpdir(), `gatehouse-deploy-${name}-`));

/** `Key=value` lines of a unit file's [Service] section: { key: [values] }. */
function serviceSettings(text) {
  const section = /^\[Service\]\n([\s\S]*?)(?=^\[|(?![\s\S]))/m.exec(text)?.[1] ?? '';
  const out = {};
  for (const line of section.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
    if (m) (out[m[1]] ??= []).push(m[2]);
  }
  return out;
}

const capsOf = (value) => value.split(/\s+/).filter(Boolean).sort();
const CAP = (c) => `CAP_${c.toUpperCase()}`;

/** A unit copied to a temp dir with /usr/local/bin/gatehouse replaced by the built binary. */
function unitCopy(name, extra = '') {
  const dir = tmp('unit');
  const file = path.join(dir, name);
  const text = readFileSync(path.join(DEPLOY, 'systemd', name), 'utf8').replaceAll('/usr/local/bin/gatehouse', gatehouseBin());
  writeFileSync(file, text.replace('[Install]', `${extra}[Install]`));
  return file;
}

/** `systemd-analyze verify`: { status, about } where `about` are the output lines naming the unit. */
function verify(file) {
  const r = run('systemd-analyze', ['verify', file]);
  const name = path.basename(file);
  const about = `${r.stdout}\n${r.stderr}`.split('\n').filter((l) => l.includes(name));
  return { status: r.status, about, output: `${r.stdout}${r.stderr}` };
}

/** A temp directory with the secrets as one file each (mode 0600), and a certificate pair. */
async function secretFiles() {
  const dir = tmp('secrets');
  chmodSync(dir, 0o700);
  const keygen = run(gatehouseBin(), ['keygen']);
  assert.equal(keygen.status, 0, keygen.stderr);
  const value = (k) => new RegExp(`^${k}: (\\S+)$`, 'm').exec(keygen.stdout)?.[1];
  const secrets = { cookie_secret: value('cookie_secret'), signing_key: value('signing_key'), idp_client_secret: 'placeholder-client-secret' };
  for (const [k, v] of Object.entries(secrets)) writeFileSync(path.join(dir, k), `${v}\n`, { mode: 0o600 });
  const certs = await makeCerts();
  copyFileSync(certs.cert, path.join(dir, 'tls.crt'));
  copyFileSync(certs.key, path.join(dir, 'tls.key'));
  chmodSync(path.join(dir, 'tls.key'), 0o600);
  return dir;
}

/** The config with production paths replaced (each must occur: the examples keep them). */
function rewritten(text, replacements) {
  let out = text;
  for (const [from, to] of replacements) {
    assert.ok(out.includes(from), `the example config names ${from}`);
    out = out.replaceAll(from, to);
  }
  return out;
}

/** Where the unit's or container's /var/lib/gatehouse stands in, with its mode. */
function stateStandIn(mode) {
  const dir = tmp('state');
  chmodSync(dir, mode);
  return dir;
}

describe('systemd units', { skip: !has('systemd-analyze') && 'needs systemd-analyze (systemd)' }, () => {
  for (const name of ['gatehouse.service', 'gatehouse-backends.service']) {
    test(`${name}: systemd-analyze verify passes with no word about the unit`, (t) => {
      const r = verify(unitCopy(name));
      assert.equal(r.status, 0, r.output);
      assert.deepEqual(r.about, [], r.output);
      const sec = run('systemd-analyze', ['security', '--offline=true', unitCopy(name)]);
      const score = /Overall exposure level for \S+: (.*)$/m.exec(sec.stdout)?.[1];
      if (score) t.diagnostic(`systemd-analyze security: ${score}`);
    });
  }

  test('verify does speak up about a unit it finds wrong (the check above can fail)', () => {
    // It still exits 0 for a value it ignores: hence the check on the lines.
    const r = verify(unitCopy('gatehouse.service', 'ProtectSystem=sometimes\n'));
    assert.ok(r.about.some((l) => /protect system value/i.test(l)), r.output);
  });

  test('gatehouse.service: a dynamic user with CAP_NET_BIND_SERVICE alone, secrets as credentials', () => {
    const s = serviceSettings(readFileSync(path.join(DEPLOY, 'systemd/gatehouse.service'), 'utf8'));
    assert.deepEqual(s.DynamicUser, ['yes']);
    assert.deepEqual(capsOf(s.CapabilityBoundingSet.join(' ')), ['CAP_NET_BIND_SERVICE']);
    assert.deepEqual(capsOf(s.AmbientCapabilities.join(' ')), ['CAP_NET_BIND_SERVICE']);
    assert.deepEqual(s.NoNewPrivileges, ['yes']);
    assert.deepEqual(s.StateDirectory, ['gatehouse']);
    assert.deepEqual(s.ProtectSystem, ['strict']);
    assert.match(s.ExecStartPre?.[0] ?? '', /gatehouse check --config \/etc\/gatehouse\/config\.yaml/);
    assert.match(s.ExecReload?.[0] ?? '', /kill -HUP \$MAINPID/);
  });

  test('gatehouse-backends.service: root with exactly the measured capabilities, backends stop with it', () => {
    const s = serviceSettings(readFileSync(path.join(DEPLOY, 'systemd/gatehouse-backends.service'), 'utf8'));
    assert.deepEqual(s.User, ['root']);
    assert.equal(s.DynamicUser, undefined);
    assert.equal(s.PrivateUsers, undefined);
    assert.deepEqual(capsOf(s.CapabilityBoundingSet.join(' ')), SUPERVISOR_CAPABILITIES.map(CAP).sort());
    assert.deepEqual(s.NoNewPrivileges, ['yes'], 'measured to work: tests/e2e/capabilities.test.mjs');
    assert.deepEqual(s.KillMode, ['mixed']);
    assert.deepEqual(s.OOMPolicy, ['continue'], "an OOM-killed backend must not stop the service");
    assert.deepEqual(s.StateDirectoryMode, ['0711'], "the pool's uids pass through to their homes");
    assert.equal(s.MemoryDenyWriteExecute, undefined, "the agents' node needs JIT memory");
  });

  for (const [unit, config] of [['gatehouse.service', 'config.yaml'], ['gatehouse-backends.service', 'config-backends.yaml']]) {
    test(`${unit} loads every credential ${config} reads`, () => {
      const s = serviceSettings(readFileSync(path.join(DEPLOY, 'systemd', unit), 'utf8'));
      const loaded = (s.LoadCredential ?? []).map((v) => v.split(':')[0]).sort();
      const read = [...readFileSync(path.join(DEPLOY, 'systemd', config), 'utf8').matchAll(/\$\{CREDENTIALS_DIRECTORY\}\/([\w.]+)/g)].map((m) => m[1]);
      assert.ok(read.length >= 3, `${config} reads its secrets from credentials`);
      assert.deepEqual([...new Set(read)].sort(), loaded);
    });
  }
});

describe('example configs pass gatehouse check with the secrets as files', () => {
  test('deploy/systemd/config.yaml, with a CREDENTIALS_DIRECTORY', async () => {
    const creds = await secretFiles();
    const file = path.join(DEPLOY, 'systemd/config.yaml');
    const ok = runCheck(file, { CREDENTIALS_DIRECTORY: creds }, { clean: true });
    assert.equal(ok.code, 0, `${ok.stdout}${ok.stderr}`);
    assert.match(ok.stdout, /OK \(1 route/);
    const without = runCheck(file, {}, { clean: true });
    assert.notEqual(without.code, 0);
    assert.match(without.stderr, /`CREDENTIALS_DIRECTORY` is not set \(used in cookie_secret_file\)/);
  });

  test('deploy/systemd/config-backends.yaml, in a stand-in for the unit\'s StateDirectory', { skip: !IS_ROOT && 'needs root (a pool with uids)' }, async () => {
    const creds = await secretFiles();
    const mode = Number.parseInt(serviceSettings(readFileSync(path.join(DEPLOY, 'systemd/gatehouse-backends.service'), 'utf8')).StateDirectoryMode[0], 8);
    const check = (stateMode) => {
      const state = stateStandIn(stateMode);
      mkdirSync(path.join(state, 'tls'), { mode: 0o700 });
      for (const f of ['tls.crt', 'tls.key']) copyFileSync(path.join(creds, f), path.join(state, 'tls', f));
      const text = rewritten(readFileSync(path.join(DEPLOY, 'systemd/config-backends.yaml'), 'utf8'), [
        ['/etc/gatehouse/tls/', `${state}/tls/`],
        ['/var/lib/gatehouse/', `${state}/`],
        ['command: [opencode,', `command: [${OPENCODE},`],
      ]);
      const file = path.join(state, 'config.yaml');
      writeFileSync(file, text, { mode: 0o600 });
      return runCheck(file, { CREDENTIALS_DIRECTORY: creds }, { clean: true });
    };
    const ok = check(mode);
    assert.equal(ok.code, 0, `${ok.stdout}${ok.stderr}`);
    // 0700 (systemd's default StateDirectoryMode) would lock the persons out of their homes.
    const closed = check(0o700);
    assert.notEqual(closed.code, 0);
    assert.match(closed.stderr, /data_root: the backends' uids cannot reach .* is mode 0700/);
  });

  test('deploy/compose/config.yaml, with Docker secrets and the image\'s paths', { skip: !IS_ROOT && 'needs root (a pool with uids)' }, async () => {
    const secrets = await secretFiles();
    // The image's /var/lib/gatehouse is 0755.
    const state = stateStandIn(0o755);
    const text = rewritten(readFileSync(path.join(DEPLOY, 'compose/config.yaml'), 'utf8'), [
      ['/run/secrets/', `${secrets}/`],
      ['/etc/ssl/gatehouse/', `${secrets}/`],
      ['/var/lib/gatehouse/', `${state}/`],
      ['command: [opencode,', `command: [${OPENCODE},`],
    ]);
    const file = path.join(state, 'config.yaml');
    writeFileSync(file, text, { mode: 0o600 });
    const ok = runCheck(file, {}, { clean: true });
    assert.equal(ok.code, 0, `${ok.stdout}${ok.stderr}`);
  });
});

describe('docker-compose.yml', { skip: !has('docker-compose') && 'needs docker-compose (tests/harness/install-deps.sh installs it)' }, () => {
  /** The compose file and its config dir copied to a temp dir, with placeholder secrets and certificates. */
  function composeDir({ secrets = true } = {}) {
    const dir = tmp('compose');
    copyFileSync(path.join(DEPLOY, 'docker-compose.yml'), path.join(dir, 'docker-compose.yml'));
    cpSync(path.join(DEPLOY, 'compose'), path.join(dir, 'compose'), { recursive: true });
    mkdirSync(path.join(dir, 'tls'));
    mkdirSync(path.join(dir, 'secrets'));
    if (secrets) for (const k of ['cookie_secret', 'idp_client_secret', 'signing_key']) writeFileSync(path.join(dir, 'secrets', k), 'placeholder\n', { mode: 0o400 });
    return dir;
  }
  const compose = (dir, ...args) => run('docker-compose', ['-f', path.join(dir, 'docker-compose.yml'), ...args], { cwd: dir, env: { PATH: process.env.PATH, HOME: process.env.HOME } });

  test('docker-compose config -q accepts it', () => {
    const r = compose(composeDir(), 'config', '-q');
    assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
  });

  test('it runs the image as root with the measured capabilities, its secrets, certificates and a state volume', () => {
    const dir = composeDir();
    const r = compose(dir, 'config');
    assert.equal(r.status, 0, r.stderr);
    const out = r.stdout;
    const list = (key) => {
      const m = new RegExp(`^    ${key}:\\n((?:    - .*\\n)+)`, 'm').exec(out);
      return m ? m[1].split('\n').filter(Boolean).map((l) => l.replace(/^\s*- /, '').replace(/^source: /, '')) : [];
    };
    assert.match(out, /^ {4}image: localhost\/gatehouse:latest$/m);
    assert.match(out, /^ {4}user: ['"]?0:0['"]?$/m);
    assert.deepEqual(list('cap_drop'), ['ALL']);
    assert.deepEqual(list('cap_add').sort(), SUPERVISOR_CAPABILITIES.map((c) => c.toUpperCase()).sort(), 'exactly the measured set');
    const volumes = list('volumes');
    for (const target of ['/etc/gatehouse:ro', '/etc/ssl/gatehouse:ro', 'gatehouse-state:/var/lib/gatehouse']) {
      assert.ok(volumes.some((v) => v.includes(target)), `a volume ${target} in ${volumes.join(', ')}`);
    }
    assert.match(out, /^volumes:\n {2}gatehouse-state:/m);
    // Every secret the config reads from /run/secrets is one the service gets.
    const read = [...readFileSync(path.join(DEPLOY, 'compose/config.yaml'), 'utf8').matchAll(/\/run\/secrets\/(\w+)/g)].map((m) => m[1]).sort();
    assert.ok(read.length >= 3);
    assert.deepEqual(list('secrets').sort(), read);
    for (const name of read) assert.match(out, new RegExp(`^ {2}${name}:\\n {4}file: ${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/secrets/${name}$`, 'm'));
  });
});
