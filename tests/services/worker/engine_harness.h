// Test harness for the worker engine: a real CacheDaemon in-process on
// 127.0.0.1:0 (host pool, tiny model), a Client over real gRPC, the pool
// mapped through AttachPool (shared memory), the CPU backend over seeded
// random weights, and an Engine. Plus a sink that collects a request's
// tokens, and the dense no-cache reference to compare against.
#ifndef ASYMCACHE_TESTS_SERVICES_WORKER_ENGINE_HARNESS_H_
#define ASYMCACHE_TESTS_SERVICES_WORKER_ENGINE_HARNESS_H_

#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"
#include "model/dense_reference.h"
#include "model/model_backend.h"
#include "model/weight_source.h"
#include "services/worker/engine.h"
#include "tests/services/client/test_daemon.h"

namespace asymcache::worker::testing {

using ::asymcache::testing::ConnectClient;
using ::asymcache::testing::SmallDaemonOptions;

// Collects one request's output; Wait() blocks until OnFinish (bounded).
class CollectingSink final : public GenerationSink {
 public:
  void OnTokens(TokenBatch batch) override {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < batch.tokens.size(); ++i) tokens_.push_back(batch.tokens[i]);
    if (!batch.logits.empty()) {
      const size_t vocab = batch.logits.size() / batch.tokens.size();
      for (size_t i = 0; i < batch.tokens.size(); ++i) {
        logits_.emplace_back(batch.logits.begin() + i * vocab, batch.logits.begin() + (i + 1) * vocab);
      }
    }
  }
  void OnFinish(const absl::Status& status, const std::string& reason,
                const RequestStats& stats) override {
    absl::MutexLock lock(&mu_);
    status_ = status;
    reason_ = reason;
    stats_ = stats;
    done_.Notify();
  }
  bool Wait(absl::Duration bound = absl::Seconds(60)) {
    return done_.WaitForNotificationWithTimeout(bound);
  }
  std::vector<int32_t> tokens() const { absl::MutexLock l(&mu_); return tokens_; }
  std::vector<std::vector<float>> logits() const { absl::MutexLock l(&mu_); return logits_; }
  absl::Status status() const { absl::MutexLock l(&mu_); return status_; }
  std::string reason() const { absl::MutexLock l(&mu_); return reason_; }
  RequestStats stats() const { absl::MutexLock l(&mu_); return stats_; }

 private:
  mutable absl::Mutex mu_;
  std::vector<int32_t> tokens_;
  std::vector<std::vector<float>> logits_;
  absl::Status status_;
  std::string reason_;
  RequestStats stats_;
  absl::Notification done_;
};

// Largest |a - b| / max(1, max |b|) over a logit vector.
inline double RelativeError(const std::vector<float>& a, const std::vector<float>& b) {
  double scale = 1.0;
  for (float v : b) scale = std::max(scale, std::fabs(static_cast<double>(v)));
  double worst = a.size() == b.size() ? 0.0 : INFINITY;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    worst = std::max(worst, std::fabs(static_cast<double>(a[i]) - b[i]) / scale);
  }
  return worst;
}

// One daemon + client + mapped pool + CPU backend + engine.
struct EngineStack {
  std::unique_ptr<CacheDaemon> daemon;
  std::unique_ptr<Client> client;
  std::unique_ptr<AttachedPool> pool;
  std::unique_ptr<model::ModelBackend> backend;
  std::unique_ptr<Engine> engine;

  std::string address() const { return absl::StrCat("127.0.0.1:", daemon->grpc_port()); }
  DaemonStats Stats() const {
    absl::StatusOr<DaemonStats> stats = client->GetStats();
    EXPECT_TRUE(stats.ok()) << stats.status();
    return stats.ok() ? *stats : DaemonStats{};
  }
};

// Starts a stack; failures are reported as test failures (check ok()).
inline absl::StatusOr<EngineStack> StartStack(const DaemonOptions& daemon_options,
                                              const model::WeightSource& weights,
                                              EngineOptions engine_options) {
  EngineStack stack;
  absl::StatusOr<std::unique_ptr<CacheDaemon>> daemon = CacheDaemon::Start(daemon_options);
  if (!daemon.ok()) return daemon.status();
  stack.daemon = *std::move(daemon);
  stack.client = ConnectClient(stack.address());
  if (stack.client == nullptr) return absl::UnavailableError("no client");
  absl::StatusOr<AttachedPool> pool = stack.client->AttachPool();
  if (!pool.ok()) return pool.status();
  stack.pool = std::make_unique<AttachedPool>(*std::move(pool));
  model::KvPoolView view{stack.pool->base(), stack.pool->layout().num_blocks,
                         stack.pool->layout().layer_stride_bytes()};
  absl::StatusOr<std::unique_ptr<model::ModelBackend>> backend =
      model::CreateCpuBackend(weights, view, model::CpuBackendOptions{.num_threads = 2});
  if (!backend.ok()) return backend.status();
  stack.backend = *std::move(backend);
  absl::StatusOr<DaemonStats> stats = stack.client->GetStats();
  if (!stats.ok()) return stats.status();
  engine_options.calibration = stats->calibration;
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Start(stack.backend.get(), stack.client.get(), std::move(engine_options));
  if (!engine.ok()) return engine.status();
  stack.engine = *std::move(engine);
  return stack;
}

// The dense no-cache run of a request (model/dense_reference.h).
inline model::DenseGeneration Reference(const model::WeightSource& weights,
                                        const GenerationRequest& request) {
  model::DenseGenerateOptions options;
  options.max_new_tokens = request.max_new_tokens;
  options.sampling = request.sampling;
  options.stop_tokens = request.stop_tokens;
  options.keep_logits = true;
  absl::StatusOr<model::DenseGeneration> out = model::GenerateDense(weights, request.prompt, options);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? *std::move(out) : model::DenseGeneration{};
}

}  // namespace asymcache::worker::testing

#endif  // ASYMCACHE_TESTS_SERVICES_WORKER_ENGINE_HARNESS_H_
