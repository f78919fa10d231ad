// Transport: several certificates chosen by SNI, HTTP/2 by ALPN, the self-signed certificate
// made at start when none is configured, and server-sent events passed through unbuffered.

import assert from 'node:assert/strict';
import http2 from 'node:http2';
import tls from 'node:tls';
import { after, before, test } from 'node:test';

import { makeCerts } from '../harness/certs.mjs';
import { startGatehouse } from '../harness/gatehouse.mjs';
import { loopbackLookup } from '../harness/client.mjs';
import { newCookieSecret } from '../harness/stack.mjs';
import { startUpstream } from '../harness/upstream.mjs';

let upstream;
let certA;
let certB;
let gh;
let selfSigned;

function baseConfig(extra) {
  return {
    idp_provider: 'oidc',
    idp_provider_url: 'http://127.0.0.1:9',
    idp_client_id: 'gatehouse',
    idp_client_secret: 'unused-here',
    cookie_secret: newCookieSecret(),
    routes: [
      { from: 'https://assistant.localhost', to: upstream.url, allow_public_unauthenticated_access: true },
      { from: 'https://public.localhost', to: upstream.url, allow_public_unauthenticated_access: true },
    ],
    ...extra,
  };
}

before(async () => {
  upstream = await startUpstream();
  // Two certificates from two different CAs, one per host.
  certA = await makeCerts(undefined, { hosts: ['assistant.localhost'], ips: [] });
  certB = await makeCerts(undefined, { hosts: ['public.localhost'], ips: [] });
  gh = await startGatehouse(baseConfig({
    certificates: [{ cert: certA.cert, key: certA.key }, { cert: certB.cert, key: certB.key }],
  }));
  selfSigned = await startGatehouse(baseConfig({}));
});

after(async () => {
  await gh?.stop();
  await selfSigned?.stop();
  await upstream?.close();
});

/** Completes a TLS handshake and returns the peer certificate and ALPN protocol. */
function handshake(port, { servername, ca, alpn = ['http/1.1'] }) {
  return new Promise((resolve, reject) => {
    const sock = tls.connect({ host: '127.0.0.1', port, servername, ca, ALPNProtocols: alpn, rejectUnauthorized: Boolean(ca) }, () => {
      const cert = sock.getPeerCertificate();
      const proto = sock.alpnProtocol;
      sock.end();
      resolve({ cert, proto });
    });
    sock.on('error', reject);
  });
}

test('each host gets its own certificate by SNI, and each verifies against its own CA', async () => {
  const a = await handshake(gh.port, { servername: 'assistant.localhost', ca: certA.caPem });
  assert.match(a.cert.subjectaltname, /DNS:assistant\.localhost/);
  const b = await handshake(gh.port, { servername: 'public.localhost', ca: certB.caPem });
  assert.match(b.cert.subjectaltname, /DNS:public\.localhost/);
  await assert.rejects(handshake(gh.port, { servername: 'public.localhost', ca: certA.caPem }), 'B is not signed by A');
});

test('a client without SNI gets the first configured certificate', async () => {
  const r = await handshake(gh.port, { servername: '' });
  assert.match(r.cert.subjectaltname, /DNS:assistant\.localhost/);
});

test('HTTP/2 is negotiated by ALPN and requests are proxied over it', async () => {
  const before = upstream.hits();
  const client = http2.connect(`https://public.localhost:${gh.port}`, { ca: certB.caPem, lookup: loopbackLookup });
  try {
    const { status, body, alpn } = await new Promise((resolve, reject) => {
      const req = client.request({ ':path': '/over-h2', accept: 'application/json' });
      let data = '';
      let status = 0;
      req.on('response', (h) => { status = h[':status']; });
      req.setEncoding('utf8');
      req.on('data', (d) => { data += d; });
      req.on('end', () => resolve({ status, body: data, alpn: client.alpnProtocol }));
      req.on('error', reject);
      req.end();
    });
    assert.equal(alpn, 'h2');
    assert.equal(status, 200);
    assert.equal(JSON.parse(body).url, '/over-h2');
    assert.equal(upstream.hits(), before + 1);
  } finally {
    client.close();
  }
});

test('HTTP/1.1 still works on the same port', async () => {
  const r = await handshake(gh.port, { servername: 'public.localhost', ca: certB.caPem, alpn: ['http/1.1'] });
  assert.equal(r.proto, 'http/1.1');
});

test('with no certificate configured, a self-signed one for the route hosts is served, with a warning', async () => {
  const r = await handshake(selfSigned.port, { servername: 'assistant.localhost' });
  assert.match(r.cert.subjectaltname, /DNS:assistant\.localhost/);
  assert.match(r.cert.subjectaltname, /DNS:public\.localhost/);
  assert.match(selfSigned.logs(), /self-signed/);
  await assert.rejects(handshake(selfSigned.port, { servername: 'assistant.localhost', ca: certA.caPem }), 'not from a trusted CA');
});

test('server-sent events pass through unbuffered: each event arrives as the upstream sends it', async () => {
  const client = http2.connect(`https://public.localhost:${gh.port}`, { ca: certB.caPem, lookup: loopbackLookup });
  try {
    const arrivals = await new Promise((resolve, reject) => {
      const req = client.request({ ':path': '/sse', accept: 'text/event-stream' });
      const seen = [];
      req.setEncoding('utf8');
      let buf = '';
      req.on('data', (d) => {
        buf += d;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const ev = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = ev.split('\n').find((l) => l.startsWith('data: '));
          if (data) seen.push({ sentAt: JSON.parse(data.slice(6)).t, gotAt: Date.now() });
        }
      });
      req.on('end', () => resolve(seen));
      req.on('error', reject);
      req.end();
    });
    assert.equal(arrivals.length, 5);
    // The upstream sends one event every 200 ms. Buffering would hold events back until
    // later ones were written; unbuffered, each reaches us before the next is even sent.
    for (let i = 0; i < arrivals.length - 1; i++) {
      assert.ok(arrivals[i].gotAt <= arrivals[i + 1].sentAt, `event ${i + 1} arrived only after event ${i + 2} was sent`);
    }
  } finally {
    client.close();
  }
});

test('a closed tab (its HTTP/2 stream reset mid-event-stream) is no warning, and the connection keeps serving', async () => {
  const client = http2.connect(`https://public.localhost:${gh.port}`, { ca: certB.caPem, lookup: loopbackLookup });
  const logsBefore = gh.logs().length;
  try {
    for (let i = 0; i < 3; i += 1) {
      await new Promise((resolve, reject) => {
        const req = client.request({ ':path': '/sse?n=60&every=100', accept: 'text/event-stream' });
        req.once('data', () => {
          // What a browser does when the tab with the EventSource closes.
          req.close(http2.constants.NGHTTP2_CANCEL);
          resolve();
        });
        req.on('error', reject);
        req.end();
      });
    }
    // The same connection still answers: a reset stream is not a broken connection.
    const status = await new Promise((resolve, reject) => {
      const req = client.request({ ':path': '/after-reset', accept: 'application/json' });
      req.on('response', (h) => resolve(h[':status']));
      req.on('error', reject);
      req.end();
    });
    assert.equal(status, 200);
    await new Promise((r) => setTimeout(r, 1000));
    const logged = gh.logs().slice(logsBefore).split('\n').filter((l) => /\b(WARN|ERROR)\b/.test(l));
    assert.deepEqual(logged, [], 'nothing at WARN or ERROR for a client that went away');
    assert.match(gh.logs().slice(logsBefore), /path=\/sse/, 'the streams are in the access log');
  } finally {
    client.close();
  }
});
