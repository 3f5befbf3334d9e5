#!/usr/bin/env bash
# Runs ON the GPU machine, from the repository root, with the bundle of
# scripts/gpu_bundle.sh (msa_gpu_bench) carried along: R rounds (default 5),
# each msa_gpu_bench --sections=rebuild then sdpa_baseline.py --quick
# --skip-linear, then bench/gpu/rebuild_parity.py summarizes MSA against
# SDPA-flash (B0) on the 512- and 16-token chunks at 8k per round. A near-tie
# is decided by the rounds, not by one pair of medians.
#
#   bash scripts/gpu_parity_rounds.sh [ROUNDS]
# Writes under $OUT (default build/gpu_out): parity.md, rounds.tar.gz (the raw
# round files), run.log. Exit code: rebuild_parity.py's (0: every round had
# both sides of every configuration).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/build/gpu_out}"
BUNDLE="${ASYMCACHE_BUNDLE:-$ROOT/.bundle/gpu}"
[[ "$BUNDLE" = /* ]] || BUNDLE="$ROOT/$BUNDLE"
ROUNDS="${1:-5}"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a positive integer, got '$ROUNDS'" >&2; exit 2; }
[[ -x "$BUNDLE/run.sh" ]] || { echo "no bundle at $BUNDLE (scripts/gpu_bundle.sh msa_gpu_bench)" >&2; exit 2; }
DIR="$(mktemp -d)"
mkdir -p "$OUT"
LOG="$OUT/run.log"
: >"$LOG"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv >>"$LOG" 2>&1 || true
for ((r = 1; r <= ROUNDS; ++r)); do
  echo "[parity] round $r/$ROUNDS $(date -u +%H:%M:%S)" | tee -a "$LOG"
  timeout 200 "$BUNDLE/run.sh" msa_gpu_bench --sections=rebuild --out="$DIR/msa_$r.jsonl" >>"$LOG" 2>&1 ||
    echo "[parity] msa_gpu_bench round $r failed" | tee -a "$LOG"
  timeout 200 python3 bench/gpu/sdpa_baseline.py --quick --skip-linear --out "$DIR/sdpa_$r.json" >>"$LOG" 2>&1 ||
    echo "[parity] sdpa_baseline.py round $r failed" | tee -a "$LOG"
done
tar -C "$DIR" -czf "$OUT/rounds.tar.gz" .
python3 bench/gpu/rebuild_parity.py --rounds "$DIR" --out-md "$OUT/parity.md" \
  --command "bash scripts/gpu_parity_rounds.sh $ROUNDS"
