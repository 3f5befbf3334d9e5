#!/usr/bin/env bash
# Repeated long-doc-qa runs at vllm's saturation, one per argument, for comparing systems on
# several runs (at saturation one run's mean TTFT moves by ~15% between identical runs).
# Runs ON the GPU machine from the repository root with the services bundle carried
# (scripts/gpu_bundle.sh, .bundle/gpu-services):
#   SEED=6 [GPUS=4] bash scripts/gpu_longdocqa_runs.sh SYSTEM[:LABEL[:WORKER_FLAGS]] ...
# e.g.  vllm:1 vllm:2 "vllm:plan:--extend-leases=false" asymcache:1
# Each argument is one scripts/gpu_e2e_run.sh longdocqa run (24 sessions at 0.15/s, real think
# times, step traces, the card's engine calibration), written to $OUT/s<SEED>_<SYSTEM>_<LABEL>/
# and tarred to $OUT/s<SEED>_<SYSTEM>_<LABEL>.tar.gz as soon as it ends, so a call that hits its
# time limit keeps the runs that finished (about 3.6 min per run on an H200).
# GPUS=N (default 1) spreads the runs over the machine's first N GPUs: argument i runs on GPU
# i mod N (CUDA_VISIBLE_DEVICES), the runs of one GPU one after another, the GPUs at the same
# time — each run still has a whole GPU (daemon, worker and pool on it) and its own log folder;
# the host's CPUs and PCIe are shared, so list the systems to compare in the same round (one
# argument per GPU) to give them the same neighbours. FIRST_GPU=K (default 0) starts at GPU K
# (two calls of this script with other seeds can share a machine). SEEDS="1 6 2" runs every
# argument once per seed, seed by seed (the runs of one seed first, so with as many arguments as
# GPUS each round compares the systems on one seed): at saturation one seed's ranking says little
# (docs/scheduling.md, "Prefill order"). Environment: SEED (default 6), SEEDS (default: SEED),
# SESSIONS (24), RATE (0.15), GPUS (1), FIRST_GPU (0), OUT (required: the tool's output folder).
set -u
: "${OUT:?set OUT to the folder the results go to}"
SEED="${SEED:-6}"
SEEDS="${SEEDS:-$SEED}"
GPUS="${GPUS:-1}"
FIRST_GPU="${FIRST_GPU:-0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ "$GPUS" =~ ^[1-9][0-9]*$ ]] || { echo "GPUS must be a positive integer, got '$GPUS'" >&2; exit 2; }
[[ "$FIRST_GPU" =~ ^[0-9]+$ ]] || { echo "FIRST_GPU must be an integer >= 0, got '$FIRST_GPU'" >&2; exit 2; }
for seed in $SEEDS; do
  [[ "$seed" =~ ^[0-9]+$ ]] || { echo "SEEDS must be integers >= 0, got '$seed'" >&2; exit 2; }
done
[[ $# -gt 0 ]] || { echo "usage: [SEEDS=...] [GPUS=N] $0 SYSTEM[:LABEL[:WORKER_FLAGS]] ..." >&2; exit 2; }

# One run; prints its result line. $1 = seed/spec, $2 = GPU index.
run_one() {
  local seed="${1%%/*}" spec="${1#*/}" gpu="$2" system label flags
  IFS=: read -r system label flags <<<"$spec"
  local name="s${seed}_${system}_${label:-1}"
  local logs="/tmp/asymcache-e2e-logs-$name"
  CUDA_VISIBLE_DEVICES="$gpu" LOG_ROOT="$logs" OUT="$OUT/$name" SEED="$seed" DELAY_SCALE=1 \
    SYSTEMS_LONGDOCQA="$system" SESSIONS_LONGDOCQA="${SESSIONS:-24}" \
    LONGDOCQA_RATES="${RATE:-0.15}" STEP_TRACES=1 WORKER_FLAGS="${flags:-}" \
    "$ROOT/scripts/gpu_e2e_run.sh" longdocqa >"$OUT/$name.stdout" 2>&1
  local rc=$?
  echo "$name gpu=$gpu rc=$rc $(date -u +%T)"
  grep -E "^\s*$system\b" "$OUT/$name/longdocqa.txt" 2>/dev/null | head -3
  rm -rf "$logs"  # gpu_e2e_run.sh copied this run's traces already
  tar -C "$OUT" -czf "$OUT/$name.tar.gz" "$name" "$name.stdout" &&
    rm -rf "${OUT:?}/$name" "$OUT/$name.stdout"
  return $rc
}

# The runs of GPU $1, one after another; exit status 1 when any failed.
run_gpu() {
  local gpu="$1" status=0 i
  shift
  for ((i = gpu; i < $#; i += GPUS)); do
    local args=("$@")
    run_one "${args[$i]}" "$((FIRST_GPU + gpu))" || status=1
  done
  return $status
}

# Every (seed, argument), seed by seed, as "SEED/SPEC".
runs=()
for seed in $SEEDS; do
  for spec in "$@"; do runs+=("$seed/$spec"); done
done
pids=()
for ((g = 0; g < GPUS && g < ${#runs[@]}; ++g)); do
  run_gpu "$g" "${runs[@]}" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=1
done
exit $status
