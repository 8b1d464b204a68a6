#!/usr/bin/env bash
# Runs every test of edgecache: unit tests of each crate, the integration tests over
# real HTTP (tests/api), the binary's process tests, and a compile check of the
# benches. Builds once; cargo runs the test binaries' tests in parallel.
#
# Needs only the Rust toolchain today (the embedded origin is SQLite, compiled in).
# Services that later tests need (PostgreSQL, Unleash, nginx) are installed and
# started by this script, on loopback, and stopped again.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Bound every test binary: a hung test fails the run instead of eating CI's 90 minutes.
timeout_secs="${EDGECACHE_TEST_TIMEOUT:-1200}"

echo "== build"
cargo build --workspace --all-targets --locked

echo "== test"
timeout --signal=TERM "$timeout_secs" cargo test --workspace --locked --no-fail-fast
