#!/usr/bin/env bash
# Every proxy users compare, over TLS, in one run (issue 15): nginx as a TLS reverse proxy (no
# auth), a bare Pingora passthrough built from this workspace (crates/gatehouse/examples/
# passthrough.rs: same profile, allocator, worker threads and listener settings: the floor of
# our own engine), Gatehouse on a public and on a signed-in route, Caddy (no auth) and Apache +
# mod_auth_openidc signed in (bench/peers.sh), all in front of the same nginx upstream.
#
# HTTP/1.1: wrk -t2 -cCONNECTIONS keep-alive to 127.0.0.1 with the route's Host header, rounds
# alternating between targets; HTTP/2: h2load (-c CONNECTIONS -m 10) against the h2 targets.
# Per target: req/s and p50/p99 (medians over rounds), the CPU µs per request of the proxy's
# own processes (utime+stime over the run / requests), its RSS idle and peak; then the ratios
# against the issue's targets. Plain HTTP: bench/plain.sh (PLAIN=1 runs it after this).
#
#   bench/run.sh                                       # release build first (~6-10 min cold)
#   SKIP_BUILD=1 ROUNDS=3 DURATION=10 bench/run.sh
#
# Env: ROUNDS (2), DURATION s (10), CONNECTIONS (64), THREADS (2: every proxy's workers),
#      H2 (1 = also HTTP/2), PEERS (1 = also Caddy and Apache), PLAIN (0 = also bench/plain.sh),
#      SKIP_BUILD, GATEHOUSE_BIN, KEEP_WORK. Needs root only to install missing packages.
# Loopback only, bounded in time; stops every process it started, by PID.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-64}"
H2="${H2:-1}"
PEERS="${PEERS:-1}"
PLAIN="${PLAIN:-0}"
for v in ROUNDS DURATION CONNECTIONS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: $v must be a positive integer (got '${!v}')" >&2; exit 2; }
done
# shellcheck source=bench/common.sh
. bench/common.sh
# shellcheck source=bench/peers.sh
. bench/peers.sh

bench_tools
PT_BIN="$(dirname "$BIN")/examples/passthrough"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "cargo build --release -p gatehouse --example passthrough"
  cargo build --release -p gatehouse --example passthrough
fi
[[ -x "$PT_BIN" ]] || die "no passthrough at $PT_BIN (cargo build --release -p gatehouse --example passthrough)"
command -v h2load >/dev/null || { [[ "$H2" == 1 ]] && peers_apt_install nghttp2-client; }
[[ "$PEERS" == 1 ]] && peers_install

read -r P_UP P_NGX P_IDP P_GH P_PT P_CADDY P_APACHE < <(free_ports 7)
bench_certs
start_upstream "$P_UP"
# nginx with HTTP/2 on the same TLS listener (Debian 12's nginx 1.22 spells it on `listen`).
start_nginx_tls "$P_NGX" "$P_UP"
sed -i "s/listen 127.0.0.1:$P_NGX ssl;/listen 127.0.0.1:$P_NGX ssl http2;/" "$NX/nginx.conf"
kill -HUP "$PID_NX"
start_idp "$P_IDP" "$P_GH" "$(apache_redirect_uri "$P_APACHE")"
start_gatehouse "$P_GH" "$P_UP"
start PT "$WORK/passthrough.log" "$PT_BIN" "127.0.0.1:$P_PT" "127.0.0.1:$P_UP" "$THREADS" "$CERT" "$KEY"
wait_ok passthrough "https://assistant.localhost:$P_PT/" --resolve "assistant.localhost:$P_PT:127.0.0.1" --cacert "$CA"
if [[ "$PEERS" == 1 ]]; then
  start_caddy "$WORK/caddy" "$P_CADDY" "$P_UP" "$CERT" "$KEY"
  start_apache "$WORK/apache" "$P_APACHE" "$P_UP" "$CERT" "$KEY" "$IDP_URL" gatehouse-bench "$CLIENT_SECRET"
fi
sleep 1
declare -A RSS_IDLE
pids_of() { # TARGET -> the proxy's own PIDs
  case "$1" in
    nginx) proc_tree "$PID_NX" ;;
    bare) echo "$PID_PT" ;;
    gh-*) echo "$PID_GH" ;;
    caddy) echo "$PID_CADDY" ;;
    apache) proc_tree "$PID_APACHE" ;;
  esac
}
rss_of() { # TARGET -> KB (sum over its processes)
  local p t=0
  for p in $(pids_of "$1"); do t=$((t + $(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0))); done
  echo "$t"
}
hwm_of() { # TARGET -> KB, the peak RSS (VmHWM) summed over its processes
  local p t=0
  for p in $(pids_of "$1"); do t=$((t + $(awk '/^VmHWM:/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0))); done
  echo "$t"
}
TARGETS=(nginx bare gh-public gh-auth)
[[ "$PEERS" == 1 ]] && TARGETS+=(caddy apache)
for t in "${TARGETS[@]}"; do RSS_IDLE[$t]="$(rss_of "$t")"; done
sign_in "$P_GH"

declare -A LABEL=(
  [nginx]="nginx TLS proxy (no auth)" [bare]="bare Pingora passthrough" [gh-public]="Gatehouse, public route"
  [gh-auth]="Gatehouse, signed in" [caddy]="Caddy 2.6 (no auth)" [apache]="Apache + mod_auth_openidc, signed in")
port_of() { case "$1" in nginx) echo "$P_NGX" ;; bare) echo "$P_PT" ;; gh-*) echo "$P_GH" ;; caddy) echo "$P_CADDY" ;; apache) echo "$P_APACHE" ;; esac; }
host_of() { [[ "$1" == gh-public ]] && echo public.localhost || echo assistant.localhost; }
cookie_of() { # TARGET -> the Cookie header value (Apache's is made fresh: see below)
  case "$1" in
    gh-auth) echo "$COOKIE" ;;
    # mod_auth_openidc re-seals a session cookie older than 60 s on every request; wrk would
    # keep sending the old one, so Apache gets a new sign-in right before each run.
    apache) apache_login "https://assistant.localhost:$P_APACHE/" alice alice-pass "$CA" ;;
  esac
}
cpu_ticks() { # PID... -> utime+stime of every thread, in clock ticks
  local p t=0
  for p in "$@"; do
    t=$((t + $(cat /proc/"$p"/task/*/stat 2>/dev/null | awk '{ s += $14 + $15 } END { print s + 0 }')))
  done
  echo "$t"
}
HZ="$(getconf CLK_TCK)"
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'; }
RESULTS="$WORK/results"
: >"$RESULTS"
measure() { # PROTO TARGET
  local proto="$1" t="$2" port host cookie out pids t0 t1 n rps p50 p99 bad
  port="$(port_of "$t")"; host="$(host_of "$t")"; cookie="$(cookie_of "$t")"
  [[ "$t" != apache ]] || [[ -n "$cookie" ]] || die "Apache sign-in failed (logs in $WORK)"
  mapfile -t pids < <(pids_of "$t")
  t0="$(cpu_ticks "${pids[@]}")"
  if [[ "$proto" == h1 ]]; then
    out="$(wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Host: $host:$port" ${cookie:+-H "Cookie: $cookie"} "https://127.0.0.1:$port/")"
    n="$(awk '/requests in/ { print $1 }' <<<"$out")"
    rps="$(awk '/^Requests\/sec/ { print $2 }' <<<"$out")"
    p50="$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")"
    p99="$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")"
    bad="$(awk '/Non-2xx|Socket errors/ { print }' <<<"$out" | tr '\n' ' ')"
  else
    out="$(h2load -t2 -c"$CONNECTIONS" -m10 -D"$DURATION" --warm-up-time=1 -H ":authority: $host:$port" ${cookie:+-H "cookie: $cookie"} "https://127.0.0.1:$port/" 2>&1)"
    n="$(awk '/^requests:/ { print $8 }' <<<"$out")"
    rps="$(awk '/^finished in/ { gsub(",", "", $4); print $4 }' <<<"$out")"
    # h2load gives min/max/mean/sd of request time, no percentiles: for h2 the "p50" column
    # holds the mean and the "p99" column the max.
    p50="$(to_ms "$(awk '/^time for request:/ { print $6 }' <<<"$out")")"
    p99="$(to_ms "$(awk '/^time for request:/ { print $5 }' <<<"$out")")"
    local non2xx
    non2xx="$(awk '/^status codes:/ { gsub(",", ""); print $5 + $7 + $9 }' <<<"$out")"
    bad="$([[ "${non2xx:-0}" == 0 ]] || echo "non-2xx: $non2xx")"
  fi
  t1="$(cpu_ticks "${pids[@]}")"
  [[ -n "$n" && "$n" != 0 ]] || die "$proto $t: no requests completed: $out"
  local cpu
  cpu="$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v n="$n" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')"
  printf '%-3s %-40s %9s req/s  p50 %6s ms  p99 %6s ms  CPU %6s us/req%s\n' "$proto" "${LABEL[$t]}" "$rps" "$p50" "$p99" "$cpu" "${bad:+  $bad}"
  echo "$proto $t $rps $p50 $p99 $cpu" >>"$RESULTS"
}

log "measuring: ${ROUNDS} round(s) of ${DURATION} s per target, HTTP/1.1$([[ "$H2" == 1 ]] && echo " and HTTP/2"), alternating"
H2_TARGETS=(nginx bare gh-public gh-auth)
[[ "$PEERS" == 1 ]] && H2_TARGETS+=(caddy)
for ((r = 1; r <= ROUNDS; r++)); do
  for t in "${TARGETS[@]}"; do measure h1 "$t"; done
  if [[ "$H2" == 1 ]]; then for t in "${H2_TARGETS[@]}"; do measure h2 "$t"; done; fi
done

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR == 0) print 0; else print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
med() { awk -v p="$1" -v t="$2" -v c="$3" '$1 == p && $2 == t { print $c }' "$RESULTS" | median; }
echo
printf 'Medians over %s round(s), %s s each, %s connections, every proxy %s worker(s), %s cores\n' "$ROUNDS" "$DURATION" "$CONNECTIONS" "$THREADS" "$(nproc)"
echo "(h2: h2load -m10, so 10 requests in flight per connection; its p50/p99 columns are the mean and the max)"
printf '%-3s %-40s %9s %7s %7s %9s %8s %8s %8s\n' "" target "req/s" "p50 ms" "p99 ms" "CPU us/r" "RSS idle" "RSS peak" "/ nginx"
for proto in h1 h2; do
  if [[ "$proto" == h1 ]]; then
    list=("${TARGETS[@]}")
  else
    [[ "$H2" == 1 ]] || continue
    list=("${H2_TARGETS[@]}")
  fi
  base="$(med "$proto" nginx 3)"
  for t in "${list[@]}"; do
    rps="$(med "$proto" "$t" 3)"
    printf '%-3s %-40s %9.0f %7s %7s %9s %7sM %7sM %8.2f\n' "$proto" "${LABEL[$t]}" "$rps" "$(med "$proto" "$t" 4)" "$(med "$proto" "$t" 5)" \
      "$(med "$proto" "$t" 6)" "$((RSS_IDLE[$t] / 1024))" "$(($(hwm_of "$t") / 1024))" "$(awk -v a="$rps" -v b="$base" 'BEGIN { print a / b }')"
  done
done
echo
# Issue 15's targets, as ratios in this run.
NGX="$(med h1 nginx 3)"; BARE="$(med h1 bare 3)"; AUTH="$(med h1 gh-auth 3)"; PUB="$(med h1 gh-public 3)"
NGX99="$(med h1 nginx 5)"; AUTH99="$(med h1 gh-auth 5)"
verdict() { awk -v v="$1" -v t="$2" 'BEGIN { print (v >= t) ? "met" : "NOT met" }'; }
r() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "targets (HTTP/1.1 over TLS, medians of this run):"
echo "  signed in / nginx TLS proxy      $(r "$AUTH" "$NGX")  (>= 0.60: $(verdict "$(r "$AUTH" "$NGX")" 0.60))"
echo "  signed in / bare passthrough     $(r "$AUTH" "$BARE")  (>= 0.90: $(verdict "$(r "$AUTH" "$BARE")" 0.90))"
if [[ "$PEERS" == 1 ]]; then
  AP="$(med h1 apache 3)"
  echo "  signed in / Apache + mod_auth_openidc  $(r "$AUTH" "$AP")  (>= 3: $(verdict "$(r "$AUTH" "$AP")" 3))"
fi
echo "  p99 signed in / p99 nginx        $(r "$AUTH99" "$NGX99")  (<= 1.5: $(awk -v v="$(r "$AUTH99" "$NGX99")" 'BEGIN { print (v <= 1.5) ? "met" : "NOT met" }'))"
echo "  (public / nginx $(r "$PUB" "$NGX"); bare / nginx $(r "$BARE" "$NGX"); signed in / public $(r "$AUTH" "$PUB"))"
if [[ "$PLAIN" == 1 ]]; then
  echo
  log "plain HTTP: bench/plain.sh"
  SKIP_BUILD=1 ROUNDS="$ROUNDS" DURATION="$DURATION" bench/plain.sh
fi
