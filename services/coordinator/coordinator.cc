#include "services/coordinator/coordinator.h"

#include <chrono>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "services/common/metrics_exposer.h"
#include "services/coordinator/coordinator_service.h"
#include "services/coordinator/coordinator_state.h"

namespace asymcache {

struct Coordinator::Server {
  // Declaration order = reverse destruction order: the state (whose metrics
  // live in the exposer's registry) goes before the exposer.
  std::unique_ptr<MetricsExposer> exposer;
  std::unique_ptr<CoordinatorState> state;
  std::unique_ptr<CoordinatorService> service;
  std::unique_ptr<grpc::Server> grpc_server;
  int grpc_port = 0;

  absl::Mutex mu;
  bool shutting_down ABSL_GUARDED_BY(mu) = false;
  absl::Notification stopped;
  absl::Notification stop_maintenance;
  std::thread maintenance;
};

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Start(const CoordinatorOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  auto server = std::make_unique<Server>();
  if (options.metrics_port >= 0) {
    MetricsExposerOptions exposer;
    exposer.host = options.metrics_host;
    exposer.port = options.metrics_port;
    absl::StatusOr<std::unique_ptr<MetricsExposer>> started = MetricsExposer::Start(exposer);
    if (!started.ok()) {
      return absl::Status(started.status().code(),
                          absl::StrCat("--metrics-port: ", started.status().message()));
    }
    server->exposer = *std::move(started);
  }
  absl::StatusOr<std::unique_ptr<CoordinatorState>> state = CoordinatorState::Create(
      options, server->exposer != nullptr ? &server->exposer->registry() : nullptr);
  if (!state.ok()) return state.status();
  server->state = *std::move(state);
  server->service = std::make_unique<CoordinatorService>(server->state.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &server->grpc_port);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.RegisterService(server->service.get());
  server->grpc_server = builder.BuildAndStart();
  if (server->grpc_server == nullptr || server->grpc_port == 0) {
    return absl::UnavailableError(
        absl::StrCat("--listen: cannot serve gRPC on ", options.listen,
                     " (address in use, not local, or malformed)"));
  }
  server->grpc_server->GetHealthCheckService()->SetServingStatus(true);

  Server* raw = server.get();
  server->maintenance = std::thread([raw]() {
    const absl::Duration interval = raw->state->options().maintenance_interval;
    while (!raw->stop_maintenance.WaitForNotificationWithTimeout(interval)) {
      raw->state->RunMaintenance();
    }
  });
  return std::unique_ptr<Coordinator>(new Coordinator(std::move(server)));
}

Coordinator::Coordinator(std::unique_ptr<Server> server) : server_(std::move(server)) {}

Coordinator::~Coordinator() { Shutdown(); }

int Coordinator::grpc_port() const { return server_->grpc_port; }
int Coordinator::metrics_port() const {
  return server_->exposer != nullptr ? server_->exposer->port() : -1;
}
std::string Coordinator::local_address() const {
  return absl::StrCat("127.0.0.1:", server_->grpc_port);
}
CoordinatorState& Coordinator::state() { return *server_->state; }

void Coordinator::Shutdown() {
  bool first = false;
  {
    absl::MutexLock lock(&server_->mu);
    first = !server_->shutting_down;
    server_->shutting_down = true;
  }
  if (!first) {
    server_->stopped.WaitForNotification();
    return;
  }
  Server& s = *server_;
  // 1. Tell load balancers and refuse new work.
  s.grpc_server->GetHealthCheckService()->SetServingStatus(false);
  s.service->StopAccepting();
  // 2. In-flight RPCs get the grace period, then are cancelled.
  s.grpc_server->Shutdown(std::chrono::system_clock::now() +
                          absl::ToChronoMilliseconds(s.state->options().shutdown_grace));
  s.grpc_server->Wait();
  // 3. Maintenance and the event streams.
  s.stop_maintenance.Notify();
  if (s.maintenance.joinable()) s.maintenance.join();
  s.state->StopWatchers();
  s.stopped.Notify();
}

void Coordinator::Wait() { server_->stopped.WaitForNotification(); }

}  // namespace asymcache
