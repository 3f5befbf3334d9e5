#!/usr/bin/env bash
# Runs ON the GPU machine, from the repository root, with the bundle made by
# scripts/gpu_bundle.sh carried along (.bundle/gpu):
#   1. the kernel tests (kernels_tests; the CUDA ones need the GPU);
#   2. the MSA benchmark (msa_gpu_bench -> msa_gpu.jsonl);
#   3. the PyTorch baselines, GEMM ceiling and linear-layer sweep
#      (bench/gpu/sdpa_baseline.py -> sdpa.json);
#   4. bench/gpu/make_calibration.py -> h100-llama-3-8b.json + msa_h100.md.
# Everything goes under $OUT (at most 8 files come back): run.log, tests.log,
# msa_gpu.jsonl, sdpa.json, calibration.json, msa_h100.md, nvidia-smi.txt.
# A failing step is logged and the next one still runs (the PyTorch baselines
# need no MSA). Exit code: 0 if every step succeeded, else 1.
#
#   bash scripts/gpu_run.sh [--quick] [--skip-tests] [--skip-msa] [--skip-torch]
# Step time limits (seconds) via TESTS_TIMEOUT (150), MSA_TIMEOUT (200),
# TORCH_TIMEOUT (300).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/build/gpu_out}"
mkdir -p "$OUT"
BUNDLE="${ASYMCACHE_BUNDLE:-$ROOT/.bundle/gpu}"
[[ "$BUNDLE" = /* ]] || BUNDLE="$ROOT/$BUNDLE"
QUICK=""
SKIP_TESTS=0
SKIP_MSA=0
SKIP_TORCH=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --skip-tests) SKIP_TESTS=1 ;;
    --skip-msa) SKIP_MSA=1 ;;
    --skip-torch) SKIP_TORCH=1 ;;
    *) echo "unknown argument $arg" >&2; exit 2 ;;
  esac
done
export PYTHONUNBUFFERED=1
LOG="$OUT/run.log"
: >"$LOG"
failed=0
log() { printf '[gpu_run %s] %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$LOG" >&2; }

PY_DIR="$ROOT/bench/gpu"
[[ -f "$BUNDLE/py/sdpa_baseline.py" ]] && PY_DIR="$BUNDLE/py"

log "host $(hostname), repo $ROOT, out $OUT"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw,power.limit \
  --format=csv >>"$OUT/nvidia-smi.txt" 2>&1 || true
{ grep -m1 PRETTY_NAME /etc/os-release; ldd --version | head -1; python3 --version; } >>"$LOG" 2>&1

if [[ ! -x "$BUNDLE/run.sh" ]]; then
  log "no bundle at $BUNDLE (run scripts/gpu_bundle.sh here first; carry .bundle/gpu): MSA steps skipped"
  SKIP_TESTS=1
  SKIP_MSA=1
  failed=1
fi

if ((SKIP_TESTS == 0)); then
  if [[ -x "$BUNDLE/bin/kernels_tests" ]]; then
    log "kernels_tests"
    timeout "${TESTS_TIMEOUT:-150}" "$BUNDLE/run.sh" kernels_tests --gtest_brief=1 >"$OUT/tests.log" 2>&1
    rc=$?
    tail -n 40 "$OUT/tests.log" | tee -a "$LOG"
    log "kernels_tests exit $rc"
    ((rc == 0)) || failed=1
  else
    log "kernels_tests not in the bundle"
  fi
fi

MSA_JSON="$OUT/msa_gpu.jsonl"
if ((SKIP_MSA == 0)); then
  if [[ -x "$BUNDLE/bin/msa_gpu_bench" ]]; then
    log "msa_gpu_bench"
    timeout "${MSA_TIMEOUT:-200}" "$BUNDLE/run.sh" msa_gpu_bench --out="$MSA_JSON" ${QUICK:+--quick} 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    log "msa_gpu_bench exit $rc"
    ((rc == 0)) || failed=1
  else
    log "msa_gpu_bench not in the bundle"
    failed=1
  fi
fi

SDPA_JSON="$OUT/sdpa.json"
if ((SKIP_TORCH == 0)); then
  log "sdpa_baseline.py"
  timeout "${TORCH_TIMEOUT:-300}" python3 "$PY_DIR/sdpa_baseline.py" --out "$SDPA_JSON" ${QUICK:+--quick} 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  log "sdpa_baseline.py exit $rc"
  ((rc == 0)) || failed=1
fi

log "make_calibration.py"
python3 "$PY_DIR/make_calibration.py" --msa "$MSA_JSON" --sdpa "$SDPA_JSON" \
  --out-json "$OUT/calibration.json" --out-md "$OUT/msa_h100.md" \
  --command "bash scripts/gpu_run.sh $*" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
log "make_calibration.py exit $rc"
((rc == 0)) || failed=1
log "done (failed=$failed)"
exit "$failed"
