// CoordinatorService: the asymcache.v1.Coordinator gRPC service — a thin
// adapter. Each handler checks the request's wire-level fields (enums, ids,
// presence), converts protobuf -> core values, calls CoordinatorState and
// converts back. The shutdown check, the RPC metric and the status mapping
// live in one wrapper (Serve) that every handler goes through. Every RPC is
// on gRPC's callback API: each touches only in-memory state (a Register or
// Deregister may also join one event-watcher thread, which returns at once
// after its stream is cancelled).
//
// With TLS (CoordinatorOptions::security, docs/security.md): Register,
// Heartbeat and Deregister from a peer not in --trusted-peers get
// PERMISSION_DENIED; Route runs under the tenant salt of its peer
// (services/common/tenant_salt.h), and a tenant's Route by block_hashes gets
// PERMISSION_DENIED (its hashes would carry a salt of its choosing).
//
// Thread-safety: handlers run concurrently on gRPC's threads; shared state
// is in the thread-safe core, which must outlive the service.
#ifndef ASYMCACHE_SERVICES_COORDINATOR_COORDINATOR_SERVICE_H_
#define ASYMCACHE_SERVICES_COORDINATOR_COORDINATOR_SERVICE_H_

#include <atomic>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "asymcache/v1/coordinator.grpc.pb.h"
#include "services/coordinator/coordinator_state.h"

namespace asymcache {

class CoordinatorService final : public v1::Coordinator::CallbackService {
 public:
  explicit CoordinatorService(CoordinatorState* state);

  // After this, every new RPC gets UNAVAILABLE (graceful shutdown).
  void StopAccepting() { accepting_.store(false); }

  grpc::ServerUnaryReactor* Register(grpc::CallbackServerContext* ctx,
                                     const v1::RegisterRequest* request,
                                     v1::RegisterResponse* response) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx,
                                      const v1::HeartbeatRequest* request,
                                      v1::HeartbeatResponse* response) override;
  grpc::ServerUnaryReactor* Deregister(grpc::CallbackServerContext* ctx,
                                       const v1::DeregisterRequest* request,
                                       v1::DeregisterResponse* response) override;
  grpc::ServerUnaryReactor* Route(grpc::CallbackServerContext* ctx,
                                  const v1::RouteRequest* request,
                                  v1::RouteResponse* response) override;
  grpc::ServerUnaryReactor* ReportTtft(grpc::CallbackServerContext* ctx,
                                       const v1::ReportTtftRequest* request,
                                       v1::ReportTtftResponse* response) override;
  grpc::ServerUnaryReactor* ListMembers(grpc::CallbackServerContext* ctx,
                                        const v1::ListMembersRequest* request,
                                        v1::ListMembersResponse* response) override;

 private:
  // The one wrapper: refuses new work while shutting down, times the call,
  // records the RPC metric, maps the status and finishes the call.
  template <typename Body>
  grpc::ServerUnaryReactor* Serve(grpc::CallbackServerContext* ctx, absl::string_view method,
                                  Body&& body);

  CoordinatorState* const state_;
  std::atomic<bool> accepting_{true};
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COORDINATOR_COORDINATOR_SERVICE_H_
