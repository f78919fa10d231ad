#!/usr/bin/env bash
# A functional check of bench/peers.sh, not a benchmark: starts an nginx upstream, the test IdP,
# Caddy (TLS proxy, no auth) and Apache + mod_auth_openidc (TLS proxy with OIDC sign-in), signs
# in to Apache, checks the session reaches the upstream (and that without it Apache sends the
# browser to the IdP), then runs a tiny wrk (1 thread, 2 connections, 2 s) against each proxy
# the way bench/run.sh does (to 127.0.0.1, Host header) and checks that every response was a 200.
#
#   bench/peers-check.sh           # KEEP_WORK=1 keeps the temp dir (configs, logs)
#
# Needs root only to install caddy, apache2, libapache2-mod-auth-openidc, wrk and nginx-light
# when missing. Stops everything it started, by PID. The wrk runs hold /tmp/gatehouse-bench.lock
# (flock) so they never overlap another benchmark on this machine that takes the same lock.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
WORK="$(mktemp -d /tmp/gatehouse-peers-check-XXXXXX)"
PIDS=()
die() { echo "peers-check.sh: $*" >&2; exit 1; }
log() { printf '==> %s\n' "$*" >&2; }
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ "${KEEP_WORK:-0}" == 1 || $rc -ne 0 ]]; then echo "work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
start() { # NAME LOG CMD... ; the PID in PID_<NAME> (the convention of bench/run.sh)
  local name="$1" logf="$2"; shift 2
  "$@" >"$logf" 2>&1 &
  PIDS+=("$!"); eval "PID_${name}=$!"
}

# shellcheck source=bench/peers.sh
source bench/peers.sh
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
peers_apt_install "${need[@]}"
peers_install
GATEHOUSE_NEED_CHROMIUM=0 tests/harness/install-deps.sh >/dev/null
log "caddy $("$PEERS_CADDY_BIN" version | awk '{ print $1 }'), $("$PEERS_APACHE_BIN" -v | awk -F': *' '/^Server version/ { print $2 }'), mod_auth_openidc $(dpkg-query -W -f='${Version}' libapache2-mod-auth-openidc)"

read -r P_UP P_IDP P_CADDY P_APACHE < <(node -e '
  const net = require("net"); const s = [];
  (async () => {
    for (let i = 0; i < 4; i++) s.push(await new Promise((r) => { const x = net.createServer(); x.listen(0, "127.0.0.1", () => r(x)); }));
    console.log(s.map((x) => x.address().port).join(" ")); s.forEach((x) => x.close());
  })();')
CERTS="$(node tests/harness/certs.mjs "$WORK/certs")"
CERT="$(node -e 'console.log(JSON.parse(process.argv[1]).cert)' "$CERTS")"
KEY="$(node -e 'console.log(JSON.parse(process.argv[1]).key)' "$CERTS")"
CA="$(node -e 'console.log(JSON.parse(process.argv[1]).caCert)' "$CERTS")"

# The upstream: bench/run.sh's nginx ("ok" for everything), plus /whoami echoing the identity
# header Apache adds (its name has underscores, which nginx drops unless told otherwise).
UP="$WORK/upstream"; mkdir -p "$UP/tmp"
cat >"$UP/nginx.conf" <<CONF
daemon off; master_process on; worker_processes 1; pid $UP/nginx.pid;
error_log $UP/error.log warn;
events { worker_connections 1024; }
http {
  client_body_temp_path $UP/tmp; proxy_temp_path $UP/tmp; fastcgi_temp_path $UP/tmp;
  uwsgi_temp_path $UP/tmp; scgi_temp_path $UP/tmp;
  keepalive_requests 1000000; access_log off; underscores_in_headers on;
  server {
    listen 127.0.0.1:$P_UP;
    location / { return 200 "ok\n"; }
    location = /whoami { return 200 "\$http_oidc_claim_email\n"; }
  }
}
CONF
start UP "$UP/out.log" "$(command -v nginx)" -p "$UP" -c "$UP/nginx.conf"
peers_wait upstream "$PID_UP" "$UP/out.log" "http://127.0.0.1:$P_UP/" 200

CLIENT_SECRET="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
start IDP "$WORK/idp.log" node tests/harness/idp.mjs --port "$P_IDP" --host 127.0.0.1 \
  --client-id apache-bench --client-secret "$CLIENT_SECRET" --redirect-uri "$(apache_redirect_uri "$P_APACHE")"
peers_wait idp "$PID_IDP" "$WORK/idp.log" "http://127.0.0.1:$P_IDP/.well-known/openid-configuration" 200

log "Caddy on 127.0.0.1:$P_CADDY"
start_caddy "$WORK/caddy" "$P_CADDY" "$P_UP" "$CERT" "$KEY"
log "Apache + mod_auth_openidc on 127.0.0.1:$P_APACHE"
start_apache "$WORK/apache" "$P_APACHE" "$P_UP" "$CERT" "$KEY" "http://127.0.0.1:$P_IDP" apache-bench "$CLIENT_SECRET"
log "processes: caddy $(peer_pids CADDY | paste -sd,), apache $(peer_pids APACHE | paste -sd,)"

# curl as a browser would (SNI, name resolved to loopback, the test CA).
curl_as() { # PORT PATH [curl args...]
  local port="$1" path="$2"; shift 2
  curl -s --max-time 5 --cacert "$CA" --resolve "assistant.localhost:$port:127.0.0.1" "$@" "https://assistant.localhost:$port$path"
}
[[ "$(curl_as "$P_CADDY" /)" == ok ]] || die "Caddy does not reach the upstream"
log "Caddy: 200 ok through to the upstream"

code_loc="$(curl_as "$P_APACHE" / -o /dev/null -w '%{http_code} %{redirect_url}')"
[[ "$code_loc" == "302 http://127.0.0.1:$P_IDP/auth?"* ]] || die "Apache without a session: want 302 to the IdP, got $code_loc"
log "Apache without a session: ${code_loc%%\?*}?..."
COOKIE="$(apache_login "https://assistant.localhost:$P_APACHE/" alice alice-pass "$CA")" || die "sign-in through Apache failed (logs in $WORK)"
log "signed in: ${#COOKIE} bytes of Cookie ($(tr ';' '\n' <<<"$COOKIE" | cut -d= -f1 | tr -d ' ' | paste -sd,))"
[[ "$(curl_as "$P_APACHE" / -H "Cookie: $COOKIE")" == ok ]] || die "the Apache session does not reach the upstream"
who="$(curl_as "$P_APACHE" /whoami -H "Cookie: $COOKIE")"
[[ "$who" == alice@example.com ]] || die "the upstream got identity '$who', want alice@example.com"
log "Apache with the session: 200 ok, upstream sees OIDC_CLAIM_email: $who"
# A fresh session is not re-written on use (no Set-Cookie): what wrk measures is opening it.
if curl_as "$P_APACHE" / -H "Cookie: $COOKIE" -D - -o /dev/null | grep -qi '^set-cookie:'; then
  die "Apache re-wrote a fresh session (Set-Cookie on a signed-in request)"
fi

# wrk like bench/run.sh: to 127.0.0.1, the host in the Host header (wrk sends the IP as SNI;
# start_caddy already checked a handshake with no SNI at all, as curl makes). The Lua script
# counts responses by status (wrk itself does not count a 302 as an error).
cat >"$WORK/status.lua" <<'LUA'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init() codes = {} end
function response(status) codes[status] = (codes[status] or 0) + 1 end
function done()
  local parts = {}
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("codes")) do table.insert(parts, code .. "x" .. n) end
  end
  io.write("statuses: " .. table.concat(parts, " ") .. "\n")
end
LUA
check_wrk() { # LABEL PORT [COOKIE]
  local out
  out="$(flock -w 1800 /tmp/gatehouse-bench.lock \
    wrk -t1 -c2 -d2s -s "$WORK/status.lua" -H "Host: assistant.localhost:$2" ${3:+-H "Cookie: $3"} "https://127.0.0.1:$2/")" ||
    die "$1: wrk failed"
  local statuses errors
  statuses="$(awk '/^statuses:/ { $1 = ""; print substr($0, 2) }' <<<"$out")"
  errors="$(awk '/Socket errors|Non-2xx/' <<<"$out")"
  printf '%-40s %s req in 2 s, %s%s\n' "$1" "$(awk '/requests in/ { print $1 }' <<<"$out")" "$statuses" "${errors:+; $errors}"
  [[ "$statuses" =~ ^200x[0-9]+$ && -z "$errors" ]] || die "$1: not only 200s"
}
log "wrk -t1 -c2 -d2s to 127.0.0.1 (waits for /tmp/gatehouse-bench.lock)"
check_wrk "Caddy TLS proxy (no auth)" "$P_CADDY"
check_wrk "Apache + mod_auth_openidc, signed in" "$P_APACHE" "$COOKIE"
log "access logs: caddy $(wc -l <"$WORK/caddy/access.log") lines, apache $(wc -l <"$WORK/apache/access.log") lines"
echo "peers check: OK"
