#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, docs/fuzzing.md) and runs each for a
# bounded time.
#
#   ./scripts/fuzz.sh                      every target, 20 s each
#   ./scripts/fuzz.sh --seconds 600        longer, on demand
#   ./scripts/fuzz.sh --seconds 0          replay the corpora only (regressions)
#   ./scripts/fuzz.sh --target trace       one target (repeat --target for more)
#   ./scripts/fuzz.sh --list               the targets
#
# Build tree: $ASYMCACHE_FUZZ_BUILD (default build/fuzz, relative to the
# repository root), configured with clang, ASan+UBSan and coverage
# (fuzz/CMakeLists.txt), no CUDA, tests or benchmarks; only the fuzz targets
# are built. A tree that is already configured with -DASYMCACHE_FUZZ=ON (the
# sanitizer tree of scripts/test.sh, which also holds the ASan tests) is used
# as it is: only the fuzz targets are (re)built, its options stay.
# Corpora: each run reads the checked-in seeds (fuzz/corpus/TARGET/) and what
# earlier runs found (BUILD/corpus/TARGET/, which it extends; never written
# back into the repository).
# Exit status: 0 when no target found anything; 1 otherwise, each reproducer
# under BUILD/crashes/TARGET/ (crash-*, leak-*, timeout-*, oom-*), replayed
# with `BUILD/fuzz/TARGET_fuzz FILE`.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ASYMCACHE_ROOT"

# Every target, with the longest input it is given (bytes): room for the
# largest seed and for the limits the target probes (plan_step: a context
# longer than its daemon's max_context_tokens of 1024 tokens).
TARGETS=(calibration hf_config safetensors trace plan_step daemon_config coordinator_config
         worker_config)
declare -A MAX_LEN=([calibration]=4096 [hf_config]=4096 [safetensors]=4096 [trace]=8192
                    [plan_step]=8192 [daemon_config]=2048 [coordinator_config]=2048
                    [worker_config]=2048)
# plan_step's gRPC server frees each call's memory on its own threads after
# the answer, so libFuzzer's per-input leak check (a full LeakSanitizer scan
# whenever an input ends with more mallocs than frees) would run on almost
# every input, 17x slower; that target checks instead that every block and
# lease comes back (plan_step_fuzz.cc).
declare -A EXTRA=([plan_step]=-detect_leaks=0)
declare -A DICT=([calibration]=calibration.dict [hf_config]=hf_config.dict
                 [safetensors]=safetensors.dict [trace]=trace.dict
                 [daemon_config]=yaml_config.dict [coordinator_config]=yaml_config.dict
                 [worker_config]=yaml_config.dict)

usage() {
  sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

seconds=20
selected=()
while (($#)); do
  case "$1" in
    --seconds)
      [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || { log "--seconds needs a whole number"; usage 2; }
      seconds="$2"; shift 2 ;;
    --seconds=*)
      seconds="${1#*=}"
      [[ "$seconds" =~ ^[0-9]+$ ]] || { log "--seconds needs a whole number"; usage 2; }
      shift ;;
    --target)
      [[ $# -ge 2 ]] || { log "--target needs a name"; usage 2; }
      selected+=("$2"); shift 2 ;;
    --target=*) selected+=("${1#*=}"); shift ;;
    --list) printf '%s\n' "${TARGETS[@]}"; exit 0 ;;
    -h|--help) usage 0 ;;
    *) log "unknown argument '$1'"; usage 2 ;;
  esac
done
if ((${#selected[@]} == 0)); then selected=("${TARGETS[@]}"); fi
for t in "${selected[@]}"; do
  [[ -n "${MAX_LEN[$t]:-}" ]] || { log "unknown target '$t' (--list shows them)"; exit 2; }
done

ensure_packages
build="${ASYMCACHE_FUZZ_BUILD:-build/fuzz}"
if grep -qx 'ASYMCACHE_FUZZ:BOOL=ON' "$build/CMakeCache.txt" 2>/dev/null; then
  log "using the fuzzing tree $build as configured"
else
  log "configuring $build (clang, ASan+UBSan, libFuzzer)"
  cmake -S "$ASYMCACHE_ROOT" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_COMPILER=clang++ -DASYMCACHE_FUZZ=ON \
    -DASYMCACHE_SANITIZE=address -DASYMCACHE_CUDA=OFF -DASYMCACHE_TESTS=OFF \
    -DASYMCACHE_BENCH=OFF >/dev/null
fi
log "building ${selected[*]/%/_fuzz}"
cmake --build "$build" -j "$ASYMCACHE_JOBS" --target "${selected[@]/%/_fuzz}"

# Leaks are findings too; a sanitizer report ends the run with the input saved.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

failed=()
for t in "${selected[@]}"; do
  corpus="$build/corpus/$t"
  crashes="$build/crashes/$t"
  mkdir -p "$corpus" "$crashes"
  args=(-max_len="${MAX_LEN[$t]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$crashes/")
  if ((seconds > 0)); then
    args+=(-max_total_time="$seconds")
  else
    args+=(-runs=0)  # replay the corpora, mutate nothing
  fi
  [[ -n "${DICT[$t]:-}" ]] && args+=(-dict="fuzz/${DICT[$t]}")
  [[ -n "${EXTRA[$t]:-}" ]] && args+=("${EXTRA[$t]}")
  log "fuzzing $t for ${seconds} s (max_len ${MAX_LEN[$t]})"
  log_file="$build/$t.log"
  if "$build/fuzz/${t}_fuzz" "${args[@]}" "$corpus" "fuzz/corpus/$t" >"$log_file" 2>&1; then
    grep -E '^(Done|#[0-9]+ +DONE)|stat::number_of_executed_units|stat::peak_rss_mb' "$log_file" |
      sed "s/^/  [$t] /" >&2 || true
  else
    tail -n 40 "$log_file" >&2
    log "$t FOUND A PROBLEM: log $log_file, reproducer(s):"
    ls -1 "$crashes" >&2
    failed+=("$t")
  fi
done

if ((${#failed[@]})); then
  log "fuzzing failed: ${failed[*]} (reproduce: $build/fuzz/TARGET_fuzz $build/crashes/TARGET/FILE)"
  exit 1
fi
log "fuzzing passed: ${selected[*]}"
