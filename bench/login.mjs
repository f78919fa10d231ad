// Signs in through Gatehouse and the real test IdP (tests/harness/idp.mjs) like a browser
// would, and prints the session cookie header (`_pomerium=…`, every chunk) on stdout.
//
//   node bench/login.mjs http://assistant.localhost:PORT/ alice alice-pass
//
// An optional fourth argument is a regular expression for the session cookies' names, for
// another proxy than Gatehouse (bench/peers.sh passes mod_auth_openidc's); the default is
// Gatehouse's `_pomerium` and its chunks.
//
// Exits 1 (with the redirect chain on stderr) if the sign-in does not end on a 200 from the
// upstream with a session cookie set.

import { Client } from '../tests/harness/client.mjs';

const [startUrl, user = 'alice', password = 'alice-pass', cookieRe] = process.argv.slice(2);
if (!startUrl) {
  console.error('usage: node bench/login.mjs URL [user] [password] [session-cookie-name-regex]');
  process.exit(2);
}

const SESSION_COOKIE = cookieRe ? new RegExp(cookieRe) : /^_pomerium(_\d+)?$/;

const client = new Client();
const { response, chain } = await client.login(user, password, startUrl);
const host = new URL(startUrl).hostname;
const cookie = Object.entries(client.jar.all(host))
  .filter(([k]) => SESSION_COOKIE.test(k))
  .map(([k, v]) => `${k}=${v}`)
  .join('; ');

if (response.status !== 200 || !cookie) {
  console.error(`sign-in failed: final status ${response.status}, session cookie ${cookie ? 'set' : 'missing'}`);
  for (const r of chain) console.error(`  ${r.status} ${r.url}${r.location ? ` -> ${r.location}` : ''}`);
  console.error(response.body.slice(0, 500));
  process.exit(1);
}
console.error(`signed in as ${user}: ${chain.length} hops, final ${response.status} ${response.url}`);
console.log(cookie);
