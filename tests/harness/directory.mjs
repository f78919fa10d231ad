// A stand-in for Google's OAuth token endpoint and the Admin SDK Directory API, on
// 127.0.0.1, speaking the same protocol as far as Gatehouse uses it:
//
//   POST /token  grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>
//        The assertion must be RS256, signed by the private key of a registered service
//        account (`iss` = its client_email), with aud = this token URL, the group read-only
//        scope, a `sub`, and iat/exp at most an hour apart and not expired. Otherwise 400
//        {"error":"invalid_grant", ...} as Google answers.
//   GET  /admin/directory/v1/groups?userKey=<email>&maxResults=N[&pageToken=T]
//        Bearer <access token from /token>, else 401. → {kind, groups:[{id,email,name}],
//        nextPageToken}, `pageSize` groups per page at most (small, to exercise paging).
//
// Keys are made at run time (node:crypto); nothing secret is written anywhere.
//
//   const dir = await startDirectory({ members: { alice: ['eng@example.com'], 'eng@example.com': [] } });
//   (keys: a user id, as Gatehouse asks with the ID token's `sub`, or a group's email)
//   const sa = dir.serviceAccount();            // a registered account: { json, base64 }
//   const forged = dir.unregisteredAccount();   // same shape, a key the stand-in does not know
//   await dir.down(); await dir.up();           // refuse connections / accept them again
//   dir.hang(true); dir.hang(false);            // accept requests and never answer / answer again
//   dir.stats()                                 // { tokens, refused, lists, unauthorized }

import { createVerify, generateKeyPairSync, randomBytes } from 'node:crypto';
import http from 'node:http';

export const SCOPE = 'https://www.googleapis.com/auth/admin.directory.group.readonly';
export const GRANT_TYPE = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
export const ADMIN = 'admin@example.com';

const b64url = (buf) => Buffer.from(buf).toString('base64url');
const fromB64url = (s) => JSON.parse(Buffer.from(s, 'base64url').toString('utf8'));

/** A service-account key pair and its Google-shaped JSON key (with Pomerium's impersonate_user). */
function makeAccount(tokenUrl, clientEmail) {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const json = {
    type: 'service_account',
    project_id: 'gatehouse-test',
    private_key_id: randomBytes(20).toString('hex'),
    private_key: privateKey.export({ type: 'pkcs8', format: 'pem' }),
    client_email: clientEmail,
    client_id: String(Date.now()),
    token_uri: tokenUrl,
    impersonate_user: ADMIN,
  };
  return { json, base64: Buffer.from(JSON.stringify(json)).toString('base64'), publicKey };
}

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

export async function startDirectory({ members = {}, groupIds = {}, pageSize = 1, host = '127.0.0.1' } = {}) {
  const stats = { tokens: 0, refused: 0, lists: 0, unauthorized: 0, refusals: [] };
  const accounts = new Map(); // client_email → public key
  const tokens = new Set(); // access tokens issued
  const issuedTokens = []; // every access token, for "never logged" checks
  let tokenUrl;

  /** Why an assertion is refused, or null when it is good. */
  function checkAssertion(jwt) {
    const parts = String(jwt ?? '').split('.');
    if (parts.length !== 3) return 'not a JWT';
    let header;
    let claims;
    try {
      header = fromB64url(parts[0]);
      claims = fromB64url(parts[1]);
    } catch {
      return 'not a JWT';
    }
    if (header.alg !== 'RS256') return `alg ${header.alg}`;
    const key = accounts.get(claims.iss);
    if (!key) return 'unknown service account';
    const verify = createVerify('RSA-SHA256');
    verify.update(`${parts[0]}.${parts[1]}`);
    if (!verify.verify(key, Buffer.from(parts[2], 'base64url'))) return 'Invalid JWT Signature.';
    const now = Math.floor(Date.now() / 1000);
    if (claims.aud !== tokenUrl) return `aud ${claims.aud}`;
    if (claims.scope !== SCOPE) return `scope ${claims.scope}`;
    if (claims.sub !== ADMIN) return `sub ${claims.sub}`;
    if (!(claims.exp > now && claims.iat <= now + 60 && claims.exp - claims.iat <= 3600)) return 'Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.';
    return null;
  }

  let hanging = false;
  const hung = new Set();
  const server = http.createServer(async (req, res) => {
    if (hanging) {
      // Accept the request and never answer (a directory that hangs, not one that refuses).
      hung.add(res);
      return;
    }
    const url = new URL(req.url, 'http://x');
    if (req.method === 'POST' && url.pathname === '/token') {
      const form = new URLSearchParams(await readBody(req));
      if (form.get('grant_type') !== GRANT_TYPE) {
        send(res, 400, { error: 'unsupported_grant_type', error_description: 'Invalid grant_type' });
        return;
      }
      const why = checkAssertion(form.get('assertion'));
      if (why) {
        stats.refused += 1;
        stats.refusals.push(why);
        send(res, 400, { error: 'invalid_grant', error_description: why });
        return;
      }
      const token = `ya29.${randomBytes(24).toString('base64url')}`;
      tokens.add(token);
      issuedTokens.push(token);
      stats.tokens += 1;
      send(res, 200, { access_token: token, expires_in: 3599, token_type: 'Bearer' });
      return;
    }
    if (req.method === 'GET' && url.pathname === '/admin/directory/v1/groups') {
      await readBody(req);
      const auth = req.headers.authorization ?? '';
      if (!auth.startsWith('Bearer ') || !tokens.has(auth.slice(7))) {
        stats.unauthorized += 1;
        send(res, 401, { error: { code: 401, message: 'Request had invalid authentication credentials.' } });
        return;
      }
      stats.lists += 1;
      const key = (url.searchParams.get('userKey') ?? '').toLowerCase();
      const all = members[key] ?? [];
      const size = Math.max(1, Math.min(Number(url.searchParams.get('maxResults') ?? 200), pageSize));
      const start = Number(url.searchParams.get('pageToken') ?? 0);
      const page = all.slice(start, start + size).map((email) => ({
        kind: 'admin#directory#group',
        id: groupIds[email] ?? `id-${email.split('@')[0]}`,
        email,
        name: email.split('@')[0],
        directMembersCount: '1',
      }));
      const body = { kind: 'admin#directory#groups', etag: '"x"' };
      if (page.length) body.groups = page;
      if (start + size < all.length) body.nextPageToken = String(start + size);
      send(res, 200, body);
      return;
    }
    send(res, 404, { error: { code: 404, message: 'Not Found' } });
  });

  const listen = (port) => new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  await listen(0);
  const port = server.address().port;
  const url = `http://${host}:${port}`;
  tokenUrl = `${url}/token`;
  let registered;

  return {
    url,
    tokenUrl,
    members,
    stats: () => ({ ...stats }),
    issuedTokens: () => [...issuedTokens],
    /** The registered service account (made on first use). */
    serviceAccount() {
      if (!registered) {
        registered = makeAccount(tokenUrl, 'gatehouse@gatehouse-test.iam.gserviceaccount.com');
        accounts.set(registered.json.client_email, registered.publicKey);
      }
      return registered;
    },
    /** Same client_email, another key: its assertions do not verify. */
    unregisteredAccount() {
      return makeAccount(tokenUrl, 'gatehouse@gatehouse-test.iam.gserviceaccount.com');
    },
    /** Unreachable: stop listening and drop open (keep-alive) connections. */
    async down() {
      await new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
    async up() {
      await listen(port);
    },
    /** `true`: accept requests and never answer them; `false`: answer again (the hung ones are dropped). */
    hang(on) {
      hanging = on;
      if (!on) {
        for (const res of hung) res.destroy();
        hung.clear();
      }
    },
    async close() {
      if (server.listening) await this.down();
    },
  };
}
