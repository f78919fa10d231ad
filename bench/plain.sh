#!/usr/bin/env bash
# Plain HTTP: Gatehouse vs nginx on loopback, same upstream, alternating runs (bench/run.sh is the
# over-TLS bench of every target and runs this one with PLAIN=1). See bench/README.md.
#
#   bench/plain.sh                                # ROUNDS=2 DURATION=10 CONNECTIONS=64
#   ROUNDS=3 DURATION=15 bench/plain.sh
#   SKIP_BUILD=1 bench/plain.sh                   # reuse target/release/gatehouse
#
# Env: ROUNDS (2), DURATION seconds (10), CONNECTIONS (64), WRK_THREADS (2), PROXY_THREADS (2),
#      WARMUP seconds (3), VARIANT_D (1 = also run Gatehouse with RUST_LOG=warn), SKIP_BUILD (0),
#      GATEHOUSE_BIN (target/release/gatehouse), KEEP_WORK (0 = delete the temp dir at the end).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-64}"
WRK_THREADS="${WRK_THREADS:-2}"
PROXY_THREADS="${PROXY_THREADS:-2}"
WARMUP="${WARMUP:-3}"
VARIANT_D="${VARIANT_D:-1}"
SKIP_BUILD="${SKIP_BUILD:-0}"
KEEP_WORK="${KEEP_WORK:-0}"
BIN="${GATEHOUSE_BIN:-target/release/gatehouse}"
RESULTS="$ROOT/bench/results"

for v in ROUNDS DURATION CONNECTIONS WRK_THREADS PROXY_THREADS WARMUP; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "error: $v must be a positive integer (got '${!v}')" >&2; exit 2; }
done

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- processes and cleanup
WORK="$(mktemp -d /tmp/gatehouse-bench.XXXXXX)"
PIDS=()   # every process this script started, stopped in reverse order by PID

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local i pid
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid="${PIDS[$i]}"
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "warning: PID $pid still running after 10 s, sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  if [[ "$KEEP_WORK" == 1 || $rc -ne 0 ]]; then
    echo "work dir kept: $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME LOGFILE CMD... : start in the background, remember the PID.
start() {
  local name="$1" logf="$2"
  shift 2
  "$@" >"$logf" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  eval "PID_${name}=$pid"
}

alive_or_die() { # PID NAME LOGFILE
  kill -0 "$1" 2>/dev/null || { echo "--- $3" >&2; tail -n 30 "$3" >&2; die "$2 (PID $1) exited early"; }
}

# wait_http NAME PID LOGFILE URL [HOST] : until the URL answers 200, at most 30 s.
wait_http() {
  local name="$1" pid="$2" logf="$3" url="$4" host="${5:-}"
  local deadline=$((SECONDS + 30)) code
  while :; do
    alive_or_die "$pid" "$name" "$logf"
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 ${host:+-H "Host: $host"} "$url" || true)"
    [[ "$code" == 200 ]] && return 0
    ((SECONDS < deadline)) || { tail -n 30 "$logf" >&2; die "$name not ready at $url after 30 s (last status $code)"; }
    sleep 0.2
  done
}

# ---------------------------------------------------------------- tools
need_pkgs=()
command -v wrk >/dev/null 2>&1 || need_pkgs+=(wrk)
command -v nginx >/dev/null 2>&1 || need_pkgs+=(nginx-light)
if ((${#need_pkgs[@]})); then
  log "installing ${need_pkgs[*]}"
  # Don't let the package's postinst start a system nginx on :80.
  policy_added=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_added=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_pkgs[@]}" ||
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_pkgs[@]}"; }
  [[ $policy_added == 1 ]] && rm -f /usr/sbin/policy-rc.d
fi
for c in wrk nginx curl node cargo; do
  command -v "$c" >/dev/null 2>&1 || die "$c not found"
done
log "npm packages (tests/e2e, for the test IdP)"
GATEHOUSE_NEED_CHROMIUM=0 tests/harness/install-deps.sh
NGINX="$(command -v nginx)"
CLK_TCK="$(getconf CLK_TCK)"

# ---------------------------------------------------------------- build
if [[ "$SKIP_BUILD" != 1 ]]; then
  log "cargo build --release -p gatehouse (a cold fat-LTO build takes ~6-10 min)"
  timeout 1800 cargo build --release -p gatehouse
fi
[[ -x "$BIN" ]] || die "gatehouse binary not found at $BIN"
BIN="$(realpath "$BIN")"

# ---------------------------------------------------------------- ports
# Distinct free ports, held open together so none is handed out twice.
read -r P_UP P_UPSTAT P_NGX P_IDP P_GH P_GHD < <(node -e '
  const net = require("net"); const n = 6; const srvs = [];
  (async () => {
    for (let i = 0; i < n; i++) srvs.push(await new Promise((r, j) => { const s = net.createServer(); s.once("error", j); s.listen(0, "127.0.0.1", () => r(s)); }));
    console.log(srvs.map((s) => s.address().port).join(" "));
    srvs.forEach((s) => s.close());
  })();')
[[ -n "${P_GHD:-}" ]] || die "could not pick free ports"

# ---------------------------------------------------------------- upstream (nginx, 1 worker)
nginx_common() { # PREFIX
  cat <<EOF
daemon off;
master_process on;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
EOF
}
nginx_http_common() { # PREFIX
  cat <<EOF
  client_body_temp_path $1/tmp/body;
  proxy_temp_path $1/tmp/proxy;
  fastcgi_temp_path $1/tmp/fastcgi;
  uwsgi_temp_path $1/tmp/uwsgi;
  scgi_temp_path $1/tmp/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
EOF
}

UP="$WORK/upstream"
mkdir -p "$UP/tmp"
{
  nginx_common "$UP"
  echo "worker_processes 1;"
  echo "http {"
  nginx_http_common "$UP"
  cat <<EOF
  access_log off;
  server {
    listen 127.0.0.1:$P_UP;
    location / { default_type text/plain; return 200 "ok\n"; }
  }
  server {
    listen 127.0.0.1:$P_UPSTAT;
    location / { stub_status; }
  }
}
EOF
} >"$UP/nginx.conf"
log "upstream: nginx, 1 worker, 127.0.0.1:$P_UP (request counter on :$P_UPSTAT)"
"$NGINX" -t -q -p "$UP" -c "$UP/nginx.conf" || die "upstream nginx config invalid"
start UP "$UP/stdout.log" "$NGINX" -p "$UP" -c "$UP/nginx.conf"
wait_http upstream "$PID_UP" "$UP/error.log" "http://127.0.0.1:$P_UP/"

# stub_status: "requests" is a global counter (every request, any connection); "accepts" counts
# connections. Each read is itself a request on a new connection: subtract one of each.
upstream_counters() { # -> "accepts requests"
  curl -s --max-time 5 "http://127.0.0.1:$P_UPSTAT/" | awk 'NR == 3 { print $1, $3 }'
}

# ---------------------------------------------------------------- (a) nginx reverse proxy, 2 workers
NX="$WORK/nginx-proxy"
mkdir -p "$NX/tmp"
{
  nginx_common "$NX"
  echo "worker_processes $PROXY_THREADS;"
  echo "http {"
  nginx_http_common "$NX"
  cat <<EOF
  access_log $NX/access.log;
  upstream backend {
    server 127.0.0.1:$P_UP;
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$P_NGX;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host 127.0.0.1:$P_UP;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$http_host;
    }
  }
}
EOF
} >"$NX/nginx.conf"
log "(a) nginx reverse proxy, $PROXY_THREADS workers, 127.0.0.1:$P_NGX"
"$NGINX" -t -q -p "$NX" -c "$NX/nginx.conf" || die "proxy nginx config invalid"
start NX "$NX/stdout.log" "$NGINX" -p "$NX" -c "$NX/nginx.conf"
wait_http nginx-proxy "$PID_NX" "$NX/error.log" "http://127.0.0.1:$P_NGX/"

# ---------------------------------------------------------------- the IdP (real oidc-provider)
CLIENT_ID=gatehouse-bench
CLIENT_SECRET="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
COOKIE_SECRET="$(head -c 32 /dev/urandom | base64)"
ISSUER="http://127.0.0.1:$P_IDP"
log "IdP: tests/harness/idp.mjs at $ISSUER"
start IDP "$WORK/idp.log" node tests/harness/idp.mjs --port "$P_IDP" --host 127.0.0.1 \
  --client-id "$CLIENT_ID" --client-secret "$CLIENT_SECRET" \
  --redirect-uri "http://assistant.localhost:$P_GH/.gatehouse/callback" \
  --redirect-uri "http://assistant.localhost:$P_GHD/.gatehouse/callback"
wait_http idp "$PID_IDP" "$WORK/idp.log" "$ISSUER/.well-known/openid-configuration"

# ---------------------------------------------------------------- Gatehouse
gatehouse_config() { # PORT
  cat <<EOF
address: 127.0.0.1:$1
insecure_server: true
idp_provider: oidc
idp_provider_url: $ISSUER
idp_client_id: $CLIENT_ID
idp_client_secret: $CLIENT_SECRET
cookie_secret: $COOKIE_SECRET
allowed_domains: [example.com]
routes:
  - from: http://assistant.localhost
    to: http://127.0.0.1:$P_UP
    pass_identity_headers: true
  - from: http://public.localhost
    to: http://127.0.0.1:$P_UP
    allow_public_unauthenticated_access: true
EOF
}
GH="$WORK/gatehouse"
mkdir -p "$GH"
gatehouse_config "$P_GH" >"$GH/gatehouse.yaml"
"$BIN" check --config "$GH/gatehouse.yaml" || die "gatehouse check refused the bench config ($GH/gatehouse.yaml)"

log "(b)/(c) Gatehouse, --threads $PROXY_THREADS, default logging (stderr -> $GH/gatehouse.log), 127.0.0.1:$P_GH"
start GH "$GH/gatehouse.log" env -u RUST_LOG "$BIN" serve --config "$GH/gatehouse.yaml" --threads "$PROXY_THREADS"
wait_http gatehouse "$PID_GH" "$GH/gatehouse.log" "http://127.0.0.1:$P_GH/.gatehouse/health" public.localhost
sleep 1
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
GH_RSS_IDLE="$(rss_kb "$PID_GH")"

if [[ "$VARIANT_D" == 1 ]]; then
  GHD="$WORK/gatehouse-d"
  mkdir -p "$GHD"
  gatehouse_config "$P_GHD" >"$GHD/gatehouse.yaml"
  log "(d) Gatehouse with RUST_LOG=warn,pingora=warn (no access log), 127.0.0.1:$P_GHD"
  start GHD "$GHD/gatehouse.log" env RUST_LOG=warn,pingora=warn "$BIN" serve --config "$GHD/gatehouse.yaml" --threads "$PROXY_THREADS"
  wait_http gatehouse-d "$PID_GHD" "$GHD/gatehouse.log" "http://127.0.0.1:$P_GHD/.gatehouse/health" public.localhost
fi

# ---------------------------------------------------------------- sign in and check (c)
log "signing in as alice through Gatehouse and the IdP"
COOKIE="$(timeout 60 node bench/login.mjs "http://assistant.localhost:$P_GH/" alice alice-pass)" ||
  die "sign-in through the IdP failed (see above; logs in $WORK)"
[[ "$COOKIE" == _pomerium=* ]] || die "unexpected cookie line: ${COOKIE:0:60}"

CHECKS="$WORK/checks.txt"
CHECK_SHORT=()
check_status() { # LABEL SHORT EXPECTED PORT HOST [COOKIE]
  local label="$1" short="$2" want="$3" port="$4" host="$5" cookie="${6:-}" out code loc
  out="$(curl -s -o "$WORK/check-body" -D - --max-time 5 -H "Host: $host:$port" ${cookie:+-H "Cookie: $cookie"} "http://127.0.0.1:$port/")" ||
    die "curl failed for $label"
  code="$(printf '%s' "$out" | awk 'NR == 1 { print $2 }')"
  loc="$(printf '%s' "$out" | tr -d '\r' | awk 'tolower($1) == "location:" { print $2 }')"
  printf '  %-48s -> %s%s\n' "$label" "$code" "${loc:+ (Location: ${loc%%\?*}?...)}" | tee -a "$CHECKS"
  CHECK_SHORT+=("$short $code${loc:+ -> ${loc%%\?*}}")
  [[ "$code" == "$want" ]] || die "$label: expected $want, got $code"
}
: >"$CHECKS"
check_status "(c) assistant.localhost with the session cookie" "c+cookie" 200 "$P_GH" assistant.localhost "$COOKIE"
grep -qx 'ok' "$WORK/check-body" || die "(c) with cookie did not return the upstream's body"
check_status "(c) assistant.localhost without a cookie" "c no cookie" 302 "$P_GH" assistant.localhost
check_status "(b) public.localhost without a cookie" "b" 200 "$P_GH" public.localhost
if [[ "$VARIANT_D" == 1 ]]; then
  check_status "(d) assistant.localhost with the cookie" "d+cookie" 200 "$P_GHD" assistant.localhost "$COOKIE"
fi

# ---------------------------------------------------------------- measuring
cpu_ticks() { # PID... -> utime+stime summed
  local t=0 p f
  for p in "$@"; do
    [[ -r /proc/$p/stat ]] || continue
    f="$(sed 's/^.*) //' "/proc/$p/stat")"
    # after the ')' the fields start at 3 (state): utime = 14, stime = 15 -> 12th and 13th here
    t=$((t + $(awk '{ print $12 + $13 }' <<<"$f")))
  done
  echo "$t"
}
pids_of() { # TARGET -> the proxy's PIDs (nginx: master + workers)
  case "$1" in
    a) echo "$PID_NX $(ps -o pid= --ppid "$PID_NX" | tr '\n' ' ')" ;;
    b | c) echo "$PID_GH" ;;
    d) echo "$PID_GHD" ;;
  esac
}
target_args() { # TARGET -> wrk header/url arguments, one per line
  case "$1" in
    a) printf '%s\n' -H "Host: public.localhost" "http://127.0.0.1:$P_NGX/" ;;
    b) printf '%s\n' -H "Host: public.localhost:$P_GH" "http://127.0.0.1:$P_GH/" ;;
    c) printf '%s\n' -H "Host: assistant.localhost:$P_GH" -H "Cookie: $COOKIE" "http://127.0.0.1:$P_GH/" ;;
    d) printf '%s\n' -H "Host: assistant.localhost:$P_GHD" -H "Cookie: $COOKIE" "http://127.0.0.1:$P_GHD/" ;;
  esac
}
logfile_of() {
  case "$1" in a) echo "$NX/access.log" ;; b | c) echo "$GH/gatehouse.log" ;; d) echo "$GHD/gatehouse.log" ;; esac
}
fsize() { stat -c %s "$1" 2>/dev/null || echo 0; }

to_ms() { # 2.08ms / 950.00us / 1.20s -> ms
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.2f", n }'
}

ROWS="$WORK/rows.tsv"   # target round rps p50 p99 reqs non2xx sockerr cpu_us up_hits up_conns log_b up_cpu_us
: >"$ROWS"
FAIL=()

run_wrk() { # TARGET SECONDS OUTFILE
  local -a args
  mapfile -t args < <(target_args "$1")
  timeout $(($2 + 60)) wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$2"s --latency "${args[@]}" >"$3" 2>&1 ||
    { cat "$3" >&2; die "wrk failed or timed out for target $1"; }
}

measure() { # TARGET ROUND
  local t="$1" r="$2" out="$WORK/wrk-$1-$2.txt" pids c0 c1 u0 u1 s0 s1 h0 h1 l0 l1
  pids="$(pids_of "$t")"
  for p in $pids; do kill -0 "$p" 2>/dev/null || die "proxy for target $t (PID $p) is not running"; done
  read -r s0 h0 < <(upstream_counters)
  l0="$(fsize "$(logfile_of "$t")")"
  # shellcheck disable=SC2086
  c0="$(cpu_ticks $pids)"
  u0="$(cpu_ticks "$PID_UP" $(ps -o pid= --ppid "$PID_UP"))"
  run_wrk "$t" "$DURATION" "$out"
  # shellcheck disable=SC2086
  c1="$(cpu_ticks $pids)"
  u1="$(cpu_ticks "$PID_UP" $(ps -o pid= --ppid "$PID_UP"))"
  l1="$(fsize "$(logfile_of "$t")")"
  read -r s1 h1 < <(upstream_counters)

  local reqs rps p50 p99 non2xx sockerr
  reqs="$(awk '/requests in/ { print $1 }' "$out")"
  rps="$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")"
  p50="$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")"
  p99="$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")"
  non2xx="$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")"
  sockerr="$(awk -F'[ ,]+' '/Socket errors:/ { print $4 + $6 + $8 + $10 }' "$out")"
  [[ -n "$reqs" && -n "$rps" ]] || { cat "$out" >&2; die "could not parse wrk output for $t"; }
  local hits=$((h1 - h0 - 1)) conns=$((s1 - s0 - 1))
  local cpu_us up_us log_b
  cpu_us="$(awk -v d=$((c1 - c0)) -v n="$reqs" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')"
  up_us="$(awk -v d=$((u1 - u0)) -v n="$reqs" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')"
  log_b="$(awk -v d=$((l1 - l0)) -v n="$reqs" 'BEGIN { printf "%.0f", d / n }')"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$t" "$r" "$rps" "$p50" "$p99" "$reqs" "${non2xx:-0}" "${sockerr:-0}" "$cpu_us" "$hits" "$conns" "$log_b" "$up_us" >>"$ROWS"
  printf '  %s round %s: %s req/s, p50 %s ms, p99 %s ms, %s µs CPU/req, upstream hits %s / wrk %s\n' \
    "$t" "$r" "$rps" "$p50" "$p99" "$cpu_us" "$hits" "$reqs" >&2
  # Every response wrk counted must have come from the upstream (a 302 is not a "non-2xx" for wrk).
  if ((hits < reqs * 99 / 100)) || [[ "${non2xx:-0}" != 0 ]]; then
    FAIL+=("$t round $r: upstream hits $hits < wrk requests $reqs, or non-2xx ${non2xx:-0}")
  fi
}

TARGETS=(a b c)
[[ "$VARIANT_D" == 1 ]] && TARGETS+=(d)

log "warm-up (${WARMUP}s each)"
for t in "${TARGETS[@]}"; do run_wrk "$t" "$WARMUP" "$WORK/warmup-$t.txt"; done

log "measuring: ${TARGETS[*]} alternating, $ROUNDS round(s), wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s --latency"
for ((r = 1; r <= ROUNDS; r++)); do
  for t in "${TARGETS[@]}"; do measure "$t" "$r"; done
done

GH_RSS_AFTER="$(rss_kb "$PID_GH")"
GHD_RSS_AFTER=""
[[ "$VARIANT_D" == 1 ]] && GHD_RSS_AFTER="$(rss_kb "$PID_GHD")"
GH_THREADS="$(awk '/^Threads:/ { print $2 }' "/proc/$PID_GH/status")"

# ---------------------------------------------------------------- summary
mkdir -p "$RESULTS"
SUMMARY="$WORK/summary.txt"
{
  echo "Gatehouse benchmark $(date -u '+%Y-%m-%d %H:%M:%SZ') at $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- crates 2>/dev/null || echo ' + uncommitted crates/'); $(nproc) cores; nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///'); wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s --latency, $ROUNDS round(s) alternating ${TARGETS[*]}"
  echo "127.0.0.1, plain HTTP/1.1 (Gatehouse insecure_server: true, so TLS cost is NOT included); wrk, upstream and proxy share the cores."
  echo "Upstream: nginx 1 worker, return 200 \"ok\". Targets:"
  echo "  a nginx reverse proxy, $PROXY_THREADS workers, upstream keepalive 128, access_log on (the no-auth limit)"
  echo "  b Gatehouse --threads $PROXY_THREADS, public route (allow_public_unauthenticated_access), default logging (access log to a file)"
  echo "  c Gatehouse --threads $PROXY_THREADS, authenticated route (allowed_domains, pass_identity_headers) with alice's real session cookie, default logging"
  [[ "$VARIANT_D" == 1 ]] && echo "  d as c, separate process with RUST_LOG=warn,pingora=warn (no per-request access-log line)"
  echo "Checks before the runs (curl): $(IFS=';'; echo "${CHECK_SHORT[*]}" | sed 's/;/; /g')"
  echo "Per run. cpu_us/r = proxy utime+stime per request (nginx: master+workers); up_hits/conns = upstream requests/new connections during the run; log_B = proxy log bytes/request; up_us/r = upstream CPU/request:"
  printf '%-3s %-3s %9s %8s %8s %9s %6s %6s %8s %9s %6s %6s %7s\n' \
    tgt rnd req/s p50_ms p99_ms requests non2xx sockerr cpu_us/r up_hits conns log_B up_us/r
  sort -k1,1 -k2,2n "$ROWS" | awk -F'\t' '{ printf "%-3s %-3s %9s %8s %8s %9s %6s %6s %8s %9s %6s %6s %7s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 }'
  echo "Medians per target:"
  printf '%-3s %9s %8s %8s %8s\n' tgt req/s p50_ms p99_ms cpu_us/r
  for t in "${TARGETS[@]}"; do
    med() { # COLUMN [FORMAT]
      awk -F'\t' -v t="$t" -v c="$1" '$1 == t { print $c }' "$ROWS" | sort -g |
        awk -v f="${2:-%.2f}" '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf f "\n", m }'; }
    printf '%-3s %9s %8s %8s %8s\n' "$t" "$(med 3 %.0f)" "$(med 4)" "$(med 5)" "$(med 9 %.1f)"
    eval "MED_RPS_$t=$(med 3 %.0f) MED_CPU_$t=$(med 9 %.1f)"
  done
  ratio() { awk -v x="$1" -v y="$2" 'BEGIN { printf "%.2f", (y > 0) ? x / y : 0 }'; }
  echo "Throughput ratios (median req/s): b/a $(ratio "$MED_RPS_b" "$MED_RPS_a")  c/a $(ratio "$MED_RPS_c" "$MED_RPS_a")  c/b $(ratio "$MED_RPS_c" "$MED_RPS_b")$([[ "$VARIANT_D" == 1 ]] && echo "  d/c $(ratio "$MED_RPS_d" "$MED_RPS_c")")"
  echo "CPU/request ratios:               b/a $(ratio "$MED_CPU_b" "$MED_CPU_a")  c/a $(ratio "$MED_CPU_c" "$MED_CPU_a")  c/b $(ratio "$MED_CPU_c" "$MED_CPU_b")$([[ "$VARIANT_D" == 1 ]] && echo "  c-d (access log) $(awk -v c="$MED_CPU_c" -v d="$MED_CPU_d" 'BEGIN { printf "%.1f", c - d }') µs")"
  echo "Gatehouse binary $(stat -c %s "$BIN" | awk '{ printf "%.1f MB", $1 / 1e6 }') ($BIN); RSS (b/c process) idle after start $((GH_RSS_IDLE / 1024)) MB, after the runs $((GH_RSS_AFTER / 1024)) MB$([[ "$VARIANT_D" == 1 ]] && echo " (d process: $((GHD_RSS_AFTER / 1024)) MB)"); $GH_THREADS OS threads"
  echo "Gatehouse log (b/c): $(wc -l <"$GH/gatehouse.log") lines, $(grep -c ' WARN ' "$GH/gatehouse.log" || true) WARN, $(grep -c ' ERROR ' "$GH/gatehouse.log" || true) ERROR$([[ "$VARIANT_D" == 1 ]] && echo "; (d): $(wc -l <"$GHD/gatehouse.log") lines, $(grep -c ' ERROR ' "$GHD/gatehouse.log" || true) ERROR"). WARN/ERROR lines:"
  grep -E ' (WARN|ERROR) ' "$GH/gatehouse.log" | sed -E 's/^[0-9T:.Z-]+ +//' | sort | uniq -c | sort -rn | head -n 8 | sed 's/^/    /' || true
  echo "Sample access-log line (c): $(grep -m1 'gatehouse::access.*host=assistant.localhost.*status=200' "$GH/gatehouse.log" | cut -c1-300 || true)"
  if ((${#FAIL[@]})); then
    echo
    echo "FAILED:"
    printf '  %s\n' "${FAIL[@]}"
  fi
} >"$SUMMARY"

cp "$SUMMARY" "$RESULTS/latest.txt"
rm -rf "$RESULTS/latest-raw" && mkdir -p "$RESULTS/latest-raw"
cp "$WORK"/wrk-*.txt "$ROWS" "$RESULTS/latest-raw/"
tail -n 200 "$GH/gatehouse.log" >"$RESULTS/latest-raw/gatehouse.log.tail"
echo
cat "$SUMMARY"
echo
echo "(written to bench/results/latest.txt; raw wrk outputs in bench/results/latest-raw/)"
if ((${#FAIL[@]})); then
  die "some runs did not reach the upstream for every request (see FAILED above)"
fi
