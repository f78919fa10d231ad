# shellcheck shell=bash
# Shared setup of the over-TLS benches (run.sh, streams.sh, idle.sh, reload.sh). Sourced, not run,
# from the repository root, after `set -euo pipefail`. Sourcing only defines things and makes the
# temp dir; each step is a function the bench calls:
#
#   bench_tools           wrk and nginx-light when missing (root), the npm packages, the release
#                         build unless SKIP_BUILD=1, checks $BIN; sets NGINX
#   free_ports N          N distinct free loopback ports on one line
#   bench_certs           throwaway CA and leaf (tests/harness/certs.mjs); sets CERT KEY CA
#   nginx_conf DIR WORKERS BODY [WORKER_CONNECTIONS]
#   start_upstream PORT [STATUS_PORT]      nginx `return 200 "ok\n"` (+ stub_status); PID_UP
#   start_nginx_tls PORT UPSTREAM_PORT [EXTRA_LOCATIONS] [WORKER_CONNECTIONS]
#                         nginx as a TLS reverse proxy, no auth, $THREADS workers; PID_NX, dir $NX
#   start_idp IDP_PORT GATEHOUSE_PORT [MORE_REDIRECT_URIS...]
#                         the test IdP (tests/harness/idp.mjs), client gatehouse-bench; PID_IDP,
#                         IDP_URL, CLIENT_SECRET
#   start_gatehouse PORT UPSTREAM_PORT [EXTRA_TOP_LEVEL_YAML]
#                         Gatehouse over TLS, --threads $THREADS; PID_GH, dir $GH, config $GH/gatehouse.yaml
#   gatehouse_yaml PORT UPSTREAM_PORT [EXTRA]   that config on stdout
#   sign_in PORT          a real sign-in through Gatehouse and the IdP (bench/login.mjs); sets COOKIE
#   rss_kb PID...         VmRSS summed, KB
#   raise_nofile N        the soft open-files limit to at least N (dies above the hard limit)
#   start NAME LOG CMD... CMD in the background, its PID in PIDS and PID_<NAME> (bench/peers.sh
#                         uses it too); die MSG, log MSG, wait_ok NAME URL [curl args]
#
# Every process is started with `start` and stopped by its PID when the bench exits (or earlier
# with stop_pid, or forget_pid once it ended); $WORK is removed at the end unless KEEP_WORK=1.

BENCH="$(basename "$0" .sh)"
THREADS="${THREADS:-2}"
BIN="${GATEHOUSE_BIN:-target/release/gatehouse}"
KEEP_WORK="${KEEP_WORK:-0}"
WORK="$(mktemp -d "/tmp/gatehouse-$BENCH-bench-XXXXXX")"
PIDS=()
die() { echo "$BENCH.sh: $*" >&2; exit 1; }
log() { printf '==> %s\n' "$*" >&2; }
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ "$KEEP_WORK" == 1 ]]; then echo "work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
start() { # NAME LOG CMD... ; the PID in PID_<NAME>
  local name="$1" logf="$2"; shift 2
  "$@" >"$logf" 2>&1 &
  PIDS+=("$!"); eval "PID_${name}=$!"
}
forget_pid() { # PID : wait for one process this script started to end, and forget it
  local p="$1" i rc=0
  wait "$p" 2>/dev/null || rc=$?
  for i in "${!PIDS[@]}"; do [[ "${PIDS[$i]}" == "$p" ]] && unset 'PIDS[i]'; done
  PIDS=("${PIDS[@]}")
  return "$rc"
}
stop_pid() { # PID : stop one process this script started, before the end
  kill "$1" 2>/dev/null || true
  forget_pid "$1" || true
}
wait_ok() { # NAME URL [curl args...] : until 200, at most 30 s
  local name="$1" url="$2"; shift 2
  local deadline=$((SECONDS + 30))
  until [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" || true)" == 200 ]]; do
    ((SECONDS < deadline)) || die "$name not ready at $url after 30 s (logs in $WORK)"
    sleep 0.2
  done
}
rss_kb() { # PID... -> the sum of their VmRSS in KB
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status"))); done
  echo "$t"
}
raise_nofile() { # N : the soft open-files limit to at least N (up to the hard limit)
  local hard
  hard="$(ulimit -Hn)"
  if [[ "$hard" != unlimited ]] && ((hard < $1)); then
    die "needs $1 open files, the hard limit is $hard (raise it, or lower N)"
  fi
  (($(ulimit -Sn) >= $1)) || ulimit -Sn "$1"
}

bench_tools() {
  local need=() added=0
  command -v wrk >/dev/null || need+=(wrk)
  command -v nginx >/dev/null || need+=(nginx-light)
  if ((${#need[@]})); then
    [[ $(id -u) == 0 ]] || die "install ${need[*]} first"
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
}

free_ports() { # N
  node -e '
  const net = require("net"); const s = [];
  (async () => {
    for (let i = 0; i < +process.argv[1]; i++) s.push(await new Promise((r) => { const x = net.createServer(); x.listen(0, "127.0.0.1", () => r(x)); }));
    console.log(s.map((x) => x.address().port).join(" ")); s.forEach((x) => x.close());
  })();' "$1"
}

bench_certs() {
  local certs
  certs="$(node tests/harness/certs.mjs "$WORK/certs")"
  CERT="$(node -e 'console.log(JSON.parse(process.argv[1]).cert)' "$certs")"
  KEY="$(node -e 'console.log(JSON.parse(process.argv[1]).key)' "$certs")"
  CA="$(node -e 'console.log(JSON.parse(process.argv[1]).caCert)' "$certs")"
}

nginx_conf() { # DIR WORKERS BODY [WORKER_CONNECTIONS]
  mkdir -p "$1/tmp"
  cat <<CONF
daemon off; master_process on; worker_processes $2; pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections ${4:-4096}; }
http {
  client_body_temp_path $1/tmp; proxy_temp_path $1/tmp; fastcgi_temp_path $1/tmp;
  uwsgi_temp_path $1/tmp; scgi_temp_path $1/tmp;
  keepalive_requests 1000000;
  $3
}
CONF
}

start_upstream() { # PORT [STATUS_PORT]
  UP="$WORK/upstream"; mkdir -p "$UP"
  local status=""
  [[ -z "${2:-}" ]] || status="
  server { listen 127.0.0.1:$2; location / { stub_status; } }"
  nginx_conf "$UP" 1 "access_log off; server { listen 127.0.0.1:$1; location / { return 200 \"ok\n\"; } }$status" >"$UP/nginx.conf"
  start UP "$UP/out.log" "$NGINX" -p "$UP" -c "$UP/nginx.conf"
}

start_nginx_tls() { # PORT UPSTREAM_PORT [EXTRA_LOCATIONS] [WORKER_CONNECTIONS]
  NX="$WORK/nginx-tls"; mkdir -p "$NX"
  local extra=""
  [[ -z "${3:-}" ]] || extra="
    $3"
  nginx_conf "$NX" "$THREADS" "access_log $NX/access.log;
  upstream backend { server 127.0.0.1:$2; keepalive 128; }
  server {
    listen 127.0.0.1:$1 ssl; server_name assistant.localhost;
    ssl_certificate $CERT; ssl_certificate_key $KEY; ssl_protocols TLSv1.2 TLSv1.3;$extra
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_set_header X-Forwarded-For \$remote_addr; proxy_set_header X-Forwarded-Proto \$scheme; }
  }" "${4:-}" >"$NX/nginx.conf"
  start NX "$NX/out.log" "$NGINX" -p "$NX" -c "$NX/nginx.conf"
  wait_ok nginx-tls "https://assistant.localhost:$1/" --resolve "assistant.localhost:$1:127.0.0.1" --cacert "$CA"
}

start_idp() { # IDP_PORT GATEHOUSE_PORT [MORE_REDIRECT_URIS...] (e.g. bench/peers.sh's apache_redirect_uri)
  local port="$1" gh="$2" u more=()
  shift 2
  for u in "$@"; do more+=(--redirect-uri "$u"); done
  CLIENT_SECRET="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
  IDP_URL="http://127.0.0.1:$port"
  start IDP "$WORK/idp.log" node tests/harness/idp.mjs --port "$port" --host 127.0.0.1 \
    --client-id gatehouse-bench --client-secret "$CLIENT_SECRET" \
    --redirect-uri "https://assistant.localhost:$gh/.gatehouse/callback" "${more[@]}"
  wait_ok idp "$IDP_URL/.well-known/openid-configuration"
}

gatehouse_yaml() { # PORT UPSTREAM_PORT [EXTRA_TOP_LEVEL_YAML]
  local extra=""
  [[ -z "${3:-}" ]] || extra="$3
"
  cat <<CONF
address: 127.0.0.1:$1
certificate_file: $CERT
certificate_key_file: $KEY
idp_provider: oidc
idp_provider_url: $IDP_URL
idp_client_id: gatehouse-bench
idp_client_secret: $CLIENT_SECRET
cookie_secret: $COOKIE_SECRET
allowed_domains: [example.com]
state_dir: $GH/state
${extra}routes:
  - from: https://assistant.localhost
    to: http://127.0.0.1:$2
    pass_identity_headers: true
  - from: https://public.localhost
    to: http://127.0.0.1:$2
    allow_public_unauthenticated_access: true
CONF
}

start_gatehouse() { # PORT UPSTREAM_PORT [EXTRA_TOP_LEVEL_YAML]
  GH="$WORK/gatehouse"; mkdir -p "$GH"
  COOKIE_SECRET="${COOKIE_SECRET:-$(head -c 32 /dev/urandom | base64)}"
  gatehouse_yaml "$@" >"$GH/gatehouse.yaml"
  start GH "$GH/gatehouse.log" env -u RUST_LOG "$BIN" serve --config "$GH/gatehouse.yaml" --threads "$THREADS"
  wait_ok gatehouse "https://public.localhost:$1/.gatehouse/health" --resolve "public.localhost:$1:127.0.0.1" --cacert "$CA"
}

sign_in() { # PORT : sets COOKIE, checks that the signed-in route reaches the upstream's "ok"
  COOKIE="$(NODE_EXTRA_CA_CERTS="$CA" timeout 60 node bench/login.mjs "https://assistant.localhost:$1/" alice alice-pass)" ||
    die "sign-in failed (logs in $WORK)"
  [[ "$(curl -s --resolve "assistant.localhost:$1:127.0.0.1" --cacert "$CA" -H "Cookie: $COOKIE" "https://assistant.localhost:$1/")" == ok ]] ||
    die "the signed-in route does not reach the upstream"
}
