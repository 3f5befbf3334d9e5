#include "services/coordinator/coordinator.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/server.h"
#include "services/common/grpc_server_parts.h"
#include "services/common/metrics_exposer.h"
#include "services/coordinator/coordinator_service.h"
#include "services/coordinator/coordinator_state.h"
#include "services/coordinator/generate_proxy.h"

namespace asymcache {

struct Coordinator::Server {
  // Declaration order = reverse destruction order: the state (whose metrics
  // live in the exposer's registry) goes before the exposer.
  std::unique_ptr<MetricsExposer> exposer;
  std::unique_ptr<CoordinatorState> state;
  std::unique_ptr<CoordinatorService> service;
  std::unique_ptr<GenerateProxy> generate_proxy;  // asymcache.v1.Worker/Generate
  std::unique_ptr<grpc::Server> grpc_server;
  int grpc_port = 0;

  ShutdownLatch shutdown;
  std::unique_ptr<PeriodicThread> maintenance;
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
  server->generate_proxy = std::make_unique<GenerateProxy>(server->state.get());

  grpc::Service* const services[] = {server->service.get(), server->generate_proxy.get()};
  absl::StatusOr<StartedGrpcServer> grpc_server = StartGrpcServer(
      options.listen, options.security, options.max_message_bytes, absl::MakeConstSpan(services));
  if (!grpc_server.ok()) return grpc_server.status();
  server->grpc_server = std::move(grpc_server->server);
  server->grpc_port = grpc_server->port;

  CoordinatorState* state_ptr = server->state.get();
  server->maintenance = std::make_unique<PeriodicThread>(
      state_ptr->options().maintenance_interval, [state_ptr]() { state_ptr->RunMaintenance(); });
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
  Server& s = *server_;
  if (!s.shutdown.Begin()) return;  // another caller shut down
  // 1. Tell load balancers and refuse new work.
  MarkNotServing(*s.grpc_server);
  s.service->StopAccepting();
  s.generate_proxy->StopAccepting();
  // 2. In-flight RPCs (proxied Generate streams above all) get the grace
  // period, then are cancelled, which cancels their calls to the workers.
  StopGrpcServer(*s.grpc_server, s.state->options().shutdown_grace);
  // 3. Maintenance and the event streams.
  s.maintenance->Stop();
  s.state->StopWatchers();
  s.shutdown.Finish();
}

void Coordinator::Wait() { server_->shutdown.Wait(); }

}  // namespace asymcache
