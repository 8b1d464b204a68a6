#!/usr/bin/env bash
# Runs every test of edgecache: unit tests of each crate, the integration tests over
# real HTTP (tests/api), the binary's process tests, and a compile check of the
# benches. Builds once; cargo runs the test binaries' tests in parallel.
#
# Needs the Rust toolchain, and runs as root: the tests of the PostgreSQL origin need a
# real primary and a real streaming replica, which this script starts on loopback
# (scripts/pg-cluster.sh: installs Debian's postgresql-15 if missing, picks free ports,
# exports EDGECACHE_TEST_PG_*) and tears down again at exit, also on failure or
# interrupt; the flag tests need a real Unleash server (scripts/unleash.sh: Node 22 and
# unleash-server 8.2 from the npm registry, on a PostgreSQL of its own). Other services
# that tests need go the same way; the multi-node tests run their own nginx (Debian's
# nginx-light, installed here if missing) in front of three node processes; the
# dashboard's browser test runs Debian's chromium (installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Bound every test binary: a hung test fails the run instead of eating CI's 90 minutes.
timeout_secs="${EDGECACHE_TEST_TIMEOUT:-1200}"

# Build first, before any service runs: a compile error then leaves nothing behind.
echo "== build"
cargo build --workspace --all-targets --locked

# Services. One EXIT trap tears them all down whatever happens next (test failure,
# error in this script, Ctrl-C, TERM or HUP: those exit through it too). Each stop
# function is idempotent and stops only what this shell started. A new service adds
# its stop to cleanup (a second `trap ... EXIT` would replace this one).
echo "== services"
# nginx, for the multi-node tests (they start and stop their own instances).
if [ ! -x /usr/sbin/nginx ]; then
    echo "installing nginx-light"
    timeout 120 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq --no-install-recommends nginx-light
fi
export EDGECACHE_TEST_NGINX=/usr/sbin/nginx
# The reference OpenAPI validator (PyPI's openapi-spec-validator), for the test that
# validates /openapi.json: in a virtualenv under target/, installed once.
validator_env=target/openapi-validator
if [ ! -x "$validator_env/bin/openapi-spec-validator" ]; then
    echo "installing openapi-spec-validator"
    if ! python3 -m venv "$validator_env" 2>/dev/null; then
        timeout 120 apt-get update -qq
        DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq --no-install-recommends python3-venv
        rm -rf "$validator_env"
        python3 -m venv "$validator_env"
    fi
    timeout 300 "$validator_env/bin/pip" install -q --disable-pip-version-check "openapi-spec-validator==0.9.0"
fi
export EDGECACHE_TEST_OPENAPI_VALIDATOR="$PWD/$validator_env/bin/openapi-spec-validator"
# Chromium, for the dashboard's browser test (headless, driven over a DevTools pipe).
if [ ! -x /usr/bin/chromium ]; then
    echo "installing chromium"
    timeout 120 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends chromium
fi
export EDGECACHE_TEST_CHROMIUM=/usr/bin/chromium
# shellcheck source=scripts/pg-cluster.sh
source scripts/pg-cluster.sh
# shellcheck source=scripts/unleash.sh
source scripts/unleash.sh
test_pid=
cleanup() {
    # If we were interrupted while the tests ran, end them before their servers go.
    if [ -n "$test_pid" ] && kill -0 "$test_pid" 2>/dev/null; then
        kill -TERM "$test_pid" 2>/dev/null || true
        wait "$test_pid" 2>/dev/null || true
    fi
    unleash_stop
    pg_cluster_stop
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
pg_cluster_start   # primary + delayed replica; exports EDGECACHE_TEST_PG_*
unleash_start      # Unleash 8.2 on its own PostgreSQL; exports EDGECACHE_TEST_UNLEASH_*

echo "== test"
# In the background plus `wait`, so that a signal to this script runs its trap at once
# (bash holds traps until a foreground child ends, and timeout runs the tests in a
# process group of its own, out of reach of Ctrl-C). On TERM, timeout passes it on to
# the whole test process group, and kills it 30 s later if it is still there.
timeout --signal=TERM --kill-after=30 "$timeout_secs" \
    cargo test --workspace --locked --no-fail-fast &
test_pid=$!
wait "$test_pid"
