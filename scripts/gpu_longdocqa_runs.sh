#!/usr/bin/env bash
# Repeated long-doc-qa runs at vllm's saturation, one per argument, for comparing systems on
# several runs (at saturation one run's mean TTFT moves by ~15% between identical runs).
# Runs ON the GPU machine from the repository root with the services bundle carried
# (scripts/gpu_bundle.sh, .bundle/gpu-services):
#   SEED=6 bash scripts/gpu_longdocqa_runs.sh SYSTEM[:LABEL[:WORKER_FLAGS]] ...
# e.g.  vllm:1 vllm:2 "vllm:plan:--extend-leases=false" asymcache:1
# Each argument is one scripts/gpu_e2e_run.sh longdocqa run (24 sessions at 0.15/s, real think
# times, step traces, the card's engine calibration), written to $OUT/s<SEED>_<SYSTEM>_<LABEL>/
# and tarred to $OUT/s<SEED>_<SYSTEM>_<LABEL>.tar.gz as soon as it ends, so a call that hits its
# time limit keeps the runs that finished (about 3.6 min per run on an H200). Environment: SEED
# (default 6), SESSIONS (24), RATE (0.15), OUT (required: the tool's output folder).
set -u
: "${OUT:?set OUT to the folder the results go to}"
SEED="${SEED:-6}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
status=0
for spec in "$@"; do
  IFS=: read -r system label flags <<<"$spec"
  name="s${SEED}_${system}_${label:-1}"
  OUT="$OUT/$name" SEED="$SEED" DELAY_SCALE=1 SYSTEMS_LONGDOCQA="$system" \
    SESSIONS_LONGDOCQA="${SESSIONS:-24}" LONGDOCQA_RATES="${RATE:-0.15}" STEP_TRACES=1 \
    WORKER_FLAGS="${flags:-}" "$ROOT/scripts/gpu_e2e_run.sh" longdocqa >"$OUT/$name.stdout" 2>&1
  rc=$?
  ((rc == 0)) || status=1
  echo "$name rc=$rc $(date -u +%T)"
  grep -E "^\s*$system\b" "$OUT/$name/longdocqa.txt" 2>/dev/null | head -3
  rm -rf /tmp/asymcache-e2e-logs/longdocqa  # gpu_e2e_run.sh copied this run's traces already
  tar -C "$OUT" -czf "$OUT/$name.tar.gz" "$name" "$name.stdout" && rm -rf "${OUT:?}/$name" "$OUT/$name.stdout"
done
exit $status
