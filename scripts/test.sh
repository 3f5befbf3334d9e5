#!/usr/bin/env bash
# Runs every test: installs missing Debian packages, then
#   1. the main build (gcc, CUDA when nvcc is present) and all its ctest suites;
#   2. a clang build of cachecore and the services libraries with -Wthread-safety
#      -Werror (lock annotations checked);
#   3. an ASan+UBSan build of the cachecore, kernels, sim and services tests,
#      run through ctest (not the reliability suites: their RSS and timing
#      bounds are for an uninstrumented build; they run in step 1 and, the
#      load test, under TSan in step 5);
#   4. the libFuzzer targets (clang), each for a bounded time (scripts/fuzz.sh);
#   5. the reliability load test under ThreadSanitizer at a reduced size
#      (scripts/tsan_check.sh).
# Idempotent: builds are incremental under build/.  Usage: ./scripts/test.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ASYMCACHE_ROOT"
ensure_packages

configure_build build/main -DCMAKE_BUILD_TYPE=RelWithDebInfo
log "ctest: main build"
ctest --test-dir build/main --output-on-failure -j "$ASYMCACHE_JOBS" --timeout 600

log "clang -Wthread-safety -Werror build of cachecore and the services"
configure_build build/clang-tsa -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DASYMCACHE_THREAD_SAFETY=ON -DASYMCACHE_CUDA=OFF -DASYMCACHE_SERVICES=ON \
  -DASYMCACHE_TESTS=OFF -DASYMCACHE_BENCH=OFF

log "ASan+UBSan build of the cachecore, kernels, sim and services tests"
configure_build build/asan -DCMAKE_BUILD_TYPE=Debug -DASYMCACHE_SANITIZE=address \
  -DASYMCACHE_CUDA=OFF -DASYMCACHE_SERVICES=ON -DASYMCACHE_BENCH=OFF
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build/asan --output-on-failure -j "$ASYMCACHE_JOBS" --timeout 900 \
  -L 'cachecore|sim|kernels|services'

log "libFuzzer targets, ${ASYMCACHE_FUZZ_SECONDS:-20} s each"
"$ASYMCACHE_ROOT/scripts/fuzz.sh" --seconds "${ASYMCACHE_FUZZ_SECONDS:-20}"

log "ThreadSanitizer: the reliability load test at a reduced size"
"$ASYMCACHE_ROOT/scripts/tsan_check.sh"
log "all tests passed"
