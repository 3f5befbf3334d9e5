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
#include "services/daemon/daemon_state.h"

namespace asymcache {

class CacheDaemonService final : public v1::CacheDaemon::Service {
 public:
  explicit CacheDaemonService(CacheDaemonState* state);

  // After this, every new RPC gets UNAVAILABLE (graceful shutdown).
  void StopAccepting() { accepting_.store(false); }

  grpc::Status PlanStep(grpc::ServerContext* ctx, const v1::PlanStepRequest* request,
                        v1::PlanStepResponse* response) override;
  grpc::Status CommitStep(grpc::ServerContext* ctx, const v1::CommitStepRequest* request,
                          v1::CommitStepResponse* response) override;
  grpc::Status ReleaseStep(grpc::ServerContext* ctx, const v1::ReleaseStepRequest* request,
                           v1::ReleaseStepResponse* response) override;
  grpc::Status RenewLease(grpc::ServerContext* ctx, const v1::RenewLeaseRequest* request,
                          v1::RenewLeaseResponse* response) override;
  grpc::Status Lookup(grpc::ServerContext* ctx, const v1::LookupRequest* request,
                      v1::LookupResponse* response) override;
  grpc::Status InvalidateBlocks(grpc::ServerContext* ctx,
                                const v1::InvalidateBlocksRequest* request,
                                v1::InvalidateBlocksResponse* response) override;
  grpc::Status PinJob(grpc::ServerContext* ctx, const v1::PinJobRequest* request,
                      v1::PinJobResponse* response) override;
  grpc::Status RefreshPin(grpc::ServerContext* ctx, const v1::RefreshPinRequest* request,
                          v1::RefreshPinResponse* response) override;
  grpc::Status Unpin(grpc::ServerContext* ctx, const v1::UnpinRequest* request,
                     v1::UnpinResponse* response) override;
  grpc::Status ListPins(grpc::ServerContext* ctx, const v1::ListPinsRequest* request,
                        v1::ListPinsResponse* response) override;
  grpc::Status ExportBlocks(grpc::ServerContext* ctx, const v1::ExportBlocksRequest* request,
                            v1::ExportBlocksResponse* response) override;
  grpc::Status ReleaseExport(grpc::ServerContext* ctx, const v1::ReleaseExportRequest* request,
                             v1::ReleaseExportResponse* response) override;
  grpc::Status ImportBlocks(grpc::ServerContext* ctx, const v1::ImportBlocksRequest* request,
                            v1::ImportBlocksResponse* response) override;
  grpc::Status WatchEvents(grpc::ServerContext* ctx, const v1::WatchEventsRequest* request,
                           grpc::ServerWriter<v1::KvEventBatch>* writer) override;
  grpc::Status AttachPool(grpc::ServerContext* ctx, const v1::AttachPoolRequest* request,
                          v1::AttachPoolResponse* response) override;
  grpc::Status GetStats(grpc::ServerContext* ctx, const v1::GetStatsRequest* request,
                        v1::GetStatsResponse* response) override;

 private:
  // The one wrapper: refuses new work while shutting down, times the call,
  // records the RPC metric and maps the status.
  template <typename Body>
  grpc::Status Serve(absl::string_view method, Body&& body);

  // Stub of a peer daemon (ImportBlocks), one channel per address.
  v1::CacheDaemon::Stub* PeerStub(const std::string& address) ABSL_LOCKS_EXCLUDED(peers_mu_);

  CacheDaemonState* const state_;
  std::atomic<bool> accepting_{true};
  absl::Mutex peers_mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<v1::CacheDaemon::Stub>> peers_
      ABSL_GUARDED_BY(peers_mu_);
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_DAEMON_CACHE_DAEMON_SERVICE_H_
