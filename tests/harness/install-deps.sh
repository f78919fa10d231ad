#!/usr/bin/env bash
# Install what the tests, the demo and the benchmark need, only when missing (Debian 12, root):
# system packages, then the npm packages of tests/e2e (oidc-provider, playwright-core, jose, and
# the OpenCode server binary: opencode-linux-x64, the platform package of npm opencode-ai).
# Also checks the toolchains that are not apt packages here: cargo, node >= 20.19, npm.
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

have_cmd cmake      || need+=(cmake)
have_cmd openssl    || need+=(openssl)
have_cmd pkg-config || need+=(pkg-config)
# Backends' outbound connections are confined with nftables (issue 9).
[[ -x /usr/sbin/nft ]] || need+=(nftables)
have_pkg build-essential || need+=(build-essential)
# The relay tests read and tamper with the state store (issue 12).
have_cmd sqlite3    || need+=(sqlite3)
# The agent-shell attack tests connect to Unix sockets from a backend's shell with python3.
have_cmd python3    || need+=(python3)
# The OpenCode TUI (`opencode attach`) is driven in a detached tmux session (opencode-cli.mjs).
have_cmd tmux       || need+=(tmux)
# The image test builds and runs the shipped image (issue 14): rootful Podman with runc, and
# mmdebstrap for the base made from Debian packages (deploy/image/build.sh).
have_cmd podman     || need+=(podman)
have_cmd runc       || need+=(runc)
have_cmd mmdebstrap || need+=(mmdebstrap)
# The deploy test parses deploy/docker-compose.yml (docker-compose config).
have_cmd docker-compose || need+=(docker-compose)
if [[ "${GATEHOUSE_NEED_CHROMIUM:-1}" == 1 ]]; then
  [[ -x /usr/bin/chromium ]] || need+=(chromium)
fi

if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${need[@]}"
else
  echo "system packages present"
fi

if ! have_cmd cargo; then
  echo "error: cargo not found. Install Rust (stable, >= 1.88) first, e.g. with rustup." >&2
  exit 1
fi
if ! have_cmd node || ! have_cmd npm; then
  echo "error: node and npm not found. Install Node.js >= 20.19 (e.g. from nodejs.org or NodeSource)." >&2
  exit 1
fi
node -e '
  const [maj, min] = process.versions.node.split(".").map(Number);
  if (maj < 20 || (maj === 20 && min < 19)) {
    console.error(`error: node ${process.versions.node} is too old; oidc-provider needs >= 20.19`);
    process.exit(1);
  }'

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -d "$ROOT/tests/e2e/node_modules" && "$ROOT/tests/e2e/node_modules/.package-lock.json" -nt "$ROOT/tests/e2e/package-lock.json" ]]; then
  echo "npm packages (tests/e2e) up to date"
else
  echo "npm ci (tests/e2e)"
  (cd "$ROOT/tests/e2e" && timeout 600 npm ci --no-audit --no-fund)
fi
