// The capabilities a root Gatehouse with a backend pool needs (issue 14), measured: Gatehouse
// runs under `setpriv` with exactly the set docs/confinement.md lists ("Capabilities") as its
// bounding set, no inheritable ones and no_new_privs (a systemd unit's CapabilityBoundingSet=
// and NoNewPrivileges=yes), and a person's whole backend flow works: sign-in, their own
// OpenCode under their own uid, an agent shell command, egress refused, idle stop, a second
// start in the existing home, a clean shutdown. Then one capability less: the start fails
// with a page and a log line saying why, and nothing runs unconfined.
// Run as root (CI does); uses the host's uid range 62000-62099 and an nftables table.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';

import { agentShell, viaClient } from '../harness/agent.mjs';
import { A, backendProcesses, backendStack, eventually, homeOf, processesOf, signedIn, SUPERVISOR_CAPABILITIES as MINIMAL } from '../harness/backends.mjs';
import { startLlm } from '../harness/llm.mjs';

const IS_ROOT = process.getuid?.() === 0;
const HAS_SETPRIV = existsSync('/usr/bin/setpriv');

const BIT = { chown: 0, dac_read_search: 2, fowner: 3, kill: 5, setgid: 6, setuid: 7, net_bind_service: 10, net_admin: 12 };

/** setpriv: `caps` as the bounding set (so root's permitted and effective sets), nothing inheritable, no_new_privs. */
const underSetpriv = (caps) => ['setpriv', `--bounding-set=-all${caps.map((c) => `,+${c}`).join('')}`, '--inh-caps=-all', '--no-new-privs'];

function statusOf(pid) {
  const st = readFileSync(`/proc/${pid}/status`, 'latin1');
  const field = (name) => new RegExp(`^${name}:\\s+(\\S+)`, 'm').exec(st)?.[1];
  return { eff: BigInt(`0x${field('CapEff')}`), prm: BigInt(`0x${field('CapPrm')}`), bnd: BigInt(`0x${field('CapBnd')}`), inh: BigInt(`0x${field('CapInh')}`), nnp: field('NoNewPrivs') };
}

/** A free port below 1024 on 127.0.0.1 (binding it needs CAP_NET_BIND_SERVICE). */
async function privilegedPort() {
  for (let port = 900 + Math.floor(Math.random() * 50); port < 1000; port += 1) {
    const free = await new Promise((resolve) => {
      const srv = net.createServer();
      srv.once('error', () => resolve(false));
      srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error('no free port in 900-999');
}

/** Plain HTTP GET to 127.0.0.1:port with a Host header: { status, location }. */
function httpGet(port, host, p = '/') {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: p, headers: { host }, agent: false, timeout: 5_000 }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode, location: res.headers.location }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

const shell = (s, c, command) => agentShell(viaClient(c, s.origin), command, { literal: true });
const backendLog = (s) => s.gh.main.logs().split('\n').filter((l) => /backend|firewall|nft|launch|reap/i.test(l)).slice(-8).join('\n');

describe('a root Gatehouse under exactly the minimal capabilities, with no_new_privs', { skip: (!IS_ROOT && 'needs root (per-person uids, nftables)') || (!HAS_SETPRIV && 'needs setpriv (util-linux)') }, () => {
  let llm;
  let s;
  let redirectPort;
  before(async () => {
    llm = await startLlm();
    redirectPort = await privilegedPort();
    s = await backendStack(llm, { idle_timeout: '4s' }, {}, { http_redirect_addr: `127.0.0.1:${redirectPort}` }, { wrap: underSetpriv(MINIMAL) });
  });
  after(async () => {
    await s?.stop();
    await llm?.close();
  });

  test('Gatehouse holds exactly the set, nothing inheritable, and no_new_privs', () => {
    const want = MINIMAL.reduce((m, c) => m | (1n << BigInt(BIT[c])), 0n);
    const st = statusOf(s.gh.main.pid);
    assert.equal(st.eff.toString(16), want.toString(16), 'effective');
    assert.equal(st.prm.toString(16), want.toString(16), 'permitted');
    assert.equal(st.bnd.toString(16), want.toString(16), 'bounding');
    assert.equal(st.inh, 0n, 'inheritable');
    assert.equal(st.nnp, '1', 'no_new_privs');
  });

  test('the redirect listener holds a port below 1024 (CAP_NET_BIND_SERVICE)', async () => {
    const r = await httpGet(redirectPort, A, '/x');
    assert.ok(r.status >= 300 && r.status < 400, `redirect: ${r.status}`);
    assert.match(r.location ?? '', /^https:\/\/assistant\.localhost/);
  });

  test("a person's backend starts under their own uid, confined, stops when idle and starts again", async () => {
    const alice = await signedIn(s, 'alice');
    const first = await shell(s, alice, 'id -u; id -G; cat /proc/self/status | grep -E "^(CapEff|NoNewPrivs)"');
    const [uid, groups] = first.output.trim().split('\n');
    assert.equal(Number(uid), statSync(homeOf(s, 'alice')).uid, 'the shell runs as the owner of the home');
    assert.ok(Number(uid) >= 62000 && Number(uid) <= 62099, `uid ${uid} in the pool's range`);
    assert.equal(groups.trim(), uid, 'no supplementary groups');
    assert.match(first.output, /CapEff:\s+0+\n/, 'the backend holds no capability');
    assert.match(first.output, /NoNewPrivs:\s+1/);
    assert.equal(statSync(homeOf(s, 'alice')).mode & 0o777, 0o700, 'a private home (CAP_CHOWN, CAP_FOWNER)');

    // Egress: the static upstream on loopback is refused at once (CAP_NET_ADMIN's table).
    const upstream = new URL(s.upstream.url).port;
    const probe = await shell(s, alice, `s=$(date +%s%N); if timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/${upstream}' 2>/dev/null; then r=OPEN; else r=REFUSED; fi; echo "$r $(( ($(date +%s%N) - s) / 1000000 ))ms"`);
    const m = /^(OPEN|REFUSED) (\d+)ms/m.exec(probe.output);
    assert.ok(m, probe.output);
    assert.equal(m[1], 'REFUSED', 'loopback was reachable from the agent shell');
    assert.ok(Number(m[2]) < 2000, `refused only after ${m[2]} ms`);

    // Idle stop: SIGTERM to the group (CAP_KILL), then the reaper as the uid (CAP_SETUID).
    await eventually('the idle stop took every process of the uid', () => processesOf(Number(uid)).length === 0, { timeoutMs: 30_000 });
    await eventually('the idle stop is logged', () => /backend stopped.*reason="?idle/.test(s.gh.main.logs()));

    // Again, in the home that is now the person's (opened by root: CAP_DAC_READ_SEARCH).
    const again = await shell(s, alice, 'id -u');
    assert.equal(again.output.trim(), uid, `second start:\n${backendLog(s)}`);
    assert.doesNotMatch(s.gh.main.logs(), /EPERM|Operation not permitted|cannot be prepared/, backendLog(s));
  });

  test('SIGTERM stops every backend and removes the firewall table', async () => {
    const bob = await signedIn(s, 'bob');
    const uid = Number((await shell(s, bob, 'id -u')).output.trim());
    const exit = await s.gh.main.stop();
    assert.equal(exit.code, 0, `exit ${JSON.stringify(exit)}\n${backendLog(s)}`);
    assert.deepEqual(processesOf(uid), [], "processes of bob's uid outlived Gatehouse");
    assert.doesNotMatch(execFileSync('nft', ['list', 'tables'], { encoding: 'utf8' }), /gatehouse_62000_62099/);
  });
});

describe('one capability less', { skip: (!IS_ROOT && 'needs root (per-person uids, nftables)') || (!HAS_SETPRIV && 'needs setpriv (util-linux)') }, () => {
  let llm;
  before(async () => {
    llm = await startLlm();
  });
  after(async () => {
    await llm?.close();
  });

  test('without CAP_SETUID the person gets a page saying their assistant is not available, and nothing runs', async () => {
    const s = await backendStack(llm, {}, {}, {}, { wrap: underSetpriv(MINIMAL.filter((c) => c !== 'setuid')) });
    try {
      const alice = await signedIn(s, 'alice');
      const api = await alice.request(s.gh.main.url(A, '/global/health'), { headers: { accept: 'application/json' }, timeoutMs: 90_000 });
      assert.equal(api.status, 503, api.body.slice(0, 300));
      assert.match(api.body, /setresuid|not available|failed/i);
      // A browser first sees the page that reloads itself while the start is tried again
      // (after a backoff), then the failure.
      const page = await eventually('the browser is told the assistant is not available', async () => {
        const r = await alice.get(s.gh.main.url(A, '/'), { headers: { accept: 'text/html' } });
        return r.status === 503 && /Your assistant is not available/.test(r.body) && r;
      }, { timeoutMs: 30_000, everyMs: 500 });
      assert.match(page.body, /Your assistant could not be started\. Try again, or tell the operator\./);
      assert.match(s.gh.main.logs(), /backend failed to start.*gatehouse backend-launch: setresuid: EPERM/);
      // Nothing of the pool runs: not as root, not as any uid.
      assert.deepEqual(backendProcesses(s.dataRoot), []);
      for (let uid = 62000; uid <= 62099; uid += 1) assert.deepEqual(processesOf(uid), [], `uid ${uid}`);
    } finally {
      await s.stop();
    }
  });

  test('without CAP_NET_ADMIN Gatehouse refuses to start and says nftables cannot be used', async () => {
    await assert.rejects(
      backendStack(llm, {}, {}, {}, { wrap: underSetpriv(MINIMAL.filter((c) => c !== 'net_admin')) }),
      (e) => {
        assert.match(e.message, /exited before it was ready/);
        assert.match(e.message, /nftables cannot be used: .*Operation not permitted/);
        assert.match(e.message, /confinement: best_effort/);
        return true;
      },
    );
  });
});
