// The LLM relay (issue 12): what a relayed provider request costs in Gatehouse. Run by
// bench/relay.sh (see there).
//
// A person's backend is started (the real OpenCode) with the relay configured and a key
// added; then, as the backend's own uid (the relay checks the caller's socket), a small
// client alternates keep-alive requests to the stand-in LLM directly and through the relay
// (`POST /p/fake/chat/completions`, non-streaming, the same body), ROUNDS × N each. The
// difference of the medians (and of the p99s) is the time the relay adds: token lookup,
// sock_diag, allow-list, rate limit, key, one more loopback hop. Target: under 1 ms.

import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';

import { A, allowOf, backendProcesses, backendStack } from '../tests/harness/backends.mjs';
import { freePort } from '../tests/harness/gatehouse.mjs';
import { startLlm } from '../tests/harness/llm.mjs';

const ROUNDS = Number(process.env.ROUNDS ?? 5);
const N = Number(process.env.N ?? 400);

// The client, run as the backend's uid: alternates direct and relayed batches.
const CLIENT = `
const http = require('node:http');
const [relayPort, llmPort, token, rounds, n] = process.argv.slice(1);
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const body = JSON.stringify({ model: 'fake-model', stream: false, messages: [{ role: 'user', content: 'hi' }] });
function once(port, path, auth) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const req = http.request({ host: '127.0.0.1', port, path, method: 'POST', agent,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), authorization: 'Bearer ' + auth } }, (res) => {
      res.resume();
      res.on('end', () => res.statusCode === 200 ? resolve(Number(process.hrtime.bigint() - t0) / 1e6) : reject(new Error('status ' + res.statusCode)));
    });
    req.on('error', reject);
    req.end(body);
  });
}
(async () => {
  const direct = [], relayed = [];
  for (let i = 0; i < 50; i++) { await once(llmPort, '/v1/chat/completions', 'x'); await once(relayPort, '/p/fake/chat/completions', token); }
  for (let r = 0; r < Number(rounds); r++) {
    for (let i = 0; i < Number(n); i++) direct.push(await once(llmPort, '/v1/chat/completions', 'x'));
    for (let i = 0; i < Number(n); i++) relayed.push(await once(relayPort, '/p/fake/chat/completions', token));
  }
  process.stdout.write(JSON.stringify({ direct, relayed }));
})().catch((e) => { console.error(e.message); process.exit(1); });
`;

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};
const f = (x) => `${x.toFixed(3)} ms`;

const llm = await startLlm();
const relayPort = await freePort();
const s = await backendStack(
  llm,
  {
    relay: { providers: { fake: { style: 'openai', base_url: llm.url } }, rate_limit: 1000000 },
    // The bench's client runs as the backend's uid and also calls the stand-in directly.
    egress: { allow: [allowOf(llm.url)] },
  },
  { allow_any_authenticated_user: true },
  { relay_address: `127.0.0.1:${relayPort}` },
);
try {
  const c = s.client();
  await c.login('alice', 'alice-pass', s.gh.main.url(A, '/.gatehouse/'));
  const put = await c.request(s.gh.main.url(A, '/.gatehouse/api/providers/fake'), {
    method: 'PUT',
    headers: { 'content-type': 'application/json', origin: s.origin },
    body: JSON.stringify({ key: 'sk-bench-0000' }),
  });
  if (put.status !== 200) throw new Error(`adding the key: ${put.status} ${put.body}`);
  const health = await c.get(s.gh.main.url(A, '/global/health'), { timeoutMs: 90_000, headers: { accept: 'application/json' } });
  if (health.status !== 200) throw new Error(`starting the backend: ${health.status}\n${s.gh.main.logs().slice(-3000)}`);
  const [backend] = backendProcesses(s.dataRoot);
  const env = readFileSync(`/proc/${backend.pid}/environ`, 'latin1').split('\0');
  const config = JSON.parse(env.find((e) => e.startsWith('OPENCODE_CONFIG_CONTENT=')).slice(24));
  const token = config.provider.fake.options.apiKey;
  const llmPort = new URL(llm.url).port;
  const out = await new Promise((resolve, reject) => {
    const p = spawn('setpriv', ['--reuid', String(backend.uid), '--regid', String(backend.uid), '--clear-groups', process.execPath, '-e', CLIENT, String(relayPort), llmPort, token, String(ROUNDS), String(N)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let text = '';
    p.stdout.on('data', (d) => { text += d; });
    p.on('exit', (code) => (code === 0 ? resolve(JSON.parse(text)) : reject(new Error(`client exited ${code}`))));
  });
  const d50 = pct(out.direct, 50), r50 = pct(out.relayed, 50);
  const d99 = pct(out.direct, 99), r99 = pct(out.relayed, 99);
  console.log(`requests: ${out.direct.length} direct, ${out.relayed.length} relayed (keep-alive, one at a time, as uid ${backend.uid})`);
  console.log(`direct to the stand-in:   p50 ${f(d50)}  p99 ${f(d99)}`);
  console.log(`through the relay:        p50 ${f(r50)}  p99 ${f(r99)}`);
  console.log(`added by the relay:       p50 ${f(r50 - d50)}  p99 ${f(r99 - d99)}   (target: under 1 ms)`);
} finally {
  await s.stop();
  await llm.close();
}
