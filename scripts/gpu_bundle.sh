#!/usr/bin/env bash
# Builds the CUDA targets here and assembles a self-contained bundle that runs on
# the lent GPU machine (Ubuntu 24.04 + CUDA 13, no abseil/gtest/benchmark there).
#
#   scripts/gpu_bundle.sh [target ...]
#
# Targets default to: kernels_tests msa_gpu_bench (a target that does not exist
# in this build is skipped with a warning, so the bundle still forms while a
# helper's sources are missing). Steps:
#   1. configure build/gpu (Release, ASYMCACHE_CUDA=ON, ASYMCACHE_SERVICES=OFF,
#      CUDA architecture $ASYMCACHE_CUDA_ARCH, default 90) and build the targets;
#   2. copy the binaries to .bundle/gpu/bin and the Python scripts of bench/gpu
#      to .bundle/gpu/py;
#   3. copy every shared library the binaries need that the base system of the
#      GPU machine lacks (ldd; abseil, gtest, gmock, benchmark, xxhash, cudart)
#      to .bundle/gpu/lib. Never carried: glibc, libstdc++, libgcc_s, the driver
#      (libcuda) and the big CUDA math libraries (cuBLAS/cuBLASLt, hundreds of
#      MiB): run.sh finds those in the machine's CUDA toolkit or PyTorch wheels;
#   4. write .bundle/gpu/run.sh: `run.sh BINARY [args]` sets LD_LIBRARY_PATH and
#      runs bin/BINARY (or a path).
# Environment: ASYMCACHE_BUNDLE (bundle folder, default .bundle/gpu; keep it under
# .bundle/), ASYMCACHE_GPU_BUILD (build folder, default build/gpu),
# ASYMCACHE_CUDA_ARCH (default 90), ASYMCACHE_JOBS (default 2),
# ASYMCACHE_BUNDLE_SERVICES (1 = build with ASYMCACHE_SERVICES=ON and carry the
# gRPC/protobuf/UCX/prometheus libraries plus UCX's transport modules, which
# run.sh points UCX_MODULE_DIR at; default 0).
# Fails if the bundle exceeds 60 MiB. .bundle/ is git-ignored; pass it to the
# device tool with carry [".bundle/gpu"] (see bench/gpu/README.md).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${ASYMCACHE_GPU_BUILD:-$ROOT/build/gpu}"
[[ "$BUILD" = /* ]] || BUILD="$ROOT/$BUILD"
BUNDLE="${ASYMCACHE_BUNDLE:-$ROOT/.bundle/gpu}"
[[ "$BUNDLE" = /* ]] || BUNDLE="$ROOT/$BUNDLE"
ARCH="${ASYMCACHE_CUDA_ARCH:-90}"
JOBS="${ASYMCACHE_JOBS:-2}"
MAX_MIB=60
SERVICES="${ASYMCACHE_BUNDLE_SERVICES:-0}"
TARGETS=("$@")
if ((${#TARGETS[@]} == 0)); then
  TARGETS=(kernels_tests msa_gpu_bench)
fi

log() { printf '\033[1m[gpu_bundle]\033[0m %s\n' "$*" >&2; }

log "configuring $BUILD (sm_$ARCH, Release)"
mkdir -p "$BUILD"
# --as-needed drops libraries (cuBLAS) that a binary lists but never calls.
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DASYMCACHE_CUDA=ON -DASYMCACHE_SERVICES="$([[ $SERVICES == 1 ]] && echo ON || echo OFF)" \
  -DASYMCACHE_TESTS=ON -DASYMCACHE_BENCH=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
  -DCMAKE_EXE_LINKER_FLAGS="-Wl,--as-needed" >/dev/null

available=()
for t in "${TARGETS[@]}"; do
  if ninja -C "$BUILD" -t query "$t" >/dev/null 2>&1; then
    available+=("$t")
  else
    log "warning: target '$t' does not exist in this build; skipped"
  fi
done
if ((${#available[@]} == 0)); then
  log "no target to build"; exit 1
fi
log "building: ${available[*]}"
cmake --build "$BUILD" -j "$JOBS" --target "${available[@]}"

case "$BUNDLE" in
  "$ROOT"/.bundle/?*) ;;
  *) log "ASYMCACHE_BUNDLE must be a folder under $ROOT/.bundle/ (got $BUNDLE)"; exit 2 ;;
esac
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/bin" "$BUNDLE/lib" "$BUNDLE/py"
for t in "${available[@]}"; do
  bin="$(find "$BUILD" -type f -name "$t" -perm -u+x | head -n1)"
  if [[ -z "$bin" ]]; then log "built $t but cannot find its binary"; exit 1; fi
  cp "$bin" "$BUNDLE/bin/$t"
  strip --strip-debug "$BUNDLE/bin/$t" || true
done
cp "$ROOT"/bench/gpu/*.py "$BUNDLE/py/" 2>/dev/null || true

# Libraries the GPU machine provides itself (base Ubuntu + driver + toolkit).
is_system_lib() {
  case "$1" in
    linux-vdso*|ld-linux*|libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|libutil.so*) return 0 ;;
    libstdc++.so*|libgcc_s.so*|libatomic.so*) return 0 ;;
    libcuda.so*|libnvidia*) return 0 ;;
    libcublas.so*|libcublasLt.so*|libnvJitLink.so*|libnvrtc*) return 0 ;;
  esac
  return 1
}

# UCX loads its transports (shm, tcp, cma, ...) as modules at run time.
UCX_MODULES=/usr/lib/x86_64-linux-gnu/ucx
if [[ $SERVICES == 1 && -d $UCX_MODULES ]]; then
  mkdir -p "$BUNDLE/lib/ucx"
  cp -L "$UCX_MODULES"/*.so* "$BUNDLE/lib/ucx/" 2>/dev/null || true
fi

declare -A seen=()
for b in "$BUNDLE"/bin/* "$BUNDLE"/lib/ucx/*; do
  [[ -f "$b" ]] || continue
  while read -r name arrow path _; do
    [[ "$arrow" == "=>" ]] || continue
    is_system_lib "$name" && continue
    if [[ "$path" == "not" ]]; then log "warning: $b needs $name, not found here"; continue; fi
    [[ -n "${seen[$name]:-}" ]] && continue
    seen[$name]=1
    cp -L "$path" "$BUNDLE/lib/$name"
  done < <(ldd "$b")
done

cat >"$BUNDLE/run.sh" <<'EOF'
#!/usr/bin/env bash
# run.sh BINARY [args...]: runs bin/BINARY (or the path BINARY) with the bundled
# libraries first on the library path, then the machine's CUDA toolkit and the
# CUDA libraries of PyTorch's wheels (cuBLAS is not carried).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
extra="$HERE/lib"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [[ -d "$d" ]] && extra="$extra:$d"
done
site="$(python3 -c 'import site,sys; print(site.getsitepackages()[0])' 2>/dev/null || true)"
for d in "$site"/nvidia/cu13/lib "$site"/nvidia/cublas/lib "$site"/nvidia/cuda_runtime/lib; do
  [[ -d "$d" ]] && extra="$extra:$d"
done
export LD_LIBRARY_PATH="$extra${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[[ -d "$HERE/lib/ucx" ]] && export UCX_MODULE_DIR="$HERE/lib/ucx"
bin="$1"; shift
[[ -x "$bin" ]] || bin="$HERE/bin/$bin"
exec "$bin" "$@"
EOF
chmod +x "$BUNDLE/run.sh"

size_mib=$(( $(du -sb "$BUNDLE" | cut -f1) / 1048576 ))
log "bundle $BUNDLE: ${size_mib} MiB; binaries: $(ls "$BUNDLE/bin" | tr '\n' ' '); libs: $(ls "$BUNDLE/lib" | wc -l)"
if (( size_mib >= MAX_MIB )); then
  log "bundle is ${size_mib} MiB, over the ${MAX_MIB} MiB limit"; exit 1
fi
