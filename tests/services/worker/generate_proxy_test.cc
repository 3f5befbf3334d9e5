// Generate through the coordinator (services/coordinator/generate_proxy.h),
// end to end on 127.0.0.1: a real asymcache-coordinator process, two cache
// daemons and two workers started in-process (tiny model, CPU backend,
// random weights of one seed), every member registered with the coordinator
// the way a deployment registers them. The frontend is a plain
// asymcache.v1.Worker stub pointed at the coordinator.
//   - roles both: the tokens equal those of the worker called directly, with
//     token times counted from the coordinator's arrival, a stop token ends
//     the stream with "stop";
//   - a prefill worker and a decode worker: the request is split (the decode
//     worker imports the prompt's blocks from the prefill daemon) and the
//     tokens equal an unsplit run; max_new_tokens 1 or a stop token as the
//     first token never reach the decode worker;
//   - bad requests: the worker's INVALID_ARGUMENT passes through, prefixed
//     with the worker; the coordinator's own checks answer INVALID_ARGUMENT;
//   - no worker on the routed daemon, or no daemon at all: UNAVAILABLE;
//   - a client cancel or deadline ends the worker's request (its blocks are
//     released), also in the decode leg of a split request.
// The coordinator runs as a process because this test binary links the
// worker, not the coordinator library; the test skips, saying why, when the
// binary is not built (test_binaries.h).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "asymcache/v1/coordinator.grpc.pb.h"
#include "asymcache/v1/worker.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "services/daemon/cache_daemon.h"
#include "services/worker/worker.h"
#include "tests/services/child_process.h"
#include "tests/services/client/test_daemon.h"
#include "tests/services/test_binaries.h"
#include "tests/services/worker/generate_stream.h"

namespace asymcache {
namespace {

using ::asymcache::testing::ConnectClient;
using ::asymcache::testing::FileContents;
using ::asymcache::testing::Generate;
using ::asymcache::testing::Generated;
using ::asymcache::testing::SmallDaemonOptions;
using ::asymcache::testing::WaitUntil;
using worker::WorkerRole;

constexpr int kVocab = 1024;        // the tiny shape's
constexpr int kBlockTokens = 16;    // the tiny shape's
constexpr uint64_t kWeightSeed = 7;  // every worker: the same weights
// A long request: far more tokens than a cancelled one can have made, yet
// small enough that its context fits the daemons' pools (kPoolBlocks), so its
// lease is never released early by a preemption; only its end releases it.
constexpr int kLongGeneration = 6000;
constexpr int64_t kPoolBlocks = 512;  // 8192 tokens


v1::GenerateRequest Request(const std::vector<int32_t>& prompt, int max_new_tokens,
                            const std::string& salt) {
  v1::GenerateRequest request;
  request.mutable_prompt_tokens()->Add(prompt.begin(), prompt.end());
  request.set_max_new_tokens(max_new_tokens);
  request.set_salt(salt);
  return request;
}

// A cache daemon and (optionally) a worker on it, both registered.
struct Node {
  std::string daemon_id;
  std::string worker_id;
  std::unique_ptr<CacheDaemon> daemon;
  std::unique_ptr<Client> client;  // the daemon's stats
  std::unique_ptr<worker::Worker> worker;
  std::unique_ptr<v1::Worker::Stub> worker_stub;  // the worker called directly

  std::string daemon_address() const { return daemon->local_address(); }
  DaemonStats DaemonStatsNow() const {
    absl::StatusOr<DaemonStats> stats = client->GetStats();
    EXPECT_TRUE(stats.ok()) << stats.status();
    return stats.ok() ? *stats : DaemonStats{};
  }
  v1::GetWorkerStatsResponse WorkerStats() const {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::GetWorkerStatsResponse response;
    const grpc::Status status = worker_stub->GetWorkerStats(&context, {}, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }
  // The worker's requests have ended: it holds no lease at its daemon (a
  // running request always holds one; the worker's running/waiting counters
  // are refreshed only by the engine's steps, so they stay stale once the
  // step loop goes idle after a cancel).
  bool Released() const { return DaemonStatsNow().active_leases == 0; }
  // The worker's generated_tokens once it reaches `expected` (the engine
  // counts a step's tokens just after streaming them, so a finished stream
  // may be ahead of the counter); the last value read when it never does.
  int64_t GeneratedTokens(int64_t expected) const {
    int64_t seen = -1;
    WaitUntil([&] { return (seen = WorkerStats().generated_tokens()) == expected; });
    return seen;
  }
};

class GenerateProxyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string binary = testing::CoordinatorBinary();
    if (binary.empty()) GTEST_SKIP() << "no asymcache-coordinator binary (test_binaries.h)";
    const uint64_t seed = std::random_device{}();
    SCOPED_TRACE(absl::StrCat("seed ", seed));
    rng_.seed(seed);
    char dir[] = "/tmp/asymcache_generate_proxy_XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr) << std::strerror(errno);
    log_dir_ = dir;
    testing::ChildProcessOptions options;
    options.name = "coordinator";
    options.binary = binary;
    options.flags = {"--plaintext", "--listen=127.0.0.1:0", "--metrics-port=-1",
                     "--heartbeat-interval=200ms",
                     "--member-timeout=3s", "--shutdown-grace=1s"};
    options.stderr_path = absl::StrCat(log_dir_, "/coordinator.log");
    absl::StatusOr<std::unique_ptr<testing::ChildProcess>> coordinator =
        testing::ChildProcess::Start(options);
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = *std::move(coordinator);
    auto channel =
        grpc::CreateChannel(coordinator_->address(), grpc::InsecureChannelCredentials());
    coordinator_stub_ = v1::Coordinator::NewStub(channel);
    proxy_ = v1::Worker::NewStub(channel);
  }

  void TearDown() override {
    // Workers before their daemons, members before the coordinator.
    for (Node& node : nodes_) node.worker.reset();
    nodes_.clear();
    if (coordinator_ != nullptr) {
      const std::string log = coordinator_->stderr_path();
      coordinator_.reset();
      if (HasFailure()) {
        std::fprintf(stderr, "---- coordinator ----\n%s\n", FileContents(log).c_str());
      }
      ::unlink(log.c_str());
    }
    if (!log_dir_.empty()) ::rmdir(log_dir_.c_str());
  }

  // Starts daemon-NAME and, with a role, worker-NAME on it; both register.
  void StartNode(const std::string& name, std::optional<WorkerRole> role) {
    Node& node = nodes_.emplace_back();
    node.daemon_id = absl::StrCat("daemon-", name);
    DaemonOptions daemon_options = SmallDaemonOptions(kPoolBlocks);
    daemon_options.coordinators = {coordinator_->address()};
    daemon_options.member_id = node.daemon_id;
    daemon_options.coordinator_retry_max = absl::Milliseconds(200);
    absl::StatusOr<std::unique_ptr<CacheDaemon>> daemon = CacheDaemon::Start(daemon_options);
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    node.daemon = *std::move(daemon);
    node.client = ConnectClient(node.daemon_address());
    ASSERT_NE(node.client, nullptr);
    if (!role.has_value()) return;
    node.worker_id = absl::StrCat("worker-", name);
    worker::WorkerOptions options;
    options.listen = "127.0.0.1:0";
    options.metrics_port = -1;
    options.daemon = node.daemon_address();
    options.daemon_connect_timeout = absl::Seconds(10);
    options.model = "tiny";
    options.seed = kWeightSeed;
    options.cpu_threads = 1;
    options.engine.role = *role;
    options.coordinators = {coordinator_->address()};
    options.member_id = node.worker_id;
    options.daemon_member_id = node.daemon_id;
    options.coordinator_retry_max = absl::Milliseconds(200);
    options.shutdown_grace = absl::Seconds(1);
    absl::StatusOr<std::unique_ptr<worker::Worker>> started = worker::Worker::Start(options);
    ASSERT_TRUE(started.ok()) << started.status();
    node.worker = *std::move(started);
    node.worker_stub = v1::Worker::NewStub(grpc::CreateChannel(
        node.worker->local_address(), grpc::InsecureChannelCredentials()));
  }

  // Waits until the coordinator lists every node's daemon with its event
  // stream up and every worker (routing needs both).
  void WaitForCluster() {
    std::string last;
    const bool ready = WaitUntil(
        [&] {
          grpc::ClientContext context;
          context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
          v1::ListMembersResponse list;
          if (!coordinator_stub_->ListMembers(&context, {}, &list).ok()) return false;
          last = list.DebugString();
          for (const Node& node : nodes_) {
            bool daemon_up = false;
            bool worker_up = node.worker_id.empty();
            for (const v1::MemberInfo& m : list.members()) {
              if (m.member_id() == node.daemon_id && m.events_connected()) daemon_up = true;
              if (m.member_id() == node.worker_id) worker_up = true;
            }
            if (!daemon_up || !worker_up) return false;
          }
          return true;
        },
        absl::Seconds(15));
    ASSERT_TRUE(ready) << "the cluster never assembled; last listing:\n" << last;
  }

  std::vector<int32_t> RandomPrompt(int n) {
    std::vector<int32_t> out(n);
    for (int32_t& t : out) t = static_cast<int32_t>(rng_() % kVocab);
    return out;
  }

  // Waits until every node's requests have ended (bounded; the bound only
  // caps a failure).
  void ExpectAllReleased() {
    for (const Node& node : nodes_) {
      EXPECT_TRUE(WaitUntil([&] { return node.Released(); }))
          << node.daemon_id << " still holds leases";
    }
  }

  std::mt19937_64 rng_;
  std::string log_dir_;
  std::unique_ptr<testing::ChildProcess> coordinator_;
  std::unique_ptr<v1::Coordinator::Stub> coordinator_stub_;
  std::unique_ptr<v1::Worker::Stub> proxy_;  // the Worker service at the coordinator
  std::vector<Node> nodes_;
};

TEST_F(GenerateProxyTest, BothRolesGiveTheTokensOfTheWorkerCalledDirectly) {
  ASSERT_NO_FATAL_FAILURE(StartNode("a", WorkerRole::kBoth));
  ASSERT_NO_FATAL_FAILURE(StartNode("b", WorkerRole::kBoth));
  ASSERT_NO_FATAL_FAILURE(WaitForCluster());

  for (const int n : {45, 100}) {
    v1::GenerateRequest request = Request(RandomPrompt(n), 10, "tenant");
    if (n == 100) {  // seeded sampling: the same draws wherever it runs
      request.mutable_sampling()->set_temperature(0.8f);
      request.mutable_sampling()->set_top_p(0.9f);
      request.mutable_sampling()->set_seed(1234);
    }
    const Generated direct = Generate(*nodes_[0].worker_stub, request);
    ASSERT_TRUE(direct.status.ok()) << direct.status.error_message();
    const Generated proxied = Generate(*proxy_, request);
    ASSERT_TRUE(proxied.status.ok()) << proxied.status.error_message();
    EXPECT_EQ(proxied.tokens, direct.tokens) << "prompt of " << n;
    EXPECT_EQ(proxied.tokens.size(), 10u);
    EXPECT_EQ(proxied.finish_reason, "length");
    EXPECT_GE(proxied.messages, 2);  // tokens, then the finish message
    EXPECT_EQ(proxied.stats.prompt_tokens(), n);
    // Token times count from the coordinator's arrival and never exceed the
    // TTFT the coordinator measured when the first token reached it.
    ASSERT_EQ(proxied.times_us.size(), proxied.tokens.size());
    EXPECT_TRUE(std::is_sorted(proxied.times_us.begin(), proxied.times_us.end()));
    EXPECT_GT(proxied.stats.ttft_seconds(), 0);
    EXPECT_LE(proxied.times_us[0], proxied.stats.ttft_seconds() * 1e6 + 1);
    EXPECT_GE(proxied.stats.queue_seconds(), 0);
    EXPECT_EQ(proxied.stats.imported_blocks(), 0);  // not split
  }

  // A stop token ends the stream after it, with "stop".
  v1::GenerateRequest request = Request(RandomPrompt(30), 8, "tenant");
  const Generated direct = Generate(*nodes_[1].worker_stub, request);
  ASSERT_TRUE(direct.status.ok()) << direct.status.error_message();
  ASSERT_EQ(direct.tokens.size(), 8u);
  request.add_stop_tokens(direct.tokens[3]);
  const Generated stopped = Generate(*proxy_, request);
  ASSERT_TRUE(stopped.status.ok()) << stopped.status.error_message();
  const auto first_stop = std::find(direct.tokens.begin(), direct.tokens.end(), direct.tokens[3]);
  EXPECT_EQ(stopped.tokens, std::vector<int32_t>(direct.tokens.begin(), first_stop + 1));
  EXPECT_EQ(stopped.finish_reason, "stop");

  // The coordinator is no worker: stats are the workers'.
  grpc::ClientContext context;
  v1::GetWorkerStatsResponse stats;
  const grpc::Status status = proxy_->GetWorkerStats(&context, {}, &stats);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_TRUE(absl::StrContains(status.error_message(), "ask a worker")) << status.error_message();
  ExpectAllReleased();
}

TEST_F(GenerateProxyTest, SplitRolesRunPrefillThenDecodeWithTheSameTokens) {
  ASSERT_NO_FATAL_FAILURE(StartNode("prefill", WorkerRole::kPrefill));
  ASSERT_NO_FATAL_FAILURE(StartNode("decode", WorkerRole::kDecode));
  ASSERT_NO_FATAL_FAILURE(WaitForCluster());
  Node& prefill = nodes_[0];
  Node& decode = nodes_[1];
  int64_t prefill_generated = 0;  // what each worker has generated so far
  int64_t decode_generated = 0;

  for (const int n : {45, 64, 100}) {  // partial, block-aligned and partial last pages
    v1::GenerateRequest request = Request(RandomPrompt(n), 12, "tenant");
    if (n == 100) {
      request.mutable_sampling()->set_temperature(0.8f);
      request.mutable_sampling()->set_top_p(0.9f);
      request.mutable_sampling()->set_seed(99);
    }
    // The unsplit run: the whole request on the decode worker, under another
    // salt so that none of its blocks serve the split run.
    v1::GenerateRequest unsplit_request = request;
    unsplit_request.set_salt("reference");
    const Generated unsplit = Generate(*decode.worker_stub, unsplit_request);
    ASSERT_TRUE(unsplit.status.ok()) << unsplit.status.error_message();
    decode_generated += 12;
    const Generated split = Generate(*proxy_, request);
    ASSERT_TRUE(split.status.ok()) << split.status.error_message();
    EXPECT_EQ(split.tokens, unsplit.tokens) << "prompt of " << n;
    EXPECT_EQ(split.finish_reason, "length");
    ASSERT_EQ(split.times_us.size(), split.tokens.size());
    EXPECT_TRUE(std::is_sorted(split.times_us.begin(), split.times_us.end()));
    // The prefill worker made the first token, the decode worker the rest,
    // after importing every prompt block from the prefill daemon.
    prefill_generated += 1;
    decode_generated += 11;
    EXPECT_EQ(prefill.GeneratedTokens(prefill_generated), prefill_generated);
    EXPECT_EQ(decode.GeneratedTokens(decode_generated), decode_generated);
    EXPECT_EQ(split.stats.prompt_tokens(), n);
    EXPECT_EQ(split.stats.imported_blocks(), (n + kBlockTokens - 1) / kBlockTokens);
    // The prompt on the prefill side, the first token's position on the decode side.
    EXPECT_EQ(split.stats.computed_prompt_tokens(), n + 1);
    EXPECT_GT(split.stats.ttft_seconds(), 0);
  }

  // max_new_tokens 1, or a first token that is a stop token: the prefill
  // worker's answer is the whole answer.
  v1::GenerateRequest request = Request(RandomPrompt(40), 1, "tenant");
  const Generated one = Generate(*proxy_, request);
  ASSERT_TRUE(one.status.ok()) << one.status.error_message();
  ASSERT_EQ(one.tokens.size(), 1u);
  EXPECT_EQ(one.finish_reason, "length");
  request.set_max_new_tokens(6);
  request.add_stop_tokens(one.tokens[0]);
  const Generated stopped = Generate(*proxy_, request);
  ASSERT_TRUE(stopped.status.ok()) << stopped.status.error_message();
  EXPECT_EQ(stopped.tokens, one.tokens);
  EXPECT_EQ(stopped.finish_reason, "stop");
  EXPECT_EQ(stopped.stats.imported_blocks(), 0);  // no decode leg
  prefill_generated += 2;
  EXPECT_EQ(prefill.GeneratedTokens(prefill_generated), prefill_generated);
  EXPECT_EQ(decode.WorkerStats().generated_tokens(), decode_generated);

  // A request the workers refuse is refused by the prefill worker.
  v1::GenerateRequest bad = Request(RandomPrompt(20), 4, "tenant");
  bad.mutable_sampling()->set_top_p(1.5f);
  const Generated refused = Generate(*proxy_, bad);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(refused.status.error_message(), "worker 'worker-prefill'"))
      << refused.status.error_message();

  ExpectAllReleased();
  EXPECT_TRUE(WaitUntil([&] { return prefill.DaemonStatsNow().active_exports == 0; }));
  EXPECT_EQ(decode.DaemonStatsNow().in_transfer_blocks, 0);
}

TEST_F(GenerateProxyTest, BadRequestsAnswerInvalidArgument) {
  ASSERT_NO_FATAL_FAILURE(StartNode("a", WorkerRole::kBoth));
  ASSERT_NO_FATAL_FAILURE(WaitForCluster());

  // Refused by the worker: the code passes through, the message names it.
  v1::GenerateRequest bad_top_p = Request(RandomPrompt(20), 4, "tenant");
  bad_top_p.mutable_sampling()->set_top_p(1.5f);
  const Generated top_p = Generate(*proxy_, bad_top_p);
  EXPECT_EQ(top_p.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(top_p.status.error_message(), "worker 'worker-a'"))
      << top_p.status.error_message();
  EXPECT_TRUE(absl::StrContains(top_p.status.error_message(), "top_p"))
      << top_p.status.error_message();
  EXPECT_TRUE(top_p.tokens.empty());

  v1::GenerateRequest bad_stop = Request(RandomPrompt(20), 4, "tenant");
  bad_stop.add_stop_tokens(kVocab);
  const Generated stop = Generate(*proxy_, bad_stop);
  EXPECT_EQ(stop.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(stop.status.error_message(), "stop_tokens"))
      << stop.status.error_message();

  // Refused before routing.
  const Generated empty = Generate(*proxy_, Request({}, 4, "tenant"));
  EXPECT_EQ(empty.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(empty.status.error_message(), "prompt_tokens"))
      << empty.status.error_message();
  const Generated zero = Generate(*proxy_, Request(RandomPrompt(8), 0, "tenant"));
  EXPECT_EQ(zero.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(zero.status.error_message(), "max_new_tokens"))
      << zero.status.error_message();
  const Generated vocab = Generate(*proxy_, Request({1, 2, kVocab}, 4, "tenant"));
  EXPECT_EQ(vocab.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(vocab.status.error_message(), "vocabulary"))
      << vocab.status.error_message();

  // A good request still works after them.
  const Generated good = Generate(*proxy_, Request(RandomPrompt(20), 3, "tenant"));
  ASSERT_TRUE(good.status.ok()) << good.status.error_message();
  EXPECT_EQ(good.tokens.size(), 3u);
  ExpectAllReleased();
}

TEST_F(GenerateProxyTest, NoWorkerOrNoDaemonIsUnavailable) {
  // No daemon at all.
  const Generated nothing = Generate(*proxy_, Request(RandomPrompt(20), 4, "tenant"));
  EXPECT_EQ(nothing.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(absl::StrContains(nothing.status.error_message(), "no cache daemon"))
      << nothing.status.error_message();

  // A daemon without a worker: routed there, nobody to run it.
  ASSERT_NO_FATAL_FAILURE(StartNode("a", std::nullopt));
  ASSERT_NO_FATAL_FAILURE(WaitForCluster());
  const Generated no_worker = Generate(*proxy_, Request(RandomPrompt(20), 4, "tenant"));
  EXPECT_EQ(no_worker.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(absl::StrContains(no_worker.status.error_message(),
                                "no worker is registered on daemon 'daemon-a'"))
      << no_worker.status.error_message();
}

TEST_F(GenerateProxyTest, ClientCancelAndDeadlineEndTheWorkersRequest) {
  ASSERT_NO_FATAL_FAILURE(StartNode("a", WorkerRole::kBoth));
  ASSERT_NO_FATAL_FAILURE(WaitForCluster());
  Node& node = nodes_[0];

  // Cancel once the first token arrived.
  {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
        proxy_->Generate(&context, Request(RandomPrompt(30), kLongGeneration, "tenant"));
    v1::GenerateResponse first;
    ASSERT_TRUE(reader->Read(&first));
    EXPECT_EQ(first.tokens_size(), 1);
    // The worker is running it now.
    EXPECT_GE(node.DaemonStatsNow().active_leases, 1);
    context.TryCancel();
    v1::GenerateResponse rest;
    while (reader->Read(&rest)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  EXPECT_TRUE(WaitUntil([&] { return node.Released(); }))
      << "the cancel never reached the worker";
  EXPECT_LT(node.WorkerStats().generated_tokens(), kLongGeneration / 2);

  // A deadline ends it the same way.
  const int64_t before = node.WorkerStats().generated_tokens();
  const Generated late = Generate(*proxy_, Request(RandomPrompt(30), kLongGeneration, "tenant"),
                                  absl::Milliseconds(500));
  EXPECT_EQ(late.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << late.status.error_message();
  EXPECT_TRUE(WaitUntil([&] { return node.Released(); }))
      << "the deadline never reached the worker";
  EXPECT_LT(node.WorkerStats().generated_tokens() - before, kLongGeneration / 2);
}

TEST_F(GenerateProxyTest, ClientCancelDuringTheDecodeLegEndsTheDecodeRequest) {
  ASSERT_NO_FATAL_FAILURE(StartNode("prefill", WorkerRole::kPrefill));
  ASSERT_NO_FATAL_FAILURE(StartNode("decode", WorkerRole::kDecode));
  ASSERT_NO_FATAL_FAILURE(WaitForCluster());
  Node& decode = nodes_[1];
  {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
        proxy_->Generate(&context, Request(RandomPrompt(50), kLongGeneration, "tenant"));
    // The prefill worker's token, then the decode worker's first.
    v1::GenerateResponse message;
    ASSERT_TRUE(reader->Read(&message));
    ASSERT_TRUE(reader->Read(&message));
    EXPECT_GE(decode.DaemonStatsNow().active_leases, 1);
    context.TryCancel();
    while (reader->Read(&message)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  ExpectAllReleased();
  EXPECT_LT(decode.WorkerStats().generated_tokens(), kLongGeneration / 2);
}

}  // namespace
}  // namespace asymcache
