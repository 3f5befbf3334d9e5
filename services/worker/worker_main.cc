// asymcache-worker: the reference worker beside one cache daemon. Every
// setting of worker_config.h is a flag (--max-running=64 or --max-running 64;
// underscores work as dashes) and a key of the --config YAML file; flags win
// (services/common/command_line.h). `--help` lists them with their defaults.
// SIGTERM/SIGINT shut down gracefully. Exit status: 0 after a clean
// shutdown, 2 for bad flags or options (or a model the backend refuses), 1
// when starting or serving fails otherwise (daemon unreachable, port taken).
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "services/common/command_line.h"
#include "services/common/signal_waiter.h"
#include "services/worker/worker.h"
#include "services/worker/worker_config.h"
#include "services/worker/worker_options.h"

namespace {

constexpr char kUsage[] =
    "asymcache-worker: the AsymCache reference worker (gRPC asymcache.v1.Worker: a Llama-family\n"
    "engine on its co-located cache daemon's plans and pool, streaming generated tokens;\n"
    "Prometheus metrics).\n\n"
    "Usage: asymcache-worker --daemon=HOST:PORT [--config=FILE.yaml] [--SETTING=VALUE ...]\n"
    "Example: asymcache-worker --daemon=127.0.0.1:50051 --model=tiny --seed=1 "
    "--listen=0.0.0.0:50071 --tls-cert=worker.pem --tls-key=worker.key --tls-ca=ca.pem "
    "--trusted-peers=asymcache-component\n"
    "Transport security must be chosen: --tls-cert, --tls-key and --tls-ca (mutual TLS), or\n"
    "--plaintext (docs/security.md).\n\n";

void PrintHelp() {
  std::fputs(kUsage, stdout);
  std::printf("  --%-24s %s\n", "config", "YAML file of settings (keys = the names below)");
  const asymcache::worker::WorkerOptions defaults = asymcache::worker::WorkerBinaryDefaults();
  for (const asymcache::worker::WorkerSettingInfo& s : asymcache::worker::WorkerSettings()) {
    const std::string value =
        asymcache::worker::WorkerSettingValue(s.name, defaults).value_or("?");
    std::printf("  --%-24s %s (default: %s)\n", s.name.c_str(), s.help.c_str(),
                value.empty() ? "\"\"" : value.c_str());
  }
  std::printf("  --%-24s %s\n", "help", "this text");
}

}  // namespace

int main(int argc, char** argv) {
  absl::StatusOr<asymcache::ParsedCommandLine> command_line =
      asymcache::ParseCommandLine(argc, argv, asymcache::worker::IsWorkerBoolSetting);
  if (command_line.ok() && command_line->help) {
    PrintHelp();
    return 0;
  }
  absl::StatusOr<asymcache::worker::WorkerOptions> options =
      command_line.ok()
          ? asymcache::worker::WorkerOptionsFromFlags(command_line->flags)
          : absl::StatusOr<asymcache::worker::WorkerOptions>(command_line.status());
  if (!options.ok()) {
    std::fprintf(stderr, "asymcache-worker: %s\n(--help lists the settings)\n",
                 options.status().ToString().c_str());
    return 2;
  }

  // Signals go to one thread (sigwait), blocked everywhere else.
  asymcache::SignalWaiter signals("asymcache-worker");

  absl::StatusOr<std::unique_ptr<asymcache::worker::Worker>> worker =
      asymcache::worker::Worker::Start(*options);
  if (!worker.ok()) {
    std::fprintf(stderr, "asymcache-worker: %s\n", worker.status().ToString().c_str());
    return absl::IsInvalidArgument(worker.status()) ? 2 : 1;
  }
  const asymcache::worker::Engine& engine = (*worker)->engine();
  std::fprintf(stderr,
               "[asymcache-worker] serving gRPC on port %d, metrics on port %d: model %s on the "
               "%s backend, role %s, daemon %s\n",
               (*worker)->grpc_port(), (*worker)->metrics_port(),
               engine.model_config().name.c_str(), std::string(engine.backend_name()).c_str(),
               std::string(asymcache::worker::WorkerRoleName(engine.options().role)).c_str(),
               options->daemon.c_str());
  // A line a supervisor (or a test) can wait for.
  std::printf("READY grpc=%d metrics=%d\n", (*worker)->grpc_port(), (*worker)->metrics_port());
  std::fflush(stdout);
  // From here a signal shuts the worker down (at once if one came since Start()).
  asymcache::worker::Worker* running = worker->get();
  signals.SetShutdownAction([running]() { running->Shutdown(); });
  (*worker)->Wait();
  signals.SetShutdownAction(nullptr);
  signals.Stop();
  worker->reset();
  std::fprintf(stderr, "[asymcache-worker] stopped\n");
  return 0;
}
