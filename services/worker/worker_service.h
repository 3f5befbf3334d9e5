// WorkerService: the asymcache.v1.Worker gRPC service, a thin adapter over
// the Engine. Generate converts the request, submits it and streams the
// engine's token batches back on gRPC's callback API (one write in flight at
// a time; batches that arrive meanwhile are queued); a client cancel or
// deadline cancels the engine request, which releases its blocks. The
// request runs under the salt the tenant salt policy gives its peer
// (services/common/tenant_salt.h: with TLS, derived from the client's
// certificate unless the peer is a trusted component); a peer without an
// identity gets PERMISSION_DENIED.
//
// A client that stops reading: each stream buffers at most
// `max_stream_buffered_bytes` of responses (serialized sizes, the one being
// written included). Past it the engine request is cancelled (its blocks
// are released) and the stream ends with RESOURCE_EXHAUSTED once the client
// reads again (or at its deadline / disconnect); the queued responses are
// dropped, except one whose write gRPC already holds.
//
// Thread-safety: handlers run on gRPC's threads; the engine calls the stream
// sinks on its step thread; each stream's state is guarded by its own mutex.
// The engine must outlive the service's RPCs (stop the server first).
#ifndef ASYMCACHE_SERVICES_WORKER_WORKER_SERVICE_H_
#define ASYMCACHE_SERVICES_WORKER_WORKER_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "asymcache/v1/worker.grpc.pb.h"
#include "services/common/client_rate_limiter.h"
#include "services/common/tenant_salt.h"
#include "services/worker/engine.h"

namespace asymcache::worker {

// proto -> core request (no validation beyond the conversion: the engine
// validates). top_p 0 means 1.
GenerationRequest FromProto(const v1::GenerateRequest& request);

class WorkerService final
    : public v1::Worker::WithCallbackMethod_Generate<
          v1::Worker::WithCallbackMethod_GetWorkerStats<v1::Worker::Service>> {
 public:
  // `rate_limit`: per-client Generate limits; `exempt` the identities never
  // limited (the trusted peers: the coordinator forwards every tenant's).
  // `max_stream_buffered_bytes` (> 0): the per-stream bound above.
  WorkerService(Engine* engine, TenantSaltPolicy tenant_salts, ClientRateLimitOptions rate_limit,
                std::vector<std::string> exempt, int64_t max_stream_buffered_bytes)
      : engine_(engine),
        tenant_salts_(std::move(tenant_salts)),
        limiter_(rate_limit, std::move(exempt)),
        max_stream_buffered_bytes_(max_stream_buffered_bytes) {}

  // After this every new RPC gets UNAVAILABLE.
  void StopAccepting() { accepting_.store(false); }

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* ctx, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* GetWorkerStats(grpc::CallbackServerContext* ctx,
                                           const v1::GetWorkerStatsRequest* request,
                                           v1::GetWorkerStatsResponse* response) override;

 private:
  Engine* const engine_;
  const TenantSaltPolicy tenant_salts_;
  ClientRateLimiter limiter_;
  const int64_t max_stream_buffered_bytes_;
  std::atomic<bool> accepting_{true};
};

}  // namespace asymcache::worker

#endif  // ASYMCACHE_SERVICES_WORKER_WORKER_SERVICE_H_
