# shellcheck shell=bash
# Peer proxies for the over-TLS comparison (issue 15): Caddy (a TLS reverse proxy, no auth)
# and Apache 2.4 + mod_auth_openidc (a TLS reverse proxy that signs people in with OIDC, the
# closest packaged equivalent of Gatehouse's signed-in route), both from Debian 12 packages.
# A library: bench scripts `source` it. See bench/README.md, "Peers: Caddy and Apache +
# mod_auth_openidc", and bench/peers-check.sh for a functional check.
#
#   source bench/peers.sh
#   peers_install                                        # apt-get install what is missing
#   peers_apt_install PKG...                             # the same for other packages (wrk...)
#   start_caddy  DIR PORT UPSTREAM_PORT CERT KEY         # PID in PID_CADDY
#   start_apache DIR PORT UPSTREAM_PORT CERT KEY IDP_URL CLIENT_ID CLIENT_SECRET  # PID_APACHE
#   apache_redirect_uri PORT                             # the IdP must accept this redirect URI
#   COOKIE="$(apache_login https://assistant.localhost:PORT/ alice alice-pass [CA_FILE])"
#   proc_tree PID / peer_pids NAME                       # PIDs whose CPU ticks to sum
#
# What the caller provides (bench/common.sh and bench/run.sh have these; the caller's `set -euo pipefail`
# applies, this file does not change shell options of the script that sources it):
#   start NAME LOG CMD...   start CMD in the background, append its PID to PIDS and set
#                           PID_<NAME>; the caller's cleanup stops everything in PIDS by PID.
#   die MSG                 optional; a fallback below prints MSG and exits 1.
# Every process is started in the foreground mode of its program (no daemonising), so the PID
# that `start` records is the proxy itself (Apache's parent, Caddy's only process) and killing
# it stops the whole proxy.
#
# Both proxies run from their own files in DIR (config, logs, pid file, run dir, data dirs),
# on 127.0.0.1:PORT only, so a system apache2 or caddy that the packages may have started is
# left alone and does not collide (unless it holds the same port, which a free port cannot).

# Where the repo is (for bench/login.mjs), whatever the caller's working directory.
PEERS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Debian's module directory and binaries.
PEERS_APACHE_MODULES=/usr/lib/apache2/modules
PEERS_APACHE_BIN=/usr/sbin/apache2
PEERS_CADDY_BIN=/usr/bin/caddy
# The user Apache's children run as: Apache refuses to serve as root, and www-data exists as
# soon as the apache2 package is installed. The children never open anything in DIR (the parent,
# still root, opens the config, certificate, key, logs and pid file before it forks).
PEERS_APACHE_USER="${PEERS_APACHE_USER:-www-data}"
PEERS_APACHE_GROUP="${PEERS_APACHE_GROUP:-www-data}"

declare -F die >/dev/null || die() { echo "peers.sh: $*" >&2; exit 1; }
declare -F start >/dev/null || die "source bench/peers.sh from a script that defines start NAME LOG CMD... (see bench/run.sh)"

# ----------------------------------------------------------------------------- install

# peers_apt_install PKG...: apt-get install the packages (non-interactive, quiet) without
# letting their postinst scripts start system services. Root only.
peers_apt_install() {
  (($#)) || return 0
  [[ $(id -u) == 0 ]] || die "missing $*: install them first (apt-get install $*) or run as root"
  echo "peers.sh: installing $*" >&2
  # The packages' postinst scripts start system services (apache2 on :80; caddy on :80 with
  # its admin API on :2019) through invoke-rc.d; a policy-rc.d that exits 101 forbids that.
  # Created only if absent and removed only if we created it (same trick as bench/run.sh).
  local added=0 rc=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && added=1
  fi
  # Quiet: apt's progress lines are noise in a bench log; errors still reach stderr. A stale
  # package list is the usual reason for a failure, so update once and retry.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; } || rc=$?
  [[ $added == 1 ]] && rm -f /usr/sbin/policy-rc.d
  ((rc == 0)) || die "apt-get install $* failed"
}

# peers_install: install whatever is missing among caddy, apache2 and
# libapache2-mod-auth-openidc. Root only when something is missing.
peers_install() {
  local need=()
  [[ -x "$PEERS_CADDY_BIN" ]] || need+=(caddy)
  [[ -x "$PEERS_APACHE_BIN" ]] || need+=(apache2)
  [[ -e "$PEERS_APACHE_MODULES/mod_auth_openidc.so" ]] || need+=(libapache2-mod-auth-openidc)
  ((${#need[@]})) || return 0
  peers_apt_install "${need[@]}"
  # A system service started anyway (a machine running systemd starts units without asking
  # invoke-rc.d) is not ours to stop, and ours do not depend on it: say so and go on.
  local p
  for p in $(pgrep -x apache2 || true) $(pgrep -x caddy || true); do
    echo "peers.sh: note: a system $(cat "/proc/$p/comm" 2>/dev/null) (PID $p) is running; left alone, ours use their own ports and files" >&2
  done
}

# ----------------------------------------------------------------------------- processes

# proc_tree PID: PID and all its descendants, one per line (for summing CPU ticks from
# /proc/PID/stat over a proxy's own processes: Apache's parent and its children; Caddy is one
# process, threads are counted in its own stat).
proc_tree() {
  local pid="$1" child kids=()
  [[ -d "/proc/$pid" ]] || return 0
  echo "$pid"
  # /proc/PID/task/TID/children: the children of each thread, space-separated (Linux >= 3.5).
  read -r -a kids <<<"$(cat /proc/"$pid"/task/*/children 2>/dev/null | tr '\n' ' ')"
  for child in "${kids[@]}"; do
    proc_tree "$child"
  done
}

# peer_pids NAME: proc_tree of the process started as NAME (CADDY, APACHE, or any PID_<NAME>).
peer_pids() {
  local var="PID_$1"
  [[ -n "${!var:-}" ]] || die "no PID_$1: was $1 started?"
  proc_tree "${!var}"
}

# peers_wait NAME PID LOG URL CODE [curl args...]: until URL answers CODE, at most 30 s; dies
# with the log's tail if the process exits first.
peers_wait() {
  local name="$1" pid="$2" logf="$3" url="$4" want="$5" code=""
  shift 5
  local deadline=$((SECONDS + 30))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$logf" >&2
      die "$name (PID $pid) exited early; log: $logf"
    fi
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" || true)"
    [[ "$code" == "$want" ]] && return 0
    if ((SECONDS >= deadline)); then
      tail -n 30 "$logf" >&2
      die "$name not ready at $url after 30 s (last status $code, want $want); log: $logf"
    fi
    sleep 0.2
  done
}

# ----------------------------------------------------------------------------- Caddy

# start_caddy DIR PORT UPSTREAM_PORT CERT KEY: Caddy as a TLS reverse proxy, no auth, on
# 127.0.0.1:PORT to http://127.0.0.1:UPSTREAM_PORT, with the given certificate. Waits until it
# answers 200 for Host assistant.localhost:PORT without SNI (as wrk connects). PID in PID_CADDY.
start_caddy() {
  (($# == 5)) || die "usage: start_caddy DIR PORT UPSTREAM_PORT CERT KEY"
  local dir="$1" port="$2" up="$3" cert="$4" key="$5"
  mkdir -p "$dir/home" "$dir/data" "$dir/config"
  # JSON rather than a Caddyfile: the Caddyfile adapter derives TLS connection policies from
  # site names, and a policy that matches on SNI does not match a client that sends none (wrk
  # to 127.0.0.1). Here the one policy has no matcher, so every handshake, with or without SNI,
  # gets the certificate tagged "peer"; the route has no host matcher either, so the Host
  # header (assistant.localhost:PORT) is never checked against the SNI (no 421 from
  # strict_sni_host, which is off unless client auth is configured).
  # - admin disabled (no API on :2019), config not persisted to $XDG_CONFIG_HOME/caddy/autosave.json;
  # - automatic HTTPS off: no ACME, no HTTP->HTTPS redirect listener on :80;
  # - h1 and h2 only: no HTTP/3 listener on UDP (nginx and Gatehouse do not run one);
  # - upstream keep-alive pool sized like nginx's `keepalive 128`;
  # - one JSON access-log line per request to DIR/access.log (Caddy's default format; nginx
  #   and Gatehouse each write one line per request too), other logs to stderr at WARN.
  cat >"$dir/caddy.json" <<JSON
{
  "admin": { "disabled": true, "config": { "persist": false } },
  "storage": { "module": "file_system", "root": "$dir/data" },
  "logging": {
    "logs": {
      "default": { "writer": { "output": "stderr" }, "level": "WARN", "exclude": ["http.log.access"] },
      "access": {
        "writer": { "output": "file", "filename": "$dir/access.log", "roll": false },
        "encoder": { "format": "json" },
        "include": ["http.log.access"]
      }
    }
  },
  "apps": {
    "tls": {
      "certificates": { "load_files": [ { "certificate": "$cert", "key": "$key", "tags": ["peer"] } ] }
    },
    "http": {
      "servers": {
        "peer": {
          "listen": ["127.0.0.1:$port"],
          "protocols": ["h1", "h2"],
          "automatic_https": { "disable": true },
          "tls_connection_policies": [ { "certificate_selection": { "any_tag": ["peer"] } } ],
          "logs": {},
          "routes": [ {
            "handle": [ {
              "handler": "reverse_proxy",
              "transport": { "protocol": "http", "keep_alive": { "max_idle_conns_per_host": 128 } },
              "upstreams": [ { "dial": "127.0.0.1:$up" } ]
            } ]
          } ]
        }
      }
    }
  }
}
JSON
  # HOME and XDG_* under DIR: Caddy keeps certificates/locks in XDG_DATA_HOME and autosaves
  # its config to XDG_CONFIG_HOME; neither may touch the real $HOME.
  start CADDY "$dir/caddy.log" env HOME="$dir/home" XDG_DATA_HOME="$dir/data" XDG_CONFIG_HOME="$dir/config" \
    "$PEERS_CADDY_BIN" run --config "$dir/caddy.json"
  peers_wait caddy "$PID_CADDY" "$dir/caddy.log" "https://127.0.0.1:$port/" 200 -k -H "Host: assistant.localhost:$port"
}

# ----------------------------------------------------------------------------- Apache

# apache_redirect_uri PORT: the OIDC redirect URI start_apache configures; start the IdP with it.
apache_redirect_uri() { echo "https://assistant.localhost:$1/redirect_uri"; }

# start_apache DIR PORT UPSTREAM_PORT CERT KEY IDP_URL CLIENT_ID CLIENT_SECRET: Apache 2.4
# (mpm_event) + mod_ssl on 127.0.0.1:PORT, mod_auth_openidc protecting / (sign-in at the IdP,
# then a client-cookie session), mod_proxy_http to http://127.0.0.1:UPSTREAM_PORT. The IdP must
# be up (mod_auth_openidc reads its discovery document on the first request) and accept
# $(apache_redirect_uri PORT). Waits until / answers 302 (to the IdP). PID in PID_APACHE.
start_apache() {
  (($# == 8)) || die "usage: start_apache DIR PORT UPSTREAM_PORT CERT KEY IDP_URL CLIENT_ID CLIENT_SECRET"
  local dir="$1" port="$2" up="$3" cert="$4" key="$5" idp="${6%/}" client_id="$7" client_secret="$8"
  local m="$PEERS_APACHE_MODULES"
  mkdir -p "$dir/run"
  # The config holds the client secret and the cookie passphrase.
  (
    umask 077
    cat >"$dir/apache2.conf" <<CONF
# Generated by bench/peers.sh (start_apache). Everything Apache writes is under $dir; nothing
# in /etc/apache2 is read, so a system apache2 (if any) and this one do not meet.
ServerRoot "$dir"
DefaultRuntimeDir "$dir/run"
PidFile "$dir/run/apache2.pid"
# File-based mutexes in our run dir instead of Debian's \${APACHE_LOCK_DIR}.
Mutex file:$dir/run default
ErrorLog "$dir/error.log"
LogLevel warn
# The parent stays root (it binds, reads the key and opens the logs before forking); the
# children must not be root (Apache refuses) and never open anything under $dir.
User $PEERS_APACHE_USER
Group $PEERS_APACHE_GROUP
ServerName assistant.localhost
ServerTokens Prod
Listen 127.0.0.1:$port https

# Debian's apache2 has mod_unixd (User/Group) and mod_log_config built in.
LoadModule mpm_event_module $m/mod_mpm_event.so
LoadModule authn_core_module $m/mod_authn_core.so
LoadModule authz_core_module $m/mod_authz_core.so
LoadModule authz_user_module $m/mod_authz_user.so
LoadModule headers_module $m/mod_headers.so
LoadModule socache_shmcb_module $m/mod_socache_shmcb.so
LoadModule ssl_module $m/mod_ssl.so
LoadModule proxy_module $m/mod_proxy.so
LoadModule proxy_http_module $m/mod_proxy_http.so
LoadModule auth_openidc_module $m/mod_auth_openidc.so

# mpm_event sized for wrk -c64 keep-alive on 2 cores: 2 processes x 32 threads = 64 workers,
# all started up front and never reaped (MaxSpareThreads = all of them), so the pool neither
# grows nor shrinks during a run. Keep-alive connections with no request in flight wait in the
# event loop without holding a thread.
StartServers 2
ServerLimit 2
ThreadLimit 32
ThreadsPerChild 32
MaxRequestWorkers 64
MinSpareThreads 32
MaxSpareThreads 64
MaxConnectionsPerChild 0
# Unlimited requests per connection, like the other proxies (nginx keepalive_requests 1000000).
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 5

# A session with many groups (the test IdP's carol: 150) is a Cookie header of ~10 KB once
# sealed and chunked; Apache's default limit for one header field is 8190 bytes (400 past it).
LimitRequestFieldSize 65536

# One line per request, Apache's "combined" format (nginx's default is the same format).
LogFormat "%h %l %u %t \"%r\" %>s %O \"%{Referer}i\" \"%{User-Agent}i\"" combined
CustomLog "$dir/access.log" combined

SSLSessionCache "shmcb:$dir/run/ssl_scache(512000)"
SSLProtocol -all +TLSv1.2 +TLSv1.3

# --- mod_auth_openidc (2.4.12 in Debian 12) ---
# Discovery over plain http on loopback (the test IdP has no TLS): mod_auth_openidc accepts
# http:// endpoints, so OIDCSSLValidateServer is irrelevant here and left at its default (On).
OIDCProviderMetadataURL $idp/.well-known/openid-configuration
OIDCClientID $client_id
OIDCClientSecret $client_secret
OIDCProviderTokenEndpointAuth client_secret_basic
OIDCRedirectURI $(apache_redirect_uri "$port")
OIDCScope "openid email profile"
# The test IdP requires PKCE (as Gatehouse uses it).
OIDCPKCEMethod S256
# The session is a self-contained encrypted cookie (JWE, A256GCM with a key derived from the
# passphrase), chunked into mod_auth_openidc_session_N cookies past 4000 bytes: the equivalent
# of Gatehouse's sealed _pomerium cookie. No server-side session store is read per request.
OIDCSessionType client-cookie
OIDCCryptoPassphrase $(head -c 32 /dev/urandom | base64 | tr -d '/+=')
# Long enough that a session never times out during a bench (the default is 300 s). NB: the
# module re-writes the session (re-encrypts it and sends Set-Cookie) on any request whose
# cookie was written more than 60 s earlier; a browser keeps the new cookie, wrk does not, so a
# cookie older than 60 s costs a re-seal on every request. Sign in again just before each run.
OIDCSessionInactivityTimeout 28800
OIDCSessionMaxDuration 28800
# Identity to the upstream as request headers (OIDC_CLAIM_email, OIDC_CLAIM_name, ...), like
# Gatehouse's pass_identity_headers; incoming OIDC_* headers are scrubbed (default).
OIDCPassClaimsAs headers
OIDCRemoteUserClaim email
# The session cookies never reach the upstream (Gatehouse filters its own cookies the same
# way); without this a big session (carol) also overflows the upstream's 8 KB header buffers.
OIDCStripCookies mod_auth_openidc_session mod_auth_openidc_session_chunks $(printf 'mod_auth_openidc_session_%s ' {0..9})

<VirtualHost 127.0.0.1:$port>
  ServerName assistant.localhost
  SSLEngine on
  SSLCertificateFile "$cert"
  SSLCertificateKeyFile "$key"

  # The redirect URI is answered by mod_auth_openidc itself, never proxied.
  ProxyPass /redirect_uri !
  # HTTP/1.1 to the upstream; mod_proxy keeps the connections in a per-process pool and reuses
  # them (keep-alive to the upstream is its default).
  ProxyPass / http://127.0.0.1:$up/
  # mod_proxy adds X-Forwarded-For/-Host/-Server; -Proto as nginx and Gatehouse send it.
  RequestHeader set X-Forwarded-Proto https

  <Location />
    AuthType openid-connect
    Require valid-user
  </Location>
</VirtualHost>
CONF
  )
  "$PEERS_APACHE_BIN" -t -f "$dir/apache2.conf" >"$dir/configtest.log" 2>&1 ||
    { cat "$dir/configtest.log" >&2; die "apache2 -t rejected $dir/apache2.conf"; }
  # -DFOREGROUND: the parent stays in the foreground, so its PID is the one `start` records
  # and SIGTERM to it stops the children too.
  start APACHE "$dir/apache.log" "$PEERS_APACHE_BIN" -f "$dir/apache2.conf" -DFOREGROUND
  peers_wait apache "$PID_APACHE" "$dir/error.log" "https://127.0.0.1:$port/" 302 -k -H "Host: assistant.localhost:$port"
}

# apache_login URL USER PASS [CA_FILE]: sign in through Apache + the IdP (bench/login.mjs with
# the harness client: GET URL, 302 to the IdP, login form, callback at the redirect URI, back to
# URL) and print the Cookie header value that carries the session (every
# mod_auth_openidc_session* cookie). CA_FILE (or NODE_EXTRA_CA_CERTS) is the CA of Apache's
# certificate. The session is at most 60 s from a re-seal on every request (see
# OIDCSessionInactivityTimeout above): call this just before a measured run.
apache_login() {
  (($# == 3 || $# == 4)) || die "usage: apache_login URL USER PASS [CA_FILE]"
  local ca="${4:-${NODE_EXTRA_CA_CERTS:-}}"
  NODE_EXTRA_CA_CERTS="$ca" timeout 60 node "$PEERS_ROOT/bench/login.mjs" "$1" "$2" "$3" \
    '^mod_auth_openidc_session(_chunks|_[0-9]+)?$'
}
