#!/usr/bin/env bash
# ThreadSanitizer run of the reliability load test (issue #9, "Load": "run
# under TSan once in CI on a reduced size"; docs/reliability.md).
#
# Configures build/tsan with -DASYMCACHE_SANITIZE=thread (gcc), builds only
# what the load test runs — reliability_tests and, through its dependencies,
# asymcache-daemon, asymcache-worker, asymcache-coordinator, all instrumented —
# plus the abseil shim (tests/reliability/tsan_absl_sync_shim.cc: Debian's
# abseil is not instrumented, so without it TSan would report every access an
# absl::Mutex guards), then runs the load test at a reduced size with the shim
# preloaded into the test and every server it starts.
#
# Every process writes its reports to <build>/tsan-reports/tsan.<pid>; the
# script fails (exit 1, reports printed) when any report exists, and also
# when the test itself fails.
#
# Usage: ./scripts/tsan_check.sh
# Environment: ASYMCACHE_LOAD_REQUESTS (default 48), ASYMCACHE_LOAD_CONCURRENCY
# (default 4): the reduced load; ASYMCACHE_TSAN_TESTS (default
# 'reliability.LoadTest'): the ctest -R regex of what runs under TSan;
# ASYMCACHE_TSAN_BUILD_DIR (default build/tsan): the build folder.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ASYMCACHE_ROOT"
ensure_packages

if ! grep -q 'ASYMCACHE_SANITIZE STREQUAL "thread"' CMakeLists.txt; then
  log "CMakeLists.txt has no ASYMCACHE_SANITIZE=thread: cannot build with TSan"
  exit 1
fi

build="${ASYMCACHE_TSAN_BUILD_DIR:-build/tsan}"
log "configuring $build (TSan)"
# -O1 -g1: line tables are all TSan's reports need (function, file and line
# per frame), and they compile faster than the default -O2 -g.
cmake -S "$ASYMCACHE_ROOT" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" -DASYMCACHE_SANITIZE=thread \
  -DASYMCACHE_CUDA=OFF -DASYMCACHE_SERVICES=ON \
  -DASYMCACHE_TESTS=ON -DASYMCACHE_BENCH=OFF >/dev/null
log "building the reliability tests and the servers they run (TSan)"
cmake --build "$build" -j "$ASYMCACHE_JOBS" --target reliability_tests

reports="$(cd "$build" && pwd)/tsan-reports"
rm -rf "$reports"
mkdir -p "$reports"
export ASYMCACHE_LOAD_REQUESTS="${ASYMCACHE_LOAD_REQUESTS:-48}"
export ASYMCACHE_LOAD_CONCURRENCY="${ASYMCACHE_LOAD_CONCURRENCY:-4}"
# halt_on_error=0: collect every report of the run; the files decide.
# ignore_noninstrumented_modules=1: memcpy/free and the other interceptors
# called from uninstrumented libraries (gRPC, protobuf, abseil) are not
# checked — those libraries order their own accesses in ways TSan cannot see;
# every access made by AsymCache's own code (and the headers it instantiates)
# still is.
# suppressions: only accesses by gRPC's inline code to gRPC's own objects
# (tests/reliability/tsan_suppressions.txt says why).
export TSAN_OPTIONS="log_path=$reports/tsan halt_on_error=0 second_deadlock_stack=1 history_size=4 ignore_noninstrumented_modules=1 suppressions=$ASYMCACHE_ROOT/tests/reliability/tsan_suppressions.txt"
tests="${ASYMCACHE_TSAN_TESTS:-reliability.LoadTest}"
log "running '$tests' under TSan: $ASYMCACHE_LOAD_REQUESTS requests at concurrency $ASYMCACHE_LOAD_CONCURRENCY"
status=0
# ctest adds LD_PRELOAD=<the shim> to these tests in a TSan build
# (tests/reliability/CMakeLists.txt).
ctest --test-dir "$build" --output-on-failure -R "$tests" --timeout 900 || status=$?

shopt -s nullglob
found=("$reports"/tsan.*)
if ((${#found[@]})); then
  log "ThreadSanitizer reported in ${#found[@]} process(es):"
  for f in "${found[@]}"; do
    printf -- '---- %s ----\n' "$f"
    cat "$f"
  done
  exit 1
fi
if ((status != 0)); then
  log "the tests failed under TSan (ctest exit $status)"
  exit "$status"
fi
log "TSan: no reports"
