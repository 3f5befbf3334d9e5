#!/usr/bin/env bash
# Plan RPC latency of a real asymcache-daemon process pinned to one core,
# driven by bench/services/daemon_plan_bench pinned to another (the issue-4
# measurement: p99 at 5k plans/s on 2 cores). Usage, from the repo root after
# a build:   scripts/bench_plan_rpc.sh [build-dir, default build/main] [bench args...]
set -euo pipefail
BUILD="${1:-build/main}"; shift || true
DAEMON="$BUILD/services/daemon/asymcache-daemon"
BENCH="$BUILD/bench/services/daemon_plan_bench"
[[ -x "$DAEMON" && -x "$BENCH" ]] || { echo "build $BUILD first (asymcache-daemon, daemon_plan_bench)" >&2; exit 2; }
OUT="$(mktemp)"
taskset -c 0 "$DAEMON" --plaintext --listen=127.0.0.1:0 --metrics-port=-1 >"$OUT" 2>/dev/null &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -f "$OUT"' EXIT
for _ in $(seq 100); do grep -q READY "$OUT" && break; sleep 0.1; done
PORT="$(grep -o 'grpc=[0-9]*' "$OUT" | cut -d= -f2)"
[[ -n "$PORT" ]] || { echo "daemon did not start" >&2; exit 1; }
echo "daemon pid $PID on core 0, port $PORT; load generator on core 1"
ASYMCACHE_BENCH_TARGET="127.0.0.1:$PORT" taskset -c 1 "$BENCH" "$@"
