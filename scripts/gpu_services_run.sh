#!/usr/bin/env bash
# Runs ON the GPU machine, from the repository root, with the services bundle
# made by
#   ASYMCACHE_BUNDLE_SERVICES=1 ASYMCACHE_GPU_BUILD=build/gpu-services \
#   ASYMCACHE_BUNDLE=.bundle/gpu-services scripts/gpu_bundle.sh \
#     services_daemon_tests services_client_tests services_transport_tests \
#     services_common_tests asymcache-daemon asymcache-calibrate
# carried along (.bundle/gpu-services):
#   1. services_daemon_tests (CUDA pool + IPC, on-start calibration, two
#      cuda-backend daemons exchanging blocks, and every host test);
#   2. services_client_tests and services_transport_tests (sanity on this OS);
#   3. asymcache-daemon --backend=cuda --model=llama-3-8b: the on-start MSA +
#      GEMM calibration, written with --calibration-out, and one scrape of its
#      /metrics, then SIGTERM.
# Everything goes under $OUT: run.log, *_tests.log, daemon.log,
# daemon_calibration.json, daemon_metrics.txt, nvidia-smi.txt.
# Exit code: 0 if every step succeeded, else 1.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/build/gpu_services_out}"
mkdir -p "$OUT"
BUNDLE="${ASYMCACHE_BUNDLE:-$ROOT/.bundle/gpu-services}"
RUN="$BUNDLE/run.sh"
LOG="$OUT/run.log"
: >"$LOG"
failed=0
log() { printf '[gpu_services_run %s] %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$LOG" >&2; }
step() {  # step NAME TIMEOUT CMD...
  local name="$1" limit="$2"; shift 2
  log "$name: $*"
  if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
    log "$name: ok ($(grep -E '^\[  (PASSED|SKIPPED|FAILED) ' "$OUT/$name.log" | tr '\n' ' '))"
  else
    log "$name: FAILED (exit $?)"; failed=1
    grep -E '^\[  FAILED|Failure' "$OUT/$name.log" | head -20 | tee -a "$LOG" >&2
  fi
}
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
step services_daemon_tests 300 "$RUN" services_daemon_tests
grep -E '^\[cuda transfer\]' "$OUT/services_daemon_tests.log" | tee -a "$LOG" >&2 || true
step services_client_tests 120 "$RUN" services_client_tests
step services_transport_tests 180 "$RUN" services_transport_tests
step services_common_tests 60 "$RUN" services_common_tests

log "daemon: cuda backend, llama-3-8b, on-start calibration"
"$RUN" asymcache-daemon --plaintext --backend=cuda --model=llama-3-8b --pool-fraction=0.5 \
  --listen=127.0.0.1:0 --metrics-host=127.0.0.1 --metrics-port=0 \
  --calibration-out="$OUT/daemon_calibration.json" >"$OUT/daemon.out" 2>"$OUT/daemon.log" &
pid=$!
start=$(date +%s)
port=""
for _ in $(seq 600); do
  port="$(grep -m1 -o 'metrics=[0-9]*' "$OUT/daemon.out" 2>/dev/null | cut -d= -f2)" && [[ -n "$port" ]] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [[ -n "$port" ]]; then
  log "daemon: READY after $(( $(date +%s) - start )) s (calibration included)"
  python3 - "$port" >"$OUT/daemon_metrics.txt" 2>&1 <<'PY' || true
import sys, urllib.request
print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode())
PY
  kill -TERM "$pid"; wait "$pid"; rc=$?
  log "daemon: stopped with exit $rc"
  [[ $rc -eq 0 ]] || failed=1
else
  log "daemon: did not become ready"; failed=1
  kill -KILL "$pid" 2>/dev/null || true
fi
cat "$OUT/daemon.log" >>"$LOG"
exit $failed
