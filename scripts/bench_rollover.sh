#!/usr/bin/env bash
# Decode page rollover cost on loopback, without a GPU: a real asymcache-daemon
# (host pool, tiny model) and asymcache-worker (CPU backend) with a step trace,
# one request with a long prompt decoding N tokens (worker_gpu_bench --load),
# once with --extend-leases=true (the daemon's ExtendLease) and once with false
# (a plan of the whole context at every page boundary). Prints, per setting,
# the decode steps' time outside the forward (step_ms - forward_ms) at page
# rollovers (the context crosses a multiple of 16) and elsewhere.
# Usage, from the repo root after a build:
#   scripts/bench_rollover.sh [build-dir, default build/main] [prompt tokens, default 16384]
#                             [new tokens, default 100]
set -euo pipefail
BUILD="${1:-build/main}"
PROMPT="${2:-16384}"
NEW="${3:-100}"
DAEMON="$BUILD/services/daemon/asymcache-daemon"
WORKER="$BUILD/services/worker/asymcache-worker"
BENCH="$BUILD/bench/services/worker_gpu_bench"
for b in "$DAEMON" "$WORKER" "$BENCH"; do
  [[ -x "$b" ]] || { echo "build $BUILD first (missing $b)" >&2; exit 2; }
done
TMP="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
wait_port() {  # file -> the grpc port printed on its READY line
  for _ in $(seq 300); do grep -q READY "$1" && break; sleep 0.1; done
  grep -o 'grpc=[0-9]*' "$1" | head -1 | cut -d= -f2
}
for extend in true false; do
  "$DAEMON" --plaintext --listen=127.0.0.1:0 --metrics-port=-1 --backend=host \
    --pool-bytes=512MiB --model=tiny >"$TMP/daemon.$extend" 2>&1 &
  PIDS+=($!)
  dport="$(wait_port "$TMP/daemon.$extend")"
  [[ -n "$dport" ]] || { echo "daemon did not start" >&2; cat "$TMP/daemon.$extend" >&2; exit 1; }
  "$WORKER" --plaintext --listen=127.0.0.1:0 --metrics-port=-1 --backend=cpu --model=tiny \
    --cpu-threads=2 --daemon="127.0.0.1:$dport" --extend-leases="$extend" \
    --step-trace="$TMP/steps.$extend.jsonl" >"$TMP/worker.$extend" 2>&1 &
  PIDS+=($!)
  wport="$(wait_port "$TMP/worker.$extend")"
  [[ -n "$wport" ]] || { echo "worker did not start" >&2; cat "$TMP/worker.$extend" >&2; exit 1; }
  "$BENCH" --load --worker="127.0.0.1:$wport" --concurrency=1 --requests=1 \
    --prompt-tokens="$PROMPT" --max-new-tokens="$NEW" >"$TMP/bench.$extend" 2>&1 ||
    { cat "$TMP/bench.$extend" >&2; exit 1; }
  kill "${PIDS[-1]}" "${PIDS[-2]}"; wait "${PIDS[-1]}" "${PIDS[-2]}" 2>/dev/null || true
  PIDS=()
  python3 - "$TMP/steps.$extend.jsonl" "$extend" <<'PY'
import json, statistics, sys
path, extend = sys.argv[1], sys.argv[2]
roll, other = [], []
for line in open(path).read().splitlines()[1:]:
    s = json.loads(line)
    if s["chunks"] or len(s["decodes"]) != 1:
        continue
    outside = s["step_ms"] - s["forward_ms"]
    # decodes[0] is the context after the step's token; it starts a page when
    # (context - 1) % 16 == 0.
    (roll if (s["decodes"][0] - 1) % 16 == 0 else other).append(outside)
def fmt(v):
    return (f"{len(v):4d} steps  mean {statistics.mean(v):.3f} ms  median "
            f"{statistics.median(v):.3f} ms  max {max(v):.3f} ms") if v else "none"
print(f"extend-leases={extend}: rollover steps {fmt(roll)}")
print(f"extend-leases={extend}: other decodes  {fmt(other)}")
PY
done
