#!/usr/bin/env bash
# Route latency of the coordinator (bench/services/route_bench.cc): an
# in-process coordinator with 64 daemon members and 100k indexed blocks each,
# Route over gRPC / in-process / router-only for 2k, 8k and 32k-token
# contexts. The benchmark (coordinator and client together) is pinned to
# cores 0-1 (the goal: p99 < 1 ms on 2 cores). Writes Google
# Benchmark JSON and prints the table. Usage, from the repo root after a build:
#   scripts/bench_route.sh [build-dir, default build/main] [out.json, default
#   docs/results/route_bench.json] [extra benchmark args...]
set -euo pipefail
BUILD="${1:-build/main}"; shift || true
OUT="${1:-docs/results/route_bench.json}"; shift || true
BENCH="$BUILD/bench/services/route_bench"
[[ -x "$BENCH" ]] || { echo "build $BUILD first (route_bench)" >&2; exit 2; }
CORES="${ASYMCACHE_BENCH_CORES:-0,1}"
echo "route_bench pinned to cores $CORES; results -> $OUT" >&2
taskset -c "$CORES" "$BENCH" --benchmark_out="$OUT" --benchmark_out_format=json "$@"
