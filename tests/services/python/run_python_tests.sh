#!/bin/bash
# Drives the real asymcache-daemon binary from Python (grpcio), the way a
# non-C++ engine or an operator script would:
#   1. generates Python stubs for proto/asymcache/v1/*.proto (+ a copy of
#      grpc.health.v1) into a temporary directory,
#   2. starts the daemon on 127.0.0.1 with an ephemeral port (--listen=...:0;
#      the port is read from its "READY grpc=<port>" line, so there is no
#      pick-a-free-port race), --metrics-port=-1 --backend=host and a small pool,
#   3. waits for grpc.health.v1 SERVING,
#   4. runs tests/services/python/daemon_api_test.py (unittest).
# The daemon is stopped on exit (trap). Every step is time-bounded (< 60 s in all).
#
# With --coordinator, it also starts asymcache-coordinator on 127.0.0.1:0
# (--metrics-port=-1, the port read from its "READY grpc=<port>" line), waits
# for both to be SERVING and runs coordinator_api_test.py instead.
#
# Usage: run_python_tests.sh /path/to/asymcache-daemon
#        run_python_tests.sh --coordinator /path/to/asymcache-daemon /path/to/asymcache-coordinator
# Exit status: the test's (0 = all passed); 2 for a usage or setup error.
set -euo pipefail

MODE=daemon
if [[ "${1:-}" == "--coordinator" ]]; then
  MODE=coordinator
  shift
fi
if [[ ( $MODE == daemon && ( $# -ne 1 || ! -x "${1:-}" ) ) ||
      ( $MODE == coordinator && ( $# -ne 2 || ! -x "${1:-}" || ! -x "${2:-}" ) ) ]]; then
  echo "usage: $0 /path/to/asymcache-daemon" >&2
  echo "       $0 --coordinator /path/to/asymcache-daemon /path/to/asymcache-coordinator" >&2
  exit 2
fi
DAEMON="$(realpath "$1")"
COORDINATOR=""
if [[ $MODE == coordinator ]]; then COORDINATOR="$(realpath "$2")"; fi
MAX_ROUTE_TOKENS=4096
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
PYTHON=/usr/bin/python3  # Debian's python3-grpcio / python3-protobuf / python3-grpc-tools
MAX_CONTEXT_TOKENS=4096
POOL_BLOCKS=64           # tiny model: 32 KiB per block (2 layers x K,V x 2 heads x 64 x fp32 x 16 tokens)

WORK="$(mktemp -d -t asymcache-pytest.XXXXXX)"
DAEMON_PID=""
COORDINATOR_PID=""
stop_process() {  # SIGTERM, up to 5 s, then SIGKILL
  local pid="$1"
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}
cleanup() {
  stop_process "$COORDINATOR_PID"
  stop_process "$DAEMON_PID"
  rm -rf "$WORK"
}
trap cleanup EXIT

# ---- 1. stubs --------------------------------------------------------------
GEN="$WORK/gen"
mkdir -p "$GEN" "$WORK/proto/asymcache_test_health"
# grpc.health.v1 as published by gRPC. Kept under another file path so that the
# generated module does not shadow the installed `grpc` package; the proto
# package (and so the service name /grpc.health.v1.Health/Check) is unchanged.
cat > "$WORK/proto/asymcache_test_health/health.proto" <<'EOF'
syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health {
  rpc Check(HealthCheckRequest) returns (HealthCheckResponse);
  rpc Watch(HealthCheckRequest) returns (stream HealthCheckResponse);
}
EOF
# grpc.reflection.v1alpha (the subset the test calls), same file-path trick.
mkdir -p "$WORK/proto/asymcache_test_reflection"
cp "$REPO/tests/services/python/reflection_subset.proto" \
   "$WORK/proto/asymcache_test_reflection/reflection.proto"
PROTOS=("$REPO"/proto/asymcache/v1/*.proto)

stubs_import() {
  PYTHONPATH="$GEN" timeout 20 "$PYTHON" -c '
from asymcache.v1 import cache_daemon_pb2, cache_daemon_pb2_grpc, types_pb2
from asymcache_test_health import health_pb2, health_pb2_grpc
r = cache_daemon_pb2.PlanStepRequest(salt="x", sequence_id=1, tokens=[1, 2],
                                     block_hashes=[types_pb2.BlockHash(lo=1, hi=2)])
assert cache_daemon_pb2.PlanStepRequest.FromString(r.SerializeToString()) == r
assert cache_daemon_pb2.Segment.TAIL == 2 and cache_daemon_pb2.KvEvent.REMOVED == 1
' 2>"$WORK/stubs_import.err"
}

# Preferred: Debian's python3-grpc-tools (grpc_tools.protoc). Its bundled protoc
# is old (1.14 era) but the proto3 code it emits loads fine with python3-protobuf
# 4.21 (cpp backend) and grpcio 1.51 — checked by stubs_import. Fallback, should
# a future grpc_tools emit code this protobuf cannot load: the system protoc
# (3.21, matching python3-protobuf) with grpc_python_plugin.
if timeout 30 "$PYTHON" -m grpc_tools.protoc -I "$REPO/proto" -I "$WORK/proto" \
     --python_out="$GEN" --grpc_python_out="$GEN" "${PROTOS[@]}" \
     "$WORK/proto/asymcache_test_health/health.proto" \
     "$WORK/proto/asymcache_test_reflection/reflection.proto" 2>"$WORK/protoc.err" && stubs_import; then
  echo "stubs: grpc_tools.protoc"
else
  echo "stubs: grpc_tools.protoc failed or its output does not load; falling back to protoc + grpc_python_plugin"
  cat "$WORK/protoc.err" "$WORK/stubs_import.err" 2>/dev/null || true
  rm -rf "$GEN" && mkdir -p "$GEN"
  timeout 30 protoc -I "$REPO/proto" -I "$WORK/proto" --python_out="$GEN" \
    --grpc_out="$GEN" --plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin \
    "${PROTOS[@]}" "$WORK/proto/asymcache_test_health/health.proto" \
    "$WORK/proto/asymcache_test_reflection/reflection.proto"
  if ! stubs_import; then
    cat "$WORK/stubs_import.err" >&2
    echo "error: generated Python stubs do not load" >&2
    exit 2
  fi
fi

# ---- 2. daemon -------------------------------------------------------------
POOL_BYTES=$((POOL_BLOCKS * 32768))
"$DAEMON" --plaintext --listen=127.0.0.1:0 --metrics-port=-1 --backend=host \
  --pool-bytes="$POOL_BYTES" --max-context-tokens="$MAX_CONTEXT_TOKENS" \
  >"$WORK/daemon.out" 2>"$WORK/daemon.err" &
DAEMON_PID=$!

PORT=""
for _ in $(seq 200); do  # 20 s
  if PORT_LINE="$(grep -m1 -o 'READY grpc=[0-9]*' "$WORK/daemon.out" 2>/dev/null)"; then
    PORT="${PORT_LINE#READY grpc=}"
    break
  fi
  if ! kill -0 "$DAEMON_PID" 2>/dev/null; then break; fi
  sleep 0.1
done
if [[ -z "$PORT" ]]; then
  echo "error: the daemon did not report READY" >&2
  cat "$WORK/daemon.err" >&2
  exit 2
fi
ADDRESS="127.0.0.1:$PORT"
echo "daemon: pid $DAEMON_PID on $ADDRESS"
HEALTH_ADDRESSES=("$ADDRESS")

if [[ $MODE == coordinator ]]; then
  # The tiny model's predicted TTFTs differ by microseconds, below the default
  # tie tolerance (1 ms / 5 %): compare them exactly so the test can tell.
  # The test's members never heartbeat: a 60 s member timeout keeps them
  # registered for the whole run, however loaded the machine.
  "$COORDINATOR" --plaintext --listen=127.0.0.1:0 --metrics-port=-1 --max-route-tokens="$MAX_ROUTE_TOKENS" \
    --tie-absolute=0s --tie-relative=0 --member-timeout=60s \
    >"$WORK/coordinator.out" 2>"$WORK/coordinator.err" &
  COORDINATOR_PID=$!
  COORDINATOR_PORT=""
  for _ in $(seq 200); do  # 20 s
    if PORT_LINE="$(grep -m1 -o 'READY grpc=[0-9]*' "$WORK/coordinator.out" 2>/dev/null)"; then
      COORDINATOR_PORT="${PORT_LINE#READY grpc=}"
      break
    fi
    if ! kill -0 "$COORDINATOR_PID" 2>/dev/null; then break; fi
    sleep 0.1
  done
  if [[ -z "$COORDINATOR_PORT" ]]; then
    echo "error: the coordinator did not report READY" >&2
    cat "$WORK/coordinator.err" >&2
    exit 2
  fi
  COORDINATOR_ADDRESS="127.0.0.1:$COORDINATOR_PORT"
  echo "coordinator: pid $COORDINATOR_PID on $COORDINATOR_ADDRESS"
  HEALTH_ADDRESSES+=("$COORDINATOR_ADDRESS")
fi

# ---- 3. health -------------------------------------------------------------
for HEALTH_ADDRESS in "${HEALTH_ADDRESSES[@]}"; do
PYTHONPATH="$GEN" timeout 30 "$PYTHON" - "$HEALTH_ADDRESS" <<'EOF'
import sys, time
import grpc
from asymcache_test_health import health_pb2, health_pb2_grpc
channel = grpc.insecure_channel(sys.argv[1])
stub = health_pb2_grpc.HealthStub(channel)
deadline = time.monotonic() + 20
while True:
    try:
        status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
        if status == health_pb2.HealthCheckResponse.SERVING:
            print("health: SERVING")
            break
    except grpc.RpcError as e:
        status = e.code()
    if time.monotonic() > deadline:
        sys.exit("error: %s not SERVING after 20 s (last: %s)" % (sys.argv[1], status))
    time.sleep(0.05)
EOF
done

# ---- 4. tests --------------------------------------------------------------
set +e
if [[ $MODE == daemon ]]; then
  ASYMCACHE_DAEMON_ADDRESS="$ADDRESS" ASYMCACHE_MAX_CONTEXT_TOKENS="$MAX_CONTEXT_TOKENS" \
  ASYMCACHE_POOL_BLOCKS="$POOL_BLOCKS" PYTHONPATH="$GEN" \
    timeout 45 "$PYTHON" "$REPO/tests/services/python/daemon_api_test.py" -v
  STATUS=$?
else
  ASYMCACHE_COORDINATOR_ADDRESS="$COORDINATOR_ADDRESS" ASYMCACHE_DAEMON_ADDRESS="$ADDRESS" \
  ASYMCACHE_MAX_ROUTE_TOKENS="$MAX_ROUTE_TOKENS" PYTHONPATH="$GEN" \
    timeout 45 "$PYTHON" "$REPO/tests/services/python/coordinator_api_test.py" -v
  STATUS=$?
fi
set -e
if [[ $STATUS -ne 0 ]]; then
  echo "---- daemon stderr (tail) ----" >&2
  tail -n 40 "$WORK/daemon.err" >&2
  if [[ $MODE == coordinator ]]; then
    echo "---- coordinator stderr (tail) ----" >&2
    tail -n 40 "$WORK/coordinator.err" >&2
  fi
fi
exit $STATUS
