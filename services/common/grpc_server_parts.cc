#include "services/common/grpc_server_parts.h"

#include <chrono>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"

namespace asymcache {

absl::StatusOr<StartedGrpcServer> StartGrpcServer(const std::string& listen,
                                                  const TransportSecurityOptions& security,
                                                  int max_message_bytes, grpc::Service* service) {
  grpc::Service* const services[] = {service};
  return StartGrpcServer(listen, security, max_message_bytes, absl::MakeConstSpan(services));
}

absl::StatusOr<StartedGrpcServer> StartGrpcServer(const std::string& listen,
                                                  const TransportSecurityOptions& security,
                                                  int max_message_bytes,
                                                  absl::Span<grpc::Service* const> services) {
  ABSL_RAW_CHECK(!services.empty(), "StartGrpcServer: no service to serve");
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      MakeServerCredentials(security);
  if (!credentials.ok()) return credentials.status();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  StartedGrpcServer started;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(listen, *credentials, &started.port);
  builder.SetMaxReceiveMessageSize(max_message_bytes);
  builder.SetMaxSendMessageSize(max_message_bytes);
  for (grpc::Service* service : services) {
    ABSL_RAW_CHECK(service != nullptr, "StartGrpcServer: a null service");
    builder.RegisterService(service);
  }
  started.server = builder.BuildAndStart();
  if (started.server == nullptr || started.port == 0) {
    return absl::UnavailableError(absl::StrCat("--listen: cannot serve gRPC on ", listen,
                                               " (address in use, not local, or malformed)"));
  }
  started.server->GetHealthCheckService()->SetServingStatus(true);
  return started;
}

void MarkNotServing(grpc::Server& server) {
  server.GetHealthCheckService()->SetServingStatus(false);
}

void StopGrpcServer(grpc::Server& server, absl::Duration grace) {
  server.Shutdown(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(grace));
  server.Wait();
}

PeriodicThread::PeriodicThread(absl::Duration interval, std::function<void()> tick)
    : thread_([this, interval, tick = std::move(tick)]() {
        while (!stop_.WaitForNotificationWithTimeout(interval)) tick();
      }) {}

PeriodicThread::~PeriodicThread() { Stop(); }

void PeriodicThread::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

bool ShutdownLatch::Begin() {
  {
    absl::MutexLock lock(&mu_);
    if (!begun_) {
      begun_ = true;
      return true;
    }
  }
  finished_.WaitForNotification();
  return false;
}

void ShutdownLatch::Finish() { finished_.Notify(); }

}  // namespace asymcache
