#!/usr/bin/env bash
# Gatehouse demo on this machine: a local OpenID Provider, an echo app behind
# https://assistant.localhost:8443, and a per-person OpenCode server behind
# https://opencode.localhost:8443 (talking to a local stand-in LLM). Ctrl-C stops everything
# it started.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
RUN="$ROOT/deploy/demo/.run"
section() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
  echo "error: run the demo as root (sudo $0): Gatehouse runs each person's OpenCode as a uid" >&2
  echo "       of their own and confines it with nftables, which needs root." >&2
  exit 1
fi

section "dependencies (apt, npm: the demo IdP lives in tests/e2e)"
GATEHOUSE_NEED_CHROMIUM=0 tests/harness/install-deps.sh

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  section "cargo build -p gatehouse"
  if [[ ! -x "$ROOT/target/debug/gatehouse" ]]; then
    echo "The first build compiles Gatehouse and its dependencies: about 6 minutes on 2 cores."
    echo "Later runs only rebuild what changed."
  fi
  cargo build -p gatehouse
fi
BIN="${GATEHOUSE_BIN:-$ROOT/target/debug/gatehouse}"

section "certificates (throwaway CA) in deploy/demo/.run/"
mkdir -p "$RUN"
node tests/harness/certs.mjs "$RUN" >/dev/null
echo "CA: $RUN/ca.crt"

for port in 9000 9100 4096 8443 8080; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "error: 127.0.0.1:$port is already in use; stop whatever listens there first." >&2
    exit 1
  fi
done

export DEMO_TLS_CERT="$RUN/leaf.crt"
export DEMO_TLS_KEY="$RUN/leaf.key"
DEMO_IDP_CLIENT_SECRET="$(openssl rand -hex 24)"
COOKIE_SECRET="$(openssl rand -base64 32)"
export DEMO_IDP_CLIENT_SECRET COOKIE_SECRET
# The backends' uids must reach the OpenCode binary and their homes, and this checkout may
# sit in a 0700 directory (/root): both go under /var/lib/gatehouse-demo (root's, 0755).
SHARE=/var/lib/gatehouse-demo
install -d -m 0755 -o root -g root "$SHARE" "$SHARE/bin"
export DEMO_OPENCODE_BIN="$SHARE/bin/opencode"
ln -f "$ROOT/tests/e2e/node_modules/opencode-linux-x64/bin/opencode" "$DEMO_OPENCODE_BIN" 2>/dev/null \
  || install -m 0755 "$ROOT/tests/e2e/node_modules/opencode-linux-x64/bin/opencode" "$DEMO_OPENCODE_BIN"
chmod 0755 "$DEMO_OPENCODE_BIN"
export DEMO_DATA_ROOT="$SHARE/backends"
DEMO_OPENCODE_CONFIG="$(cd tests/harness && node --input-type=module -e \
  "import { opencodeConfig } from './llm.mjs'; process.stdout.write(opencodeConfig({ url: 'http://127.0.0.1:9100/v1' }))")"
export DEMO_OPENCODE_CONFIG

PIDS=()
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "stopping demo processes: ${PIDS[*]:-none}"
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap 'cleanup; exit 130' INT TERM
trap cleanup EXIT

wait_port() { # port name
  for _ in $(seq 1 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "error: $2 did not start listening on 127.0.0.1:$1" >&2
  exit 1
}

section "starting the demo IdP, the echo app and Gatehouse"
node tests/harness/idp.mjs --port 9000 --client-id gatehouse-demo --client-secret "$DEMO_IDP_CLIENT_SECRET" \
  --redirect-uri https://auth.localhost:8443/oauth2/callback \
  --redirect-uri https://assistant.localhost:8443/.gatehouse/callback 2> >(grep -v 'oidc-provider' >&2) &
PIDS+=($!)
wait_port 9000 "the IdP"
node tests/harness/upstream.mjs --port 4096 &
PIDS+=($!)
wait_port 4096 "the echo app"
node tests/harness/llm.mjs --port 9100 &
PIDS+=($!)
wait_port 9100 "the stand-in LLM"
"$BIN" serve --config deploy/demo/gatehouse.yaml &
PIDS+=($!)
wait_port 8443 "Gatehouse"

cat <<MSG

  Gatehouse demo is running.

  Open:   https://assistant.localhost:8443
          (http://assistant.localhost:8080 redirects there)

  Sign in at the demo IdP as one of:
    alice / alice-pass     alice@example.com, groups team-it, team-admins  -> let in
    bob   / bob-pass       bob@example.com, group team-it                  -> let in
    mallory / mallory-pass mallory@evil.test (outside example.com)         -> 403
    eve   / eve-pass       eve@example.com, email not verified             -> 403

  Your own OpenCode: https://opencode.localhost:8443
          (started for you on first visit, a few seconds; each person gets their own;
           it answers with a local stand-in model)

  Your session: https://assistant.localhost:8443/.gatehouse/  (sign out there)

  The certificate comes from a throwaway CA made for this demo:
    $RUN/ca.crt
  Either trust it in your browser (Settings > Privacy and security > Security >
  Manage certificates > Authorities > Import), or accept the warning once for
  assistant.localhost, opencode.localhost and auth.localhost. From a shell:
    curl --cacert $RUN/ca.crt https://assistant.localhost:8443/.gatehouse/health
  (curl resolves *.localhost to 127.0.0.1 itself; other clients may need
   --resolve assistant.localhost:8443:127.0.0.1)

  Ctrl-C stops everything.
MSG

# Stop everything as soon as any one of them exits.
set +e
wait -n "${PIDS[@]}"
echo "a demo process exited; shutting down"
