#!/usr/bin/env bash
# Builds AsymCache (ASYMCACHE_SERVICES=OFF: cachecore, kernels, sim and their
# tests) on a machine that has only a compiler, CMake, CUDA and GoogleTest — no
# abseil, xxhash or nlohmann-json — from Debian packages carried along.
#
#   scripts/portable_build.sh fetch [DIR]
#       On a Debian 12 machine with apt: download the .deb files of the
#       libraries the build needs into DIR (default .bundle/debs, git-ignored).
#   scripts/portable_build.sh build [DIR] [extra cmake args...]
#       On the target machine: unpack DIR/*.deb with `dpkg -x` into DIR/prefix
#       (nothing is installed system-wide), configure build/portable with
#       CMAKE_PREFIX_PATH pointing there, build, and run ctest.
#
# Example with the GPU machine of bench/gpu/README.md:
#   here:   scripts/portable_build.sh fetch
#   there:  run(command="bash scripts/portable_build.sh build", carry=[".bundle/debs"])
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${1:-}"; shift || true
DIR="${1:-$ROOT/.bundle/debs}"; [[ $# -gt 0 ]] && shift
log() { printf '[portable_build] %s\n' "$*" >&2; }

# Runtime and development packages of the non-toolchain dependencies.
PACKAGES=(libabsl-dev libabsl20220623 libxxhash-dev libxxhash0 nlohmann-json3-dev)

case "$MODE" in
  fetch)
    mkdir -p "$DIR"
    (cd "$DIR" && apt-get download "${PACKAGES[@]}")
    log "downloaded $(ls "$DIR"/*.deb | wc -l) packages into $DIR"
    ;;
  build)
    shopt -s nullglob
    debs=("$DIR"/*.deb)
    ((${#debs[@]})) || { log "no .deb files in $DIR (run '$0 fetch' first)"; exit 2; }
    prefix="$DIR/prefix"
    rm -rf "$prefix" && mkdir -p "$prefix"
    for deb in "${debs[@]}"; do dpkg -x "$deb" "$prefix"; done
    # The -dev packages' .so symlinks are absolute (/usr/lib/...): repoint them.
    while IFS= read -r link; do
      target="$(readlink "$link")"
      [[ "$target" == /* ]] && ln -sf "$prefix$target" "$link"
    done < <(find "$prefix" -type l)
    # Test binaries run at build time (gtest discovery) and load the carried
    # libraries, including their transitive dependencies, from here.
    export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    build="$ROOT/build/portable"
    log "configuring $build against $prefix/usr"
    cmake -S "$ROOT" -B "$build" -G "$(command -v ninja >/dev/null && echo Ninja || echo 'Unix Makefiles')" \
      -DCMAKE_BUILD_TYPE=Release -DASYMCACHE_SERVICES=OFF -DASYMCACHE_BENCH=OFF \
      -DCMAKE_PREFIX_PATH="$prefix/usr" "$@"
    cmake --build "$build" -j "$(nproc)"
    ctest --test-dir "$build" --output-on-failure -j "$(nproc)"
    ;;
  *)
    sed -n '2,17p' "$0"; exit 2 ;;
esac
