// Certificates without restarts (issue 14): replacing the certificate and key files makes
// Gatehouse serve the new certificate to new connections, while an event stream opened
// before keeps flowing; a broken replacement keeps the old one serving. Real TLS.

import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import tls from 'node:tls';
import { after, before, test } from 'node:test';

import { eventually } from '../harness/backends.mjs';
import { makeCerts } from '../harness/certs.mjs';
import { loopbackLookup, request } from '../harness/client.mjs';
import { freePort } from '../harness/gatehouse.mjs';
import { startStack } from '../harness/stack.mjs';

let s;
let metricsPort;
before(async () => {
  metricsPort = await freePort();
  s = await startStack({ gatehouses: { main: { extra: { metrics_address: `127.0.0.1:${metricsPort}` } } } });
});

/** gatehouse_certificate_not_after_timestamp_seconds for the configured file, by name. */
async function notAfterMetric() {
  const text = (await request(`http://127.0.0.1:${metricsPort}/metrics`)).body;
  const line = text.split('\n').find((l) => l.startsWith('gatehouse_certificate_not_after_timestamp_seconds{'));
  assert.ok(line, `the expiry metric:\n${text}`);
  assert.ok(line.includes(`file="${s.certs.cert}"`) && line.includes('name="assistant.localhost"'), line);
  return Number(line.split(' ').at(-1));
}
const validTo = (file) => Math.floor(Date.parse(new X509Certificate(readFileSync(file)).validTo) / 1000);
after(async () => s?.stop());

/** The SHA-256 fingerprint of the certificate a new TLS connection is served. */
function servedFingerprint() {
  return new Promise((resolve, reject) => {
    const c = tls.connect({ host: '127.0.0.1', port: s.gh.main.port, servername: 'assistant.localhost', rejectUnauthorized: false }, () => {
      const fp = c.getPeerCertificate().fingerprint256;
      c.end();
      resolve(fp);
    });
    c.on('error', reject);
  });
}

/** An event stream on the public route (60 events, 200 ms apart), over one TLS connection. */
function openStream() {
  const stream = { events: 0, ended: false };
  const c = tls.connect({ host: 'public.localhost', port: s.gh.main.port, servername: 'public.localhost', ca: s.certs.caPem, lookup: loopbackLookup }, () => {
    stream.fingerprint = c.getPeerCertificate().fingerprint256;
    c.write(`GET /sse?n=60&every=200 HTTP/1.1\r\nHost: public.localhost:${s.gh.main.port}\r\nAccept: text/event-stream\r\n\r\n`);
  });
  c.on('data', (d) => { stream.events += (d.toString().match(/event: tick/g) ?? []).length; });
  c.on('close', () => { stream.ended = true; });
  c.on('error', () => { stream.ended = true; });
  stream.close = () => c.destroy();
  return stream;
}

test('replacing the certificate files serves the new certificate to new connections; an open stream keeps flowing', async () => {
  const before = await servedFingerprint();
  const stream = openStream();
  await eventually('the stream flows', () => stream.events >= 2, { timeoutMs: 10_000 });
  assert.equal(stream.fingerprint, before);

  assert.equal(await notAfterMetric(), validTo(s.certs.cert), 'the metric says when the served certificate expires');
  const fresh = await makeCerts(undefined, { days: 90 });
  copyFileSync(fresh.cert, s.certs.cert);
  copyFileSync(fresh.key, s.certs.key);
  const after = await eventually('the new certificate is served', async () => {
    const fp = await servedFingerprint();
    return fp !== before && fp;
  }, { timeoutMs: 10_000 });
  assert.match(s.gh.main.logs(), /certificates reloaded/);
  assert.equal(await notAfterMetric(), validTo(fresh.cert), "the metric follows the new certificate's expiry");
  assert.ok(validTo(fresh.cert) - Date.now() / 1000 > 80 * 86400);

  const seen = stream.events;
  await eventually('the old stream keeps flowing after the swap', () => stream.events >= seen + 3, { timeoutMs: 10_000 });
  assert.equal(stream.ended, false, 'the stream opened before the swap is still open');
  stream.close();

  // A broken replacement: the reload fails and the new certificate keeps serving.
  writeFileSync(s.certs.key, 'not a key\n');
  await eventually('the failed reload is logged', () => /config reload failed/.test(s.gh.main.logs()), { timeoutMs: 10_000 });
  assert.equal(await servedFingerprint(), after, 'a broken key file changes nothing');
  copyFileSync(fresh.key, s.certs.key);
});
