# Sourced by scripts/perf.sh and scripts/write-bench.sh (after their log/die): builds a
# `harness = false` bench target that serves until killed (benches/ceiling.rs,
# benches/write_ceiling.rs) and names its executable.
# shellcheck shell=bash

# bench_executable NAME BUILD_LOG: `cargo bench --bench NAME --no-run`, its output in
# BUILD_LOG; prints the executable's absolute path.
bench_executable() {
    local name=$1 build_log=$2 path
    cargo bench --bench "$name" --no-run >"$build_log" 2>&1 ||
        { tail -n 30 "$build_log" >&2; die "building the $name bench"; }
    path=$(sed -n 's/.*Executable .*(\(.*\))$/\1/p' "$build_log" | tail -n 1)
    [ -n "$path" ] || die "could not find the $name bench's executable"
    case "$path" in /*) ;; *) path=$ROOT/$path ;; esac
    echo "$path"
}
