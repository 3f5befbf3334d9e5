#!/usr/bin/env bash
# Runs every test: installs missing Debian packages, then
#   1. the main build (gcc, CUDA when nvcc is present) and all its ctest suites;
#   2. one clang tree, build/sanitize, that serves three checks with a single
#      compile: ASan+UBSan (-O1, asserts on) on everything, -Wthread-safety
#      -Werror on cachecore and the services (lock annotations checked), and
#      the libFuzzer targets (fuzz/CMakeLists.txt). Its cachecore, kernels, sim
#      and services tests run through ctest (not the reliability suites: their
#      RSS and timing bounds are for an uninstrumented build; they run in step
#      1 and, the load test, under TSan in step 4; nor the GPU evaluation
#      script's CPU run, see below);
#   3. the libFuzzer targets of that tree, each for a bounded time
#      (scripts/fuzz.sh; ASYMCACHE_FUZZ_SECONDS, default 10);
#   4. the reliability load test under ThreadSanitizer at a reduced size
#      (scripts/tsan_check.sh).
# Idempotent: builds are incremental under build/.  Usage: ./scripts/test.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ASYMCACHE_ROOT"
ensure_packages

configure_build build/main "${ASYMCACHE_MAIN_BUILD_ARGS[@]}"
log "ctest: main build"
ctest --test-dir build/main --output-on-failure -j "$ASYMCACHE_JOBS" --timeout 600

log "clang sanitizer tree: ASan+UBSan tests, -Wthread-safety -Werror, libFuzzer targets"
configure_build build/sanitize -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Debug \
  "-DCMAKE_CXX_FLAGS_DEBUG=-O1 -g1" -DASYMCACHE_SANITIZE=address -DASYMCACHE_FUZZ=ON \
  -DASYMCACHE_THREAD_SAFETY=ON -DASYMCACHE_CUDA=OFF -DASYMCACHE_SERVICES=ON -DASYMCACHE_BENCH=OFF
# Not here: loadgen.gpu_e2e_cpu_run and the three checks of its output, which run the GPU
# evaluation script (bash + Python around the same asymcache-bench binary that
# loadgen.bench_split_cluster_exact runs in this tree) on the CPU: 3 to 5
# minutes under ASan for no code the other tests leave unchecked.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build/sanitize --output-on-failure -j "$ASYMCACHE_JOBS" --timeout 900 \
  -L 'cachecore|sim|kernels|services' -E '^loadgen[.](gpu_e2e_cpu_run|e2e_report|e2e_cpu_step_traces|repredict)$'

log "libFuzzer targets, ${ASYMCACHE_FUZZ_SECONDS:-10} s each"
ASYMCACHE_FUZZ_BUILD=build/sanitize "$ASYMCACHE_ROOT/scripts/fuzz.sh" \
  --seconds "${ASYMCACHE_FUZZ_SECONDS:-10}"

log "ThreadSanitizer: the reliability load test at a reduced size"
"$ASYMCACHE_ROOT/scripts/tsan_check.sh"
log "all tests passed"
