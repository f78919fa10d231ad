#!/usr/bin/env bash
# Long-lived streams over TLS (issue 15): N signed-in server-sent event streams through Gatehouse,
# held SOAK seconds, one event per second per stream from a node upstream (bench/sse-upstream.mjs);
# then the same through nginx as a TLS proxy (proxy_buffering off) for comparison. Measures the
# proxy's RSS idle, with the N streams open (after SETTLE s), every 30 s of the soak and at the
# end, and checks every event arrived (bench/sse-clients.mjs). A bench, not a test: it prints
# PASS/FAIL against issue 15's targets for Gatehouse:
#   growth per stream  (RSS open - RSS idle) / N              <= 64 KB
#   no growth in time  RSS last sample - first sample after open <= max(5 % of RSS open, 2 MB)
#   every event        every event the upstream sent before the end arrived (2 s grace)
#
#   bench/streams.sh                                   # N=1000 SOAK=600, builds the release binary
#   SKIP_BUILD=1 N=200 SOAK=60 bench/streams.sh
#   flock /tmp/gatehouse-bench.lock env SKIP_BUILD=1 N=1000 SOAK=120 bench/streams.sh
#
# Env: N (1000) streams; SOAK (600) seconds held after SETTLE (10) s; NGINX (1 = also nginx);
#      STREAMS_PER_ADDR (250) streams per loopback source address (Gatehouse's
#      max_connections_per_client, default 512, counts the open requests of one address);
#      THREADS (2) Gatehouse --threads and nginx workers; SKIP_BUILD, GATEHOUSE_BIN, KEEP_WORK.
# Exit: 0 every target met, 3 a target missed, 1 the bench could not run. Loopback only; stops
# every process it started (by PID) and removes its temp dir.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N="${N:-1000}"
SOAK="${SOAK:-600}"
SETTLE="${SETTLE:-10}"
RUN_NGINX="${NGINX:-1}"
STREAMS_PER_ADDR="${STREAMS_PER_ADDR:-250}"
for v in N SOAK SETTLE STREAMS_PER_ADDR; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "streams.sh: $v must be a positive integer" >&2; exit 1; }
done
# shellcheck source=bench/common.sh
. bench/common.sh

bench_tools
# Each stream: a client socket (node), a downstream and an upstream socket (proxy), one upstream.
raise_nofile $((2 * N + 1024))
read -r P_SSE P_NGX P_IDP P_GH < <(free_ports 4)
bench_certs
ADDRS=$(((N + STREAMS_PER_ADDR - 1) / STREAMS_PER_ADDR))
((ADDRS <= 250)) || die "N / STREAMS_PER_ADDR needs more than 250 source addresses"

start SSE "$WORK/sse-upstream.log" node bench/sse-upstream.mjs "$P_SSE"
wait_ok sse-upstream "http://127.0.0.1:$P_SSE/"
start_idp "$P_IDP" "$P_GH"
# Gatehouse cuts no stream: routes have no timeout key (`timeout`/`idle_timeout` are accepted
# from Pomerium configs and ignored) and a static upstream has no read timeout, only a 60 s idle
# timeout for pooled (unused) upstream connections.
start_gatehouse "$P_GH" "$P_SSE"
sign_in "$P_GH"

gatehouse_pids() { echo "$PID_GH"; }
nginx_pids() { echo "$PID_NX" "$(ps -o pid= --ppid "$PID_NX" | tr "\n" " ")"; }
cpu_ticks() { # PID... -> utime + stime, clock ticks
  local t=0 p
  for p in "$@"; do t=$((t + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 }'))); done
  echo "$t"
}

RESULTS="$WORK/results"
: >"$RESULTS"
# phase LABEL PORT PIDS_FUNCTION : the N streams through one proxy; appends its figures to $RESULTS
phase() {
  local label="$1" port="$2" pids_of="$3" idle clog deadline t0 open rss samples=() t c0 c1 res
  sleep 2
  # shellcheck disable=SC2046
  idle="$(rss_kb $("$pids_of"))"
  log "$label: opening $N streams from $ADDRS source address(es), holding them ${SETTLE}+${SOAK} s"
  clog="$WORK/clients-$label.log"
  start CLIENTS "$clog" timeout $((SETTLE + SOAK + 120 + N / 10)) node bench/sse-clients.mjs --port "$port" --ca "$CA" --cookie "$COOKIE" \
    --n "$N" --addrs "$ADDRS" --hold $((SETTLE + SOAK + 3)) --stats "http://127.0.0.1:$P_SSE/stats"
  deadline=$((SECONDS + 60 + N / 10))
  until grep -q '^READY' "$clog"; do
    kill -0 "$PID_CLIENTS" 2>/dev/null || { cat "$clog" >&2; die "the stream clients ended early"; }
    ((SECONDS < deadline)) || die "the streams did not open in time (see $clog)"
    sleep 0.5
  done
  grep '^READY' "$clog" >&2
  t0=$SECONDS
  sleep "$SETTLE"
  # shellcheck disable=SC2046
  open="$(rss_kb $("$pids_of"))"
  # shellcheck disable=SC2046
  c0="$(cpu_ticks $("$pids_of"))"
  samples=("0:$open")
  for ((t = 30; t < SOAK + 30; t += 30)); do
    ((t > SOAK)) && t=$SOAK
    sleep $((t0 + SETTLE + t - SECONDS > 0 ? t0 + SETTLE + t - SECONDS : 0))
    # shellcheck disable=SC2046
    rss="$(rss_kb $("$pids_of"))"
    samples+=("$t:$rss")
    log "$label: ${t} s into the soak, RSS $((rss / 1024)) MB"
  done
  # shellcheck disable=SC2046
  c1="$(cpu_ticks $("$pids_of"))"
  forget_pid "$PID_CLIENTS" || true
  res="$(sed -n 's/^RESULT //p' "$clog")"
  [[ -n "$res" ]] || { cat "$clog" >&2; die "no result from the stream clients"; }
  sleep 3
  # shellcheck disable=SC2046
  rss="$(rss_kb $("$pids_of"))"
  printf '%s %s %s %s %s %s %s\n' "$label" "$idle" "$open" "$rss" "$((c1 - c0))" "$(IFS=,; echo "${samples[*]}")" "$res" >>"$RESULTS"
}

phase gatehouse "$P_GH" gatehouse_pids
if [[ "$RUN_NGINX" != 0 ]]; then
  start_nginx_tls "$P_NGX" "$P_SSE" "location /events { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_buffering off; proxy_read_timeout 1h; proxy_send_timeout 1h; }" $((2 * N + 1024))
  phase nginx "$P_NGX" nginx_pids
fi

echo
echo "$N SSE streams over TLS, one event per second each, held ${SOAK} s after ${SETTLE} s to settle;"
echo "Gatehouse --threads $THREADS, nginx $THREADS workers (RSS of master + workers); $ADDRS client source address(es)"
FAILED=0
while read -r label idle open after cpu samples res; do
  node - "$label" "$N" "$idle" "$open" "$after" "$cpu" "$(getconf CLK_TCK)" "$samples" "$res" <<'JS' || FAILED=1
const [label, n, idle, open, after, cpu, hz, samples, res] = process.argv.slice(2);
const N = +n, r = JSON.parse(res);
const pts = samples.split(',').map((s) => s.split(':').map(Number)); // [seconds, KB]
const mb = (kb) => (kb / 1024).toFixed(1);
const first = pts[0][1], last = pts.at(-1)[1], drift = last - first;
// least-squares slope, KB per minute
const mt = pts.reduce((a, p) => a + p[0], 0) / pts.length, mr = pts.reduce((a, p) => a + p[1], 0) / pts.length;
const den = pts.reduce((a, p) => a + (p[0] - mt) ** 2, 0);
const slope = den ? pts.reduce((a, p) => a + (p[0] - mt) * (p[1] - mr), 0) / den * 60 : 0;
const perStream = (open - idle) / N;
const limit = Math.max(0.05 * open, 2048);
const soak = pts.at(-1)[0];
const gh = label === 'gatehouse';
const verdict = (ok) => (gh ? (ok ? '  PASS' : '  FAIL') : '');
const allOpen = r.opened === N && r.ended_early === 0;
const allEvents = allOpen && r.missing === 0 && r.gaps === 0;
console.log(`\n${gh ? 'Gatehouse' : 'nginx (comparison)'}:`);
console.log(`  RSS idle ${mb(idle)} MB, with ${N} streams ${mb(open)} MB, after they closed ${mb(after)} MB`);
console.log(`  growth per stream ${perStream.toFixed(1)} KB (target <= 64 KB)${verdict(perStream <= 64)}`);
console.log(`  RSS over the soak (MB at s): ${pts.map(([t, k]) => `${mb(k)}@${t}`).join(' ')}`);
console.log(`  drift ${drift >= 0 ? '+' : ''}${mb(drift)} MB over ${soak} s, slope ${slope >= 0 ? '+' : ''}${(slope / 1024).toFixed(2)} MB/min` +
  ` (rule: drift <= max(5 % of RSS open, 2 MB) = ${mb(limit)} MB)${verdict(drift <= limit)}`);
console.log(`  events delivered ${r.delivered} / expected ${r.sent} (sent by the upstream before the end; ${r.missing} missing,` +
  ` ${r.gaps} gaps; nominal 1/s: ${r.nominal}), streams open ${r.opened}/${N}, ended early ${r.ended_early}${verdict(allEvents)}`);
if (Object.keys(r.failures).length) console.log(`  failures: ${JSON.stringify(r.failures)}`);
console.log(`  event latency upstream -> client: p50 ${r.latency_ms.p50} ms, p99 ${r.latency_ms.p99} ms, max ${r.latency_ms.max} ms;` +
  ` CPU ${(cpu / hz / soak * 100).toFixed(1)} % of a core during the soak`);
process.exit(gh && !(perStream <= 64 && drift <= limit && allEvents) ? 3 : 0);
JS
done <"$RESULTS"
((FAILED == 0)) || exit 3
