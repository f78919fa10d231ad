#!/usr/bin/env bash
# The whole test suite: formatting, lints, Rust tests, then the end-to-end tests against the
# real binary (real oidc-provider, real Chromium, real TLS). Safe to run again and again.
#
#   tests/run.sh                 # everything
#   SKIP_RUST=1 tests/run.sh     # only the end-to-end tests (binary must be built)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

section() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

section "dependencies (apt, npm)"
tests/harness/install-deps.sh

if [[ "${SKIP_RUST:-0}" != 1 ]]; then
  section "cargo fmt --all --check"
  cargo fmt --all --check

  section "cargo clippy --workspace --all-targets -- -D warnings"
  cargo clippy --workspace --all-targets -- -D warnings

  section "cargo test --workspace (ignored ones too: they need the OpenCode binary, installed above)"
  cargo test --workspace -- --include-ignored

  section "cargo build -p gatehouse"
  cargo build -p gatehouse
fi

section "end-to-end tests (node --test tests/e2e/)"
export GATEHOUSE_BIN="${GATEHOUSE_BIN:-${CARGO_TARGET_DIR:-target}/debug/gatehouse}"
# A file is one test to node: 10 min each (the relay files take 3-4 min on 2 cores).
node --test --test-concurrency=1 --test-timeout=600000 tests/e2e/

section "all tests passed"
