#!/usr/bin/env bash
# The main job: a real AsymCache cluster on this machine, serving a workload.
#
# Installs missing Debian packages, builds the binaries, then asymcache-bench
# starts — once per system (policy + chunking) — a coordinator, two cache
# daemons, a prefill worker and a decode worker (CPU backend, the `tiny`
# model shape, random weights), replays a short built-in agent + chat
# workload through the coordinator's Generate, and prints TTFT / TPOT / hit
# rate / rebuilt tokens / agent job latency per system, with the simulator's
# prediction beside each and a check that every system generated the same
# tokens. Each cluster's gRPC and Prometheus endpoints are listed while it
# runs; everything is shut down on exit or Ctrl-C (SIGTERM to every child).
#
# Usage: ./scripts/demo.sh [--gpu] [extra asymcache-bench flags]
#   --gpu   the llama-3-8b shape on the CUDA backend (one daemon + worker per
#           GPU; prefill/decode split when two GPUs are visible).
#   e.g.    ./scripts/demo.sh --systems=vllm,asymcache --sessions=4
# Logs: /tmp/asymcache-demo/<system>-<rate>/*.log. JSON: /tmp/asymcache-demo/result.json
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ASYMCACHE_ROOT"

gpu=0
extra=()
for arg in "$@"; do
  case "$arg" in
    --gpu) gpu=1 ;;
    *) extra+=("$arg") ;;
  esac
done

ensure_packages
log "configuring build/main"
cmake -S "$ASYMCACHE_ROOT" -B build/main -G Ninja "${ASYMCACHE_MAIN_BUILD_ARGS[@]}" >/dev/null
log "building the service binaries and asymcache-bench"
cmake --build build/main -j "$ASYMCACHE_JOBS" --target asymcache-daemon asymcache-worker \
  asymcache-coordinator asymcache-calibrate asymcache-bench

out=/tmp/asymcache-demo
mkdir -p "$out"
args=(--log-dir="$out" --json="$out/result.json" --show-endpoints --require-no-errors)
if [[ $gpu == 1 ]]; then
  gpus=$(nvidia-smi -L 2>/dev/null | wc -l || true)
  if [[ ${gpus:-0} -lt 1 ]]; then
    log "--gpu: no GPU visible (nvidia-smi -L lists none)"
    exit 2
  fi
  # One H100: a daemon with a 24 GiB pool and a worker with 16 GB of weights.
  # Two GPUs: prefill on GPU 0, decode on GPU 1, through a coordinator.
  args+=(--model=llama-3-8b --backend=cuda --pool-bytes=24GiB
         --workload=agent,chat --sessions=8 --scale-delays=0.2
         --systems=none,vllm,pensieve,asymcache)
  if [[ $gpus -ge 2 ]]; then
    args+=(--split-roles --daemons=2 --gpus=0,1)
  fi
else
  # The tiny shape (32 KiB a KV block): a 4 MiB pool per daemon holds 2048
  # tokens, so this workload (contexts to ~1.6k tokens) evicts, and the
  # policies differ. Lengths x0.05 and tool/think times x0.1 keep a run short.
  args+=(--model=tiny --backend=host --pool-bytes=4MiB --split-roles --daemons=2
         --workload=agent,chat --sessions=3 --scale-lengths=0.05 --scale-delays=0.1 --rates=2
         --systems=none,vllm,pensieve,asymcache --require-same-tokens)
fi
log "running: build/main/services/loadgen/asymcache-bench ${args[*]} ${extra[*]}"
build/main/services/loadgen/asymcache-bench "${args[@]}" "${extra[@]}"
log "done; per-request results in $out/result.json, logs under $out/"
