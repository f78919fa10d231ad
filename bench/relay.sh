#!/usr/bin/env bash
# The LLM relay's cost per request (issue 12): the stand-in LLM directly vs through the
# relay, from the backend's own uid, alternating, medians and p99 (bench/relay.mjs).
#
#   bench/relay.sh                                        # builds target/release/gatehouse
#   SKIP_BUILD=1 GATEHOUSE_BIN=target/debug/gatehouse ROUNDS=3 N=200 bench/relay.sh
#
# Run as root (backends run as their own uids). Everything it starts is stopped by PID.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export ROUNDS="${ROUNDS:-5}" N="${N:-400}"
export GATEHOUSE_BIN="${GATEHOUSE_BIN:-target/release/gatehouse}"

GATEHOUSE_NEED_CHROMIUM=0 tests/harness/install-deps.sh
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --release -p gatehouse
fi
[[ -x "$GATEHOUSE_BIN" ]] || { echo "error: $GATEHOUSE_BIN not found (build it or set GATEHOUSE_BIN)" >&2; exit 1; }
exec node bench/relay.mjs
