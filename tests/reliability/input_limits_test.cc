// Input limits (issue #9, "Security": no RPC can allocate unbounded memory;
// docs/reliability.md): a real coordinator, cache daemon and worker on
// 127.0.0.1, each started with small limits (1 MiB messages, 4096-token
// contexts, 64 blocks a transfer, 3 event watchers, 4 members, a queue of 2).
// Every server gets inputs past each of its bounds — a message over the
// message bound, more tokens / hashes / blocks / watchers / members than
// allowed, an over-long id — and must refuse each with its documented code
// (RESOURCE_EXHAUSTED for a message or table bound, INVALID_ARGUMENT for a
// field bound, OUT_OF_RANGE for block ids). The refusals are then repeated
// for kRounds rounds (tens of MiB sent per server) and the server's resident
// memory may grow by at most kRssGrowthBound: nothing of a refused request is
// kept.
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "tests/reliability/service_cluster.h"

namespace asymcache {
namespace {

using testing::ResidentBytes;
using testing::ServiceCluster;
using testing::ServiceClusterOptions;

constexpr int kMaxMessageBytes = 1 << 20;
constexpr int kMaxContextTokens = 4096;
constexpr int kMaxTransferBlocks = 64;
// The coordinator's event stream is one of the daemon's watchers.
constexpr int kMaxWatchers = 3;
constexpr int kMaxMembers = 4;
// Rounds of every refused input after the warm-up round.
constexpr int kRounds = 24;
// How much a server's resident memory may grow over the rounds. Each round
// sends a server 1.5-3 MiB, so a server that kept refused inputs would grow
// by 36-72 MiB; allocator caches and gRPC's buffers stay far below this
// (measured: under 6 MiB).
constexpr int64_t kRssGrowthBound = int64_t{24} << 20;
constexpr auto kCallTimeout = std::chrono::seconds(30);

// A message 1.5x the message bound (a salt is the cheapest way to make one).
std::string OversizeSalt() { return std::string(kMaxMessageBytes * 3 / 2, 's'); }

std::unique_ptr<grpc::ClientContext> Context() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + kCallTimeout);
  return context;
}

// The status a whole Generate stream ended with.
grpc::Status GenerateStatus(v1::Worker::Stub& stub, const v1::GenerateRequest& request) {
  std::unique_ptr<grpc::ClientContext> context = Context();
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub.Generate(context.get(), request);
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
  }
  return reader->Finish();
}

std::vector<int32_t> Tokens(int n) {
  std::vector<int32_t> out(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) out[static_cast<size_t>(i)] = i % 1000;
  return out;
}

v1::BlockHash Hash(uint64_t i) {
  v1::BlockHash h;
  h.set_lo(i * 0x9e3779b97f4a7c15ull + 1);
  h.set_hi(i);
  return h;
}

// One refused input: the call and the code it must get.
struct Refusal {
  std::string name;
  grpc::StatusCode expected;
  std::function<grpc::Status()> call;
};

class InputLimitsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/asymcache_limits_XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr) << std::strerror(errno);
    log_dir_ = dir;
    ServiceClusterOptions options;
    options.log_dir = log_dir_;
    options.coordinator = true;
    const std::string message = absl::StrCat("--max-message-bytes=", kMaxMessageBytes);
    options.daemon_flags = {message, absl::StrCat("--max-context-tokens=", kMaxContextTokens),
                            absl::StrCat("--max-transfer-blocks=", kMaxTransferBlocks),
                            absl::StrCat("--max-watchers=", kMaxWatchers)};
    options.coordinator_flags = {message, absl::StrCat("--max-route-tokens=", kMaxContextTokens),
                                 absl::StrCat("--max-members=", kMaxMembers)};
    options.worker_flags = {message, absl::StrCat("--max-context-tokens=", kMaxContextTokens),
                            "--max-running=1", "--max-queued=2"};
    // 256 blocks (4096 tokens): a whole max-context request fits, so the
    // queue test's long requests run to their length (seconds) instead of
    // outgrowing a smaller pool early — which, on a loaded machine, let them
    // end before the probes and made that test flaky.
    options.pool_bytes = "8MiB";
    absl::StatusOr<std::unique_ptr<ServiceCluster>> cluster = ServiceCluster::Start(options);
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = *std::move(cluster);
  }
  void TearDown() override {
    if (HasFailure() && cluster_ != nullptr) std::fprintf(stderr, "%s", cluster_->Logs().c_str());
    cluster_.reset();
    ::rmdir(log_dir_.c_str());
  }

  // Every refusal once (warm-up: connections, thread pools, allocator
  // arenas), then kRounds more; each must get its code every time, and the
  // server's RSS may grow by at most kRssGrowthBound over the rounds.
  void ExpectRefusedWithBoundedMemory(const char* server, pid_t pid,
                                      const std::vector<Refusal>& refusals) {
    for (const Refusal& r : refusals) {
      const grpc::Status status = r.call();
      ASSERT_EQ(status.error_code(), r.expected)
          << server << " " << r.name << ": " << status.error_message();
      std::printf("%s %s: %d %s\n", server, r.name.c_str(), static_cast<int>(status.error_code()),
                  status.error_message().substr(0, 160).c_str());
    }
    absl::StatusOr<int64_t> before = ResidentBytes(pid);
    ASSERT_TRUE(before.ok()) << before.status();
    for (int round = 0; round < kRounds; ++round) {
      for (const Refusal& r : refusals) {
        const grpc::Status status = r.call();
        ASSERT_EQ(status.error_code(), r.expected)
            << server << " " << r.name << " (round " << round << "): " << status.error_message();
      }
    }
    absl::StatusOr<int64_t> after = ResidentBytes(pid);
    ASSERT_TRUE(after.ok()) << after.status();
    std::printf("%s: %zu refusals x %d rounds, RSS %.1f -> %.1f MiB\n", server, refusals.size(),
                kRounds, *before / 1048576.0, *after / 1048576.0);
    EXPECT_LE(*after - *before, kRssGrowthBound) << server << " kept what it refused";
  }

  std::string log_dir_;
  std::unique_ptr<ServiceCluster> cluster_;
};

TEST_F(InputLimitsTest, DaemonRefusesOversizeInputsWithoutGrowing) {
  v1::CacheDaemon::Stub& daemon = cluster_->daemon();
  const std::vector<int32_t> too_long = Tokens(kMaxContextTokens + 1);
  const std::string huge_salt = OversizeSalt();

  // With the coordinator's, kMaxWatchers event streams stay open; one more
  // is refused.
  std::vector<std::unique_ptr<grpc::ClientContext>> watch_contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::KvEventBatch>>> watchers;
  for (int i = 0; i < kMaxWatchers - 1; ++i) {
    watch_contexts.push_back(std::make_unique<grpc::ClientContext>());
    v1::WatchEventsRequest watch;
    watch.set_snapshot(true);
    watchers.push_back(daemon.WatchEvents(watch_contexts.back().get(), watch));
    v1::KvEventBatch batch;
    ASSERT_TRUE(watchers.back()->Read(&batch)) << "watcher " << i << " got no snapshot";
  }

  std::vector<Refusal> refusals;
  refusals.push_back({"PlanStep over max_context_tokens", grpc::StatusCode::INVALID_ARGUMENT, [&] {
                        v1::PlanStepRequest r;
                        r.set_sequence_id(1);
                        r.mutable_tokens()->Add(too_long.begin(), too_long.end());
                        v1::PlanStepResponse out;
                        return daemon.PlanStep(Context().get(), r, &out);
                      }});
  refusals.push_back({"PlanStep over max_message_bytes", grpc::StatusCode::RESOURCE_EXHAUSTED, [&] {
                        v1::PlanStepRequest r;
                        r.set_sequence_id(1);
                        r.set_salt(huge_salt);
                        r.add_tokens(1);
                        v1::PlanStepResponse out;
                        return daemon.PlanStep(Context().get(), r, &out);
                      }});
  refusals.push_back({"PinJob over max_context_tokens", grpc::StatusCode::INVALID_ARGUMENT, [&] {
                        v1::PinJobRequest r;
                        r.mutable_agent()->set_job_id("job");
                        r.mutable_agent()->set_tool("tool");
                        r.mutable_tokens()->Add(too_long.begin(), too_long.end());
                        v1::PinJobResponse out;
                        return daemon.PinJob(Context().get(), r, &out);
                      }});
  refusals.push_back({"Lookup over max_context_tokens / block", grpc::StatusCode::INVALID_ARGUMENT,
                      [&] {
                        v1::LookupRequest r;
                        for (int i = 0; i < kMaxContextTokens / 16 + 1; ++i) *r.add_hashes() = Hash(i);
                        v1::LookupResponse out;
                        return daemon.Lookup(Context().get(), r, &out);
                      }});
  refusals.push_back({"ExportBlocks over max_transfer_blocks", grpc::StatusCode::INVALID_ARGUMENT,
                      [&] {
                        v1::ExportBlocksRequest r;
                        for (int i = 0; i < kMaxTransferBlocks + 1; ++i) *r.add_hashes() = Hash(i);
                        v1::ExportBlocksResponse out;
                        return daemon.ExportBlocks(Context().get(), r, &out);
                      }});
  refusals.push_back({"ImportBlocks over max_transfer_blocks", grpc::StatusCode::INVALID_ARGUMENT,
                      [&] {
                        v1::ImportBlocksRequest r;
                        r.set_peer("127.0.0.1:1");
                        for (int i = 0; i < kMaxTransferBlocks + 1; ++i) *r.add_hashes() = Hash(i);
                        v1::ImportBlocksResponse out;
                        return daemon.ImportBlocks(Context().get(), r, &out);
                      }});
  // Near the message bound but within it: 200,000 block ids, the first
  // outside the pool (checked before any is touched).
  refusals.push_back({"InvalidateBlocks of 200k ids", grpc::StatusCode::OUT_OF_RANGE, [&] {
                        v1::InvalidateBlocksRequest r;
                        for (int i = 0; i < 200000; ++i) r.add_block_ids(1 << 20);
                        v1::InvalidateBlocksResponse out;
                        return daemon.InvalidateBlocks(Context().get(), r, &out);
                      }});
  refusals.push_back({"WatchEvents over max_watchers", grpc::StatusCode::RESOURCE_EXHAUSTED, [&] {
                        std::unique_ptr<grpc::ClientContext> context = Context();
                        std::unique_ptr<grpc::ClientReader<v1::KvEventBatch>> reader =
                            daemon.WatchEvents(context.get(), v1::WatchEventsRequest());
                        v1::KvEventBatch batch;
                        while (reader->Read(&batch)) {
                        }
                        return reader->Finish();
                      }});
  ExpectRefusedWithBoundedMemory("daemon", cluster_->daemon_process().pid(), refusals);

  for (auto& context : watch_contexts) context->TryCancel();
  for (auto& reader : watchers) {
    v1::KvEventBatch batch;
    while (reader->Read(&batch)) {
    }
    (void)reader->Finish();
  }
}

TEST_F(InputLimitsTest, CoordinatorRefusesOversizeInputsWithoutGrowing) {
  v1::Coordinator::Stub& coordinator = cluster_->coordinator();
  const std::vector<int32_t> too_long = Tokens(kMaxContextTokens + 1);
  const std::string huge_salt = OversizeSalt();

  // The daemon and the worker are members; fill the table with workers of a
  // daemon that does not exist (never routed to).
  auto register_worker = [&](const std::string& id) {
    v1::RegisterRequest r;
    r.set_member_id(id);
    r.set_kind(v1::MEMBER_KIND_WORKER);
    r.set_address("127.0.0.1:1");
    r.set_gpu(-1);
    r.set_daemon_id("no-such-daemon");
    v1::RegisterResponse out;
    return coordinator.Register(Context().get(), r, &out);
  };
  for (int i = 2; i < kMaxMembers; ++i) {
    const grpc::Status status = register_worker(absl::StrCat("filler-", i));
    ASSERT_TRUE(status.ok()) << status.error_message();
  }

  std::vector<Refusal> refusals;
  refusals.push_back({"Register over max_members", grpc::StatusCode::RESOURCE_EXHAUSTED,
                      [&] { return register_worker("one-too-many"); }});
  refusals.push_back({"Register with a 129-character member_id",
                      grpc::StatusCode::INVALID_ARGUMENT,
                      [&] { return register_worker(std::string(129, 'm')); }});
  refusals.push_back({"Route over max_route_tokens", grpc::StatusCode::INVALID_ARGUMENT, [&] {
                        v1::RouteRequest r;
                        r.mutable_token_ids()->Add(too_long.begin(), too_long.end());
                        v1::RouteResponse out;
                        return coordinator.Route(Context().get(), r, &out);
                      }});
  refusals.push_back({"Route by hashes over max_route_tokens", grpc::StatusCode::INVALID_ARGUMENT,
                      [&] {
                        v1::RouteRequest r;
                        for (int i = 0; i < kMaxContextTokens / 16 + 1; ++i) {
                          *r.add_block_hashes() = Hash(i);
                        }
                        r.set_num_tokens(kMaxContextTokens + 1);
                        v1::RouteResponse out;
                        return coordinator.Route(Context().get(), r, &out);
                      }});
  refusals.push_back({"Route with a 129-byte agent.job_id", grpc::StatusCode::INVALID_ARGUMENT,
                      [&] {
                        v1::RouteRequest r;
                        r.add_token_ids(1);
                        r.mutable_agent()->set_job_id(std::string(129, 'j'));
                        v1::RouteResponse out;
                        return coordinator.Route(Context().get(), r, &out);
                      }});
  refusals.push_back({"Route over max_message_bytes", grpc::StatusCode::RESOURCE_EXHAUSTED, [&] {
                        v1::RouteRequest r;
                        r.set_salt(huge_salt);
                        r.add_token_ids(1);
                        v1::RouteResponse out;
                        return coordinator.Route(Context().get(), r, &out);
                      }});
  refusals.push_back({"Generate (proxy) over max_route_tokens", grpc::StatusCode::INVALID_ARGUMENT,
                      [&] {
                        v1::GenerateRequest r;
                        r.mutable_prompt_tokens()->Add(too_long.begin(), too_long.end());
                        r.set_max_new_tokens(1);
                        return GenerateStatus(cluster_->coordinator_proxy(), r);
                      }});
  refusals.push_back({"Generate (proxy) over max_message_bytes",
                      grpc::StatusCode::RESOURCE_EXHAUSTED, [&] {
                        v1::GenerateRequest r;
                        r.set_salt(huge_salt);
                        r.add_prompt_tokens(1);
                        r.set_max_new_tokens(1);
                        return GenerateStatus(cluster_->coordinator_proxy(), r);
                      }});
  ExpectRefusedWithBoundedMemory("coordinator", cluster_->coordinator_process().pid(), refusals);
}

TEST_F(InputLimitsTest, WorkerRefusesOversizeInputsWithoutGrowing) {
  v1::Worker::Stub& worker = cluster_->worker();
  const std::vector<int32_t> too_long = Tokens(kMaxContextTokens);  // + max_new_tokens 1

  std::vector<Refusal> refusals;
  refusals.push_back({"Generate over max_context_tokens", grpc::StatusCode::INVALID_ARGUMENT, [&] {
                        v1::GenerateRequest r;
                        r.mutable_prompt_tokens()->Add(too_long.begin(), too_long.end());
                        r.set_max_new_tokens(1);
                        return GenerateStatus(worker, r);
                      }});
  refusals.push_back({"Generate over max_message_bytes", grpc::StatusCode::RESOURCE_EXHAUSTED, [&] {
                        v1::GenerateRequest r;
                        r.add_prompt_tokens(1);
                        r.set_max_new_tokens(1);
                        // 800k stop tokens: 1.6 MB packed.
                        for (int i = 0; i < 800000; ++i) r.add_stop_tokens(1000);
                        return GenerateStatus(worker, r);
                      }});
  refusals.push_back({"Generate with a token outside the vocabulary",
                      grpc::StatusCode::INVALID_ARGUMENT, [&] {
                        v1::GenerateRequest r;
                        r.add_prompt_tokens(1 << 20);
                        r.set_max_new_tokens(1);
                        return GenerateStatus(worker, r);
                      }});
  ExpectRefusedWithBoundedMemory("worker", cluster_->worker_process().pid(), refusals);
}

TEST_F(InputLimitsTest, WorkerRefusesRequestsBeyondItsQueue) {
  v1::Worker::Stub& worker = cluster_->worker();
  // --max-running=1 --max-queued=2: one request runs, one waits, the next is
  // refused. The two held ones generate far longer than the test waits.
  v1::GenerateRequest endless;
  for (int32_t t : Tokens(16)) endless.add_prompt_tokens(t);
  endless.set_max_new_tokens(kMaxContextTokens - 16);
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>>> held;
  // The second only once the first runs: the worker's handler threads may
  // submit two calls that arrive together in either order, and the test
  // must not read from the one left waiting (it would block until the other
  // had generated all its tokens).
  v1::GenerateResponse response;
  for (int i = 0; i < 2; ++i) {
    contexts.push_back(Context());
    held.push_back(worker.Generate(contexts.back().get(), endless));
    if (i == 0) ASSERT_TRUE(held[0]->Read(&response)) << "the first request did not start";
  }
  // The second is queued once the worker counts it: poll its stats (up to
  // 20 s; each request generates for seconds on a loaded machine).
  bool full = false;
  for (int i = 0; i < 2000 && !full; ++i) {
    absl::StatusOr<v1::GetWorkerStatsResponse> stats = cluster_->WorkerStats();
    ASSERT_TRUE(stats.ok()) << stats.status();
    full = stats->running() + stats->waiting() >= 2;
    if (!full) ::usleep(10000);
  }
  if (!full) {
    // Say what the worker and both streams saw before failing.
    absl::StatusOr<v1::GetWorkerStatsResponse> stats = cluster_->WorkerStats();
    std::string why = stats.ok() ? stats->ShortDebugString() : stats.status().ToString();
    for (size_t i = 0; i < held.size(); ++i) {
      contexts[i]->TryCancel();
      int read = 0;
      while (held[i]->Read(&response)) ++read;
      const grpc::Status status = held[i]->Finish();
      absl::StrAppend(&why, "\nstream ", i, ": ", read, " more messages, then ",
                      static_cast<int>(status.error_code()), " ", status.error_message());
    }
    FAIL() << "the worker never held both long requests: " << why;
  }
  for (int i = 0; i < 3; ++i) {
    v1::GenerateRequest one;
    one.add_prompt_tokens(1);
    one.set_max_new_tokens(1);
    const grpc::Status status = GenerateStatus(worker, one);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  }
  for (auto& context : contexts) context->TryCancel();
  for (auto& reader : held) {
    while (reader->Read(&response)) {
    }
    (void)reader->Finish();
  }
  absl::StatusOr<testing::BlockAccounting> idle = cluster_->WaitForIdlePool(absl::Seconds(15));
  EXPECT_TRUE(idle.ok()) << idle.status();
}

}  // namespace
}  // namespace asymcache
