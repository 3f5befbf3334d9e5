// asymcache-daemon: the per-GPU cache daemon. Flags (and --config YAML) are
// turned into DaemonOptions by services/daemon/daemon_config.h; `--help`
// lists every flag with its default. SIGTERM/SIGINT shut down gracefully.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/time.h"
#include "services/common/signal_waiter.h"
#include "services/daemon/cache_daemon.h"
#include "services/daemon/daemon_config.h"
#include "services/daemon/daemon_options.h"
#include "util/dashed_flags.h"

namespace {
const asymcache::DaemonOptions& Defaults() {
  static const auto* defaults = new asymcache::DaemonOptions();
  return *defaults;
}
std::string Bytes(int64_t b) { return absl::StrCat(b >> 20, "MiB"); }
}  // namespace

ABSL_FLAG(std::string, config, "", "YAML file of settings (same names as the flags); flags given on the command line override it");
ABSL_FLAG(std::string, listen, Defaults().listen, "gRPC listen address HOST:PORT (port 0 = any free port)");
ABSL_FLAG(int, metrics_port, Defaults().metrics_port, "Prometheus /metrics port (0 = any free port, -1 = off)");
ABSL_FLAG(std::string, metrics_host, Defaults().metrics_host, "address the metrics endpoint binds");
ABSL_FLAG(std::string, model, Defaults().model.name, "model shape: tiny, llama-3-8b, llama-3-70b-tp (or a model: mapping in --config)");
ABSL_FLAG(std::string, backend, Defaults().backend, "KV pool backend: host (shared memory) or cuda (GPU memory, CUDA IPC)");
ABSL_FLAG(int, cuda_device, Defaults().cuda_device, "CUDA device of the cuda backend");
ABSL_FLAG(std::string, pool_bytes, Bytes(Defaults().pool_bytes), "KV pool size (e.g. 256MiB, 60GiB); exclusive with --pool-fraction");
ABSL_FLAG(double, pool_fraction, Defaults().pool_fraction, "KV pool size as a fraction of free memory, in (0, 1]");
ABSL_FLAG(std::string, shm_name, Defaults().shm_name, "POSIX shared-memory name of the host pool (empty = generated)");
ABSL_FLAG(std::string, policy, Defaults().policy, "eviction policy: lru, lfu, lru-tail, front-first, asym");
ABSL_FLAG(std::string, chunking, "adaptive", "prefill chunking the workers use: adaptive or fixed");
ABSL_FLAG(int64_t, chunk_budget_tokens, Defaults().chunking.fixed_budget_tokens, "fixed chunking: prefill tokens per step");
ABSL_FLAG(absl::Duration, tpot_target, Defaults().chunking.tpot_target, "adaptive chunking: decode step latency target");
ABSL_FLAG(std::string, calibration, "", "cost-model calibration file (asymcache.calibration.v1); empty = measure the GPU on start (cuda) or built-in CPU numbers (host)");
ABSL_FLAG(std::string, calibration_out, "", "write the calibration in use to this file at start (JSON)");
ABSL_FLAG(std::string, calibrator, "", "calibrator binary run on start (empty = asymcache-calibrate beside this binary)");
ABSL_FLAG(bool, calibrate_on_start, Defaults().calibrate_on_start, "cuda backend without --calibration: run the MSA + GEMM calibration on start");
ABSL_FLAG(absl::Duration, calibration_budget, Defaults().calibration_budget, "wall time of the on-start calibration");
ABSL_FLAG(absl::Duration, lease_timeout, Defaults().lease_timeout, "a step lease not released within this is released by the daemon");
ABSL_FLAG(absl::Duration, export_timeout, Defaults().export_timeout, "export pins not released within this are dropped");
ABSL_FLAG(absl::Duration, maintenance_interval, Defaults().maintenance_interval, "period of lease/export/pin expiry and gauge updates");
ABSL_FLAG(int64_t, max_context_tokens, Defaults().max_context_tokens, "longest context a request may carry");
ABSL_FLAG(std::string, max_message_bytes, Bytes(Defaults().max_message_bytes), "largest gRPC message accepted");
ABSL_FLAG(int64_t, max_transfer_blocks, Defaults().max_transfer_blocks, "most blocks per export/import");
ABSL_FLAG(int64_t, session_chain_tokens, Defaults().session_chain_token_budget, "tokens of cached session hash chains (follow-up turns)");
ABSL_FLAG(int64_t, event_history, Defaults().event_history, "KV events kept for resuming watchers");
ABSL_FLAG(int, max_watchers, Defaults().max_watchers, "concurrent KV event streams");
ABSL_FLAG(double, agent_max_pinned_fraction, Defaults().agent_pins.max_pinned_fraction, "agent pins: cap as a fraction of the pool");
ABSL_FLAG(absl::Duration, agent_default_ttl, Defaults().agent_pins.default_ttl, "agent pins: TTL of a tool with too few observations");
ABSL_FLAG(absl::Duration, agent_max_ttl, Defaults().agent_pins.max_ttl, "agent pins: longest TTL granted");
ABSL_FLAG(std::string, ucx_transports, Defaults().ucx_transports, "UCX transports (UCX_TLS syntax; empty = UCX's choice, see docs/transport.md)");
ABSL_FLAG(absl::Duration, shutdown_grace, Defaults().shutdown_grace, "SIGTERM: time in-flight RPCs get before being cancelled");
ABSL_FLAG(std::string, coordinators, "", "comma-separated coordinator addresses to register with (empty = standalone)");
ABSL_FLAG(std::string, member_id, "", "member id at the coordinators, stable across restarts (empty = <host name>:<gRPC port>)");
ABSL_FLAG(std::string, advertise_address, "", "address coordinators and peers reach this daemon at (empty = --listen, port as bound, a wildcard host replaced by the host name)");
ABSL_FLAG(std::string, role, Defaults().role, "role at the coordinators: both, prefill or decode");
ABSL_FLAG(std::string, gpu, "auto", "GPU index on this host reported to coordinators (-1 = CPU; auto = --cuda-device with the cuda backend, -1 with host)");
ABSL_FLAG(absl::Duration, coordinator_rpc_timeout, Defaults().coordinator_rpc_timeout, "deadline of one Register/Heartbeat call to a coordinator");
ABSL_FLAG(absl::Duration, coordinator_retry_max, Defaults().coordinator_retry_max, "longest retry backoff for an unreachable coordinator");
ABSL_FLAG(bool, plaintext, false, "serve and connect without TLS (no encryption, no authentication); required unless the --tls-* files are given");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain presented to peers (mutual TLS; with --tls-key and --tls-ca)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA bundle every peer's certificate must chain to");

namespace {

// Defaults < --config YAML < flags given on the command line, each setting
// parsed by the one table in daemon_config.cc.
absl::StatusOr<asymcache::DaemonOptions> BuildOptions(const std::vector<std::string>& given) {
  asymcache::DaemonOptions options;
  // Plaintext only when asked for (--plaintext), unlike the library default.
  options.security = asymcache::BinaryTransportSecurityDefaults();
  const std::string config = absl::GetFlag(FLAGS_config);
  if (!config.empty()) {
    if (absl::Status s = asymcache::ApplyDaemonYaml(config, &options); !s.ok()) return s;
  }
  for (const std::string& flag : given) {
    if (flag == "config" || flag == "help" || absl::StartsWith(flag, "help")) continue;
    const absl::CommandLineFlag* f = absl::FindCommandLineFlag(flag);
    if (f == nullptr) continue;  // absl already rejected unknown flags
    const std::string name = absl::StrReplaceAll(flag, {{"_", "-"}});
    if (absl::Status s = asymcache::ApplyDaemonSetting(name, f->CurrentValue(), &options); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--", s.message()));
    }
  }
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  return options;
}

}  // namespace

int main(int argc, char** argv) {
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view path) {
    return absl::StrContains(path, "daemon_main");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  absl::SetProgramUsageMessage(
      "The AsymCache per-GPU cache daemon (gRPC asymcache.v1.CacheDaemon, Prometheus metrics).\n"
      "Example: asymcache-daemon --listen=0.0.0.0:50051 --metrics-port=9400 --backend=host "
      "--pool-bytes=1GiB --policy=asym --tls-cert=daemon.pem --tls-key=daemon.key "
      "--tls-ca=ca.pem\n"
      "Transport security must be chosen: --tls-cert, --tls-key and --tls-ca (mutual TLS), or "
      "--plaintext (docs/security.md).");
  std::vector<std::string> given;
  std::vector<std::string> args = asymcache::NormalizeDashedFlags(argc, argv, &given);
  for (std::string& g : given) {
    if (absl::StartsWith(g, "no") && absl::FindCommandLineFlag(g) == nullptr) g = g.substr(2);
  }
  std::vector<char*> normalized;
  for (std::string& a : args) normalized.push_back(a.data());
  absl::ParseCommandLine(static_cast<int>(normalized.size()), normalized.data());

  absl::StatusOr<asymcache::DaemonOptions> options = BuildOptions(given);
  if (!options.ok()) {
    std::fprintf(stderr, "asymcache-daemon: %s\n", options.status().ToString().c_str());
    return 2;
  }
  // Signals go to one thread (sigwait), blocked everywhere else. The thread
  // starts before the daemon does, so a SIGTERM during start-up (the on-start
  // GPU calibration takes seconds) cancels the start instead of waiting.
  asymcache::SignalWaiter signals("asymcache-daemon");

  options->cancel = &signals.stop_requested();
  absl::StatusOr<std::unique_ptr<asymcache::CacheDaemon>> daemon =
      asymcache::CacheDaemon::Start(*options);
  if (!daemon.ok()) {
    if (absl::IsCancelled(daemon.status())) {
      std::fprintf(stderr, "[asymcache-daemon] stopped before serving: %s\n",
                   std::string(daemon.status().message()).c_str());
      return 0;
    }
    std::fprintf(stderr, "asymcache-daemon: %s\n", daemon.status().ToString().c_str());
    return absl::IsInvalidArgument(daemon.status()) || absl::IsNotFound(daemon.status()) ? 2 : 1;
  }
  std::fprintf(stderr, "[asymcache-daemon] serving gRPC on port %d, metrics on port %d, model %s, "
               "backend %s, policy %s\n",
               (*daemon)->grpc_port(), (*daemon)->metrics_port(), options->model.name.c_str(),
               options->backend.c_str(), options->policy.c_str());
  // A line a supervisor (or a test) can wait for.
  std::printf("READY grpc=%d metrics=%d\n", (*daemon)->grpc_port(), (*daemon)->metrics_port());
  std::fflush(stdout);
  // From here a signal shuts the daemon down (at once if one came since Start()).
  asymcache::CacheDaemon* running = daemon->get();
  signals.SetShutdownAction([running]() { running->Shutdown(); });
  (*daemon)->Wait();
  signals.SetShutdownAction(nullptr);
  signals.Stop();
  daemon->reset();
  std::fprintf(stderr, "[asymcache-daemon] stopped\n");
  return 0;
}
