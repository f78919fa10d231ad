// The tenancy boundary (issue 9), attacked from inside: every attempt is a command run by a
// person's own agent shell (OpenCode's POST /session/{id}/shell, through Gatehouse), as a
// prompt-injected agent would run it. Real OpenCode, real IdP, real TLS, nftables and
// Landlock. Run as root (CI does): each person's backend has a uid of their own.

import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { agentShell, viaClient } from '../harness/agent.mjs';
import { A, backendProcesses, backendStack, eventually, homeOf, processesOf, signedIn } from '../harness/backends.mjs';
import { startLlm } from '../harness/llm.mjs';

const IS_ROOT = process.getuid?.() === 0;

/** Runs `command` in the person's own agent shell, exactly as written; { output, exitCode }. */
const shell = (s, c, command) => agentShell(viaClient(c, s.origin), command, { literal: true });

/** The uid of the person's backend (the owner of their home). */
const uidOf = (s, sub) => statSync(homeOf(s, sub)).uid;

/** Starts two processes that outlive a process-group kill: a setsid'd one and a forker. */
const ESCAPE = 'setsid nohup sleep 10000 >/dev/null 2>&1 < /dev/null & '
  + "setsid sh -c 'while :; do sleep 1000 & sleep 0.2; done' >/dev/null 2>&1 < /dev/null & echo started";

/** `connect` to host:port from the shell with bash's /dev/tcp: prints OPEN or REFUSED and the ms it took. */
const probe = (host, port) => `s=$(date +%s%N); if timeout 5 bash -c 'exec 3<>/dev/tcp/${host}/${port}' 2>/dev/null; then r=OPEN; else r=REFUSED; fi; echo "$r $(( ($(date +%s%N) - s) / 1000000 ))ms"`;

function refusedFast(output, what) {
  const m = /^(OPEN|REFUSED) (\d+)ms/m.exec(output);
  assert.ok(m, `${what}: ${output}`);
  assert.equal(m[1], 'REFUSED', `${what} was reachable from the agent shell`);
  assert.ok(Number(m[2]) < 2000, `${what} was refused only after ${m[2]} ms (a drop, not a reject)`);
}

describe('the tenancy boundary, from the person\'s own agent shell', { skip: !IS_ROOT && 'needs root (per-person uids, nftables)' }, () => {
  let llm;
  let s;
  let alice;
  let bob;
  const metricsPort = 31990 + Math.floor(Math.random() * 9);

  before(async () => {
    llm = await startLlm();
    s = await backendStack(
      llm,
      { idle_timeout: '1h', stop_on_sign_out: true, limits: { processes: 300, memory: '6G', open_files: 2048 } },
      {},
      // The metrics listener is one more loopback service a backend must not reach.
      { metrics_address: `127.0.0.1:${metricsPort}` },
    );
    alice = await signedIn(s, 'alice');
    bob = await signedIn(s, 'bob');
  });
  after(async () => {
    await s?.stop();
    await llm?.close();
  });

  test('the shell runs as the person\'s own uid, with the pool\'s limits, killed before Gatehouse', async () => {
    const r = await shell(s, alice, 'id -u; id -G; ulimit -u; ulimit -d; ulimit -n; ulimit -c; cat /proc/self/oom_score_adj; umask; echo "$TMPDIR"');
    const [uid, groups, nproc, data, nofile, core, oom, umask, tmpdir] = r.output.trim().split('\n');
    assert.equal(Number(uid), uidOf(s, 'alice'));
    assert.notEqual(Number(uid), 0);
    assert.equal(groups.trim(), uid, 'only the person\'s own group, no supplementary ones');
    assert.equal(nproc, '300');
    assert.equal(Number(data) * 1024, 6 * 2 ** 30, 'ulimit -d is in KiB');
    assert.equal(nofile, '2048');
    assert.equal(core, '0');
    assert.equal(umask, '0077');
    assert.equal(tmpdir, `${homeOf(s, 'alice')}/.tmp`);
    const gatehouseOom = Number(readFileSync(`/proc/${s.gh.main.pid}/oom_score_adj`, 'utf8'));
    assert.ok(Number(oom) > gatehouseOom, `backend oom_score_adj ${oom} <= Gatehouse's ${gatehouseOom}`);
  });

  test('Gatehouse\'s environment and memory are closed to the shell', async () => {
    // stderr joins stdout in the command itself: OpenCode's shell output may not carry it.
    const r = await shell(s, alice, `cat /proc/${s.gh.main.pid}/environ 2>&1; echo "rc=$?"; cat /proc/${s.gh.main.pid}/maps 2>&1 >/dev/null; echo "rc=$?"`);
    assert.match(r.output, /Permission denied/);
    assert.doesNotMatch(r.output, /rc=0/);
    assert.doesNotMatch(r.output, /COOKIE|SECRET|PATH=/);
  });

  test('loopback services, the metrics listener and another backend\'s port are refused at once', async () => {
    // Bob's backend, so there is another person's port to try.
    const b = await shell(s, bob, 'echo "$GATEHOUSE_BACKEND_PORT"');
    const bobPort = Number(b.output.trim());
    const upstream = new URL(s.upstream.url);
    for (const [what, host, port] of [
      ['the static upstream (which trusts X-Pomerium-* headers)', '127.0.0.1', upstream.port],
      ['the metrics listener', '127.0.0.1', metricsPort],
      ['bob\'s backend', '127.0.0.1', bobPort],
      ['Gatehouse itself', '127.0.0.1', new URL(s.origin).port],
      ['loopback over IPv6', '::1', bobPort],
      ['another loopback address', '127.0.0.2', upstream.port],
    ]) {
      refusedFast((await shell(s, alice, probe(host, port))).output, what);
    }
    // The header spoof itself, as curl would send it: no answer at all.
    const spoof = await shell(s, alice, `curl -sS -m 5 -H 'X-Pomerium-Claim-Email: bob@example.com' http://127.0.0.1:${upstream.port}/ ; echo "rc=$?"`);
    assert.doesNotMatch(spoof.output, /bob@example\.com/);
    assert.match(spoof.output, /rc=7/, spoof.output);
  });

  test('what the pool allows is reachable, and DNS still resolves', async () => {
    const llmUrl = new URL(llm.url);
    const models = await shell(s, alice, `curl -sS -m 5 ${llm.url}/models`);
    assert.match(models.output, /fake-model/, `the stand-in LLM at ${llmUrl.host} (egress.allow)`);
    const own = await shell(s, alice, `curl -s -o /dev/null -w '%{http_code}' -m 5 http://127.0.0.1:$GATEHOUSE_BACKEND_PORT/global/health`);
    assert.equal(own.output.trim(), '401', 'its own port answers (without the password, 401)');
    const resolver = /^nameserver\s+(\S+)/m.exec(readFileSync('/etc/resolv.conf', 'utf8'))?.[1];
    assert.ok(resolver, 'the machine has a resolver');
    const dns = await shell(s, alice, `getent ahostsv4 deb.debian.org >/dev/null; echo "rc=$?"`);
    const here = await new Promise((r) => import('node:dns').then((d) => d.lookup('deb.debian.org', { family: 4 }, (e) => r(!e))));
    if (here) assert.match(dns.output, /rc=0/, `DNS through ${resolver} from the shell: ${dns.output}`);
  });

  test('holding every pool port fails, and bob\'s backend still starts', async () => {
    const first = Number((await shell(s, alice, 'echo "$GATEHOUSE_BACKEND_PORT"')).output.trim());
    const ports = Array.from({ length: 10 }, (_, i) => first - (first % 10) + i);
    const hold = ports
      .map((p) => `node -e "require('net').createServer().listen(${p},'127.0.0.1').on('error',e=>{console.log('${p}',e.code);process.exit()}).on('listening',()=>{console.log('${p} BOUND');process.exit()})"`)
      .join('; ');
    const r = await shell(s, alice, hold);
    const bound = r.output.split('\n').filter((l) => l.endsWith('BOUND'));
    assert.deepEqual(bound, [], `alice's agent bound pool ports: ${r.output}`);
    assert.match(r.output, /EACCES/);
    // Bob's backend starts anew meanwhile and gets a port of the pool.
    const before = backendProcesses(s.dataRoot).find((p) => p.uid === uidOf(s, 'bob'));
    const page = await bob.get(s.gh.main.url(A, '/.gatehouse/'));
    const token = /action="\/\.gatehouse\/backend\/restart"><input type="hidden" name="csrf_token" value="([^"]+)"/.exec(page.body)?.[1];
    const restarted = await bob.post(s.gh.main.url(A, '/.gatehouse/backend/restart'), { csrf_token: token, pool: 'assistant' }, { headers: { origin: s.origin } });
    assert.ok(restarted.status < 400, `bob's restart: ${restarted.status}`);
    const again = await shell(s, bob, 'id -u; echo "$GATEHOUSE_BACKEND_PORT"');
    const [uid, port] = again.output.trim().split('\n').map(Number);
    assert.equal(uid, uidOf(s, 'bob'));
    assert.ok(ports.includes(port), `bob's port ${port} is one of the pool's`);
    const now = backendProcesses(s.dataRoot).find((p) => p.uid === uid);
    assert.notEqual(now?.pid, before?.pid, 'bob\'s backend was started anew');
  });

  for (const how of ['the Restart button', 'sign-out (stop_on_sign_out)', 'SIGTERM to Gatehouse']) {
    test(`a setsid'd process and a forking one are gone after ${how}`, async () => {
      const escaped = await shell(s, alice, ESCAPE);
      assert.match(escaped.output, /started/);
      const uid = uidOf(s, 'alice');
      await eventually('the escaped processes run', () => processesOf(uid).length >= 4);
      if (how === 'the Restart button') {
        const page = await alice.get(s.gh.main.url(A, '/.gatehouse/'));
        const token = /action="\/\.gatehouse\/backend\/restart"><input type="hidden" name="csrf_token" value="([^"]+)"/.exec(page.body)?.[1];
        const r = await alice.post(s.gh.main.url(A, '/.gatehouse/backend/restart'), { csrf_token: token, pool: 'assistant' }, { headers: { origin: s.origin } });
        assert.ok(r.status < 400, `restart: ${r.status}`);
        // The new backend is alice's uid again; nothing of the old one is left.
        await eventually('only the new backend runs as alice', () => {
          const procs = backendProcesses(s.dataRoot).filter((p) => p.uid === uid);
          const all = processesOf(uid);
          return procs.length === 1 && all.every((pid) => !/sleep/.test(readFileSync(`/proc/${pid}/cmdline`, 'latin1')));
        });
      } else if (how === 'sign-out (stop_on_sign_out)') {
        const page = await alice.get(s.gh.main.url(A, '/.gatehouse/'));
        const token = /name="csrf_token" value="([^"]+)"/.exec(page.body)?.[1];
        const r = await alice.post(s.gh.main.url(A, '/.gatehouse/sign_out'), { csrf_token: token });
        assert.ok(r.status < 400, `sign-out: ${r.status}`);
        await eventually('every process of alice\'s uid is gone', () => processesOf(uid).length === 0);
        alice = await signedIn(s, 'alice');
      } else {
        await s.gh.main.stop();
        assert.deepEqual(processesOf(uid), [], 'processes of alice\'s uid outlived Gatehouse');
        if (existsSync(homeOf(s, 'bob'))) {
          assert.deepEqual(processesOf(uidOf(s, 'bob')), [], 'processes of bob\'s uid outlived Gatehouse');
        }
        const tables = await import('node:child_process').then((cp) => cp.execFileSync('nft', ['list', 'tables'], { encoding: 'utf8' }));
        const logs = s.gh.main.logs().split('\n').filter((l) => /backend|firewall|nft|stopp/i.test(l)).slice(-8).join('\n');
        assert.doesNotMatch(tables, /gatehouse_62000_62099/, `the firewall table is removed at shutdown; the log's end:\n${logs}`);
      }
    });
  }
});

describe('idle stop, and a link planted in the home', { skip: !IS_ROOT && 'needs root (per-person uids)' }, () => {
  let llm;
  let s;
  let target;
  before(async () => {
    llm = await startLlm();
    s = await backendStack(llm, { idle_timeout: '3s' });
    target = mkdtempSync(path.join(os.tmpdir(), 'gatehouse-root-owned-'));
  });
  after(async () => {
    await s?.stop();
    await llm?.close();
    rmSync(target, { recursive: true, force: true });
  });

  test('a setsid\'d process and a forking one are gone after the idle stop', async () => {
    const alice = await signedIn(s, 'alice');
    assert.match((await shell(s, alice, ESCAPE)).output, /started/);
    const uid = uidOf(s, 'alice');
    await eventually('the escaped processes run', () => processesOf(uid).length >= 4);
    await eventually('the idle stop took every process of alice\'s uid', () => processesOf(uid).length === 0, { timeoutMs: 30_000 });
    await eventually('the idle stop is logged', () => /backend stopped.*reason="?idle/.test(s.gh.main.logs()));
  });

  test('a link planted in the home is refused with a clear page and log line, and its target stays root\'s', async () => {
    let alice = await signedIn(s, 'alice');
    const r = await shell(s, alice, `rm -rf ~/.local && ln -s ${target} ~/.local && ls -ld ~/.local`);
    assert.match(r.output, /\.local -> /);
    const page = await alice.get(s.gh.main.url(A, '/.gatehouse/'));
    const token = /action="\/\.gatehouse\/backend\/restart"><input type="hidden" name="csrf_token" value="([^"]+)"/.exec(page.body)?.[1];
    await alice.post(s.gh.main.url(A, '/.gatehouse/backend/restart'), { csrf_token: token, pool: 'assistant' }, { headers: { origin: s.origin } });
    const refused = await eventually('the start is refused', async () => {
      const res = await alice.get(s.gh.main.url(A, '/'), { headers: { accept: 'text/html' } });
      return res.status === 503 && res;
    }, { timeoutMs: 30_000 });
    assert.match(refused.body, /home/i, s.gh.main.logs().split('\n').filter((l) => /backend/.test(l)).slice(-6).join('\n'));
    assert.match(refused.body, /\.local is a link/);
    assert.match(s.gh.main.logs(), /\.local is a link/);
    const st = statSync(target);
    assert.equal(st.uid, 0, 'the link\'s target changed owner');
    assert.deepEqual(readdirSync(target), [], 'something was made through the link');
    alice = null;
  });

  test('SIGINT to Gatehouse (its fast shutdown) also ends every process of a backend\'s uid', async () => {
    const bob = await signedIn(s, 'bob');
    assert.match((await shell(s, bob, ESCAPE)).output, /started/);
    const uid = uidOf(s, 'bob');
    await eventually('the escaped processes run', () => processesOf(uid).length >= 4);
    process.kill(s.gh.main.pid, 'SIGINT');
    await eventually('Gatehouse exited', () => !existsSync(`/proc/${s.gh.main.pid}/status`) || /^State:\s+Z/m.test(readFileSync(`/proc/${s.gh.main.pid}/status`, 'latin1')));
    assert.deepEqual(processesOf(uid), [], 'processes of bob\'s uid outlived a SIGINT');
  });
});
