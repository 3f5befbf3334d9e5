#!/usr/bin/env bash
# The reference worker on a GPU (issue 6): exactness under every eviction
# policy and disaggregated, then the llama-3-8b load benchmark. Runs ON the
# GPU machine, from the repository root, with the services bundle made by
#   ASYMCACHE_BUNDLE_SERVICES=1 ASYMCACHE_GPU_BUILD=build/gpu-services \
#   ASYMCACHE_BUNDLE=.bundle/gpu-services scripts/gpu_bundle.sh \
#     asymcache-daemon asymcache-worker worker_gpu_bench
# carried along (.bundle/gpu-services):
#   1. worker_gpu_bench --write-model-dir: a "tiny"-shaped model in bf16
#      (random weights, seed $SEED) and the daemon's matching model: mapping;
#   2. for each policy of $POLICIES: asymcache-daemon --backend=cuda with a
#      pool of $POOL_BLOCKS blocks (evictions, rebuilds and preemptions all
#      the time), asymcache-worker --backend=cuda --model-dir on it, then
#      worker_gpu_bench --exactness ($EXACT_REQUESTS requests against the host
#      fp32 dense reference over the same weights), then SIGTERM both;
#   3. disaggregated: a prefill daemon + worker (--role=prefill) and a decode
#      daemon + worker (--role=decode); each request's first token from the
#      prefill worker, the rest from the decode worker with kv_source (blocks
#      over UCX), compared the same way;
#   4. llama-3-8b in bf16, random weights on the GPU: daemon with a
#      $LOAD_POOL pool (calibration/h100-llama-3-8b.json: the bundle carries
#      no calibrator), worker, worker_gpu_bench --load at concurrency
#      $LOAD_CONCURRENCY, prompts of $LOAD_PROMPT tokens, $LOAD_NEW new tokens.
# Everything goes under $OUT: run.log, nvidia-smi.txt, model.log (the mapping),
# exactness.md (a row per run) + exactness_<run>.json, load.md + load.json,
# and each process's stdout/stderr (<name>.out / <name>.log).
#
# Flags: --cpu (the same flow on the CPU: host pool, cpu worker, an fp32 tiny
# model, a few short requests, the load on the tiny model; what the ctest
# worker_gpu_bench_cpu_run runs), --skip-exactness, --skip-disagg,
# --skip-load. Environment: ASYMCACHE_BUNDLE (default .bundle/gpu-services),
# ASYMCACHE_BIN_DIR (run the binaries from this folder instead of the
# bundle), OUT, POLICIES, SEED, POOL_BLOCKS, EXACT_REQUESTS, RESYNCS, LOAD_CONCURRENCY,
# LOAD_REQUESTS, LOAD_PROMPT, LOAD_NEW, LOAD_POOL, UCX_TRANSPORTS.
# Exit code: 0 if every step succeeded, else 1. Bounded: each process start,
# run and stop has its own limit (whole GPU run: about 5 minutes).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CPU=0
SKIP_EXACT=0
SKIP_DISAGG=0
SKIP_LOAD=0
SKIP_DISAGG_LOAD=0
for arg in "$@"; do
  case "$arg" in
    --cpu) CPU=1 ;;
    --skip-exactness) SKIP_EXACT=1 ;;
    --skip-disagg) SKIP_DISAGG=1 ;;
    --skip-load) SKIP_LOAD=1 ;;
    --skip-disagg-load) SKIP_DISAGG_LOAD=1 ;;
    *) echo "gpu_worker_run.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

OUT="${OUT:-$ROOT/build/gpu_worker_out}"
mkdir -p "$OUT"
BUNDLE="${ASYMCACHE_BUNDLE:-$ROOT/.bundle/gpu-services}"
BIN_DIR="${ASYMCACHE_BIN_DIR:-}"
POLICIES="${POLICIES:-asym lru front-first lru-tail lfu}"
SEED="${SEED:-$(date +%s)}"  # fresh weights and requests each run (logged)
RESYNCS="${RESYNCS:-4}"  # near-ties after which the reference restarts from the worker's tokens
UCX_TRANSPORTS="${UCX_TRANSPORTS:-}"
if ((CPU)); then
  DAEMON_BACKEND=host; WORKER_BACKEND=cpu; DTYPE=fp32
  POOL_BLOCKS="${POOL_BLOCKS:-24}"  # the CPU run's requests are shorter
  EXACT_REQUESTS="${EXACT_REQUESTS:-8}"
  EXACT_FLAGS=(--concurrency=4 --min-prompt-tokens=20 --max-prompt-tokens=120
               --min-new-tokens=4 --max-new-tokens=8)
  LOAD_CONCURRENCY="${LOAD_CONCURRENCY:-1,4}"
  LOAD_REQUESTS="${LOAD_REQUESTS:-4,8}"
  LOAD_PROMPT="${LOAD_PROMPT:-64}"
  LOAD_NEW="${LOAD_NEW:-6}"
  LOAD_POOL="${LOAD_POOL:-64MiB}"
  START_LIMIT=30
else
  DAEMON_BACKEND=cuda; WORKER_BACKEND=cuda; DTYPE=bf16
  POOL_BLOCKS="${POOL_BLOCKS:-64}"  # 1024 tokens: under 2 of the longest contexts
  EXACT_REQUESTS="${EXACT_REQUESTS:-48}"
  EXACT_FLAGS=(--concurrency=8 --min-prompt-tokens=50 --max-prompt-tokens=600
               --min-new-tokens=8 --max-new-tokens=32)
  LOAD_CONCURRENCY="${LOAD_CONCURRENCY:-1,32,128}"
  LOAD_REQUESTS="${LOAD_REQUESTS:-16,64,256}"
  LOAD_PROMPT="${LOAD_PROMPT:-1024}"
  LOAD_NEW="${LOAD_NEW:-64}"
  LOAD_POOL="${LOAD_POOL:-20GiB}"
  START_LIMIT=180
fi
DISAGG_POOL="${DISAGG_POOL:-10GiB}"         # each of the two llama-3-8b daemons
DISAGG_CONCURRENCY="${DISAGG_CONCURRENCY:-1,8}"
DISAGG_REQUESTS="${DISAGG_REQUESTS:-8,32}"
DISAGG_NEW="${DISAGG_NEW:-32}"
EXACT_LIMIT=120
LOAD_LIMIT=300
# The device tool stops a command at 600 s: a phase that might not finish
# inside BUDGET_S (from the script's start) is skipped, and the run fails.
BUDGET_S="${BUDGET_S:-560}"
BEGIN_S=$(date +%s)

LOG="$OUT/run.log"
: >"$LOG"
failed=0
log() { printf '[gpu_worker_run %s] %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$LOG" >&2; }

# cmd NAME: the command array CMD that runs binary NAME (bundle or bin dir).
cmd() {
  if [[ -n "$BIN_DIR" ]]; then CMD=("$BIN_DIR/$1"); else CMD=("$BUNDLE/run.sh" "$1"); fi
}

# step NAME TIMEOUT BINARY ARGS...: runs a tool to completion, output in NAME.log.
step() {
  local name="$1" limit="$2" bin="$3" rc; shift 3
  cmd "$bin"
  log "$name: $bin $*"
  timeout "$limit" "${CMD[@]}" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  if ((rc == 0)); then
    log "$name: ok"
    return 0
  fi
  log "$name: FAILED (exit $rc$( ((rc == 124)) && echo ", over its ${limit} s limit"))"
  grep -E 'FAILURE|worker_gpu_bench:' "$OUT/$name.log" | head -20 | tee -a "$LOG" >&2
  failed=1
  return 1
}

# Services by name (dashes allowed): their pid and gRPC port.
pid_of() { local v="PID_${1//-/_}"; echo "${!v:-}"; }
port_of() { local v="PORT_${1//-/_}"; echo "${!v:-}"; }

# start NAME BINARY ARGS...: starts a service in the background and waits for
# its "READY grpc=P metrics=M" line (START_LIMIT s); then port_of NAME is its
# gRPC port. On failure logs its stderr tail and returns 1.
start() {
  local name="$1" bin="$2"; shift 2
  local var="${name//-/_}"
  cmd "$bin"
  log "$name: $bin $*"
  "${CMD[@]}" "$@" >"$OUT/$name.out" 2>"$OUT/$name.log" &
  local pid=$! port="" begin
  begin=$(date +%s)
  printf -v "PID_$var" '%s' "$pid"
  for _ in $(seq $((START_LIMIT * 10))); do
    port="$(grep -m1 -o 'READY grpc=[0-9]*' "$OUT/$name.out" 2>/dev/null | cut -d= -f2)"
    [[ -n "$port" ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [[ -z "$port" ]]; then
    log "$name: not ready (exit or ${START_LIMIT} s); stderr tail:"
    tail -n 15 "$OUT/$name.log" | tee -a "$LOG" >&2
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    printf -v "PID_$var" '%s' ""
    failed=1
    return 1
  fi
  printf -v "PORT_$var" '%s' "$port"
  log "$name: ready on port $port after $(( $(date +%s) - begin )) s"
}

# stop NAME...: one after the other (workers before their daemons), SIGTERM
# and up to 40 s to exit (SIGKILL after); a non-zero exit fails the run.
stop() {
  local name pid rc
  for name in "$@"; do
    pid="$(pid_of "$name")"
    [[ -n "$pid" ]] || continue
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 400); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name: still running 40 s after SIGTERM; SIGKILL"
      kill -KILL "$pid" 2>/dev/null
      failed=1
    fi
    wait "$pid" 2>/dev/null; rc=$?
    [[ $rc -eq 0 ]] || { log "$name: exit $rc"; failed=1; }
    printf -v "PID_${name//-/_}" '%s' ""
  done
}

# have_time NAME SECONDS: whether a phase of about SECONDS still fits the budget.
have_time() {
  local used=$(( $(date +%s) - BEGIN_S ))
  if (( used + $2 > BUDGET_S )); then
    log "$1: skipped, ${used} s used and it needs about $2 s of the ${BUDGET_S} s budget"
    failed=1
    return 1
  fi
}

cleanup() {  # whatever is still running when the script ends, and the model
  local v pid
  for v in $(compgen -v PID_); do
    pid="${!v}"
    [[ -n "$pid" ]] && kill -KILL "$pid" 2>/dev/null
  done
  [[ -n "${MODEL:-}" ]] && rm -rf "$MODEL"
}
trap cleanup EXIT

daemon_flags() {  # daemon_flags POOL_BYTES: the common daemon flags
  DAEMON_FLAGS=(--plaintext --backend="$DAEMON_BACKEND" --listen=127.0.0.1:0 --metrics-port=-1
                --pool-bytes="$1")
  if [[ $DAEMON_BACKEND == cuda ]]; then DAEMON_FLAGS+=(--calibrate-on-start=false); fi
  if [[ -n "$UCX_TRANSPORTS" ]]; then DAEMON_FLAGS+=(--ucx-transports="$UCX_TRANSPORTS"); fi
}
WORKER_FLAGS=(--plaintext --backend="$WORKER_BACKEND" --listen=127.0.0.1:0 --metrics-port=-1)

log "seed $SEED, policies: $POLICIES, pool $POOL_BLOCKS blocks, $EXACT_REQUESTS requests a run"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
# The written model stays out of $OUT (megabytes nobody needs back).
MODEL="$(mktemp -d "${TMPDIR:-/tmp}/gpu_worker_model.XXXXXX")"
: >"$OUT/exactness.md"
: >"$OUT/load.md"

# 1. The tiny-shaped model and its daemon config.
if ((!SKIP_EXACT || !SKIP_DISAGG)); then
  if step model 60 worker_gpu_bench --write-model-dir="$MODEL" --shape=tiny --dtype="$DTYPE" \
      --seed="$SEED" --daemon-config-out="$OUT/daemon-tiny.yaml"; then
    BLOCK_BYTES="$(grep -o 'kv_bytes_per_block=[0-9]*' "$OUT/model.log" | cut -d= -f2)"
  else
    SKIP_EXACT=1; SKIP_DISAGG=1
  fi
fi

exactness() {  # exactness LABEL WORKER_PORT DAEMON_PORT [extra flags]
  local label="$1" wport="$2" dport="$3"; shift 3
  step "exactness_$label" "$EXACT_LIMIT" worker_gpu_bench --exactness \
    --worker="127.0.0.1:$wport" --daemon="127.0.0.1:$dport" --model-dir="$MODEL" \
    --requests="$EXACT_REQUESTS" --seed="$SEED" --label="$label" --resyncs="$RESYNCS" \
    "${EXACT_FLAGS[@]}" \
    --out-md="$OUT/exactness.md" --out-json="$OUT/exactness_$label.json" "$@"
  grep -E '^\[ near-tie' "$OUT/exactness_$label.log" | head -5 | tee -a "$LOG" >&2
  tail -n 3 "$OUT/exactness_$label.log" | tee -a "$LOG" >&2
}

# 2. Every eviction policy on a small pool.
if ((!SKIP_EXACT)); then
  for policy in $POLICIES; do
    have_time "exactness $policy" 40 || break
    daemon_flags $((POOL_BLOCKS * BLOCK_BYTES))
    start daemon_$policy asymcache-daemon "${DAEMON_FLAGS[@]}" --config="$OUT/daemon-tiny.yaml" \
      --policy="$policy" || continue
    dport="$(port_of "daemon_$policy")"
    if start worker_$policy asymcache-worker "${WORKER_FLAGS[@]}" --model-dir="$MODEL" \
        --daemon="127.0.0.1:$dport"; then
      exactness "$policy" "$(port_of "worker_$policy")" "$dport"
    fi
    stop "worker_$policy" "daemon_$policy"
  done
fi

# 3. Disaggregated: prefill daemon + worker, decode daemon + worker (asym).
if ((!SKIP_DISAGG)) && have_time disaggregated 60; then
  daemon_flags $((4 * POOL_BLOCKS * BLOCK_BYTES))  # the prefill side keeps blocks for export
  if start daemon_prefill asymcache-daemon "${DAEMON_FLAGS[@]}" --config="$OUT/daemon-tiny.yaml" \
      --role=prefill; then
    daemon_flags $((POOL_BLOCKS * BLOCK_BYTES))
    if start daemon_decode asymcache-daemon "${DAEMON_FLAGS[@]}" \
        --config="$OUT/daemon-tiny.yaml" --role=decode; then
      if start worker_prefill asymcache-worker "${WORKER_FLAGS[@]}" --model-dir="$MODEL" \
            --daemon="127.0.0.1:$PORT_daemon_prefill" --role=prefill &&
         start worker_decode asymcache-worker "${WORKER_FLAGS[@]}" --model-dir="$MODEL" \
            --daemon="127.0.0.1:$PORT_daemon_decode" --role=decode; then
        exactness disaggregated "$PORT_worker_decode" "$PORT_daemon_decode" \
          --prefill-worker="127.0.0.1:$PORT_worker_prefill" \
          --kv-source="127.0.0.1:$PORT_daemon_prefill"
      fi
      stop worker_prefill worker_decode daemon_decode
    fi
    stop daemon_prefill
  fi
fi

# 4. Load: llama-3-8b (GPU) or the tiny model (--cpu).
if ((!SKIP_LOAD)) && have_time load $((CPU ? 20 : 150)); then
  daemon_flags "$LOAD_POOL"
  if ((CPU)); then
    load_daemon=(--model=tiny)
    load_worker=(--model=tiny --seed="$SEED" --cpu-threads=2)
  else
    load_daemon=(--model=llama-3-8b --calibration="$ROOT/calibration/h100-llama-3-8b.json")
    load_worker=(--model=llama-3-8b --seed="$SEED")
  fi
  if start daemon_load asymcache-daemon "${DAEMON_FLAGS[@]}" "${load_daemon[@]}"; then
    if start worker_load asymcache-worker "${WORKER_FLAGS[@]}" "${load_worker[@]}" \
        --daemon="127.0.0.1:$PORT_daemon_load"; then
      # What is left of the budget (less 30 s to stop), at most LOAD_LIMIT.
      limit=$(( BUDGET_S - ($(date +%s) - BEGIN_S) - 30 ))
      (( limit > LOAD_LIMIT )) && limit=$LOAD_LIMIT
      (( limit < 30 )) && limit=30
      step load "$limit" worker_gpu_bench --load --worker="127.0.0.1:$PORT_worker_load" \
        --concurrency="$LOAD_CONCURRENCY" --requests="$LOAD_REQUESTS" \
        --prompt-tokens="$LOAD_PROMPT" --max-new-tokens="$LOAD_NEW" --seed="$SEED" \
        --out-md="$OUT/load.md" --out-json="$OUT/load.json"
      cat "$OUT/load.md" | tee -a "$LOG" >&2
    fi
    stop worker_load daemon_load
  fi
fi

# 5. Disaggregated load (GPU only): llama-3-8b prefill daemon + worker on
#    PREFILL_GPU, decode daemon + worker on DECODE_GPU (GPUs 0 and 1 when the
#    machine has two, else both on 0); each request's first token from the
#    prefill worker, the rest from the decode worker after it imported the
#    prompt's blocks over UCX: the KV transfer time per request is reported.
if ((!CPU && !SKIP_DISAGG_LOAD)) && have_time disagg_load 150; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  PREFILL_GPU="${PREFILL_GPU:-0}"
  DECODE_GPU="${DECODE_GPU:-$(( gpus >= 2 ? 1 : 0 ))}"
  log "disaggregated load: prefill on GPU $PREFILL_GPU, decode on GPU $DECODE_GPU ($gpus GPUs)"
  daemon_flags "$DISAGG_POOL"
  model8b=(--model=llama-3-8b --calibration="$ROOT/calibration/h100-llama-3-8b.json")
  if start daemon_p8 asymcache-daemon "${DAEMON_FLAGS[@]}" "${model8b[@]}" --role=prefill \
        --cuda-device="$PREFILL_GPU"; then
    if start daemon_d8 asymcache-daemon "${DAEMON_FLAGS[@]}" "${model8b[@]}" --role=decode \
          --cuda-device="$DECODE_GPU"; then
      if start worker_p8 asymcache-worker "${WORKER_FLAGS[@]}" --model=llama-3-8b \
            --seed="$SEED" --gpu="$PREFILL_GPU" --role=prefill \
            --daemon="127.0.0.1:$PORT_daemon_p8" &&
         start worker_d8 asymcache-worker "${WORKER_FLAGS[@]}" --model=llama-3-8b \
            --seed="$SEED" --gpu="$DECODE_GPU" --role=decode \
            --daemon="127.0.0.1:$PORT_daemon_d8"; then
        limit=$(( BUDGET_S - ($(date +%s) - BEGIN_S) - 30 ))
        (( limit > LOAD_LIMIT )) && limit=$LOAD_LIMIT
        (( limit < 30 )) && limit=30
        step disagg_load "$limit" worker_gpu_bench --load --worker="127.0.0.1:$PORT_worker_d8" \
          --prefill-worker="127.0.0.1:$PORT_worker_p8" --kv-source="127.0.0.1:$PORT_daemon_p8" \
          --concurrency="$DISAGG_CONCURRENCY" --requests="$DISAGG_REQUESTS" \
          --prompt-tokens="$LOAD_PROMPT" --max-new-tokens="$DISAGG_NEW" --seed="$SEED" \
          --label="llama-3-8b split GPU$PREFILL_GPU->GPU$DECODE_GPU" \
          --out-md="$OUT/load.md" --out-json="$OUT/disagg_load.json"
        grep -E 'KV transfer' "$OUT/disagg_load.log" | tee -a "$LOG" >&2
      fi
      stop worker_p8 worker_d8 daemon_d8
    fi
    stop daemon_p8
  fi
fi

{ echo; echo "## exactness"; cat "$OUT/exactness.md"; echo; echo "## load"; cat "$OUT/load.md"; } \
  >>"$LOG"
log "done: $([[ $failed == 0 ]] && echo 'every step passed' || echo 'FAILED')"
# The device tool returns only a few files: keep the tables and the JSON at
# the top of $OUT and pack every process log into one archive.
(cd "$OUT" && find . -maxdepth 1 -type f \( -name '*.log' -o -name '*.out' \) ! -name run.log \
    -printf '%f\n' | tar czf logs.tgz --remove-files -T - 2>/dev/null
  find . -maxdepth 1 -type f -name 'exactness_*.json' -printf '%f\n' |
    tar czf json.tgz --remove-files -T - 2>/dev/null; true)
log "results in $OUT: exactness.md load.md load.json json.tgz logs.tgz"
exit $failed
