# shellcheck shell=bash
# A throwaway PostgreSQL 15 primary + streaming replica on loopback, for the tests.
#
# Meant to be *sourced* (by scripts/test.sh, or by hand):
#
#     source scripts/pg-cluster.sh
#     pg_cluster_start      # installs PostgreSQL 15 if missing, starts both, exports the vars below
#     ...                   # run things against them
#     pg_cluster_stop       # stops both and deletes everything; safe to call twice
#
# Must run as root (the servers run as the `postgres` user through runuser; initdb
# refuses root). Only 127.0.0.1 is used: both servers listen there on free ports.
#
# Layout (one base directory from mktemp, owned by postgres):
#
#     $EDGECACHE_TEST_PG_BASE/primary/       primary's data directory
#     $EDGECACHE_TEST_PG_BASE/primary/log    primary's server log (pg_ctl -l)
#     $EDGECACHE_TEST_PG_BASE/replica/       replica's data directory (standby.signal)
#     $EDGECACHE_TEST_PG_BASE/replica/log    replica's server log
#     $EDGECACHE_TEST_PG_BASE                also the servers' unix-socket directory
#
# Exported after a successful start (the Rust tests read these):
#
#     EDGECACHE_TEST_PG_PRIMARY       postgres://postgres@127.0.0.1:P1/edgecache
#     EDGECACHE_TEST_PG_REPLICA       postgres://postgres@127.0.0.1:P2/edgecache
#     EDGECACHE_TEST_PG_PRIMARY_DATA  data directory of the primary
#     EDGECACHE_TEST_PG_REPLICA_DATA  data directory of the replica
#     EDGECACHE_TEST_PG_BIN           /usr/lib/postgresql/15/bin
#     EDGECACHE_TEST_PG_DELAY_MS      the replica's recovery_min_apply_delay, in ms
#     EDGECACHE_TEST_PG_BASE          the base directory above
#
# A test stops / starts a server itself (the log always goes to <data dir>/log):
#
#     runuser -u postgres -- "$EDGECACHE_TEST_PG_BIN/pg_ctl" -D "$DATA" -w -t 30 -m fast stop
#     runuser -u postgres -- "$EDGECACHE_TEST_PG_BIN/pg_ctl" -D "$DATA" -w -t 30 -l "$DATA/log" start
#
# The replica retries its connection to the primary every 200 ms
# (wal_retrieve_retry_interval), so after a primary restart it streams again quickly.
#
# Knobs (environment, read by pg_cluster_start):
#
#     EDGECACHE_TEST_REPLICA_DELAY    replica's recovery_min_apply_delay, default 300ms
#                                     (a number with unit ms or s)
#     EDGECACHE_TEST_PG_KEEP=1        on a failed start, keep the base dir for a look
#     EDGECACHE_TEST_PG_PRELOAD       the primary's shared_preload_libraries (default
#                                     none; scripts/session-bench.sh: pg_stat_statements)
#
# Every wait is bounded; a failure prints the tails of both server logs and returns 1
# (the caller, e.g. test.sh under `set -e`, then exits non-zero). This file sets no
# shell options, so sourcing it into an interactive shell changes nothing else.

_PG_CLUSTER_BIN=/usr/lib/postgresql/15/bin

# -- helpers ---------------------------------------------------------------------------

_pg_log() { echo "pg-cluster: $*" >&2; }

# Run a command as the postgres user (we are root; initdb and postgres refuse root).
_pg_as_postgres() {
    if [ "$(id -un)" = postgres ]; then
        "$@"
    else
        runuser -u postgres -- "$@"
    fi
}

# psql as a client over TCP: no ~/.psqlrc, unaligned tuples only, stop on error,
# bounded connection time.
_pg_psql() {
    local url=$1
    shift
    PGCONNECT_TIMEOUT=3 timeout 20 "$_PG_CLUSTER_BIN/psql" "$url" -X -q -At -v ON_ERROR_STOP=1 "$@" </dev/null
}

# Print the last lines of every server log we have.
_pg_dump_logs() {
    local base=${_PG_CLUSTER_BASE:-} f
    [ -n "$base" ] || return 0
    for f in "$base"/primary/log "$base"/replica/log; do
        if [ -f "$f" ]; then
            echo "----- last 40 lines of $f -----" >&2
            tail -n 40 "$f" >&2
        fi
    done
    echo "-----" >&2
}

# A failure during start: say what, show the logs, tear down (unless asked to keep).
_pg_fail() {
    _pg_log "FAILED: $*"
    _pg_dump_logs
    if [ "${EDGECACHE_TEST_PG_KEEP:-0}" = 1 ]; then
        _pg_log "kept $_PG_CLUSTER_BASE (EDGECACHE_TEST_PG_KEEP=1); servers may still run"
    else
        pg_cluster_stop
    fi
    return 1
}

# Two distinct free TCP ports on 127.0.0.1, printed "P1 P2". Both sockets are bound at
# once, so the kernel hands out two different ones; they are released right away (a
# tiny race with other programs that bind ephemeral ports, acceptable in tests).
_pg_free_ports() {
    if command -v python3 >/dev/null 2>&1; then
        python3 - <<'EOF'
import socket
socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
EOF
    else
        # No python: random ports in 20000-29999 that ss shows nobody listening on.
        local ports=() p tries=0
        while [ "${#ports[@]}" -lt 2 ] && [ "$tries" -lt 200 ]; do
            tries=$((tries + 1))
            p=$((20000 + RANDOM % 10000))
            [ "${#ports[@]}" -eq 1 ] && [ "${ports[0]}" = "$p" ] && continue
            if ! ss -Htln "sport = :$p" | grep -q .; then
                ports+=("$p")
            fi
        done
        [ "${#ports[@]}" -eq 2 ] || return 1
        echo "${ports[@]}"
    fi
}

# Wait (bounded) until `sql` run at `url` prints `want`. Args: what url sql want secs.
_pg_wait_for() {
    local what=$1 url=$2 sql=$3 want=$4 secs=$5 got
    local deadline=$((SECONDS + secs))
    while :; do
        got=$(_pg_psql "$url" -c "$sql" 2>/dev/null) || got=
        [ "$got" = "$want" ] && return 0
        if [ "$SECONDS" -ge "$deadline" ]; then
            _pg_log "timed out after ${secs}s waiting for $what (last answer: '${got}')"
            return 1
        fi
        sleep 0.1
    done
}

# recovery_min_apply_delay in milliseconds ("300ms", "1s", "250" → ms).
_pg_delay_ms() {
    local d=$1
    case "$d" in
        *ms) echo "${d%ms}" ;;
        *s) echo $((${d%s} * 1000)) ;;
        *) echo "$d" ;;
    esac
}

# -- install ---------------------------------------------------------------------------

# Install Debian's PostgreSQL 15 if its server binary is missing (a fresh CI machine
# may lack it). Debian's postinst may create and start a default cluster on 5432: we
# never use it, and our ports are picked free, so it does not matter either way.
pg_cluster_install() {
    [ -x "$_PG_CLUSTER_BIN/postgres" ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        _pg_log "PostgreSQL 15 is not installed and we are not root to install it"
        return 1
    fi
    _pg_log "installing postgresql-15 with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -q </dev/null || { _pg_log "apt-get update failed"; return 1; }
    timeout 900 apt-get install -y -q --no-install-recommends postgresql-15 </dev/null ||
        { _pg_log "apt-get install postgresql-15 failed"; return 1; }
    [ -x "$_PG_CLUSTER_BIN/postgres" ] || { _pg_log "postgresql-15 installed but $_PG_CLUSTER_BIN/postgres is missing"; return 1; }
}

# -- start -----------------------------------------------------------------------------

pg_cluster_start() {
    local t0=$EPOCHREALTIME
    # One cluster per shell. (A cluster inherited from a parent shell through the
    # environment is not ours: we start our own and never stop that one.)
    if [ -n "${_PG_CLUSTER_BASE:-}" ] && [ -d "$_PG_CLUSTER_BASE" ]; then
        _pg_log "this shell already runs a cluster in $_PG_CLUSTER_BASE (pg_cluster_stop first)"
        return 1
    fi
    if [ "$(id -u)" -ne 0 ] && [ "$(id -un)" != postgres ]; then
        _pg_log "run as root (servers are started as the postgres user via runuser)"
        return 1
    fi
    pg_cluster_install || return 1

    local bin=$_PG_CLUSTER_BIN
    local delay=${EDGECACHE_TEST_REPLICA_DELAY:-300ms}
    local delay_ms
    delay_ms=$(_pg_delay_ms "$delay")

    # Base directory, explicitly under /tmp: postgres must be able to reach it, and
    # $TMPDIR might point somewhere it can't.
    local base
    base=$(mktemp -d /tmp/edgecache-pg.XXXXXX) || { _pg_log "mktemp failed"; return 1; }
    chown postgres:postgres "$base" 2>/dev/null || [ "$(id -un)" = postgres ] ||
        { _pg_log "chown $base failed"; rm -rf "$base"; return 1; }
    _PG_CLUSTER_BASE=$base  # not exported: marks the cluster this shell owns
    export EDGECACHE_TEST_PG_BASE=$base
    local primary=$base/primary replica=$base/replica

    local ports p1 p2
    ports=$(_pg_free_ports) || { _pg_fail "could not find two free ports"; return 1; }
    read -r p1 p2 <<<"$ports"
    local primary_url=postgres://postgres@127.0.0.1:$p1/edgecache
    local replica_url=postgres://postgres@127.0.0.1:$p2/edgecache

    # -- primary
    _pg_as_postgres "$bin/initdb" -D "$primary" -U postgres -A trust -E UTF8 --locale=C.UTF-8 \
        --no-sync >"$base/initdb.out" 2>&1 ||
        { cat "$base/initdb.out" >&2; _pg_fail "initdb of the primary"; return 1; }
    # Settings appended after the defaults win. fsync and synchronous_commit stay on:
    # the tests check that acknowledged writes survive a restart.
    _pg_as_postgres tee -a "$primary/postgresql.conf" >/dev/null <<EOF || { _pg_fail "writing primary config"; return 1; }

# --- edgecache test cluster (scripts/pg-cluster.sh) ---
listen_addresses = '127.0.0.1'
port = $p1
unix_socket_directories = '$base'
max_connections = 200
# Logical: every node follows a pgoutput stream on a temporary slot of its own
# (the change feed); a test suite runs dozens of nodes at once.
wal_level = logical
max_wal_senders = 100
max_replication_slots = 100
hot_standby = on
fsync = on
synchronous_commit = on
shared_preload_libraries = '${EDGECACHE_TEST_PG_PRELOAD:-}'
EOF
    _pg_as_postgres tee -a "$primary/pg_hba.conf" >/dev/null <<EOF || { _pg_fail "writing primary pg_hba"; return 1; }

# --- edgecache test cluster: trust on loopback, also for replication ---
host    all            all    127.0.0.1/32    trust
host    replication    all    127.0.0.1/32    trust
EOF
    _pg_as_postgres "$bin/pg_ctl" -D "$primary" -w -t 30 -l "$primary/log" start >/dev/null ||
        { _pg_fail "starting the primary on 127.0.0.1:$p1"; return 1; }
    _pg_psql "postgres://postgres@127.0.0.1:$p1/postgres" -c "create database edgecache owner postgres" ||
        { _pg_fail "creating database edgecache"; return 1; }

    # -- replica: a base backup that streams its WAL and writes standby.signal and
    # primary_conninfo (-R).
    _pg_as_postgres timeout 120 "$bin/pg_basebackup" -h 127.0.0.1 -p "$p1" -U postgres \
        -D "$replica" -R -X stream -c fast --no-sync >"$base/basebackup.out" 2>&1 ||
        { cat "$base/basebackup.out" >&2; _pg_fail "pg_basebackup of the replica"; return 1; }
    # The backup copied the primary's log file along with the data directory.
    rm -f "$replica/log"
    _pg_as_postgres tee -a "$replica/postgresql.conf" >/dev/null <<EOF || { _pg_fail "writing replica config"; return 1; }

# --- edgecache test cluster: the replica ---
port = $p2
unix_socket_directories = '$base'
recovery_min_apply_delay = '$delay'
hot_standby_feedback = on
wal_retrieve_retry_interval = '200ms'
recovery_init_sync_method = syncfs
EOF
    _pg_as_postgres "$bin/pg_ctl" -D "$replica" -w -t 30 -l "$replica/log" start >/dev/null ||
        { _pg_fail "starting the replica on 127.0.0.1:$p2"; return 1; }
    # A standby that streams from the primary and has replayed WAL.
    _pg_wait_for "the replica to stream and replay" "$replica_url" \
        "select pg_is_in_recovery() and pg_last_wal_replay_lsn() is not null
                and exists (select 1 from pg_stat_wal_receiver where status = 'streaming')" \
        t 30 || { _pg_fail "replica not streaming"; return 1; }
    _pg_wait_for "the primary to see its replica" "$primary_url" \
        "select count(*) from pg_stat_replication where state = 'streaming'" 1 30 ||
        { _pg_fail "primary has no streaming replica"; return 1; }

    export EDGECACHE_TEST_PG_BIN=$bin
    export EDGECACHE_TEST_PG_PRIMARY=$primary_url
    export EDGECACHE_TEST_PG_REPLICA=$replica_url
    export EDGECACHE_TEST_PG_PRIMARY_DATA=$primary
    export EDGECACHE_TEST_PG_REPLICA_DATA=$replica
    export EDGECACHE_TEST_PG_DELAY_MS=$delay_ms

    local t1=$EPOCHREALTIME
    local ms=$(((10#${t1//[.,]/} - 10#${t0//[.,]/}) / 1000))
    _pg_log "primary 127.0.0.1:$p1, replica 127.0.0.1:$p2 (apply delay $delay), in $base; started in ${ms} ms"
}

# -- stop ------------------------------------------------------------------------------

# Stop one server if it runs: immediate mode (nothing to keep), bounded; kill -9 the
# postmaster if pg_ctl can't.
_pg_stop_one() {
    local data=$1 pid
    [ -f "$data/postmaster.pid" ] || return 0
    if ! _pg_as_postgres "$_PG_CLUSTER_BIN/pg_ctl" -D "$data" -m immediate -w -t 15 stop >/dev/null 2>&1; then
        pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null)
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            _pg_log "pg_ctl stop failed for $data; killing postmaster $pid"
            kill -KILL "$pid" 2>/dev/null
        fi
    fi
    return 0
}

# Only the cluster this shell started (with pg_cluster_start) is stopped.
pg_cluster_stop() {
    local base=${_PG_CLUSTER_BASE:-}
    if [ -n "$base" ] && [ -d "$base" ]; then
        _pg_stop_one "$base/replica"
        _pg_stop_one "$base/primary"
        case "$base" in
            /tmp/edgecache-pg.*) rm -rf "$base" ;;
            *) _pg_log "not removing unexpected base dir '$base'" ;;
        esac
        _pg_log "stopped and removed $base"
        unset EDGECACHE_TEST_PG_BASE EDGECACHE_TEST_PG_PRIMARY EDGECACHE_TEST_PG_REPLICA \
            EDGECACHE_TEST_PG_PRIMARY_DATA EDGECACHE_TEST_PG_REPLICA_DATA EDGECACHE_TEST_PG_BIN \
            EDGECACHE_TEST_PG_DELAY_MS
    fi
    unset _PG_CLUSTER_BASE
    return 0
}
