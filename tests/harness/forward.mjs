// A TCP forwarder, run as its own process: `node forward.mjs LISTEN_HOST LISTEN_PORT TO_HOST TO_PORT`.
// The image test runs it inside a container's network namespace (nsenter --net) so that the
// Gatehouse in the container reaches the test IdP at the same loopback issuer URL as the
// browser on the host (http is allowed only for loopback issuers). Prints "ready" when listening.
import net from 'node:net';

const [listenHost, listenPort, toHost, toPort] = process.argv.slice(2);
const server = net.createServer((inbound) => {
  const outbound = net.connect(Number(toPort), toHost);
  inbound.pipe(outbound).pipe(inbound);
  const end = () => { inbound.destroy(); outbound.destroy(); };
  inbound.on('error', end);
  outbound.on('error', end);
});
server.listen(Number(listenPort), listenHost, () => console.log('ready'));
process.on('SIGTERM', () => process.exit(0));
