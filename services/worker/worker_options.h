// WorkerOptions: everything asymcache-worker can be told, with the default of
// every field documented beside it (and why). Flags and the optional YAML
// config file are parsed into this struct in one place (worker_config.h); the
// worker itself (worker.h) only reads WorkerOptions.
//
// Contract: a plain value; Validate() names the first bad field by its flag.
#ifndef ASYMCACHE_SERVICES_WORKER_WORKER_OPTIONS_H_
#define ASYMCACHE_SERVICES_WORKER_WORKER_OPTIONS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "services/common/client_rate_limiter.h"
#include "services/common/transport_security.h"
#include "services/worker/engine.h"

namespace asymcache::worker {

struct WorkerOptions {
  // gRPC listen address (asymcache.v1.Worker). Port 0 picks a free port
  // (reported by the worker). Default: all interfaces, port 50071 (the
  // daemon's 50051 plus twenty, beside the coordinator's 50061, so all three
  // run side by side on one host).
  std::string listen = "0.0.0.0:50071";
  // Prometheus exposition on this port (0 = pick a free one, -1 = disabled),
  // bound on metrics_host. Default 9402 (daemon 9400, coordinator 9401).
  int metrics_port = 9402;
  std::string metrics_host = "0.0.0.0";

  // gRPC address (host:port) of the co-located cache daemon whose pool the
  // worker maps and whose plans it runs on. Required: no default can guess
  // which daemon (one per GPU) this worker belongs to.
  std::string daemon;
  // How long Start() waits for the daemon's channel to connect. 30 s: a
  // daemon started beside the worker (a pod's sidecar, a systemd unit) may
  // still be creating its CUDA context and calibrating (5 s by default);
  // a worker that gives up exits 1 for its supervisor to restart. > 0.
  absl::Duration daemon_connect_timeout = absl::Seconds(30);

  // Model backend: "cpu" (fp32, the exactness reference; tiny shapes) or
  // "cuda" (bf16/fp16 on one GPU). Default cpu, so a bare worker runs
  // anywhere, like the daemon's default host pool.
  std::string backend = "cpu";
  // CUDA device of the cuda backend (the daemon's pool must be on it). 0: the
  // first visible GPU. >= 0; ignored by the cpu backend.
  int gpu = 0;

  // Model source. model_dir (a Hugging Face directory: config.json +
  // *.safetensors) when set; otherwise seeded random weights of the named
  // shape `model` (tiny, llama-3-8b, llama-3-70b-tp). Default: random "tiny"
  // weights, the CPU test/demo shape (latency and exactness do not depend on
  // the values). `model` is not read when model_dir is set.
  std::string model = "tiny";
  std::string model_dir;
  // Seed of the random weights. 0; workers that must produce the same tokens
  // (a prefill/decode pair, a test and its reference) use the same seed.
  uint64_t seed = 0;
  // CPU backend threads for GEMMs and attention. 0 = hardware concurrency.
  // >= 0.
  int cpu_threads = 0;

  // The step loop (engine.h documents each field): role, chunking, batch
  // limits, context limit, daemon RPC deadline. Defaults are EngineOptions'
  // except the adaptive chunk cap (see the constructor). engine.calibration
  // is not a setting: Start() takes the daemon's (GetStats).
  EngineOptions engine;

  // Cluster membership (coordinator.proto; services/coordinator/
  // member_registrar.h). Addresses (host:port) of every coordinator replica;
  // empty (the default) = standalone. When set, the worker registers as a
  // WORKER member with its role once it serves, heartbeats its load, and
  // deregisters on graceful shutdown.
  std::vector<std::string> coordinators;
  // Member id, stable across restarts. "" = "<host name>:<bound gRPC port>",
  // stable for a worker restarted on the same host and port (and distinct
  // from its daemon's, which listens on another port).
  std::string member_id;
  // Address frontends and coordinators reach this worker at. "" = the listen
  // address with the bound port and a wildcard host (0.0.0.0, ::, [::],
  // empty) replaced by this host's name.
  std::string advertise_address;
  // The co-located daemon's member id (its --member-id, or its default
  // "<host>:<port>"): the coordinator pairs the worker with that daemon.
  // Required when coordinators are set.
  std::string daemon_member_id;
  // Deadline of one Register/Heartbeat call and the longest retry backoff for
  // an unreachable coordinator. 1 s and 2 s: MemberRegistrarOptions' (and the
  // daemon's) reasoning. > 0.
  absl::Duration coordinator_rpc_timeout = absl::Seconds(1);
  absl::Duration coordinator_retry_max = absl::Seconds(2);

  // Largest gRPC message accepted and sent (bytes). 64 MiB: a 1M-token prompt
  // (the daemon's max_context_tokens) in one GenerateRequest, and the
  // daemon's own limit. >= 1 MiB.
  int max_message_bytes = 64 << 20;
  // Responses one Generate stream may hold for a client that does not read
  // them (bytes; worker_service.h): past it the request is cancelled, its
  // blocks released, and the stream ends with RESOURCE_EXHAUSTED. 64 MiB:
  // tokens alone never come close (~20 bytes each), and with return_logits
  // on a 128k vocabulary (512 KiB a token) the client may fall ~128 tokens
  // behind. >= 1 MiB.
  int64_t max_stream_buffered_bytes = int64_t{64} << 20;
  // SIGTERM: in-flight Generate streams get this long to finish before being
  // cancelled (their blocks are released either way). 20 s: a few hundred
  // tokens at a 50 ms TPOT finish, and the worker still exits inside
  // Kubernetes' default 30 s termination grace period. >= 0.
  absl::Duration shutdown_grace = absl::Seconds(20);
  // How often the engine's counters are copied into the metrics. 250 ms:
  // four times per second is far below a step's cost to read (one mutex),
  // and well inside a 15 s Prometheus scrape interval. > 0.
  absl::Duration stats_interval = absl::Milliseconds(250);

  // Write one JSON line per engine step (its decodes, chunks, the cost
  // model's prediction and the measured forward and step times) to this file
  // (step_trace.h; truncated at start). "" (default): no trace. A diagnostic
  // for comparing the cost model with the real steps of a run.
  std::string step_trace;

  // Transport security of the gRPC server (Generate) and of the channels to
  // the daemon and the coordinators: mutual TLS or plaintext
  // (services/common/transport_security.h). With TLS, a Generate from a peer
  // not in security.trusted_peers (e.g. the coordinator's identity) runs
  // under a salt derived from its certificate identity
  // (services/common/tenant_salt.h). Default: the library's (plaintext);
  // WorkerOptionsFromFlags requires an explicit choice.
  TransportSecurityOptions security;
  // Generate requests per second per client (services/common/
  // client_rate_limiter.h; the client is its certificate identity with TLS,
  // else its IP; security.trusted_peers are exempt): --client-rate-limit
  // (default 0 = no limit: the right rate is the deployment's) and
  // --client-rate-burst (default 0 = two seconds' worth).
  ClientRateLimitOptions client_rate_limit;

  // EngineOptions' defaults, except engine.chunking.max_budget_tokens: 8064 =
  // max_step_tokens (8192) - max_running (128), so the largest adaptive chunk
  // and a full decode batch fit one forward pass (EngineOptions requires it).
  WorkerOptions();

  // INVALID_ARGUMENT naming the first bad field by its flag (--max-running
  // ...), then EngineOptions::Validate() for what no flag reaches (with a
  // stand-in calibration: Start() takes the daemon's).
  absl::Status Validate() const;
};

}  // namespace asymcache::worker

#endif  // ASYMCACHE_SERVICES_WORKER_WORKER_OPTIONS_H_
