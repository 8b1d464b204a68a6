# Sourced by scripts/write-bench.sh and scripts/cdc-bench.sh (after their log/die and
# their cleanup trap, which stops the cluster when PG_STARTED is 1): the PostgreSQL
# primary and streaming replica of a write benchmark, with fsync off on both, and the
# helpers both scripts use on it.
# shellcheck shell=bash

# shellcheck source=scripts/pg-cluster.sh
source "$ROOT/scripts/pg-cluster.sh"

# Starts the primary + replica (scripts/pg-cluster.sh), fsync off on both.
bench_pg_start() {
    local url
    log "PostgreSQL primary + replica (scripts/pg-cluster.sh), fsync off"
    PG_STARTED=1
    pg_cluster_start || die "starting PostgreSQL"
    PSQL=("$EDGECACHE_TEST_PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1)
    for url in "$EDGECACHE_TEST_PG_PRIMARY" "$EDGECACHE_TEST_PG_REPLICA"; do
        "${PSQL[@]}" "$url" -c "ALTER SYSTEM SET fsync = off" -c "SELECT pg_reload_conf()" >/dev/null </dev/null
    done
}

# Runs psql on the primary with these arguments.
primary_sql() { "${PSQL[@]}" "$EDGECACHE_TEST_PG_PRIMARY" "$@" </dev/null; }

# A free loopback port.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
