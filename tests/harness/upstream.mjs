// Echo upstream on 127.0.0.1: answers every request with 200 JSON {method, url, headers}
// (header names lower-cased), or, for `Accept: text/html`, a page greeting the signed-in
// person and listing the headers it received. `/sse` sends 5 events 200 ms apart
// (`/sse?n=50&every=100`: 50 events, 100 ms apart).
// A WebSocket upgrade (any path) is accepted with a real handshake, and then every byte
// received is echoed back (no framing needed: a proxy only relays the bytes).
// `/set-cookie` answers like any other path but also sets the cookies `_pomerium=evil`,
// `_pomerium_login=evil` and `app=1` (to check Gatehouse strips its own names).
//
//   const up = await startUpstream();   // { url, port, hits(), last(), requests, reset(), close() }
//   node tests/harness/upstream.mjs --port 4096

import { createHash } from 'node:crypto';
import http from 'node:http';
import { pathToFileURL } from 'node:url';

const escapeHtml = (s) =>
  String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);

function htmlPage(req) {
  const email = req.headers['x-pomerium-claim-email'];
  const rows = Object.entries(req.headers)
    .map(([k, v]) => `<tr><th>${escapeHtml(k)}</th><td><code>${escapeHtml(v)}</code></td></tr>`)
    .join('\n');
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>Echo upstream</title>
<style>body{font-family:system-ui,sans-serif;margin:2rem}td,th{text-align:left;padding:.2rem .6rem;vertical-align:top}code{word-break:break-all}</style>
</head><body>
<h1 id="hello">Hello ${escapeHtml(email ?? 'anonymous')}</h1>
<p>${escapeHtml(req.method)} <code>${escapeHtml(req.url)}</code> reached the upstream behind Gatehouse.</p>
<h2>Headers received</h2>
<table id="headers">${rows}</table>
<p><a href="/.gatehouse/">Your Gatehouse session</a></p>
</body></html>`;
}

export async function startUpstream({ port = 0, host = '127.0.0.1' } = {}) {
  const state = { hits: 0, last: null, requests: [] };

  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const headers = {};
      for (const [k, v] of Object.entries(req.headers)) headers[k.toLowerCase()] = v;
      const record = { method: req.method, url: req.url, headers, body: Buffer.concat(chunks).toString('utf8') };
      state.hits += 1;
      state.last = record;
      state.requests.push(record);

      if (req.url === '/sse' || req.url.startsWith('/sse?')) {
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
        const q = new URL(req.url, 'http://upstream').searchParams;
        const count = Math.min(Number(q.get('n')) || 5, 10_000);
        const every = Math.min(Math.max(Number(q.get('every')) || 200, 10), 60_000);
        let n = 0;
        const timer = setInterval(() => {
          n += 1;
          res.write(`id: ${n}\nevent: tick\ndata: ${JSON.stringify({ n, t: Date.now() })}\n\n`);
          if (n >= count) {
            clearInterval(timer);
            res.end();
          }
        }, every);
        res.on('close', () => clearInterval(timer));
        return;
      }

      const extra = {};
      if (req.url === '/set-cookie' || req.url.startsWith('/set-cookie?')) {
        extra['set-cookie'] = ['_pomerium=evil; Path=/', '_pomerium_login=evil; Path=/', 'app=1; Path=/'];
      }

      if ((req.headers.accept || '').includes('text/html')) {
        const body = htmlPage(req);
        res.writeHead(200, { ...extra, 'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(body) });
        res.end(body);
        return;
      }

      const body = JSON.stringify({ method: req.method, url: req.url, headers });
      res.writeHead(200, { ...extra, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  });

  const upgraded = new Set();
  server.on('upgrade', (req, socket, head) => {
    state.hits += 1;
    const key = req.headers['sec-websocket-key'] ?? '';
    const accept = createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
    if (head?.length) socket.write(head);
    upgraded.add(socket);
    socket.on('data', (d) => socket.write(d));
    socket.on('error', () => {});
    socket.on('close', () => upgraded.delete(socket));
  });

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  const actualPort = server.address().port;

  return {
    port: actualPort,
    url: `http://${host}:${actualPort}`,
    hits: () => state.hits,
    last: () => state.last,
    get requests() {
      return state.requests;
    },
    reset: () => {
      state.hits = 0;
      state.last = null;
      state.requests.length = 0;
    },
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections?.();
        for (const sock of upgraded) sock.destroy();
        server.close(() => resolve());
      }),
  };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const i = process.argv.indexOf('--port');
  const port = i > 0 ? Number(process.argv[i + 1]) : 4096;
  const up = await startUpstream({ port });
  console.log(`echo upstream listening on ${up.url}`);
  const stop = async () => {
    await up.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
