// GenerateProxy: the coordinator's asymcache.v1.Worker service, so that a
// frontend needs one address (docs/coordinator.md, "Generate through the
// coordinator"). Same service name and messages as a worker's, so one Worker
// stub works against the coordinator or any worker.
//
// Generate, per call:
//   0. the salt: the tenant salt of the caller (services/common/tenant_salt.h:
//      with TLS, derived from a tenant's certificate identity; a trusted
//      component's as sent); the request routed and forwarded carries it,
//      and the workers take it as is (the coordinator is in their
//      --trusted-peers);
//   1. route it in-process (CoordinatorState::Route: the salt, the prompt as
//      token_ids, the agent fields, reserve_tokens = max_new_tokens);
//   2. not split: forward the request unchanged to the route's prefill worker
//      and stream its messages back;
//      split (a decode daemon is live): call the prefill worker with
//      max_new_tokens = 1 and stream its token; unless generation is over
//      (max_new_tokens == 1, a stop token, finish_reason "stop"), call the
//      decode worker with prompt + that token, kv_source = the prefill
//      daemon's address, kv_source_tokens = the prompt's length and
//      max_new_tokens - 1, and stream its tokens;
//   3. the last message carries the finish reason and the legs' stats merged
//      (generate_proxy.cc, MergeStats, says what each field means here);
//      token_times_us count from the call's arrival at the coordinator;
//      the TTFT measured here (arrival -> first token received from a worker)
//      is reported with ReportTtft in-process.
// A client cancel or deadline cancels the downstream call (its deadline and
// cancellation are also propagated by gRPC); a downstream error ends the call
// with the same code and the message prefixed with the worker's id and
// address — except UNAVAILABLE (the worker's daemon died or restarted, the
// worker is going away or unreachable), which is retried: the call is routed
// again with the failed leg's daemon excluded and regenerated from the
// prompt, up to options().generate_attempts routes in all. Tokens the client
// already received are not sent again: the retry's first N tokens must equal
// them (sampling is a pure function of (seed, position)), and a mismatch, or
// a retry that ends before N tokens, ends the call with ABORTED — never a
// wrong answer. The last message's stats.attempts counts the routes tried. GetWorkerStats answers UNIMPLEMENTED: per-worker counters live on
// the workers.
//
// Errors (besides the workers' own, passed through):
//   PERMISSION_DENIED a TLS caller whose certificate names no identity
//   INVALID_ARGUMENT  empty prompt_tokens, max_new_tokens < 1, or what Route
//                     refuses (a token outside the vocabulary, agent fields)
//   UNAVAILABLE       no daemon / no prefill daemon is live (Route), no
//                     worker is registered on the routed daemon (the message
//                     names it), or the coordinator is shutting down
//
// Everything runs on gRPC's callback API: the client side is a
// ServerWriteReactor, each downstream call a ClientReadReactor, so no thread
// waits per request. A downstream message is read as soon as it arrives and
// queued for the client, up to options().proxy_max_buffered_bytes of
// queued messages (their serialized sizes) per call: past it the leg stops
// reading (backpressure, never an error) and HTTP/2 flow control holds back
// that stream alone — the worker's other streams on the shared channel flow
// on, and the worker keeps what it generates meanwhile in its own stream's
// queue. Reading resumes when the client's writes have drained the queue to
// half the bound, or at once when the client cancels or goes away (so the
// leg's end is seen). A paused leg's failure (e.g. UNAVAILABLE, retried) is
// seen only once reading resumes. Channels to workers are cached per address
// (at most max_members of them; an evicted one lives on in the calls using
// it).
//
// Thread-safety: handlers and reactions run concurrently on gRPC's threads;
// each call's state is guarded by its own mutex, the channel cache by
// channels_mu_. Ownership: the state is borrowed and must outlive the
// service; the gRPC server must be stopped (every call ended) before the
// service is destroyed.
#ifndef ASYMCACHE_SERVICES_COORDINATOR_GENERATE_PROXY_H_
#define ASYMCACHE_SERVICES_COORDINATOR_GENERATE_PROXY_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "asymcache/v1/worker.grpc.pb.h"
#include "grpcpp/channel.h"
#include "services/coordinator/coordinator_state.h"

namespace asymcache {

class ProxiedGenerate;  // one proxied call (generate_proxy.cc)

class GenerateProxy final : public v1::Worker::CallbackService {
 public:
  // `state` is borrowed; its options give the message size limit, the
  // channel cache's bound (max_members), the retries (generate_attempts) and
  // the per-call buffer bound (proxy_max_buffered_bytes).
  explicit GenerateProxy(CoordinatorState* state);

  // After this, every new Generate gets UNAVAILABLE (graceful shutdown);
  // calls in flight go on.
  void StopAccepting() { accepting_.store(false); }

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* ctx, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* GetWorkerStats(grpc::CallbackServerContext* ctx,
                                           const v1::GetWorkerStatsRequest* request,
                                           v1::GetWorkerStatsResponse* response) override;

  // Channels currently cached (tests).
  size_t cached_channels() const ABSL_LOCKS_EXCLUDED(channels_mu_);

 private:
  friend class ProxiedGenerate;

  // The cached channel to a worker's address, created on first use.
  std::shared_ptr<grpc::Channel> ChannelTo(const std::string& address)
      ABSL_LOCKS_EXCLUDED(channels_mu_);

  // Immutable after construction.
  CoordinatorState* const state_;

  std::atomic<bool> accepting_{true};
  mutable absl::Mutex channels_mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<grpc::Channel>> channels_
      ABSL_GUARDED_BY(channels_mu_);
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COORDINATOR_GENERATE_PROXY_H_
