#!/usr/bin/env bash
# ctest worker_gpu_bench_cpu_run: the GPU worker run (scripts/gpu_worker_run.sh)
# on the CPU, with the binaries of this build, plus a check that the tool can
# fail.
#
#   worker_gpu_bench_test.sh WORKER_GPU_BENCH ASYMCACHE_DAEMON ASYMCACHE_WORKER
#
#   1. gpu_worker_run.sh --cpu (host pool, cpu worker, fp32 tiny model) with two
#      policies on a 24-block pool, the disaggregated pair and the load levels
#      1 and 4: exit 0, every exactness row with 0 failures and compared
#      tokens, evictions and rebuilds seen, blocks imported by the decode side,
#      load numbers present;
#   2. --exactness against a worker whose weights differ from --model-dir
#      (another seed): exit 1 with failures counted;
#   3. --exactness of that fp32 worker against its own weights rounded to bf16
#      (--model-dir written with --dtype=bf16, same seed): the bf16 tolerance
#      and the near-tie rule accept what rounding changes (exit 0, no failure).
# Bounded: each step of the run script has its own limit; ctest's TIMEOUT too.
set -euo pipefail
BENCH="$1"; DAEMON="$2"; WORKER="$3"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TMP="$(mktemp -d)"
pids=()
cleanup() {  # SIGTERM (a daemon then unlinks its shared-memory pool), SIGKILL after 10 s
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

mkdir -p "$TMP/bin"
ln -s "$BENCH" "$TMP/bin/worker_gpu_bench"
ln -s "$DAEMON" "$TMP/bin/asymcache-daemon"
ln -s "$WORKER" "$TMP/bin/asymcache-worker"

# 1. The whole run on the CPU.
if ! OUT="$TMP/out" ASYMCACHE_BIN_DIR="$TMP/bin" POLICIES="asym lru" POOL_BLOCKS=24 SEED=5 \
    bash "$ROOT/scripts/gpu_worker_run.sh" --cpu; then
  cat "$TMP/out/run.log" >&2
  # The processes' own logs (packed by the run), for what the run log cannot say.
  if [[ -s "$TMP/out/logs.tgz" ]]; then
    mkdir -p "$TMP/logs" && tar xzf "$TMP/out/logs.tgz" -C "$TMP/logs" 2>/dev/null || true
    for f in "$TMP"/logs/*; do [[ -f "$f" ]] && { echo "---- $(basename "$f")" >&2; tail -n 30 "$f" >&2; }; done
  fi
  fail "gpu_worker_run.sh --cpu failed"
fi
cat "$TMP/out/exactness.md" "$TMP/out/load.md"
# The run packs the per-run JSON and the process logs into archives.
tar xzf "$TMP/out/json.tgz" -C "$TMP/out" || fail "json.tgz missing or unreadable"
[[ -s "$TMP/out/logs.tgz" ]] || fail "logs.tgz missing"
/usr/bin/python3 - "$TMP/out" <<'PY'
import json, sys, os
out = sys.argv[1]
for run in ("asym", "lru", "disaggregated"):
    d = json.load(open(os.path.join(out, f"exactness_{run}.json")))
    assert d["failures"] == 0 and d["requests"] == 8, (run, d)
    assert d["tokens_compared"] >= 8 * 4 - 8, (run, d)  # near-ties stop a request early
    assert d["max_abs_over_rms"] <= d["tolerance"]["max_abs_over_rms"], (run, d)
    assert d["daemon"]["evictions"] > 0, (run, "no evictions", d["daemon"])
    if run == "disaggregated":
        assert d["imported_blocks"] > 0, (run, d)
    else:
        assert d["rebuilt_tokens"] + d["hit_tokens"] > 0, (run, d)
load = json.load(open(os.path.join(out, "load.json")))
assert [l["concurrency"] for l in load["levels"]] == [1, 4], load
for l in load["levels"]:
    assert l["errors"] == 0, l
    assert l["ttft_ms"]["p50"] > 0 and l["tpot_ms"]["p50"] > 0 and l["tpot_ms"]["count"] > 0, l
    w = l["worker"]
    assert w["steps"] > 0 and w["step_seconds"] > 0 and 0 < w["forward_share"] <= 1, w
    assert 0 <= w["plan_rpc_share"] < 1, w
PY

# 2. A worker whose weights are not --model-dir's: every request must fail.
"$BENCH" --write-model-dir="$TMP/model" --shape=tiny --dtype=fp32 --seed=11 \
  --daemon-config-out="$TMP/daemon.yaml" >/dev/null
wait_ready() {  # wait_ready FILE PID -> prints the gRPC port
  for _ in $(seq 300); do
    if grep -q '^READY grpc=' "$1"; then grep -m1 -o 'grpc=[0-9]*' "$1" | cut -d= -f2; return 0; fi
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  return 1
}
"$DAEMON" --plaintext --config="$TMP/daemon.yaml" --listen=127.0.0.1:0 --metrics-port=-1 \
  --pool-bytes=64MiB >"$TMP/daemon.out" 2>"$TMP/daemon.log" &
pids+=($!)
dport="$(wait_ready "$TMP/daemon.out" "${pids[-1]}")" || fail "daemon not ready: $(cat "$TMP/daemon.log")"
"$WORKER" --plaintext --daemon="127.0.0.1:$dport" --listen=127.0.0.1:0 --metrics-port=-1 --model=tiny \
  --seed=12 --cpu-threads=2 >"$TMP/worker.out" 2>"$TMP/worker.log" &
pids+=($!)
wport="$(wait_ready "$TMP/worker.out" "${pids[-1]}")" || fail "worker not ready: $(cat "$TMP/worker.log")"
set +e
"$BENCH" --exactness --worker="127.0.0.1:$wport" --model-dir="$TMP/model" --requests=3 \
  --concurrency=3 --min-prompt-tokens=16 --max-prompt-tokens=40 --min-new-tokens=2 \
  --max-new-tokens=3 --reference-threads=2 --out-json="$TMP/wrong.json" >"$TMP/wrong.log" 2>&1
rc=$?
set -e
[[ $rc -eq 1 ]] || { cat "$TMP/wrong.log"; fail "exactness against other weights exited $rc, want 1"; }
/usr/bin/python3 -c "
import json; d = json.load(open('$TMP/wrong.json'))
assert d['failures'] == d['requests'] == 3, d
assert all('logits' in x['failure'] for x in d['details']), d['details']
"

# 3. The same worker against its weights rounded to bf16: within tolerance.
"$BENCH" --write-model-dir="$TMP/model-bf16" --shape=tiny --dtype=bf16 --seed=12 >/dev/null
"$BENCH" --exactness --worker="127.0.0.1:$wport" --model-dir="$TMP/model-bf16" --requests=6 \
  --concurrency=3 --min-prompt-tokens=16 --max-prompt-tokens=60 --min-new-tokens=4 \
  --max-new-tokens=8 --resyncs=8 --reference-threads=2 --out-json="$TMP/bf16.json" \
  >"$TMP/bf16.log" 2>&1 || { cat "$TMP/bf16.log"; fail "exactness against bf16-rounded weights"; }
/usr/bin/python3 -c "
import json; d = json.load(open('$TMP/bf16.json'))
assert d['failures'] == 0 and d['requests'] == 6 and d['tolerance']['relative_l2'] == 0.02, d
assert d['tokens_compared'] == d['tokens_generated'] > 0, d  # resyncs cover every token
"
cat "$TMP/bf16.log"
echo "PASS"
