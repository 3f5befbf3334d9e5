// DaemonOptions: everything asymcache-daemon can be told, with the default of
// every field documented beside it. Flags and the optional YAML config file
// are parsed into this struct in one place (daemon_config.h); the daemon
// itself only reads DaemonOptions.
//
// Contract: a plain value; Validate() names the first bad field.
#ifndef ASYMCACHE_SERVICES_DAEMON_DAEMON_OPTIONS_H_
#define ASYMCACHE_SERVICES_DAEMON_DAEMON_OPTIONS_H_

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "cachecore/agent_pins.h"
#include "cachecore/chunk_scheduler.h"
#include "cachecore/clock.h"
#include "cachecore/eviction_policy.h"
#include "cachecore/model_config.h"
#include "services/common/transport_security.h"

namespace asymcache {

struct DaemonOptions {
  // gRPC listen address. Port 0 picks a free port (reported by the daemon).
  // Default: all interfaces, the conventional gRPC port 50051.
  std::string listen = "0.0.0.0:50051";
  // Prometheus exposition on this port (0 = pick a free one, -1 = disabled),
  // bound on metrics_host. Default 9400.
  int metrics_port = 9400;
  std::string metrics_host = "0.0.0.0";

  // Model shape: a named shape (cachecore/model_config.h). Default "tiny": the
  // small CPU shape, so a bare `asymcache-daemon` starts anywhere.
  ModelConfig model;

  // KV pool: "host" (POSIX shared memory, CPU workers map it) or "cuda"
  // (device memory, exported with CUDA IPC). Default host.
  std::string backend = "host";
  int cuda_device = 0;
  // Pool size: exactly one of pool_bytes (> 0) and pool_fraction (of free
  // memory, in (0, 1]). Default 256 MiB: enough for a tiny-model demo, small
  // enough for any CI machine.
  int64_t pool_bytes = int64_t{256} << 20;
  double pool_fraction = 0;
  // Shared-memory name of the host pool ("" = generated, unique per daemon).
  std::string shm_name;

  // Eviction policy by name (EvictionPolicyNames()). Default asym.
  std::string policy = "asym";
  EvictionPolicyOptions policy_options;
  // Chunking the workers of this daemon use (handed out in AttachPool/Stats).
  ChunkSchedulerOptions chunking;
  // Calibration file (asymcache.calibration.v1). Empty: the cuda backend
  // measures its GPU on start (calibrate_on_start); the host backend uses the
  // built-in CPU calibration.
  std::string calibration_file;
  bool calibrate_on_start = true;
  // The calibrator binary run on start ("" = asymcache-calibrate beside the
  // daemon's own executable).
  std::string calibrator;
  // When set, the calibration in use is written here at start (JSON,
  // asymcache.calibration.v1), e.g. to commit what the card measured.
  std::string calibration_out;
  absl::Duration calibration_budget = absl::Seconds(5);

  // A lease not released this long after PlanStep/CommitStep/RenewLease is
  // released by the daemon. 30 s: far above any step, short enough that a
  // dead worker's blocks come back quickly.
  absl::Duration lease_timeout = absl::Seconds(30);
  // Export pins (ExportBlocks) are dropped after this long without
  // ReleaseExport. 30 s.
  absl::Duration export_timeout = absl::Seconds(30);
  // How often the daemon expires leases, exports and agent pins. 100 ms.
  absl::Duration maintenance_interval = absl::Milliseconds(100);
  // Longest context a PlanStep/PinJob may carry: 1M tokens (Llama-3 long
  // context variants go to 128k; headroom for longer models).
  int64_t max_context_tokens = int64_t{1} << 20;
  // Largest gRPC message accepted (bytes). 64 MiB holds a 1M-token request.
  int max_message_bytes = 64 << 20;
  // Most blocks one ExportBlocks/ImportBlocks may move. 65536.
  int64_t max_transfer_blocks = 65536;
  // Session hash chains cached for follow-up turns (tokens).
  int64_t session_chain_token_budget = int64_t{16} << 20;

  // KV events kept for resuming watchers (WatchEvents after_sequence). 262144
  // events (~10 MiB); an older resume point, or a watcher that falls this far
  // behind, gets a snapshot instead (no per-watcher buffer).
  int64_t event_history = 262144;
  // Concurrent WatchEvents streams. 64 (coordinator replicas are few).
  int max_watchers = 64;

  AgentPinOptions agent_pins;

  // UCX: transports ("" = UCX's default selection, see docs/transport.md).
  std::string ucx_transports;
  // SIGTERM: in-flight RPCs get this long to finish before being cancelled.
  absl::Duration shutdown_grace = absl::Seconds(10);

  // Cluster membership (coordinator.proto; services/coordinator/
  // member_registrar.h). Addresses (host:port) of every coordinator replica;
  // empty (the default) = standalone, no coordinator is contacted. When set,
  // the daemon registers with each once it serves, heartbeats its load at
  // the interval each replica asks for, and deregisters on graceful shutdown.
  std::vector<std::string> coordinators;
  // Member id, stable across restarts (re-registering it replaces the old
  // record and its blocks). "" = "<host name>:<bound gRPC port>", which is
  // stable for a daemon restarted on the same host and port.
  std::string member_id;
  // Address others (coordinators watching events, peers importing blocks,
  // routed workers) reach this daemon at. "" = the listen address with its
  // port replaced by the bound one and a wildcard host (0.0.0.0, ::, [::],
  // empty) replaced by this host's name — what other hosts can resolve.
  std::string advertise_address;
  // Role in disaggregated serving: "both" (default: prefill and decode),
  // "prefill" or "decode".
  std::string role = "both";
  // GPU index on its host reported to coordinators. std::nullopt (default):
  // cuda_device with the cuda backend, -1 (CPU) with the host backend; set it
  // when CUDA_VISIBLE_DEVICES renumbers the devices. >= -1.
  std::optional<int> gpu;
  // Deadline of one Register/Heartbeat call, and the longest retry backoff for
  // an unreachable coordinator (so a restarted replica is rejoined within
  // it). 1 s and 2 s: see MemberRegistrarOptions.
  absl::Duration coordinator_rpc_timeout = absl::Seconds(1);
  absl::Duration coordinator_retry_max = absl::Seconds(2);

  // Transport security of the gRPC server and of every channel the daemon
  // opens (coordinators, peer daemons): mutual TLS or plaintext
  // (services/common/transport_security.h; --plaintext, --tls-cert,
  // --tls-key, --tls-ca). Default: the library's (plaintext); the binary
  // requires an explicit choice. trusted_peers is not used by the daemon:
  // it serves whoever holds a certificate of its CA bundle (docs/security.md
  // says how to keep tenants out with a component-only CA).
  TransportSecurityOptions security;

  // Tests only: an injected clock for leases and pins (must outlive the
  // daemon). nullptr = the real clock.
  Clock* clock = nullptr;
  // When set and it becomes true during Start() (e.g. SIGTERM while the
  // on-start calibration runs), Start() stops early with CANCELLED. Must
  // outlive Start(). nullptr = not cancellable.
  const std::atomic<bool>* cancel = nullptr;

  DaemonOptions();  // model = ModelConfig::Named("tiny")
  absl::Status Validate() const;
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_DAEMON_DAEMON_OPTIONS_H_
