// The upstream of bench/streams.sh: plain HTTP on loopback. GET /events is a server-sent event
// stream that sends one event per second from when it opens, each `id: SEQ` and
// `data: STREAM SEQ SENT_MS`; it counts the events it sent per stream. GET /stats is that count
// as JSON ({ open, opened, sent, streams: { STREAM: sent } }). Anything else: 200 "ok\n" (the
// sign-in lands on /).
//
//   node bench/sse-upstream.mjs PORT [INTERVAL_MS]

import http from 'node:http';

const port = Number(process.argv[2]);
const interval = Number(process.argv[3] ?? 1000);
if (!port) {
  console.error('usage: node bench/sse-upstream.mjs PORT [INTERVAL_MS]');
  process.exit(2);
}

const sent = new Map(); // stream id -> events sent
let open = 0;
let opened = 0;
let total = 0;

const server = http.createServer((req, res) => {
  const path = req.url.split('?')[0];
  if (path === '/events') {
    const id = ++opened;
    open++;
    sent.set(id, 0);
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    // A comment at once, so the client knows the stream is open (and its id).
    res.write(`: stream ${id}\n\n`);
    let seq = 0;
    const timer = setInterval(() => {
      seq++;
      res.write(`id: ${seq}\ndata: ${id} ${seq} ${Date.now()}\n\n`);
      sent.set(id, seq);
      total++;
    }, interval);
    let closed = false;
    const done = () => {
      if (closed) return;
      closed = true;
      clearInterval(timer);
      open--;
    };
    req.on('close', done);
    res.on('close', done);
    return;
  }
  if (path === '/stats') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ open, opened, sent: total, streams: Object.fromEntries(sent) }));
    return;
  }
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '3' });
  res.end('ok\n');
});
server.keepAliveTimeout = 0; // no idle timeout of its own on Gatehouse's/nginx's pooled connections
server.headersTimeout = 0;
server.requestTimeout = 0;
server.listen(port, '127.0.0.1', () => console.error(`sse-upstream on 127.0.0.1:${port}, one event per ${interval} ms`));
