// The clients of bench/idle.sh: N keep-alive connections over TLS (HTTP/1.1), each makes one
// signed-in request (GET /, must answer 200 "ok\n"), then stays open and idle.
//
//   node bench/idle-clients.mjs --port 8443 --host assistant.localhost --ca ca.crt \
//     --cookie '_pomerium=…' --n 10000 --addrs 4 --concurrency 100 --hold 90
//
// Connects --concurrency at a time, from source addresses 127.0.0.1 … 127.0.0.ADDRS in turn,
// prints `READY ok=… failed=…` on stdout once every connection has had its answer (or failed),
// then holds them --hold seconds, never sending another byte. Every connection the server
// closes meanwhile is noted with how long it had been idle. At the end: `RESULT {json}`.

import tls from 'node:tls';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

const { values: o } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string', default: 'assistant.localhost' },
    ca: { type: 'string' },
    cookie: { type: 'string', default: '' },
    n: { type: 'string', default: '10000' },
    addrs: { type: 'string', default: '1' },
    concurrency: { type: 'string', default: '100' },
    hold: { type: 'string', default: '90' },
  },
});
const port = Number(o.port);
const n = Number(o.n);
const addrs = Array.from({ length: Math.max(1, Number(o.addrs)) }, (_, i) => `127.0.0.${i + 1}`);
const ca = readFileSync(o.ca);
const request = Buffer.from(
  `GET / HTTP/1.1\r\nHost: ${o.host}:${port}\r\nUser-Agent: gatehouse-idle-bench\r\n` +
  (o.cookie ? `Cookie: ${o.cookie}\r\n` : '') + '\r\n',
);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const conns = [];
let stopping = false;

function connect(i) {
  return new Promise((resolve) => {
    const c = { idleSince: 0, closedAfter: null, failed: null, extra: 0, sock: null };
    conns.push(c);
    const done = (why) => {
      if (why && !c.failed && !c.idleSince) c.failed = why;
      resolve();
    };
    const sock = tls.connect({
      host: '127.0.0.1', port, servername: o.host, ca, localAddress: addrs[i % addrs.length],
      ALPNProtocols: ['http/1.1'],
    });
    c.sock = sock;
    const timer = setTimeout(() => { done('no answer within 30 s'); sock.destroy(); }, 30_000);
    let buf = Buffer.alloc(0);
    sock.on('secureConnect', () => sock.write(request));
    sock.on('data', (chunk) => {
      if (c.idleSince) { c.extra += chunk.length; return; }
      buf = Buffer.concat([buf, chunk]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = buf.subarray(0, end).toString('latin1');
      const body = buf.subarray(end + 4);
      const status = Number(head.split(' ')[1]);
      const len = /\r\ncontent-length: *(\d+)/i.exec(head);
      const chunked = /\r\ntransfer-encoding: *chunked/i.test(head);
      let complete, text;
      if (len) {
        complete = body.length >= Number(len[1]);
        text = body.subarray(0, Number(len[1])).toString();
      } else if (chunked) {
        complete = body.includes('\r\n0\r\n\r\n') || body.toString().startsWith('0\r\n\r\n');
        text = body.toString().replace(/^[0-9a-f]+\r\n/i, '').replace(/\r\n0\r\n\r\n$/, '').replace(/\r\n$/, '');
      } else return;
      if (!complete) return;
      clearTimeout(timer);
      if (status !== 200 || text !== 'ok\n') {
        done(`status ${status}${status === 200 ? ` body ${JSON.stringify(text.slice(0, 20))}` : ''}`);
        sock.destroy();
        return;
      }
      if (/\r\nconnection: *close/i.test(head)) {
        done('server answered Connection: close');
        return;
      }
      c.idleSince = Date.now();
      done();
    });
    sock.on('error', (e) => { clearTimeout(timer); done(e.code ?? e.message); });
    sock.on('close', () => {
      clearTimeout(timer);
      if (c.idleSince && !stopping && c.closedAfter === null) c.closedAfter = (Date.now() - c.idleSince) / 1000;
      done('closed before the answer');
    });
  });
}

const t0 = Date.now();
let next = 0;
await Promise.all(Array.from({ length: Math.min(n, Number(o.concurrency)) }, async () => {
  while (next < n) await connect(next++);
}));
const ok = conns.filter((c) => c.idleSince).length;
const openSecs = (Date.now() - t0) / 1000;
console.error(`idle-clients: ${ok}/${n} connections answered and idle after ${openSecs.toFixed(1)} s`);
console.log(`READY ok=${ok} failed=${n - ok}`);

const readyAt = Date.now();
const timeline = [];
const holdUntil = readyAt + Number(o.hold) * 1000;
for (;;) {
  const open = conns.filter((c) => c.idleSince && c.closedAfter === null).length;
  timeline.push([Math.round((Date.now() - readyAt) / 1000), open]);
  if (Date.now() >= holdUntil) break;
  await sleep(Math.min(15_000, holdUntil - Date.now()));
  console.error(`idle-clients: ${Math.round((Date.now() - readyAt) / 1000)} s idle, ${conns.filter((c) => c.idleSince && c.closedAfter === null).length} open`);
}
stopping = true;
const closed = conns.filter((c) => c.closedAfter !== null).map((c) => c.closedAfter).sort((a, b) => a - b);
const reasons = {};
for (const c of conns) if (c.failed) reasons[c.failed] = (reasons[c.failed] ?? 0) + 1;
const result = {
  requested: n, ok, failed: n - ok, failures: reasons, open_seconds: Number(openSecs.toFixed(1)),
  hold: Number(o.hold), still_open: ok - closed.length, closed_by_server: closed.length,
  closed_after_s: closed.length ? { min: closed[0], median: closed[closed.length >> 1], max: closed.at(-1) } : null,
  unexpected_bytes: conns.reduce((a, c) => a + c.extra, 0), timeline,
};
console.log(`RESULT ${JSON.stringify(result)}`);
for (const c of conns) c.sock?.destroy();
process.exit(0);
