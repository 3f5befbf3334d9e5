// asymcache-coordinator: one coordinator replica. Every setting of
// coordinator_config.h is a flag (--member-timeout=5s or --member-timeout 5s;
// underscores work as dashes; a bare --allow-fetch means true and
// --no-allow-fetch false) and a key of the --config YAML file; flags win.
// `--help` lists them with their defaults. SIGTERM/SIGINT shut down
// gracefully. Exit status: 0 after a clean shutdown, 2 for bad flags or
// options, 1 when serving fails.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "services/common/command_line.h"
#include "services/common/signal_waiter.h"
#include "services/common/transport_security.h"
#include "services/coordinator/coordinator.h"
#include "services/coordinator/coordinator_config.h"
#include "services/coordinator/coordinator_options.h"

namespace {

constexpr char kUsage[] =
    "asymcache-coordinator: the AsymCache cluster coordinator (gRPC asymcache.v1.Coordinator:\n"
    "member registry, KV-event-fed block index, routing by predicted TTFT; Prometheus metrics).\n"
    "Several replicas may run at once with no shared store (docs/coordinator.md).\n\n"
    "Usage: asymcache-coordinator [--config=FILE.yaml] [--SETTING=VALUE ...]\n"
    "Example: asymcache-coordinator --listen=0.0.0.0:50061 --metrics-port=9401 "
    "--tls-cert=coordinator.pem --tls-key=coordinator.key --tls-ca=ca.pem "
    "--trusted-peers=asymcache-component\n"
    "Transport security must be chosen: --tls-cert, --tls-key and --tls-ca (mutual TLS, with\n"
    "--trusted-peers), or --plaintext (docs/security.md).\n\n";

bool IsBoolSetting(absl::string_view name) {
  asymcache::CoordinatorOptions defaults;
  absl::StatusOr<std::string> value = asymcache::CoordinatorSettingValue(name, defaults);
  return value.ok() && (*value == "true" || *value == "false");
}

// The binary's starting point: the library defaults, except that transport
// security has no default (--plaintext or the --tls-* files must be given).
asymcache::CoordinatorOptions BinaryDefaults() {
  asymcache::CoordinatorOptions options;
  options.security = asymcache::BinaryTransportSecurityDefaults();
  return options;
}

void PrintHelp() {
  std::fputs(kUsage, stdout);
  std::printf("  --%-24s %s\n", "config", "YAML file of settings (keys = the names below)");
  const asymcache::CoordinatorOptions defaults = BinaryDefaults();
  for (const asymcache::CoordinatorSettingInfo& s : asymcache::CoordinatorSettings()) {
    const std::string value = asymcache::CoordinatorSettingValue(s.name, defaults).value_or("?");
    std::printf("  --%-24s %s (default: %s)\n", s.name.c_str(), s.help.c_str(),
                value.empty() ? "\"\"" : value.c_str());
  }
  std::printf("  --%-24s %s\n", "help", "this text");
}

// Defaults < --config YAML < flags, each parsed by the one table in
// coordinator_config.cc.
absl::StatusOr<asymcache::CoordinatorOptions> BuildOptions(
    const std::vector<asymcache::CommandLineFlag>& flags) {
  asymcache::CoordinatorOptions options = BinaryDefaults();
  asymcache::CommandLineSettings settings;
  settings.apply_config = [&](const std::string& path) {
    return asymcache::ApplyCoordinatorYaml(path, &options);
  };
  settings.is_known = [&](absl::string_view name) {
    return asymcache::CoordinatorSettingValue(name, options).ok();
  };
  settings.apply = [&](absl::string_view name, absl::string_view value) {
    return asymcache::ApplyCoordinatorSetting(name, value, &options);
  };
  if (absl::Status s = asymcache::ApplyCommandLine(flags, settings); !s.ok()) return s;
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  return options;
}

}  // namespace

int main(int argc, char** argv) {
  absl::StatusOr<asymcache::ParsedCommandLine> command_line =
      asymcache::ParseCommandLine(argc, argv, IsBoolSetting);
  if (command_line.ok() && command_line->help) {
    PrintHelp();
    return 0;
  }
  absl::StatusOr<asymcache::CoordinatorOptions> options =
      command_line.ok() ? BuildOptions(command_line->flags)
                        : absl::StatusOr<asymcache::CoordinatorOptions>(command_line.status());
  if (!options.ok()) {
    std::fprintf(stderr, "asymcache-coordinator: %s\n(--help lists the settings)\n",
                 options.status().ToString().c_str());
    return 2;
  }

  // Signals go to one thread (sigwait), blocked everywhere else.
  asymcache::SignalWaiter signals("asymcache-coordinator");

  absl::StatusOr<std::unique_ptr<asymcache::Coordinator>> coordinator =
      asymcache::Coordinator::Start(*options);
  if (!coordinator.ok()) {
    std::fprintf(stderr, "asymcache-coordinator: %s\n", coordinator.status().ToString().c_str());
    return absl::IsInvalidArgument(coordinator.status()) ? 2 : 1;
  }
  std::fprintf(stderr,
               "[asymcache-coordinator] serving gRPC on port %d, metrics on port %d, routing %s, "
               "member timeout %s\n",
               (*coordinator)->grpc_port(), (*coordinator)->metrics_port(),
               std::string(asymcache::RoutingModeName(options->router.mode)).c_str(),
               absl::FormatDuration(options->member_timeout).c_str());
  // A line a supervisor (or a test) can wait for.
  std::printf("READY grpc=%d metrics=%d\n", (*coordinator)->grpc_port(),
              (*coordinator)->metrics_port());
  std::fflush(stdout);
  // From here a signal shuts the coordinator down (at once if one came since Start()).
  asymcache::Coordinator* running = coordinator->get();
  signals.SetShutdownAction([running]() { running->Shutdown(); });
  (*coordinator)->Wait();
  signals.SetShutdownAction(nullptr);
  signals.Stop();
  coordinator->reset();
  std::fprintf(stderr, "[asymcache-coordinator] stopped\n");
  return 0;
}
