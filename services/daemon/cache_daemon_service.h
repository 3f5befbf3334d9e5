// CacheDaemonService: the asymcache.v1.CacheDaemon gRPC service — a thin
// adapter. Each handler validates the request (precise status, nothing
// changed on error), converts protobuf -> core values, calls the core
// (CacheDaemonState) and converts back. Timing, metrics, the shutdown check
// and status mapping live in one wrapper (Serve) every handler goes through.
//
// Thread-safety: handlers run concurrently on gRPC's threads; all shared
// state is in the thread-safe core. The state must outlive the service.
#ifndef ASYMCACHE_SERVICES_DAEMON_CACHE_DAEMON_SERVICE_H_
#define ASYMCACHE_SERVICES_DAEMON_CACHE_DAEMON_SERVICE_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "asymcache/v1/cache_daemon.grpc.pb.h"
#include "grpcpp/security/credentials.h"
#include "services/daemon/daemon_state.h"

namespace asymcache {

// Unary RPCs that only touch in-memory state run on gRPC's callback API
// (handled on the completion-queue thread, no hand-off to a worker thread);
// ImportBlocks (a nested gRPC call and a transfer) and WatchEvents (a
// long-lived stream) stay on the synchronous API's thread pool.
using CacheDaemonServiceBase = v1::CacheDaemon::WithCallbackMethod_PlanStep<
    v1::CacheDaemon::WithCallbackMethod_CommitStep<
    v1::CacheDaemon::WithCallbackMethod_ReleaseStep<
    v1::CacheDaemon::WithCallbackMethod_RenewLease<
    v1::CacheDaemon::WithCallbackMethod_ExtendLease<
    v1::CacheDaemon::WithCallbackMethod_Lookup<
    v1::CacheDaemon::WithCallbackMethod_InvalidateBlocks<
    v1::CacheDaemon::WithCallbackMethod_PinJob<
    v1::CacheDaemon::WithCallbackMethod_RefreshPin<
    v1::CacheDaemon::WithCallbackMethod_Unpin<
    v1::CacheDaemon::WithCallbackMethod_ListPins<
    v1::CacheDaemon::WithCallbackMethod_ExportBlocks<
    v1::CacheDaemon::WithCallbackMethod_ReleaseExport<
    v1::CacheDaemon::WithCallbackMethod_AttachPool<
    v1::CacheDaemon::WithCallbackMethod_GetStats<v1::CacheDaemon::Service>>>>>>>>>>>>>>>;

class CacheDaemonService final : public CacheDaemonServiceBase {
 public:
  // `peer_credentials`: the channel credentials of ImportBlocks' calls to
  // peer daemons (the daemon's transport security, transport_security.h).
  CacheDaemonService(CacheDaemonState* state,
                     std::shared_ptr<grpc::ChannelCredentials> peer_credentials);

  // After this, every new RPC gets UNAVAILABLE (graceful shutdown).
  void StopAccepting() { accepting_.store(false); }

  grpc::ServerUnaryReactor* PlanStep(grpc::CallbackServerContext* ctx, const v1::PlanStepRequest* request,
                        v1::PlanStepResponse* response) override;
  grpc::ServerUnaryReactor* CommitStep(grpc::CallbackServerContext* ctx, const v1::CommitStepRequest* request,
                          v1::CommitStepResponse* response) override;
  grpc::ServerUnaryReactor* ReleaseStep(grpc::CallbackServerContext* ctx, const v1::ReleaseStepRequest* request,
                           v1::ReleaseStepResponse* response) override;
  grpc::ServerUnaryReactor* RenewLease(grpc::CallbackServerContext* ctx, const v1::RenewLeaseRequest* request,
                          v1::RenewLeaseResponse* response) override;
  grpc::ServerUnaryReactor* ExtendLease(grpc::CallbackServerContext* ctx,
                                        const v1::ExtendLeaseRequest* request,
                                        v1::ExtendLeaseResponse* response) override;
  grpc::ServerUnaryReactor* Lookup(grpc::CallbackServerContext* ctx, const v1::LookupRequest* request,
                      v1::LookupResponse* response) override;
  grpc::ServerUnaryReactor* InvalidateBlocks(grpc::CallbackServerContext* ctx,
                                const v1::InvalidateBlocksRequest* request,
                                v1::InvalidateBlocksResponse* response) override;
  grpc::ServerUnaryReactor* PinJob(grpc::CallbackServerContext* ctx, const v1::PinJobRequest* request,
                      v1::PinJobResponse* response) override;
  grpc::ServerUnaryReactor* RefreshPin(grpc::CallbackServerContext* ctx, const v1::RefreshPinRequest* request,
                          v1::RefreshPinResponse* response) override;
  grpc::ServerUnaryReactor* Unpin(grpc::CallbackServerContext* ctx, const v1::UnpinRequest* request,
                     v1::UnpinResponse* response) override;
  grpc::ServerUnaryReactor* ListPins(grpc::CallbackServerContext* ctx, const v1::ListPinsRequest* request,
                        v1::ListPinsResponse* response) override;
  grpc::ServerUnaryReactor* ExportBlocks(grpc::CallbackServerContext* ctx, const v1::ExportBlocksRequest* request,
                            v1::ExportBlocksResponse* response) override;
  grpc::ServerUnaryReactor* ReleaseExport(grpc::CallbackServerContext* ctx, const v1::ReleaseExportRequest* request,
                             v1::ReleaseExportResponse* response) override;
  grpc::Status ImportBlocks(grpc::ServerContext* ctx, const v1::ImportBlocksRequest* request,
                            v1::ImportBlocksResponse* response) override;
  grpc::Status WatchEvents(grpc::ServerContext* ctx, const v1::WatchEventsRequest* request,
                           grpc::ServerWriter<v1::KvEventBatch>* writer) override;
  grpc::ServerUnaryReactor* AttachPool(grpc::CallbackServerContext* ctx, const v1::AttachPoolRequest* request,
                          v1::AttachPoolResponse* response) override;
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* ctx, const v1::GetStatsRequest* request,
                        v1::GetStatsResponse* response) override;

 private:
  // The one wrapper: refuses new work while shutting down, times the call,
  // records the RPC metric and maps the status. ServeUnary finishes a
  // callback-API call with it.
  template <typename Body>
  grpc::Status Serve(absl::string_view method, Body&& body);
  template <typename Body>
  grpc::ServerUnaryReactor* ServeUnary(grpc::CallbackServerContext* ctx, absl::string_view method,
                                       Body&& body);

  // Stub of a peer daemon (ImportBlocks), one channel per address. Shared: an
  // import keeps its stub while the cache is cleared under it.
  std::shared_ptr<v1::CacheDaemon::Stub> PeerStub(const std::string& address)
      ABSL_LOCKS_EXCLUDED(peers_mu_);

  CacheDaemonState* const state_;
  const std::shared_ptr<grpc::ChannelCredentials> peer_credentials_;
  std::atomic<bool> accepting_{true};
  absl::Mutex peers_mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<v1::CacheDaemon::Stub>> peers_
      ABSL_GUARDED_BY(peers_mu_);
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_DAEMON_CACHE_DAEMON_SERVICE_H_
