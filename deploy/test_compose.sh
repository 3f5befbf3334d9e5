#!/bin/bash
# End-to-end check of the container image and the compose cluster, on a
# machine with a Docker daemon but no registry access (a Debian mirror is
# needed: the image build installs packages with apt-get).
#
#   1. seeds debian:bookworm and debian:bookworm-slim when they are not present
#      (debootstrap --variant=minbase, then `docker import`, with the apt
#      sources the official images carry), so deploy/Dockerfile stays the
#      standard one;
#   2. builds the AsymCache image (deploy/Dockerfile; compiles the project: 20+
#      minutes on 2 cores the first time, cached afterwards) and a Prometheus
#      image from Debian's prometheus package (prom/prometheus cannot be
#      pulled offline);
#   3. starts deploy/compose.yaml without Grafana (not packaged by Debian, so
#      not obtainable offline; its provisioning files are checked for shape
#      only), on host ports picked free here, under its own project name;
#   4. waits until every AsymCache container is healthy (HEALTHCHECK through
#      asymcachectl health), runs Generate calls through the coordinator with
#      asymcachectl inside the coordinator container (a second identical
#      prompt must hit the cache), lists the members;
#   5. checks that Prometheus scrapes every target (all up), has loaded the
#      alert rules, and that the daemons' transfer counters show the KV
#      import of the prefill/decode split;
#   6. tears everything down (containers, network, volumes), also on failure
#      or Ctrl-C.
#
# Usage: deploy/test_compose.sh [--rmi] [--jobs=N]
#   --rmi      remove the images built here at the end (by default they stay,
#              so that a rerun only rebuilds what changed)
#   --jobs=N   compile jobs inside the image build (default: all cores)
# Environment: ASYMCACHE_IMAGE (default asymcache:test-compose),
#   DEBIAN_MIRROR (default http://deb.debian.org/debian), COMPOSE (the compose
#   command; default "docker compose" when that works, else "docker-compose").
# Exit status: 0 all checks passed; 1 a check failed (logs printed); 2 usage
# or a missing tool (docker, a compose implementation, debootstrap).
# Not part of ctest (the image build alone takes far longer than its budget).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPLOY="$REPO/deploy"
IMAGE="${ASYMCACHE_IMAGE:-asymcache:test-compose}"
PROMETHEUS_TEST_IMAGE="asymcache-test-prometheus:bookworm"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PROJECT="asymcache-test-$$"
JOBS=""
REMOVE_IMAGES=0
# Services started (all but grafana).
SERVICES=(coordinator daemon-a worker-a daemon-b worker-b prometheus)
ASYMCACHE_SERVICES=(coordinator daemon-a worker-a daemon-b worker-b)

for arg in "$@"; do
  case "$arg" in
    --rmi) REMOVE_IMAGES=1 ;;
    --jobs=*) JOBS="${arg#--jobs=}"
              [[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "error: --jobs wants a positive integer, got '$JOBS'" >&2; exit 2; } ;;
    -h|--help) sed -n '2,36p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

log() { printf '\033[1m[test_compose]\033[0m %s\n' "$*" >&2; }
fail() { printf '\033[1;31m[test_compose] FAIL:\033[0m %s\n' "$*" >&2; exit 1; }

# ---- tools ------------------------------------------------------------------
command -v docker >/dev/null || { echo "error: docker (Debian package docker.io) is not installed" >&2; exit 2; }
docker info >/dev/null 2>&1 || { echo "error: the Docker daemon does not answer (start dockerd)" >&2; exit 2; }
if [[ -n "${COMPOSE:-}" ]]; then
  read -r -a COMPOSE_CMD <<< "$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  COMPOSE_CMD=(docker compose)
elif command -v docker-compose >/dev/null; then
  COMPOSE_CMD=(docker-compose)
else
  echo "error: neither 'docker compose' nor docker-compose (Debian package docker-compose) is available" >&2
  exit 2
fi

# ---- ports and teardown -----------------------------------------------------
free_port() {
  /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
export ASYMCACHE_IMAGE="$IMAGE" PROMETHEUS_IMAGE="$PROMETHEUS_TEST_IMAGE"
export ASYMCACHE_COORDINATOR_PORT="$(free_port)" ASYMCACHE_PROMETHEUS_PORT="$(free_port)"
export ASYMCACHE_GRAFANA_PORT="$(free_port)"
compose() { "${COMPOSE_CMD[@]}" -p "$PROJECT" -f "$DEPLOY/compose.yaml" "$@"; }

STARTED=0
WORK="$(mktemp -d -t asymcache-compose.XXXXXX)"
cleanup() {
  local status=$?
  if ((STARTED)); then
    if ((status != 0)); then
      log "container logs (tail):"
      compose logs --no-color --tail=40 >&2 || true
    fi
    log "tearing down project $PROJECT"
    compose down --volumes --remove-orphans --timeout 20 >/dev/null 2>&1 || true
  fi
  if ((REMOVE_IMAGES)); then
    docker image rm "$IMAGE" "$PROMETHEUS_TEST_IMAGE" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- 1. base images ---------------------------------------------------------
# The official debian:bookworm image: a minbase debootstrap with the bookworm,
# bookworm-updates and bookworm-security sources in deb822 form. The -slim
# variant also drops documentation, man pages and translations (dpkg
# path-excludes). Both are imported from one debootstrap run.
seed_base_images() {
  local need_full=0 need_slim=0
  docker image inspect debian:bookworm >/dev/null 2>&1 || need_full=1
  docker image inspect debian:bookworm-slim >/dev/null 2>&1 || need_slim=1
  if ((need_full == 0 && need_slim == 0)); then
    log "debian:bookworm and debian:bookworm-slim are present"
    return
  fi
  command -v debootstrap >/dev/null ||
    { echo "error: debootstrap (Debian package debootstrap) is needed to seed the base images" >&2; exit 2; }
  [[ $(id -u) -eq 0 ]] || { echo "error: seeding the base images (debootstrap) needs root" >&2; exit 2; }
  local rootfs="$WORK/rootfs"
  log "debootstrap bookworm (minbase) from $MIRROR"
  debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 ||
    { tail -n 30 "$WORK/debootstrap.log" >&2; fail "debootstrap failed"; }
  rm -f "$rootfs/etc/apt/sources.list"
  cat > "$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # As in the official images: no apt caches or lists kept in layers.
  cat > "$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  local import_args=(--change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')
  if ((need_full)); then
    log "docker import -> debian:bookworm"
    tar -C "$rootfs" --numeric-owner -c . | docker import "${import_args[@]}" - debian:bookworm >/dev/null
  fi
  if ((need_slim)); then
    cat > "$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
    find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    log "docker import -> debian:bookworm-slim"
    tar -C "$rootfs" --numeric-owner -c . | docker import "${import_args[@]}" - debian:bookworm-slim >/dev/null
  fi
  rm -rf "$rootfs"
}
seed_base_images

# ---- 2. images --------------------------------------------------------------
log "building $IMAGE (deploy/Dockerfile; the first build compiles the project)"
build_args=()
[[ -n "$JOBS" ]] && build_args+=(--build-arg "ASYMCACHE_JOBS=$JOBS")
docker build "${build_args[@]}" -f "$DEPLOY/Dockerfile" -t "$IMAGE" "$REPO" > "$WORK/build.log" 2>&1 ||
  { tail -n 60 "$WORK/build.log" >&2; fail "docker build of deploy/Dockerfile failed (log above)"; }
grep -E '^runtime packages:' "$WORK/build.log" >&2 || true

# Prometheus from Debian's package, laid out like prom/prometheus (entrypoint
# the prometheus binary, user nobody, data in /prometheus), so compose.yaml's
# prometheus service runs it unchanged.
log "building $PROMETHEUS_TEST_IMAGE (Debian's prometheus package)"
docker build -t "$PROMETHEUS_TEST_IMAGE" - > "$WORK/prometheus-build.log" 2>&1 <<'EOF' ||
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
EOF
  { tail -n 30 "$WORK/prometheus-build.log" >&2; fail "docker build of the Prometheus image failed"; }

# ---- 3. compose up ----------------------------------------------------------
# Grafana's provisioning can only be checked for shape here (no image).
/usr/bin/python3 - "$DEPLOY/grafana" <<'EOF' || fail "Grafana provisioning files"
import json, sys, pathlib
root = pathlib.Path(sys.argv[1])
dashboard = json.loads((root / "asymcache.json").read_text())
assert dashboard.get("uid") and dashboard.get("panels"), "asymcache.json: no uid or panels"
for path in (root / "provisioning").rglob("*.yaml"):
    text = path.read_text()
    assert "apiVersion: 1" in text, f"{path}: no apiVersion: 1"
print("grafana files: ok")
EOF

log "compose up (${COMPOSE_CMD[*]}, project $PROJECT): ${SERVICES[*]}"
STARTED=1
compose up -d "${SERVICES[@]}" > "$WORK/up.log" 2>&1 ||
  { cat "$WORK/up.log" >&2; fail "compose up failed"; }

# ---- 4. health, Generate ----------------------------------------------------
container_of() { compose ps -q "$1"; }
deadline=$((SECONDS + 180))
for service in "${ASYMCACHE_SERVICES[@]}"; do
  while true; do
    id="$(container_of "$service")"
    health="$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id" 2>/dev/null || echo missing)"
    [[ "$health" == healthy ]] && break
    state="$(docker inspect -f '{{.State.Status}}' "$id" 2>/dev/null || echo missing)"
    [[ "$state" == running || "$state" == created ]] || fail "$service is $state (not running)"
    ((SECONDS < deadline)) || fail "$service not healthy after 180 s (health: $health)"
    sleep 2
  done
  log "$service: healthy"
done

ctl() { compose exec -T coordinator asymcachectl "$@"; }
# Members register and heartbeat every second: wait until the coordinator
# lists both daemons and both workers.
deadline=$((SECONDS + 60))
until ctl status --coordinator=127.0.0.1:50061 > "$WORK/status.txt" 2>&1 &&
      grep -q daemon-a "$WORK/status.txt" && grep -q daemon-b "$WORK/status.txt" &&
      grep -q worker-a "$WORK/status.txt" && grep -q worker-b "$WORK/status.txt"; do
  ((SECONDS < deadline)) || { cat "$WORK/status.txt" >&2; fail "the coordinator does not list all four members"; }
  sleep 1
done
cat "$WORK/status.txt" >&2

generate() {
  ctl generate --target=127.0.0.1:50061 --random-tokens=200 --seed=7 --max-new-tokens=12 \
    --salt=compose-test --timeout=60s --json
}
generate > "$WORK/generate1.json" || { cat "$WORK/generate1.json" >&2; fail "first Generate through the coordinator failed"; }
generate > "$WORK/generate2.json" || { cat "$WORK/generate2.json" >&2; fail "second Generate through the coordinator failed"; }
/usr/bin/python3 - "$WORK/generate1.json" "$WORK/generate2.json" <<'EOF' || fail "Generate results"
import json, sys

def load(path):
    # --json: one GenerateResponse per line (proto field names; int64 as strings).
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]

def tokens(messages):
    return [int(t) for message in messages for t in message.get("tokens", [])]

def stats(messages):
    last = [m for m in messages if m.get("finish_reason")]
    assert last, f"no final message with finish_reason: {messages}"
    return last[-1].get("stats", {})

first, second = load(sys.argv[1]), load(sys.argv[2])
t1, t2 = tokens(first), tokens(second)
assert len(t1) == 12, f"first Generate: {len(t1)} tokens, want 12: {first}"
assert t1 == t2, f"same prompt, different tokens: {t1} vs {t2}"
hits = int(stats(second).get("hit_tokens", 0))
assert hits > 0, f"second identical prompt hit no cached tokens: {stats(second)}"
print(f"generate: 12 tokens twice, identical; second request hit {hits} prompt tokens")
EOF

# ---- 5. Prometheus ----------------------------------------------------------
PROM="http://127.0.0.1:$ASYMCACHE_PROMETHEUS_PORT"
/usr/bin/python3 - "$PROM" <<'EOF' || fail "Prometheus checks"
import json, sys, time, urllib.parse, urllib.request
prom = sys.argv[1]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

def get(path, **params):
    url = prom + path + ("?" + urllib.parse.urlencode(params) if params else "")
    with opener.open(url, timeout=5) as r:
        reply = json.loads(r.read())
    assert reply["status"] == "success", reply
    return reply["data"]

want_jobs = {"asymcache-coordinator": 1, "asymcache-daemon": 2, "asymcache-worker": 2}
deadline = time.monotonic() + 90
while True:
    try:
        targets = get("/api/v1/targets")["activeTargets"]
        up = {}
        for t in targets:
            if t["health"] == "up":
                up[t["labels"]["job"]] = up.get(t["labels"]["job"], 0) + 1
        if all(up.get(job, 0) == n for job, n in want_jobs.items()):
            break
        state = "; ".join(f'{t["scrapeUrl"]} {t["health"]} {t["lastError"]!r}' for t in targets)
    except Exception as e:  # Prometheus still starting
        state = repr(e)
    if time.monotonic() > deadline:
        sys.exit(f"not every target up after 90 s: {state}")
    time.sleep(2)
print("prometheus: all 5 targets up")

groups = get("/api/v1/rules")["groups"]
alerts = [r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"]
assert "AsymCacheDaemonDown" in alerts, f"alert rules not loaded: {alerts}"
print(f"prometheus: {len(alerts)} alert rules loaded")

# The split Generate moved the prompt's blocks from daemon-a to daemon-b.
deadline = time.monotonic() + 30
while True:
    result = get("/api/v1/query", query='sum by (direction) (asymcache_transfers_total{job="asymcache-daemon"})')["result"]
    counts = {r["metric"]["direction"]: float(r["value"][1]) for r in result}
    if counts.get("import", 0) > 0 and counts.get("export", 0) > 0:
        break
    if time.monotonic() > deadline:
        sys.exit(f"no KV block transfer between the daemons recorded: {counts}")
    time.sleep(2)
print(f"prometheus: block transfers {counts}")
EOF

log "PASS: image built, cluster healthy, Generate through the coordinator, Prometheus sees every target"
