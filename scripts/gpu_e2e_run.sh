#!/usr/bin/env bash
# End-to-end evaluation on a GPU (issue 7): asymcache-bench replays the
# simulator's workloads against a real cluster per system — daemon (cuda pool)
# + worker (llama-3-8b shape, bf16, random weights) started fresh for every
# (system, rate), same GPU, same kernels, only policy / chunking / pins differ.
# Runs ON the GPU machine from the repository root, with the services bundle
#   ASYMCACHE_BUNDLE_SERVICES=1 ASYMCACHE_GPU_BUILD=build/gpu-services \
#   ASYMCACHE_BUNDLE=.bundle/gpu-services scripts/gpu_bundle.sh \
#     asymcache-daemon asymcache-worker asymcache-coordinator asymcache-calibrate asymcache-bench
# carried along. Usage: scripts/gpu_e2e_run.sh PART...   where PART is
#   agent   agent jobs: vllm, pensieve, asymcache, and Continuum-style pins over
#           vllm and asymcache, at $AGENT_RATES sessions/s;
#   docqa   shared-document Q&A: vllm, pensieve, asymcache, asym-fixed,
#           front-first-adaptive at $DOCQA_RATES sessions/s;
#   chat    multi-turn chat: vllm, pensieve, asymcache at $CHAT_RATES;
#   longdocqa  long shared-document Q&A (32-64k-token documents, the regime
#           where asymcache-sim with an H200 step fit of 2026-11-27
#           predicted the largest gains: 1.4-2.0x mean TTFT over vllm at
#           0.1-0.15 sessions/s with 24-40 sessions): vllm, pensieve, asymcache
#           at $LONGDOCQA_RATES with a $POOL_LONG pool. 24 sessions at 0.1/s
#           arrive over 4 minutes: about 5 minutes per (system, rate), so give
#           a GPU call one rate;
#   quick   a few minutes for iteration: long-doc-qa with $SESSIONS_QUICK (8)
#           sessions at $QUICK_RATE (0.15) sessions/s, vllm, pensieve and
#           asymcache, a $POOL_LONG pool (about a minute per system plus the
#           cluster starts; not yet timed on a GPU);
#   sweep   every GPU part above: agent docqa chat longdocqa;
#   cpu     the same flow on the CPU (tiny model, host pool): what the ctest
#           gpu_e2e_cpu_run checks.
# With GPUS=N (default 1) the parts run at the same time, part i on GPU
# i mod N (asymcache-bench --gpus), the parts of one GPU one after another:
# `GPUS=4 scripts/gpu_e2e_run.sh sweep` spreads the sweep over four GPUs
# (each run still has a whole GPU; the host is shared).
# Each part writes $OUT/<part>.json (asymcache-bench's JSON: per run the
# summary, the simulator's prediction with the daemon's calibration, and every
# request's TTFT/TPOT) and $OUT/<part>.txt (the table). Plots and the results
# page: bench/e2e_report.py over those files.
# Environment: ASYMCACHE_BUNDLE (default .bundle/gpu-services), ASYMCACHE_BIN_DIR
# (binaries from this folder instead), OUT (default /tmp/asymcache-e2e), POOL
# (default 8GiB: 4096 blocks of 2 MiB, 65k tokens — under pressure for these
# workloads), SESSIONS_* and *_RATES, DELAY_SCALE (tool/think times x, default
# 0.25 so that a sweep fits the GPU time), CALIBRATION (default: the card's
# engine file, calibration/h200-llama-3-8b-engine.json when nvidia-smi names an
# H200, else calibration/h100-llama-3-8b-engine.json: whole steps of that card
# plus the engine's time outside the forward, docs/calibration.md; also what
# the simulator predicts with),
# WORKER_FLAGS (extra flags of every worker, space-separated, e.g.
# "--extend-leases=false"; default none), STEP_TRACES=1 (every worker writes a step trace, copied to
# $OUT/<part>-traces/<system>-<rate>/worker-<i>.steps.jsonl; compare with the
# cost model by asymcache-fit-steps --trace), SYSTEMS_AGENT / SYSTEMS_DOCQA /
# SYSTEMS_CHAT (the systems of a part, default
# the lists below), SESSIONS_LONGDOCQA, LONGDOCQA_RATES, POOL_LONG (default
# 24GiB: 12288 blocks, the simulator's pool for long-doc-qa), SEED (the
# workload generator's seed, asymcache-bench --seed; default 1: at saturation
# one seed's arrivals decide rankings within ~25%, so compare systems over
# several), LOG_ROOT (where the services' logs and traces go while a part runs, default
# /tmp/asymcache-e2e-logs; give concurrent runs on one machine different folders).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUNDLE="${ASYMCACHE_BUNDLE:-$ROOT/.bundle/gpu-services}"
OUT="${OUT:-/tmp/asymcache-e2e}"
POOL="${POOL:-8GiB}"
DELAY_SCALE="${DELAY_SCALE:-0.25}"
if [[ -z "${CALIBRATION:-}" ]]; then
  CALIBRATION=calibration/h100-llama-3-8b-engine.json
  if nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | grep -q H200; then
    CALIBRATION=calibration/h200-llama-3-8b-engine.json
  fi
fi
SEED="${SEED:-1}"
AGENT_RATES="${AGENT_RATES:-0.5,1}"
DOCQA_RATES="${DOCQA_RATES:-1,2}"
CHAT_RATES="${CHAT_RATES:-1,2}"
SESSIONS_AGENT="${SESSIONS_AGENT:-16}"
SESSIONS_DOCQA="${SESSIONS_DOCQA:-24}"
SESSIONS_CHAT="${SESSIONS_CHAT:-24}"
LONGDOCQA_RATES="${LONGDOCQA_RATES:-0.1,0.15}"
SESSIONS_LONGDOCQA="${SESSIONS_LONGDOCQA:-24}"
POOL_LONG="${POOL_LONG:-24GiB}"
SYSTEMS_AGENT="${SYSTEMS_AGENT:-vllm,pensieve,asymcache,vllm+pins,asymcache+pins}"
SYSTEMS_DOCQA="${SYSTEMS_DOCQA:-vllm,pensieve,asymcache,asym-fixed,front-first-adaptive}"
SYSTEMS_CHAT="${SYSTEMS_CHAT:-vllm,pensieve,asymcache}"
SYSTEMS_LONGDOCQA="${SYSTEMS_LONGDOCQA:-vllm,pensieve,asymcache}"
SESSIONS_QUICK="${SESSIONS_QUICK:-8}"
QUICK_RATE="${QUICK_RATE:-0.15}"
GPUS="${GPUS:-1}"
[[ "$GPUS" =~ ^[1-9][0-9]*$ ]] || { echo "GPUS must be a positive integer, got '$GPUS'" >&2; exit 2; }
LOG_ROOT="${LOG_ROOT:-/tmp/asymcache-e2e-logs}"
mkdir -p "$OUT"

if [[ -n "${ASYMCACHE_BIN_DIR:-}" ]]; then
  # The bench finds the service binaries beside itself or in its build tree.
  BENCH=("$ASYMCACHE_BIN_DIR/asymcache-bench")
else
  BENCH=("$BUNDLE/run.sh" asymcache-bench)
fi
GPU_ARGS=(--model=llama-3-8b --backend=cuda --pool-bytes="$POOL" --calibration="$CALIBRATION"
          --scale-delays="$DELAY_SCALE" --seed="$SEED" --require-no-errors)
[[ -n "${WORKER_FLAGS:-}" ]] && GPU_ARGS+=(--worker_flags="$WORKER_FLAGS")

status=0
run_part() {
  local part="$1"; shift
  local traces=()
  [[ "${STEP_TRACES:-0}" == 1 ]] && traces=(--step-traces)
  echo "== $part: ${BENCH[*]} $* ${traces[*]}" | tee -a "$OUT/run.log"
  "${BENCH[@]}" "$@" "${traces[@]}" --json="$OUT/$part.json" \
    --log-dir="$LOG_ROOT/$part" > "$OUT/$part.txt" 2>> "$OUT/run.log"
  local rc=$?
  if ((${#traces[@]})); then
    mkdir -p "$OUT/$part-traces"
    (cd "$LOG_ROOT/$part" && find . -name '*.steps.jsonl' -print0 |
       xargs -0 -r cp --parents -t "$OUT/$part-traces")
  fi
  cat "$OUT/$part.txt"
  if [[ $rc -ne 0 ]]; then
    echo "== $part failed (exit $rc); logs:" | tee -a "$OUT/run.log"
    tail -n 20 "$LOG_ROOT/$part"/*/*.log >> "$OUT/run.log" 2>/dev/null
    status=1
  fi
}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv > "$OUT/card.txt" 2>&1

# One part on GPU $2 (its exit status in $status).
run_named_part() {
  local part="$1" gpu=("--gpus=$2")
  case "$part" in
    agent)
      run_part agent "${GPU_ARGS[@]}" "${gpu[@]}" --workload=agent --sessions="$SESSIONS_AGENT" \
        --rates="$AGENT_RATES" --systems="$SYSTEMS_AGENT" ;;
    docqa)
      run_part docqa "${GPU_ARGS[@]}" "${gpu[@]}" --workload=doc-qa --sessions="$SESSIONS_DOCQA" \
        --rates="$DOCQA_RATES" \
        --systems="$SYSTEMS_DOCQA" ;;
    chat)
      run_part chat "${GPU_ARGS[@]}" "${gpu[@]}" --workload=chat --sessions="$SESSIONS_CHAT" \
        --rates="$CHAT_RATES" --systems="$SYSTEMS_CHAT" ;;
    longdocqa)
      # The later --pool-bytes wins over GPU_ARGS'.
      run_part longdocqa "${GPU_ARGS[@]}" "${gpu[@]}" --pool-bytes="$POOL_LONG" \
        --workload=long-doc-qa --sessions="$SESSIONS_LONGDOCQA" --rates="$LONGDOCQA_RATES" \
        --systems="$SYSTEMS_LONGDOCQA" ;;
    quick)
      run_part quick "${GPU_ARGS[@]}" "${gpu[@]}" --pool-bytes="$POOL_LONG" \
        --workload=long-doc-qa --sessions="$SESSIONS_QUICK" --rates="$QUICK_RATE" \
        --systems=vllm,pensieve,asymcache ;;
    cpu)
      run_part cpu --model=tiny --backend=host --pool-bytes=4MiB --workload=agent,doc-qa \
        --sessions=2 --scale-lengths=0.05 --scale-delays=0.05 --rates=2 --cpu-threads=1 \
        --systems=vllm,asymcache,vllm+pins --require-no-errors --require-same-tokens ;;
  esac
}

parts=()
for part in "$@"; do
  case "$part" in
    sweep) parts+=(agent docqa chat longdocqa) ;;
    agent|docqa|chat|longdocqa|quick|cpu) parts+=("$part") ;;
    *) echo "unknown part '$part' (agent, docqa, chat, longdocqa, quick, sweep, cpu)" >&2; exit 2 ;;
  esac
done
start_s=$SECONDS
if ((GPUS == 1)); then
  for part in "${parts[@]}"; do run_named_part "$part" 0; done
else
  pids=()
  for ((g = 0; g < GPUS && g < ${#parts[@]}; ++g)); do
    (
      status=0
      for ((i = g; i < ${#parts[@]}; i += GPUS)); do run_named_part "${parts[$i]}" "$g"; done
      exit $status
    ) &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
fi
echo "== parts ${parts[*]} on $GPUS GPU(s): $((SECONDS - start_s)) s" | tee -a "$OUT/run.log"
exit $status
