#!/usr/bin/env bash
# A first over-TLS comparison (issue 15): nginx as a TLS reverse proxy (no auth) against
# Gatehouse over TLS on a public and on a signed-in route, same upstream, alternating runs,
# wrk -t2 -c64 keep-alive, loopback only. Prints req/s, p50 and p99 per run and the ratios.
# bench/run.sh is the fuller plain-HTTP bench; this one is the TLS baseline to improve on.
#
#   bench/tls.sh                              # release build first (~6-10 min cold)
#   SKIP_BUILD=1 ROUNDS=3 DURATION=10 bench/tls.sh
#
# Needs root only to install wrk and nginx-light when missing. Stops everything it started.
# The setup (upstream, nginx, IdP, certificates, Gatehouse, sign-in) is bench/common.sh's,
# shared with streams.sh, idle.sh and reload.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-10}"
# shellcheck source=bench/common.sh
. bench/common.sh

bench_tools
read -r P_UP P_NGX P_IDP P_GH < <(free_ports 4)
bench_certs

start_upstream "$P_UP"
start_nginx_tls "$P_NGX" "$P_UP"
start_idp "$P_IDP" "$P_GH"
start_gatehouse "$P_GH" "$P_UP"
RSS_IDLE="$(rss_kb "$PID_GH")"
sign_in "$P_GH"

# wrk resolves names with getaddrinfo, which may not know *.localhost: connect to 127.0.0.1
# and name the host in the Host header (no SNI, so each server's first certificate).
run() { # LABEL PORT HOST [COOKIE]
  local out
  out="$(wrk -t2 -c64 -d"${DURATION}s" --latency -H "Host: $3:$2" ${4:+-H "Cookie: $4"} "https://127.0.0.1:$2/")"
  local rps p50 p99 errs
  rps="$(awk '/^Requests\/sec/ { print $2 }' <<<"$out")"
  p50="$(awk '$1 == "50%" { print $2 }' <<<"$out")"
  p99="$(awk '$1 == "99%" { print $2 }' <<<"$out")"
  errs="$(awk '/Non-2xx/ { print $NF }' <<<"$out")"
  printf '%-34s %10s req/s  p50 %-8s p99 %-8s%s\n' "$1" "$rps" "$p50" "$p99" "${errs:+  NON-2xx: $errs}"
  echo "$1 $rps" >>"$WORK/results"
}
log "measuring: ${ROUNDS} round(s) of ${DURATION} s each, alternating"
for ((r = 1; r <= ROUNDS; r++)); do
  run "nginx TLS proxy (no auth)" "$P_NGX" assistant.localhost
  run "Gatehouse TLS, public route" "$P_GH" public.localhost
  run "Gatehouse TLS, signed in" "$P_GH" assistant.localhost "$COOKIE"
done
RSS_PEAK="$(awk '/^VmHWM:/ { print $2 }' "/proc/$PID_GH/status")"
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
m() { grep "^$1" "$WORK/results" | awk '{ print $NF }' | median; }
NGX="$(m 'nginx')"; PUB="$(m 'Gatehouse TLS, public')"; AUTH="$(m 'Gatehouse TLS, signed')"
echo
echo "medians: nginx $NGX, Gatehouse public $PUB, signed in $AUTH req/s"
awk -v n="$NGX" -v p="$PUB" -v a="$AUTH" 'BEGIN { printf "ratios: signed in / nginx TLS %.2f (target >= 0.60); public / nginx %.2f; signed in / public %.2f\n", a / n, p / n, a / p }'
echo "Gatehouse RSS: idle $((RSS_IDLE / 1024)) MB, peak $((RSS_PEAK / 1024)) MB"
