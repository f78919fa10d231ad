// The clients of bench/streams.sh: N server-sent event streams over TLS (HTTP/1.1, one
// connection each), held open, every event counted per stream and checked against what the
// upstream (bench/sse-upstream.mjs) says it sent.
//
//   node bench/sse-clients.mjs --port 8443 --host assistant.localhost --ca ca.crt \
//     --cookie '_pomerium=…' --n 1000 --addrs 4 --hold 610 --stats http://127.0.0.1:PORT/stats
//
// Opens the streams (--concurrency at a time, source addresses 127.0.0.1 … 127.0.0.ADDRS in
// turn), prints `READY opened=… failed=…` on stdout when every stream is open or has failed,
// holds them --hold seconds (a progress line on stderr every 30 s), then asks the upstream
// how many events it sent on each stream (time T), waits --grace seconds for the events in
// flight, and prints `RESULT {json}` on stdout: events sent before T, how many of them arrived,
// gaps, streams that failed or ended early, event latency (upstream write to client read).

import http from 'node:http';
import https from 'node:https';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

const { values: o } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string', default: 'assistant.localhost' },
    path: { type: 'string', default: '/events' },
    ca: { type: 'string' },
    cookie: { type: 'string', default: '' },
    n: { type: 'string', default: '1000' },
    addrs: { type: 'string', default: '1' },
    concurrency: { type: 'string', default: '50' },
    hold: { type: 'string', default: '60' },
    grace: { type: 'string', default: '2' },
    interval: { type: 'string', default: '1000' },
    stats: { type: 'string' },
  },
});
const port = Number(o.port);
const n = Number(o.n);
const addrs = Array.from({ length: Math.max(1, Number(o.addrs)) }, (_, i) => `127.0.0.${i + 1}`);
const ca = readFileSync(o.ca);
const interval = Number(o.interval);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const streams = [];
const latency = new Uint32Array(60_001); // 1 ms buckets, the last one is ≥ 60 s
let stopping = false;

function openStream(i) {
  return new Promise((resolve) => {
    const s = { i, sid: 0, status: 0, received: 0, lastSeq: 0, gaps: 0, openedAt: 0, ended: null, req: null };
    streams.push(s);
    const fail = (why) => {
      if (!s.ended && !stopping) s.ended = why;
      resolve();
    };
    const req = https.request({
      host: '127.0.0.1', port, path: o.path, method: 'GET', servername: o.host, ca,
      localAddress: addrs[i % addrs.length], agent: false,
      headers: {
        host: `${o.host}:${port}`, accept: 'text/event-stream', 'cache-control': 'no-cache',
        connection: 'keep-alive', ...(o.cookie ? { cookie: o.cookie } : {}),
      },
    });
    s.req = req;
    const openTimer = setTimeout(() => { fail('no response within 30 s'); req.destroy(); }, 30_000);
    req.on('response', (res) => {
      s.status = res.statusCode;
      if (res.statusCode !== 200) {
        clearTimeout(openTimer);
        res.resume();
        fail(`status ${res.statusCode}`);
        return;
      }
      res.setEncoding('utf8');
      let buf = '';
      res.on('data', (chunk) => {
        buf += chunk;
        let k;
        while ((k = buf.indexOf('\n\n')) >= 0) {
          const ev = buf.slice(0, k);
          buf = buf.slice(k + 2);
          if (ev.startsWith(': stream ')) {
            s.sid = Number(ev.slice(9));
            s.openedAt = Date.now();
            clearTimeout(openTimer);
            resolve();
            continue;
          }
          const data = ev.split('\n').find((l) => l.startsWith('data: '));
          if (!data) continue;
          const [, seq, sentMs] = data.slice(6).split(' ').map(Number);
          if (seq > s.lastSeq + 1) s.gaps += seq - s.lastSeq - 1;
          s.lastSeq = Math.max(s.lastSeq, seq);
          s.received++;
          latency[Math.min(60_000, Math.max(0, Date.now() - sentMs))]++;
        }
      });
      res.on('close', () => fail('closed before the end'));
    });
    req.on('error', (e) => { clearTimeout(openTimer); fail(e.code ?? e.message); });
    req.end();
  });
}

function percentile(p) {
  let total = 0;
  for (const c of latency) total += c;
  if (!total) return null;
  let seen = 0;
  for (let ms = 0; ms < latency.length; ms++) {
    seen += latency[ms];
    if (seen >= total * p) return ms;
  }
  return latency.length - 1;
}

const t0 = Date.now();
let next = 0;
await Promise.all(Array.from({ length: Math.min(n, Number(o.concurrency)) }, async () => {
  while (next < n) await openStream(next++);
}));
const opened = streams.filter((s) => s.sid && !s.ended).length;
console.error(`sse-clients: ${opened}/${n} streams open after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
console.log(`READY opened=${opened} failed=${n - opened}`);

const holdUntil = Date.now() + Number(o.hold) * 1000;
while (Date.now() < holdUntil) {
  await sleep(Math.min(30_000, holdUntil - Date.now()));
  const live = streams.filter((s) => s.sid && !s.ended).length;
  const got = streams.reduce((a, s) => a + s.received, 0);
  console.error(`sse-clients: ${Math.round((Date.now() - t0) / 1000)} s, ${live} open, ${got} events received`);
}

const stats = await new Promise((resolve, reject) => {
  http.get(o.stats, (res) => {
    let body = '';
    res.on('data', (c) => (body += c));
    res.on('end', () => resolve(JSON.parse(body)));
  }).on('error', reject);
});
const T = Date.now();
await sleep(Number(o.grace) * 1000);
const snap = streams.map((s) => ({ ...s, req: null }));
stopping = true;
for (const s of streams) s.req?.destroy();

const reasons = {};
let sent = 0, delivered = 0, beyond = 0, gaps = 0, nominal = 0, short = 0, endedEarly = 0;
for (const s of snap) {
  if (s.ended) reasons[s.ended] = (reasons[s.ended] ?? 0) + 1;
  if (!s.sid) continue;
  if (s.ended) endedEarly++;
  const sentT = stats.streams[s.sid] ?? 0;
  sent += sentT;
  delivered += Math.min(s.received, sentT);
  beyond += Math.max(0, s.received - sentT);
  if (s.received < sentT) short++;
  gaps += s.gaps;
  nominal += Math.floor((T - s.openedAt) / interval);
}
const result = {
  requested: n, opened: snap.filter((s) => s.sid).length, ended_early: endedEarly, failures: reasons,
  sent, delivered, missing: sent - delivered, streams_short: short, gaps, arrived_after_T: beyond,
  nominal, latency_ms: { p50: percentile(0.5), p99: percentile(0.99), max: percentile(1) },
  upstream_open_at_T: stats.open,
};
console.log(`RESULT ${JSON.stringify(result)}`);
process.exit(0);
