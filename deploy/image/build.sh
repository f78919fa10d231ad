#!/usr/bin/env bash
# Builds the Gatehouse image with Podman, with no image registry: the base is made from
# Debian packages (mmdebstrap, then `podman import`), and the gatehouse and OpenCode binaries
# are built on this host and copied in (deploy/image/Dockerfile). Where a registry and a Rust
# toolchain download work, deploy/Dockerfile builds the same image from source instead.
#
#   deploy/image/build.sh                                   # release binary, tag localhost/gatehouse:latest
#   deploy/image/build.sh --gatehouse target/debug/gatehouse --tag localhost/gatehouse:test
#
# Options:
#   --gatehouse PATH   the gatehouse binary (default: target/release/gatehouse)
#   --opencode PATH    the OpenCode server binary (default: the npm package opencode-linux-x64
#                      in tests/e2e/node_modules, which `tests/harness/install-deps.sh` installs)
#   --tag NAME         the image's name (default: localhost/gatehouse:latest)
# Needs root (rootful Podman) and the Debian packages podman, runc, mmdebstrap.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
GATEHOUSE="$ROOT/target/release/gatehouse"
OPENCODE="$ROOT/tests/e2e/node_modules/opencode-linux-x64/bin/opencode"
TAG="localhost/gatehouse:latest"
while (($#)); do
  case "$1" in
    --gatehouse) GATEHOUSE="$2"; shift 2 ;;
    --opencode) OPENCODE="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "build.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for bin in "$GATEHOUSE" "$OPENCODE"; do
  if [[ ! -x "$bin" ]]; then
    echo "build.sh: $bin is missing or not executable; build it first (cargo build -p gatehouse, or tests/harness/install-deps.sh for OpenCode), or pass its path" >&2
    exit 2
  fi
done
for cmd in podman mmdebstrap; do
  command -v "$cmd" >/dev/null || { echo "build.sh: $cmd not found; apt-get install podman runc mmdebstrap" >&2; exit 2; }
done
export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/deploy/image/containers.conf}"

# The base: Debian 12 minbase plus what Gatehouse and a person's OpenCode use at run time.
#   ca-certificates  the IdP, Google's APIs and upstreams over TLS
#   tini             PID 1: forwards signals, reaps the orphans of backends' shells
#   nftables         the `nft` that confines each backend's outbound connections
#   git, ripgrep     what OpenCode's agent uses in a person's project
#   bash, passwd     (in minbase) the agent's shell; useradd for the image's user
PACKAGES="ca-certificates,tini,nftables,git,ripgrep"
# The base is rebuilt only when this recipe changes (its hash names the tag).
RECIPE="bookworm minbase $PACKAGES v1"
BASE="localhost/gatehouse-base:bookworm-$(printf '%s' "$RECIPE" | sha256sum | cut -c1-12)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
if ! podman image exists "$BASE"; then
  echo "==> base image $BASE (mmdebstrap, about 30 s)"
  mmdebstrap --quiet --variant=minbase --include="$PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$WORK/base.tar"
  podman import --quiet --change 'CMD ["/bin/bash"]' "$WORK/base.tar" "$BASE" >/dev/null
  rm -f "$WORK/base.tar"
fi

echo "==> image $TAG (gatehouse: $GATEHOUSE)"
mkdir -p "$WORK/context"
# Hard links when on the same file system (no copy of a 100+ MB binary), else copies.
ln "$GATEHOUSE" "$WORK/context/gatehouse" 2>/dev/null || cp "$GATEHOUSE" "$WORK/context/gatehouse"
ln "$OPENCODE" "$WORK/context/opencode" 2>/dev/null || cp "$OPENCODE" "$WORK/context/opencode"
# --format docker keeps the HEALTHCHECK (the OCI format has none).
podman build --quiet --format docker --build-arg "BASE=$BASE" \
  -f "$ROOT/deploy/image/Dockerfile" -t "$TAG" "$WORK/context" >/dev/null
echo "built $TAG"
