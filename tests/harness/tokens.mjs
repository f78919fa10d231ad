// Personal access tokens (issue 13) from the tests' side: make them through the JSON API
// with a signed-in browser's cookie, and send requests with one instead of a cookie.

import assert from 'node:assert/strict';

import { A } from './backends.mjs';
import { request } from './client.mjs';

/** `/.gatehouse/api/tokens[suffix]` with the person's cookie, same-origin like a page's script. */
export function tokenApi(s, c, method, suffix = '', body) {
  return c.request(s.gh.main.url(A, `/.gatehouse/api/tokens${suffix}`), {
    method,
    body: body === undefined ? undefined : JSON.stringify(body),
    headers: {
      accept: 'application/json',
      origin: s.origin,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
  });
}

/** Makes a token ({ name, expires_in_days?, expires_in_seconds?, routes? }): { token, id, ... }. */
export async function makeToken(s, c, terms) {
  const r = await tokenApi(s, c, 'POST', '', terms);
  assert.equal(r.status, 201, `POST /.gatehouse/api/tokens: ${r.status} ${r.body.slice(0, 300)}`);
  return r.json();
}

/** base64("opencode:<token>"), as OpenCode's clients send a password. */
export const basic = (token, user = 'opencode') => Buffer.from(`${user}:${token}`).toString('base64');

/** A request to `host` with `Authorization: Bearer <token>` and no cookie. */
export function tokenRequest(s, host, p, token, { method = 'GET', body, headers = {} } = {}) {
  return request(s.gh.main.url(host, p), {
    method,
    ca: s.certs.caPem,
    body,
    headers: {
      accept: 'application/json',
      authorization: `Bearer ${token}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      ...headers,
    },
    timeoutMs: 90_000,
  });
}

/** A refused credential: 401 JSON with `code`, a Bearer challenge and never a Basic one. */
export function assertTokenRefused(r, code, what) {
  assert.equal(r.status, 401, `${what}: expected 401, got ${r.status} ${r.body.slice(0, 200)}`);
  assert.match(r.headers['content-type'] ?? '', /json/, what);
  assert.equal(r.json().code, code, `${what}: ${r.body}`);
  const challenge = String(r.headers['www-authenticate'] ?? '');
  assert.ok(!/basic/i.test(challenge), `${what}: a Basic challenge would make a browser prompt: ${challenge}`);
}
