#!/usr/bin/env bash
# Per-person backends: bare OpenCode cold start vs the first request through Gatehouse for a
# new person (medians and difference), RSS of an idle backend, N simultaneous first requests.
#
#   bench/backends.sh                      # ROUNDS=5 N=4, builds target/release/gatehouse
#   SKIP_BUILD=1 GATEHOUSE_BIN=target/debug/gatehouse ROUNDS=3 bench/backends.sh
#
# Run as root (as in production) so each backend runs as its own uid. Every process it
# starts is stopped by PID when it ends (the harness stops Gatehouse, which stops backends).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export ROUNDS="${ROUNDS:-5}" N="${N:-4}"
export GATEHOUSE_BIN="${GATEHOUSE_BIN:-target/release/gatehouse}"

GATEHOUSE_NEED_CHROMIUM=0 tests/harness/install-deps.sh
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --release -p gatehouse
fi
[[ -x "$GATEHOUSE_BIN" ]] || { echo "error: $GATEHOUSE_BIN not found (build it or set GATEHOUSE_BIN)" >&2; exit 1; }
exec node bench/backends.mjs
