// A small HTTP(S) client for end-to-end tests, shaped like a browser that never follows
// redirects by itself: trusts the throwaway test CA, sends SNI = the URL's host, resolves
// every *.localhost name to 127.0.0.1, and keeps a tiny per-host cookie jar.
//
//   const c = new Client({ ca: certs.caPem });
//   const r = await c.get('https://assistant.localhost:8443/');   // { status, headers, body, cookies }
//   const { response, chain } = await c.login('alice', 'alice-pass', 'https://assistant.localhost:8443/x');

import http from 'node:http';
import https from 'node:https';

export const BROWSER_ACCEPT = 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8';

/** Resolve `localhost` and `*.localhost` to loopback, as browsers do; everything else normally. */
export function loopbackLookup(hostname, options, callback) {
  if (typeof options === 'function') {
    callback = options;
    options = {};
  }
  const h = hostname.toLowerCase();
  if (h === 'localhost' || h.endsWith('.localhost')) {
    if (options?.all) callback(null, [{ address: '127.0.0.1', family: 4 }]);
    else callback(null, '127.0.0.1', 4);
    return;
  }
  import('node:dns').then((dns) => dns.lookup(hostname, options, callback), callback);
}

/** Parse one Set-Cookie header into { name, value, attrs } (attribute names lower-cased). */
export function parseSetCookie(line) {
  const [pair, ...rest] = line.split(';');
  const eq = pair.indexOf('=');
  const name = pair.slice(0, eq).trim();
  const value = pair.slice(eq + 1).trim();
  const attrs = {};
  for (const part of rest) {
    const i = part.indexOf('=');
    const k = (i < 0 ? part : part.slice(0, i)).trim().toLowerCase();
    const v = i < 0 ? true : part.slice(i + 1).trim();
    if (k) attrs[k] = v;
  }
  return { name, value, attrs, raw: line };
}

/** Cookies per hostname (ports share cookies, as in browsers). Path and expiry are not enforced,
 *  except that Max-Age<=0 or an Expires in the past deletes a cookie. */
export class CookieJar {
  constructor() {
    this.hosts = new Map();
  }

  #bucket(host) {
    const h = host.toLowerCase();
    if (!this.hosts.has(h)) this.hosts.set(h, new Map());
    return this.hosts.get(h);
  }

  store(host, setCookieLines = []) {
    const bucket = this.#bucket(host);
    for (const line of setCookieLines) {
      const c = parseSetCookie(line);
      const maxAge = c.attrs['max-age'];
      const expires = c.attrs.expires ? Date.parse(c.attrs.expires) : NaN;
      if ((maxAge !== undefined && Number(maxAge) <= 0) || (!Number.isNaN(expires) && expires < Date.now())) {
        bucket.delete(c.name);
      } else {
        bucket.set(c.name, c.value);
      }
    }
  }

  get(host, name) {
    return this.#bucket(host).get(name);
  }

  set(host, name, value) {
    this.#bucket(host).set(name, value);
  }

  delete(host, name) {
    this.#bucket(host).delete(name);
  }

  clear(host) {
    if (host) this.hosts.delete(host.toLowerCase());
    else this.hosts.clear();
  }

  all(host) {
    return Object.fromEntries(this.#bucket(host));
  }

  header(host) {
    const pairs = [...this.#bucket(host)].map(([k, v]) => `${k}=${v}`);
    return pairs.length ? pairs.join('; ') : undefined;
  }

  clone() {
    const j = new CookieJar();
    for (const [h, m] of this.hosts) j.hosts.set(h, new Map(m));
    return j;
  }
}

/**
 * One request, no redirects followed. Resolves to
 * { status, headers, body (string), setCookies: [parsed], location (absolute URL or undefined), url }.
 */
export function request(url, { method = 'GET', headers = {}, body, ca, jar, timeoutMs = 10_000, cookies } = {}) {
  const u = new URL(url);
  const isHttps = u.protocol === 'https:';
  const h = { ...headers };
  const hasHeader = (name) => Object.keys(h).some((k) => k.toLowerCase() === name);
  if (!hasHeader('accept')) h.accept = BROWSER_ACCEPT;
  if (!hasHeader('user-agent')) h['user-agent'] = 'gatehouse-e2e';
  const cookieHeader = cookies ?? jar?.header(u.hostname);
  if (cookieHeader && !hasHeader('cookie')) h.cookie = cookieHeader;
  let payload = body;
  if (payload !== undefined && typeof payload === 'object' && !Buffer.isBuffer(payload)) {
    payload = new URLSearchParams(payload).toString();
    if (!hasHeader('content-type')) h['content-type'] = 'application/x-www-form-urlencoded';
  }
  if (payload !== undefined) h['content-length'] = Buffer.byteLength(payload);

  const opts = {
    method,
    host: u.hostname,
    port: u.port || (isHttps ? 443 : 80),
    path: `${u.pathname}${u.search}`,
    headers: h,
    lookup: loopbackLookup,
    agent: false,
  };
  if (isHttps) {
    opts.ca = ca;
    opts.servername = u.hostname.match(/^[\d.]+$/) ? undefined : u.hostname;
  }

  return new Promise((resolve, reject) => {
    const req = (isHttps ? https : http).request(opts, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const setCookieLines = res.headers['set-cookie'] ?? [];
        jar?.store(u.hostname, setCookieLines);
        const loc = res.headers.location;
        resolve({
          url,
          status: res.statusCode,
          headers: res.headers,
          body: Buffer.concat(chunks).toString('utf8'),
          setCookies: setCookieLines.map(parseSetCookie),
          location: loc ? new URL(loc, url).href : undefined,
          json() {
            return JSON.parse(this.body);
          },
        });
      });
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`timeout after ${timeoutMs} ms: ${method} ${url}`)));
    req.on('error', reject);
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}

/** A login form from the test IdP, if `body` is one: { action, fields }. */
export function findIdpLoginForm(body) {
  const m = /<form[^>]*id="login"[^>]*action="([^"]+)"/.exec(body);
  return m ? { action: m[1].replace(/&amp;/g, '&') } : undefined;
}

export class Client {
  constructor({ ca, jar = new CookieJar(), headers = {} } = {}) {
    this.ca = ca;
    this.jar = jar;
    this.headers = headers;
  }

  request(url, opts = {}) {
    return request(url, { ca: this.ca, jar: this.jar, ...opts, headers: { ...this.headers, ...opts.headers } });
  }

  get(url, opts = {}) {
    return this.request(url, { ...opts, method: 'GET' });
  }

  post(url, body, opts = {}) {
    return this.request(url, { ...opts, method: 'POST', body });
  }

  /**
   * Follow redirects with GET (like a browser), stopping at the first non-redirect response or
   * when `stopAt(url)` is true for the next URL (that URL is then returned unvisited as `next`).
   */
  async follow(startUrl, { maxHops = 20, stopAt, headers } = {}) {
    const chain = [];
    let url = startUrl;
    for (let i = 0; i < maxHops; i += 1) {
      if (stopAt && i > 0 && stopAt(url)) return { response: chain.at(-1), chain, next: url };
      const r = await this.get(url, { headers });
      chain.push(r);
      if (r.status >= 300 && r.status < 400 && r.location) {
        url = r.location;
        continue;
      }
      return { response: r, chain };
    }
    throw new Error(`too many redirects from ${startUrl}: ${chain.map((r) => `${r.status} ${r.url}`).join(' -> ')}`);
  }

  /**
   * Sign in through Gatehouse and the test IdP, starting at `startUrl`; submits the IdP's
   * login form when it appears. Options: stopAt(url) to stop before visiting a URL (e.g. the
   * callback), to tamper with it. Returns { response, chain, next?, jar }.
   */
  async login(userName, password, startUrl, { stopAt, maxHops = 30 } = {}) {
    const chain = [];
    let step = await this.follow(startUrl, { stopAt, maxHops });
    chain.push(...step.chain);
    for (let i = 0; i < 3 && !step.next; i += 1) {
      const form = findIdpLoginForm(step.response.body);
      if (!form) break;
      if (/id="error"/.test(step.response.body) && i > 0) break; // wrong password: stop on the error page
      const action = new URL(form.action, step.response.url).href;
      const posted = await this.post(action, { login: userName, password });
      chain.push(posted);
      if (!(posted.status >= 300 && posted.status < 400 && posted.location)) {
        step = { response: posted, chain: [] };
        continue;
      }
      if (stopAt?.(posted.location)) return { response: posted, chain, next: posted.location, jar: this.jar };
      step = await this.follow(posted.location, { stopAt, maxHops });
      chain.push(...step.chain);
    }
    return { response: step.response, chain, next: step.next, jar: this.jar };
  }
}
