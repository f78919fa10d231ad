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
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-10}"
THREADS="${THREADS:-2}"
BIN="${GATEHOUSE_BIN:-target/release/gatehouse}"
WORK="$(mktemp -d /tmp/gatehouse-tls-bench-XXXXXX)"
PIDS=()
die() { echo "tls.sh: $*" >&2; exit 1; }
log() { printf '==> %s\n' "$*" >&2; }
cleanup() {
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
start() { # NAME LOG CMD... ; the PID in PID_<NAME>
  local name="$1" logf="$2"; shift 2
  "$@" >"$logf" 2>&1 &
  PIDS+=("$!"); eval "PID_${name}=$!"
}
wait_ok() { # NAME URL [curl args...] : until 200, at most 30 s
  local name="$1" url="$2"; shift 2
  local deadline=$((SECONDS + 30))
  until [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" || true)" == 200 ]]; do
    ((SECONDS < deadline)) || die "$name not ready at $url after 30 s (logs in $WORK)"
    sleep 0.2
  done
}

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
if ((${#need[@]})); then
  [[ $(id -u) == 0 ]] || die "install ${need[*]} first"
  added=0
  # Keep the package's postinst from starting a system nginx on :80.
  [[ -e /usr/sbin/policy-rc.d ]] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && added=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
  [[ $added == 1 ]] && rm -f /usr/sbin/policy-rc.d
fi
GATEHOUSE_NEED_CHROMIUM=0 tests/harness/install-deps.sh >/dev/null
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "cargo build --release -p gatehouse"
  cargo build --release -p gatehouse
fi
[[ -x "$BIN" ]] || die "no gatehouse binary at $BIN"
NGINX="$(command -v nginx)"

read -r P_UP P_NGX P_IDP P_GH < <(node -e '
  const net = require("net"); const s = [];
  (async () => {
    for (let i = 0; i < 4; i++) s.push(await new Promise((r) => { const x = net.createServer(); x.listen(0, "127.0.0.1", () => r(x)); }));
    console.log(s.map((x) => x.address().port).join(" ")); s.forEach((x) => x.close());
  })();')
CERTS="$(node tests/harness/certs.mjs "$WORK/certs")"
CERT="$(node -e 'console.log(JSON.parse(process.argv[1]).cert)' "$CERTS")"
KEY="$(node -e 'console.log(JSON.parse(process.argv[1]).key)' "$CERTS")"
CA="$(node -e 'console.log(JSON.parse(process.argv[1]).caCert)' "$CERTS")"
RESOLVE=(--resolve "assistant.localhost:$P_GH:127.0.0.1" --resolve "public.localhost:$P_GH:127.0.0.1" --resolve "assistant.localhost:$P_NGX:127.0.0.1" --cacert "$CA")

nginx_conf() { # DIR WORKERS BODY
  mkdir -p "$1/tmp"
  cat <<CONF
daemon off; master_process on; worker_processes $2; pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; }
http {
  client_body_temp_path $1/tmp; proxy_temp_path $1/tmp; fastcgi_temp_path $1/tmp;
  uwsgi_temp_path $1/tmp; scgi_temp_path $1/tmp;
  keepalive_requests 1000000;
  $3
}
CONF
}
UP="$WORK/upstream"; mkdir -p "$UP"
nginx_conf "$UP" 1 "access_log off; server { listen 127.0.0.1:$P_UP; location / { return 200 \"ok\n\"; } }" >"$UP/nginx.conf"
start UP "$UP/out.log" "$NGINX" -p "$UP" -c "$UP/nginx.conf"
NX="$WORK/nginx-tls"; mkdir -p "$NX"
nginx_conf "$NX" "$THREADS" "access_log $NX/access.log;
  upstream backend { server 127.0.0.1:$P_UP; keepalive 128; }
  server {
    listen 127.0.0.1:$P_NGX ssl; server_name assistant.localhost;
    ssl_certificate $CERT; ssl_certificate_key $KEY; ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_set_header X-Forwarded-For \$remote_addr; proxy_set_header X-Forwarded-Proto \$scheme; }
  }" >"$NX/nginx.conf"
start NX "$NX/out.log" "$NGINX" -p "$NX" -c "$NX/nginx.conf"
wait_ok nginx-tls "https://assistant.localhost:$P_NGX/" "${RESOLVE[@]}"

CLIENT_SECRET="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
start IDP "$WORK/idp.log" node tests/harness/idp.mjs --port "$P_IDP" --host 127.0.0.1 \
  --client-id gatehouse-bench --client-secret "$CLIENT_SECRET" \
  --redirect-uri "https://assistant.localhost:$P_GH/.gatehouse/callback"
wait_ok idp "http://127.0.0.1:$P_IDP/.well-known/openid-configuration"
GH="$WORK/gatehouse"; mkdir -p "$GH"
cat >"$GH/gatehouse.yaml" <<CONF
address: 127.0.0.1:$P_GH
certificate_file: $CERT
certificate_key_file: $KEY
idp_provider: oidc
idp_provider_url: http://127.0.0.1:$P_IDP
idp_client_id: gatehouse-bench
idp_client_secret: $CLIENT_SECRET
cookie_secret: $(head -c 32 /dev/urandom | base64)
allowed_domains: [example.com]
state_dir: $GH/state
routes:
  - from: https://assistant.localhost
    to: http://127.0.0.1:$P_UP
    pass_identity_headers: true
  - from: https://public.localhost
    to: http://127.0.0.1:$P_UP
    allow_public_unauthenticated_access: true
CONF
start GH "$GH/gatehouse.log" env -u RUST_LOG "$BIN" serve --config "$GH/gatehouse.yaml" --threads "$THREADS"
wait_ok gatehouse "https://public.localhost:$P_GH/.gatehouse/health" "${RESOLVE[@]}"
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
RSS_IDLE="$(rss "$PID_GH")"
COOKIE="$(NODE_EXTRA_CA_CERTS="$CA" timeout 60 node bench/login.mjs "https://assistant.localhost:$P_GH/" alice alice-pass)" ||
  die "sign-in failed (logs in $WORK)"
[[ "$(curl -s "${RESOLVE[@]}" -H "Cookie: $COOKIE" "https://assistant.localhost:$P_GH/")" == ok ]] ||
  die "the signed-in route does not reach the upstream"

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
