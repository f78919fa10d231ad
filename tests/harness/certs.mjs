// Throwaway CA + one leaf certificate for the test/demo hosts, made with the `openssl` CLI.
// Keys are EC P-256 in PKCS#8 PEM. Nothing here is ever trusted outside the temp dir.
//
//   const certs = await makeCerts();            // fresh temp dir
//   const certs = await makeCerts('/some/dir'); // reuse (demo): keeps existing files
//   → { dir, caCert, caKey, cert, key, caPem }

import { X509Certificate } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

export const CERT_HOSTS = ['assistant.localhost', 'auth.localhost', 'public.localhost', 'other.localhost', 'opencode.localhost', 'localhost'];
export const CERT_IPS = ['127.0.0.1'];

function openssl(args, cwd) {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Whether certificates already in the directory cover `hosts` for at least another day. */
function reusable(out, hosts) {
  if (![out.caCert, out.caKey, out.cert, out.key].every(existsSync)) return false;
  try {
    const leaf = new X509Certificate(readFileSync(out.cert));
    const names = (leaf.subjectAltName ?? '').split(', ');
    return hosts.every((h) => names.includes(`DNS:${h}`)) && Date.parse(leaf.validTo) > Date.now() + 86_400_000;
  } catch {
    return false;
  }
}

export async function makeCerts(dir, { hosts = CERT_HOSTS, ips = CERT_IPS, days = 30 } = {}) {
  if (!dir) dir = mkdtempSync(path.join(os.tmpdir(), 'gatehouse-certs-'));
  mkdirSync(dir, { recursive: true });
  const p = (f) => path.join(dir, f);
  const out = { dir, caCert: p('ca.crt'), caKey: p('ca.key'), cert: p('leaf.crt'), key: p('leaf.key') };

  if (!reusable(out, hosts)) {
    // CA
    openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', out.caKey], dir);
    openssl([
      'req', '-x509', '-new', '-key', out.caKey, '-sha256', '-days', '30',
      '-subj', '/CN=Gatehouse throwaway test CA',
      '-addext', 'basicConstraints=critical,CA:TRUE,pathlen:0',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
      '-out', out.caCert,
    ], dir);
    // Leaf
    openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', out.key], dir);
    openssl(['req', '-new', '-key', out.key, '-subj', `/CN=${hosts[0]}`, '-out', p('leaf.csr')], dir);
    const san = [...hosts.map((h) => `DNS:${h}`), ...ips.map((i) => `IP:${i}`)].join(',');
    writeFileSync(p('leaf.ext'), [
      'basicConstraints=critical,CA:FALSE',
      'keyUsage=critical,digitalSignature',
      'extendedKeyUsage=serverAuth',
      `subjectAltName=${san}`,
      '',
    ].join('\n'));
    openssl([
      'x509', '-req', '-in', p('leaf.csr'), '-CA', out.caCert, '-CAkey', out.caKey, '-CAcreateserial',
      '-days', String(days), '-sha256', '-extfile', p('leaf.ext'), '-out', out.cert,
    ], dir);
  }
  out.caPem = readFileSync(out.caCert, 'utf8');
  return out;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const certs = await makeCerts(process.argv[2]);
  console.log(JSON.stringify({ ...certs, caPem: undefined }, null, 2));
}
