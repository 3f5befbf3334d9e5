// Test helpers for the client end-to-end tests: a real CacheDaemon started
// in-process on 127.0.0.1:0 (host backend, tiny model, a pool of a few
// blocks) and a Client connected to it over real gRPC; status macros; bounded
// polling (never a fixed sleep).
#ifndef ASYMCACHE_TESTS_SERVICES_CLIENT_TEST_DAEMON_H_
#define ASYMCACHE_TESTS_SERVICES_CLIENT_TEST_DAEMON_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cachecore/model_config.h"
#include "cachecore/types.h"
#include "gtest/gtest.h"
#include "services/client/client.h"
#include "services/daemon/cache_daemon.h"
#include "services/daemon/daemon_options.h"

#define ASYMCACHE_TEST_CONCAT_INNER(a, b) a##b
#define ASYMCACHE_TEST_CONCAT(a, b) ASYMCACHE_TEST_CONCAT_INNER(a, b)

// ASSERT_OK(status_or_statusor)
#define ASSERT_OK(expr)                                        \
  do {                                                         \
    const absl::Status _assert_ok_status = ::asymcache::testing::ToStatus(expr); \
    ASSERT_TRUE(_assert_ok_status.ok()) << _assert_ok_status;  \
  } while (0)
#define EXPECT_OK(expr)                                        \
  do {                                                         \
    const absl::Status _expect_ok_status = ::asymcache::testing::ToStatus(expr); \
    EXPECT_TRUE(_expect_ok_status.ok()) << _expect_ok_status;  \
  } while (0)

// ASSERT_OK_AND_ASSIGN(auto x, StatusOrExpr) / (x, StatusOrExpr)
#define ASSERT_OK_AND_ASSIGN(lhs, rexpr) \
  ASSERT_OK_AND_ASSIGN_IMPL(ASYMCACHE_TEST_CONCAT(_statusor_, __LINE__), lhs, rexpr)
#define ASSERT_OK_AND_ASSIGN_IMPL(var, lhs, rexpr) \
  auto var = (rexpr);                              \
  ASSERT_TRUE(var.ok()) << var.status();           \
  lhs = std::move(var).value()

namespace asymcache::testing {

inline absl::Status ToStatus(const absl::Status& status) { return status; }
template <typename T>
absl::Status ToStatus(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

// Bytes of one block of the tiny model (the daemon's default shape).
inline int64_t TinyBlockBytes() {
  return ModelConfig::Named("tiny").value().KvBytesPerBlock();
}
inline int TinyBlockTokens() { return ModelConfig::Named("tiny").value().block_tokens; }

// Loopback, ephemeral port, no metrics, host pool of `pool_blocks` tiny blocks,
// built-in CPU calibration.
inline DaemonOptions SmallDaemonOptions(int64_t pool_blocks) {
  DaemonOptions options;
  options.listen = "127.0.0.1:0";
  options.metrics_port = -1;
  options.backend = "host";
  options.model = ModelConfig::Named("tiny").value();
  options.pool_bytes = pool_blocks * TinyBlockBytes();
  options.pool_fraction = 0;
  options.calibrate_on_start = false;
  options.maintenance_interval = absl::Milliseconds(20);
  options.shutdown_grace = absl::Seconds(2);
  return options;
}

// Token ids must lie in the model's vocabulary (tiny: [0, 1024)).
inline constexpr int kTinyVocab = 1024;

// `count` tokens of the tiny vocabulary. Seeds that differ modulo kTinyVocab
// differ in the first token, so their contexts never share a block.
inline std::vector<TokenId> Tokens(int count, int seed) {
  std::vector<TokenId> tokens(count);
  for (int i = 0; i < count; ++i) tokens[i] = (seed * 131 + i * 7) % kTinyVocab;
  return tokens;
}

inline std::unique_ptr<Client> ConnectClient(const std::string& target) {
  ClientOptions options;
  options.target = target;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
  if (!client.ok()) {
    ADD_FAILURE() << client.status();
    return nullptr;
  }
  absl::Status ready = (*client)->WaitForReady(absl::Seconds(10));
  if (!ready.ok()) ADD_FAILURE() << ready;
  return *std::move(client);
}

// Polls `predicate` every 10 ms until it holds or `bound` passes; returns
// whether it held. The bound only caps a failing test's run time.
inline bool WaitUntil(const std::function<bool()>& predicate,
                      absl::Duration bound = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + bound;
  while (true) {
    if (predicate()) return true;
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
}

// The state a failed request must not change (everything but uptime), as one
// string so that a difference prints readably.
inline std::string StateOf(const DaemonStats& s) {
  return absl::StrFormat(
      "capacity=%d free=%d writing=%d sealed=%d pinned=%d in_transfer=%d indexed=%d "
      "evictions=%d leases=%d exports=%d agent_blocks=%d agent_jobs=%d steps=%d hit=%d "
      "rebuild=%d new=%d last_event=%d",
      s.capacity_blocks, s.free_blocks, s.writing_blocks, s.sealed_blocks, s.pinned_blocks,
      s.in_transfer_blocks, s.indexed_blocks, s.evictions, s.active_leases, s.active_exports,
      s.agent_pinned_blocks, s.agent_pinned_jobs, s.steps, s.hit_tokens, s.rebuild_tokens,
      s.new_tokens, s.last_event_sequence);
}

// A daemon on 127.0.0.1:0 plus a connected client.
class DaemonFixture : public ::testing::Test {
 protected:
  void StartDaemon(const DaemonOptions& options) {
    absl::StatusOr<std::unique_ptr<CacheDaemon>> daemon = CacheDaemon::Start(options);
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    daemon_ = *std::move(daemon);
    ASSERT_GT(daemon_->grpc_port(), 0);
    client_ = ConnectClient(daemon_->local_address());
    ASSERT_NE(client_, nullptr);
  }

  void TearDown() override {
    client_.reset();
    if (daemon_ != nullptr) daemon_->Shutdown();
    daemon_.reset();
  }

  DaemonStats Stats() {
    absl::StatusOr<DaemonStats> stats = client_->GetStats();
    EXPECT_TRUE(stats.ok()) << stats.status();
    return stats.ok() ? *stats : DaemonStats{};
  }

  // Plan, commit and release one step; returns the plan.
  StepPlan RunStep(absl::string_view salt, SequenceId sequence, const std::vector<TokenId>& tokens) {
    absl::StatusOr<LeasedStep> step = client_->PlanStep(salt, sequence, tokens);
    EXPECT_TRUE(step.ok()) << step.status();
    if (!step.ok()) return StepPlan{};
    EXPECT_OK(client_->CommitStep(step->lease_id));
    EXPECT_OK(client_->ReleaseStep(step->lease_id));
    return step->plan;
  }

  std::unique_ptr<CacheDaemon> daemon_;
  std::unique_ptr<Client> client_;
};

}  // namespace asymcache::testing

#endif  // ASYMCACHE_TESTS_SERVICES_CLIENT_TEST_DAEMON_H_
