#!/usr/bin/env bash
# Idle keep-alive connections over TLS (issue 15): N client connections to Gatehouse, each makes
# one signed-in request (HTTP/1.1, 200 "ok" from the upstream) and then stays open, idle
# (bench/idle-clients.mjs). Measures Gatehouse's RSS before and SETTLE s after they are all
# open, holds them HOLD s to see whether and when the server closes them, then the same against
# nginx as a TLS proxy (run.sh's config; nginx's default keepalive_timeout is 75 s) for
# comparison. A bench, not a test: it prints PASS/FAIL against issue 15's target for Gatehouse:
#   RSS with N idle connections open <= 150 MB (the growth and KB per connection are shown too)
#
#   bench/idle.sh                                     # N=10000 HOLD=90, builds the release binary
#   SKIP_BUILD=1 N=2000 HOLD=20 bench/idle.sh
#   flock /tmp/gatehouse-bench.lock env SKIP_BUILD=1 bench/idle.sh
#
# Env: N (10000) connections; SETTLE (10) s after the last one before RSS is read; HOLD (90) s
#      held idle in all (> nginx's 75 s keepalive_timeout, to see who closes); NGINX (1 = also
#      nginx); ADDRS (4) loopback source addresses (127.0.0.1 …), CONCURRENCY (100) connections
#      being set up at once (the requests Gatehouse's max_connections_per_client, 512 per
#      address, counts are only these); THREADS (2); SKIP_BUILD, GATEHOUSE_BIN, KEEP_WORK.
# Exit: 0 the target met, 3 missed, 1 the bench could not run. Loopback only; stops every
# process it started (by PID) and removes its temp dir.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N="${N:-10000}"
SETTLE="${SETTLE:-10}"
HOLD="${HOLD:-90}"
RUN_NGINX="${NGINX:-1}"
ADDRS="${ADDRS:-4}"
CONCURRENCY="${CONCURRENCY:-100}"
for v in N SETTLE HOLD ADDRS CONCURRENCY; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "idle.sh: $v must be a positive integer" >&2; exit 1; }
done
((HOLD >= SETTLE)) || HOLD=$SETTLE
TARGET_MB=150
# shellcheck source=bench/common.sh
. bench/common.sh

bench_tools
raise_nofile $((N + 2048))
read -r P_UP P_NGX P_IDP P_GH < <(free_ports 4)
bench_certs
start_upstream "$P_UP"
start_idp "$P_IDP" "$P_GH"
start_gatehouse "$P_GH" "$P_UP"
sign_in "$P_GH"

gatehouse_pids() { echo "$PID_GH"; }
nginx_pids() { echo "$PID_NX" "$(ps -o pid= --ppid "$PID_NX" | tr "\n" " ")"; }
established() { ss -Htn state established "( sport = :$1 )" | wc -l; }

RESULTS="$WORK/results"
: >"$RESULTS"
# phase LABEL PORT PIDS_FUNCTION : N idle connections to one proxy; appends a line to $RESULTS
phase() {
  local label="$1" port="$2" pids_of="$3" before after closed conns clog deadline res
  sleep 2
  # shellcheck disable=SC2046
  before="$(rss_kb $("$pids_of"))"
  log "$label: opening $N connections ($CONCURRENCY at a time, from $ADDRS source addresses), then idle for ${HOLD} s"
  clog="$WORK/clients-$label.log"
  start CLIENTS "$clog" timeout $((HOLD + 120 + N / 20)) node bench/idle-clients.mjs --port "$port" --ca "$CA" --cookie "$COOKIE" \
    --n "$N" --addrs "$ADDRS" --concurrency "$CONCURRENCY" --hold "$HOLD"
  deadline=$((SECONDS + 60 + N / 20))
  until grep -q '^READY' "$clog"; do
    kill -0 "$PID_CLIENTS" 2>/dev/null || { cat "$clog" >&2; die "the idle clients ended early"; }
    ((SECONDS < deadline)) || die "the connections did not open in time (see $clog)"
    sleep 0.5
  done
  grep -h '^idle-clients: .* answered' "$clog" >&2 || true
  sleep "$SETTLE"
  # shellcheck disable=SC2046
  after="$(rss_kb $("$pids_of"))"
  conns="$(established "$port")"
  log "$label: RSS $((before / 1024)) -> $((after / 1024)) MB, $conns connections established at the server"
  # The clients end on their own after HOLD s (or timeout ends them).
  forget_pid "$PID_CLIENTS" || true
  res="$(sed -n 's/^RESULT //p' "$clog")"
  [[ -n "$res" ]] || { cat "$clog" >&2; die "no result from the idle clients"; }
  sleep 3
  # shellcheck disable=SC2046
  closed="$(rss_kb $("$pids_of"))"
  printf '%s %s %s %s %s %s\n' "$label" "$before" "$after" "$closed" "$conns" "$res" >>"$RESULTS"
}

phase gatehouse "$P_GH" gatehouse_pids
if [[ "$RUN_NGINX" != 0 ]]; then
  start_nginx_tls "$P_NGX" "$P_UP" "" $((N + 1024))
  phase nginx "$P_NGX" nginx_pids
fi

echo
echo "$N idle keep-alive connections over TLS (HTTP/1.1, one signed-in request each), RSS ${SETTLE} s after the last"
echo "opened, then held idle ${HOLD} s; Gatehouse --threads $THREADS, nginx $THREADS workers (RSS of master + workers)"
FAILED=0
while read -r label before after closed conns res; do
  node - "$label" "$N" "$before" "$after" "$closed" "$conns" "$TARGET_MB" "$res" <<'JS' || FAILED=1
const [label, n, before, after, closed, conns, target, res] = process.argv.slice(2);
const N = +n, r = JSON.parse(res);
const mb = (kb) => (kb / 1024).toFixed(1);
const gh = label === 'gatehouse';
const ok = r.ok === N && +after / 1024 <= +target;
console.log(`\n${gh ? 'Gatehouse' : 'nginx (comparison)'}:`);
console.log(`  connections answered 200 and idle: ${r.ok}/${N} (set up in ${r.open_seconds} s), established at the server when measured: ${conns}`);
if (r.failed) console.log(`  failures: ${JSON.stringify(r.failures)}`);
console.log(`  RSS before ${mb(before)} MB, with ${r.ok} idle connections ${mb(after)} MB: +${mb(after - before)} MB,` +
  ` ${((after - before) / Math.max(1, r.ok)).toFixed(1)} KB per connection; after the clients left ${mb(closed)} MB`);
if (gh) console.log(`  target: RSS with ${N} idle connections <= ${target} MB  ${ok ? 'PASS' : 'FAIL'}`);
const c = r.closed_after_s;
console.log(`  after ${r.hold} s idle: ${r.still_open} still open, ${r.closed_by_server} closed by the server` +
  (c ? ` (after ${c.min.toFixed(1)}-${c.max.toFixed(1)} s idle, median ${c.median.toFixed(1)} s)` : '') +
  `; open over time (s:open): ${r.timeline.map(([t, o]) => `${t}:${o}`).join(' ')}` +
  (r.unexpected_bytes ? `; ${r.unexpected_bytes} bytes arrived on idle connections` : ''));
process.exit(gh && !ok ? 3 : 0);
JS
done <"$RESULTS"
((FAILED == 0)) || exit 3
