#!/usr/bin/env bash
# The main job. Installs missing Debian packages, builds, then runs the
# trace-driven simulator on a built-in workload, comparing every system
# (vllm, pensieve, asymcache and the ablations) on the same trace, and prints
# the comparison table. Until the services land (issues #4-#8) this is what
# AsymCache demonstrates on a machine without a GPU.
#
# Usage: ./scripts/demo.sh [extra asymcache-sim flags]
#   e.g. ./scripts/demo.sh --workload long-doc-qa
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ASYMCACHE_ROOT"
ensure_packages
configure_build build/main -DCMAKE_BUILD_TYPE=RelWithDebInfo

# Time comes from the cost model calibrated on an H100 by bench/gpu (see
# docs/results/msa_h100.md); every system replays the same trace.
SIM=build/main/sim/asymcache-sim
ARGS=(--workload long-agent --system all --calibration calibration/h100-llama-3-8b.json)
log "running: $SIM ${ARGS[*]} $*"
"$SIM" "${ARGS[@]}" "$@"
