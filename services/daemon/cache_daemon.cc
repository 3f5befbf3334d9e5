#include "services/daemon/cache_daemon.h"

#include <chrono>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "services/daemon/cache_daemon_service.h"
#include "services/daemon/daemon_state.h"

namespace asymcache {

struct CacheDaemon::Server {
  std::unique_ptr<CacheDaemonState> state;
  std::unique_ptr<CacheDaemonService> service;
  std::unique_ptr<grpc::Server> grpc_server;
  int grpc_port = 0;

  absl::Mutex mu;
  bool shutting_down ABSL_GUARDED_BY(mu) = false;
  absl::Notification stopped;
  absl::Notification stop_maintenance;
  std::thread maintenance;
};

absl::StatusOr<std::unique_ptr<CacheDaemon>> CacheDaemon::Start(const DaemonOptions& options) {
  auto server = std::make_unique<Server>();
  absl::StatusOr<std::unique_ptr<CacheDaemonState>> state = CacheDaemonState::Create(options);
  if (!state.ok()) return state.status();
  server->state = *std::move(state);
  if (options.cancel != nullptr && options.cancel->load()) {
    return absl::CancelledError("start cancelled (shutdown requested) before serving");
  }
  server->service = std::make_unique<CacheDaemonService>(server->state.get());

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
  return std::unique_ptr<CacheDaemon>(new CacheDaemon(std::move(server)));
}

CacheDaemon::CacheDaemon(std::unique_ptr<Server> server) : server_(std::move(server)) {}

CacheDaemon::~CacheDaemon() { Shutdown(); }

int CacheDaemon::grpc_port() const { return server_->grpc_port; }
int CacheDaemon::metrics_port() const { return server_->state->metrics_port(); }
std::string CacheDaemon::local_address() const {
  return absl::StrCat("127.0.0.1:", server_->grpc_port);
}
CacheDaemonState& CacheDaemon::state() { return *server_->state; }

void CacheDaemon::Shutdown() {
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
  // 2. End event streams once they have delivered what was published.
  s.state->events().Close();
  // 3. In-flight RPCs get the grace period, then are cancelled.
  s.grpc_server->Shutdown(std::chrono::system_clock::now() +
                          absl::ToChronoMilliseconds(s.state->options().shutdown_grace));
  s.grpc_server->Wait();
  s.stop_maintenance.Notify();
  if (s.maintenance.joinable()) s.maintenance.join();
  // 4. Leases, exports and pins are released with the state.
  s.stopped.Notify();
}

void CacheDaemon::Wait() { server_->stopped.WaitForNotification(); }

}  // namespace asymcache
