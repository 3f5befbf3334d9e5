// Backpressure in the coordinator's Generate proxy (generate_proxy.h,
// --proxy-max-buffered-bytes): a real coordinator, cache daemon and worker on
// 127.0.0.1, the coordinator's bound set small (256 KiB), generations with
// return_logits (4 KiB of logits a token on the tiny shape's vocabulary).
//   - a client that reads one message and stops: the worker generates the
//     whole answer (and holds it: that is the worker's side), while the
//     coordinator's resident memory grows by far less than the stream (it
//     stopped reading the worker at the bound); meanwhile another client's
//     whole Generate through the same coordinator and the same worker
//     channel completes; then the stalled client reads on and receives every
//     token, in order, as the worker called directly gives them, and a
//     normal end;
//   - a client stalled past the bound that then cancels: the paused call
//     still ends (the worker's request is released, the coordinator counts
//     the Generate as CANCELLED), and the pause is counted in
//     asymcache_coordinator_proxy_backpressure_pauses_total.
// And the worker's own bound (worker_service.h, --max-stream-buffered-bytes)
// for a client of the worker that stops reading: the request is cancelled
// (its blocks released) once the bound is passed, the worker's memory stays
// far below the stream's size, and the client, reading on, gets
// RESOURCE_EXHAUSTED naming the flag.
// Every client is on its own connection (an unread stream of a shared
// client connection is not what is tested here).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "gtest/gtest.h"
#include "tests/reliability/service_cluster.h"
#include "tests/services/http_get.h"

namespace asymcache {
namespace {

using testing::BlockAccounting;
using testing::ResidentBytes;
using testing::ServiceCluster;
using testing::ServiceClusterOptions;

constexpr uint32_t kVocab = 1024;  // the tiny shape's
constexpr int kPromptTokens = 32;
// The stalled generation: 7000 tokens of 4 KiB logits, ~27 MiB of messages,
// over 100 times the coordinator's bound. (Measured on a 2-core VM: the
// coordinator grows by 5-7 MiB with it stalled, for 4000 tokens as for
// 7000 — gRPC's windows and buffers, not the stream; without the bound it
// grew by the stream's size.)
constexpr int kStalledTokens = 7000;
constexpr int64_t kBoundBytes = 256 << 10;
// 512 blocks of the tiny shape hold 8192 tokens: the stalled request (7032
// tokens with its prompt) never outgrows the pool.
constexpr char kPoolBytes[] = "16MiB";
constexpr absl::Duration kCallDeadline = absl::Seconds(120);
constexpr absl::Duration kWaitBound = absl::Seconds(60);

v1::GenerateRequest LogitsRequest(uint64_t seed, int max_new_tokens, const std::string& salt) {
  v1::GenerateRequest request;
  std::mt19937_64 rng(seed);
  for (int i = 0; i < kPromptTokens; ++i) {
    request.add_prompt_tokens(static_cast<int32_t>(rng() % kVocab));
  }
  request.set_max_new_tokens(max_new_tokens);
  request.set_return_logits(true);
  request.set_salt(salt);
  return request;
}

// What a stream carried.
struct Stream {
  std::vector<int32_t> tokens;
  int64_t logits = 0;
  int64_t bytes = 0;  // serialized sizes of its messages
  std::string finish_reason;
  grpc::Status status;
};

// Reads `reader` to its end into `out` (which may hold what was read before).
void ReadToEnd(grpc::ClientReader<v1::GenerateResponse>& reader, Stream* out) {
  v1::GenerateResponse message;
  while (reader.Read(&message)) {
    out->tokens.insert(out->tokens.end(), message.tokens().begin(), message.tokens().end());
    out->logits += message.logits_size();
    out->bytes += static_cast<int64_t>(message.ByteSizeLong());
    if (!message.finish_reason().empty()) out->finish_reason = message.finish_reason();
  }
  out->status = reader.Finish();
}

Stream GenerateAll(v1::Worker::Stub& stub, const v1::GenerateRequest& request) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + kCallDeadline));
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub.Generate(&context, request);
  Stream out;
  ReadToEnd(*reader, &out);
  return out;
}

// `condition` polled every 20 ms until true or `bound` passes.
bool WaitUntil(const std::function<bool()>& condition, absl::Duration bound = kWaitBound) {
  const absl::Time give_up = absl::Now() + bound;
  while (!condition()) {
    if (absl::Now() >= give_up) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return true;
}

// A daemon + worker (+ coordinator) cluster per test, set up by the
// subclass's Configure; clients on connections of their own.
class StalledClientTest : public ::testing::Test {
 protected:
  virtual void Configure(ServiceClusterOptions& options) = 0;

  void SetUp() override {
    char dir[] = "/tmp/asymcache_backpressure_XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr) << std::strerror(errno);
    log_dir_ = dir;
    ServiceClusterOptions options;
    options.log_dir = log_dir_;
    options.pool_bytes = kPoolBytes;
    Configure(options);
    absl::StatusOr<std::unique_ptr<ServiceCluster>> cluster = ServiceCluster::Start(options);
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = *std::move(cluster);
  }
  void TearDown() override {
    if (HasFailure() && cluster_ != nullptr) std::fprintf(stderr, "%s", cluster_->Logs().c_str());
    cluster_.reset();
    ::rmdir(log_dir_.c_str());
  }

  // A client on its own connection to `address` (the coordinator's proxy or
  // the worker).
  static std::unique_ptr<v1::Worker::Stub> OwnConnection(const std::string& address) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    return v1::Worker::NewStub(
        grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
  }

  std::string log_dir_;
  std::unique_ptr<ServiceCluster> cluster_;
};

class ProxyBackpressureTest : public StalledClientTest {
 protected:
  void Configure(ServiceClusterOptions& options) override {
    options.coordinator = true;
    // After the cluster's --metrics-port=-1: the last one given wins.
    options.coordinator_flags = {absl::StrCat("--proxy-max-buffered-bytes=", kBoundBytes),
                                 "--metrics-port=0", "--metrics-host=127.0.0.1"};
  }

  // A client on its own connection to the coordinator's proxy.
  std::unique_ptr<v1::Worker::Stub> OwnConnection() {
    return StalledClientTest::OwnConnection(cluster_->coordinator_process().address());
  }

  int64_t GeneratedTokens() {
    absl::StatusOr<v1::GetWorkerStatsResponse> stats = cluster_->WorkerStats();
    EXPECT_TRUE(stats.ok()) << stats.status();
    return stats.ok() ? stats->generated_tokens() : -1;
  }

  int64_t CoordinatorRss() {
    absl::StatusOr<int64_t> rss = ResidentBytes(cluster_->coordinator_process().pid());
    EXPECT_TRUE(rss.ok()) << rss.status();
    return rss.ok() ? *rss : 0;
  }

  // The whole /metrics response ("" when the port does not answer).
  std::string Metrics() {
    return testing::HttpGet(cluster_->coordinator_process().metrics_port(), "/metrics")
        .value_or("");
  }

};

TEST_F(ProxyBackpressureTest, StalledClientIsHeldAtTheBoundOthersFlowAndItResumesInOrder) {
  const v1::GenerateRequest request = LogitsRequest(1, kStalledTokens, "tenant-stall");
  // The answer, from the worker directly (the CPU backend is deterministic).
  const Stream direct = GenerateAll(cluster_->worker(), request);
  ASSERT_TRUE(direct.status.ok()) << direct.status.error_message();
  ASSERT_EQ(direct.tokens.size(), static_cast<size_t>(kStalledTokens));
  ASSERT_EQ(direct.logits, int64_t{kStalledTokens} * kVocab);
  ASSERT_GT(direct.bytes, 32 * kBoundBytes);

  // Warm-up through the proxy (its channel to the worker, gRPC's threads and
  // buffers, the allocator's arenas), so that what follows measures the
  // stalled stream.
  std::unique_ptr<v1::Worker::Stub> warm = OwnConnection();
  const Stream warmed = GenerateAll(*warm, LogitsRequest(2, 600, "tenant-warm"));
  ASSERT_TRUE(warmed.status.ok()) << warmed.status.error_message();
  ASSERT_EQ(warmed.tokens.size(), 600u);

  const int64_t rss_before = CoordinatorRss();
  const int64_t generated_before = GeneratedTokens();

  // The stalled client: one message, then nothing read.
  std::unique_ptr<v1::Worker::Stub> stalled_stub = OwnConnection();
  grpc::ClientContext stalled_context;
  stalled_context.set_deadline(absl::ToChronoTime(absl::Now() + kCallDeadline));
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> stalled =
      stalled_stub->Generate(&stalled_context, request);
  Stream seen;
  {
    v1::GenerateResponse first;
    ASSERT_TRUE(stalled->Read(&first));
    ASSERT_GE(first.tokens_size(), 1);
    seen.tokens.assign(first.tokens().begin(), first.tokens().end());
    seen.logits = first.logits_size();
  }

  // The worker generates it all (and keeps what the coordinator does not
  // read: that is the worker's stream queue).
  int64_t generated = 0;
  ASSERT_TRUE(WaitUntil(
      [&] { return (generated = GeneratedTokens()) >= generated_before + kStalledTokens; }))
      << "the worker generated " << generated - generated_before << " of " << kStalledTokens;

  const int64_t rss_paused = CoordinatorRss();

  // Another client meanwhile: its whole generation, through the same
  // coordinator and the same coordinator-to-worker channel.
  std::unique_ptr<v1::Worker::Stub> other_stub = OwnConnection();
  const v1::GenerateRequest other_request = LogitsRequest(3, 300, "tenant-other");
  const Stream other = GenerateAll(*other_stub, other_request);
  ASSERT_TRUE(other.status.ok()) << other.status.error_message();
  EXPECT_EQ(other.tokens.size(), 300u);
  EXPECT_EQ(other.finish_reason, "length");
  const Stream other_direct = GenerateAll(cluster_->worker(), other_request);
  ASSERT_TRUE(other_direct.status.ok()) << other_direct.status.error_message();
  EXPECT_EQ(other.tokens, other_direct.tokens);

  // The coordinator held back: far less than the stream (27 MiB) is in it.
  // Its share: the bound (256 KiB) plus a message, gRPC's receive window of
  // the paused worker stream and its send window to the stalled client.
  const int64_t rss_stalled = CoordinatorRss();
  std::printf("coordinator RSS %.1f MiB -> %.1f MiB paused -> %.1f MiB after another client, "
              "with a stalled stream of %.1f MiB\n",
              rss_before / 1048576.0, rss_paused / 1048576.0, rss_stalled / 1048576.0,
              direct.bytes / 1048576.0);
  EXPECT_LT(rss_stalled - rss_before, direct.bytes / 3)
      << "the coordinator buffered the stalled stream";
  const std::string metrics = Metrics();
  EXPECT_TRUE(absl::StrContains(metrics, "asymcache_coordinator_proxy_backpressure_pauses_total"))
      << metrics;
  EXPECT_FALSE(absl::StrContains(metrics,
                                 "asymcache_coordinator_proxy_backpressure_pauses_total 0\n"))
      << "no pause counted";

  // The stalled client reads on: every token, in order, and a normal end.
  ReadToEnd(*stalled, &seen);
  ASSERT_TRUE(seen.status.ok()) << seen.status.error_message();
  EXPECT_EQ(seen.finish_reason, "length");
  EXPECT_EQ(seen.tokens, direct.tokens);
  EXPECT_EQ(seen.logits, direct.logits);

  absl::StatusOr<BlockAccounting> idle = cluster_->WaitForIdlePool(absl::Seconds(15));
  EXPECT_TRUE(idle.ok()) << idle.status();
}

TEST_F(ProxyBackpressureTest, PausedCallStillEndsOnTheClientsCancel) {
  const int64_t generated_before = GeneratedTokens();
  std::unique_ptr<v1::Worker::Stub> stub = OwnConnection();
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + kCallDeadline));
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub->Generate(&context, LogitsRequest(4, kStalledTokens, "tenant-cancel"));
  v1::GenerateResponse message;
  ASSERT_TRUE(reader->Read(&message));
  // Well past the bound: the coordinator has paused the call.
  ASSERT_TRUE(WaitUntil([&] {
    return GeneratedTokens() >= generated_before + 1000 &&
           !absl::StrContains(Metrics(),
                              "asymcache_coordinator_proxy_backpressure_pauses_total 0\n");
  })) << Metrics();
  context.TryCancel();
  while (reader->Read(&message)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);

  // The worker's request is released, and the coordinator's call ended (it
  // finished its Generate: the paused leg did not hold it open).
  absl::StatusOr<BlockAccounting> idle = cluster_->WaitForIdlePool(absl::Seconds(15));
  EXPECT_TRUE(idle.ok()) << idle.status();
  std::string metrics;
  EXPECT_TRUE(WaitUntil(
      [&] {
        metrics = Metrics();
        return absl::StrContains(
            metrics,
            "asymcache_coordinator_rpc_duration_seconds_count{code=\"CANCELLED\",method="
            "\"Generate\"} 1");
      },
      absl::Seconds(15)))
      << metrics;

  // The coordinator still serves a whole generation afterwards.
  const Stream after = GenerateAll(*OwnConnection(), LogitsRequest(5, 50, "tenant-cancel"));
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_EQ(after.tokens.size(), 50u);
}

class WorkerStreamBoundTest : public StalledClientTest {
 protected:
  void Configure(ServiceClusterOptions& options) override {
    options.worker_flags = {"--max-stream-buffered-bytes=1MiB"};
  }

  // A client on its own connection to the worker.
  std::unique_ptr<v1::Worker::Stub> OwnConnection() {
    return StalledClientTest::OwnConnection(cluster_->worker_process().address());
  }

  absl::StatusOr<v1::GetWorkerStatsResponse> Stats() { return cluster_->WorkerStats(); }

  int64_t WorkerRss() {
    absl::StatusOr<int64_t> rss = ResidentBytes(cluster_->worker_process().pid());
    EXPECT_TRUE(rss.ok()) << rss.status();
    return rss.ok() ? *rss : 0;
  }
};

TEST_F(WorkerStreamBoundTest, RequestOfAClientThatStopsReadingIsCancelledAtTheBound) {
  // Warm-up (connections, gRPC's threads, the allocator's arenas), so that
  // what follows measures the stalled stream.
  const Stream warmed = GenerateAll(*OwnConnection(), LogitsRequest(2, 600, "tenant-warm"));
  ASSERT_TRUE(warmed.status.ok()) << warmed.status.error_message();
  ASSERT_EQ(warmed.tokens.size(), 600u);
  absl::StatusOr<v1::GetWorkerStatsResponse> before = Stats();
  ASSERT_TRUE(before.ok()) << before.status();
  const int64_t rss_before = WorkerRss();

  // 7000 tokens of 4 KiB logits (~27 MiB), read one message, then nothing.
  std::unique_ptr<v1::Worker::Stub> stub = OwnConnection();
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + kCallDeadline));
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub->Generate(&context, LogitsRequest(1, kStalledTokens, "tenant-stall"));
  Stream seen;
  {
    v1::GenerateResponse first;
    ASSERT_TRUE(reader->Read(&first));
    seen.tokens.assign(first.tokens().begin(), first.tokens().end());
  }

  // The worker cancels the request once 1 MiB waits for the client: it
  // finishes (one more finished request), releases its blocks, and stops
  // generating long before the 7000 tokens.
  ASSERT_TRUE(WaitUntil([&] {
    absl::StatusOr<v1::GetWorkerStatsResponse> now = Stats();
    return now.ok() && now->running() + now->waiting() == 0 &&
           now->generated_tokens() > before->generated_tokens();
  })) << "the request still runs";
  absl::StatusOr<BlockAccounting> idle = cluster_->WaitForIdlePool(absl::Seconds(15));
  EXPECT_TRUE(idle.ok()) << idle.status();
  absl::StatusOr<v1::GetWorkerStatsResponse> after = Stats();
  ASSERT_TRUE(after.ok()) << after.status();
  const int64_t generated = after->generated_tokens() - before->generated_tokens();
  const int64_t rss_stalled = WorkerRss();
  std::printf("worker generated %lld of %d tokens for the stalled client; RSS %.1f -> %.1f MiB\n",
              static_cast<long long>(generated), kStalledTokens, rss_before / 1048576.0,
              rss_stalled / 1048576.0);
  EXPECT_LT(generated, kStalledTokens) << "the request ran to its end";
  // The whole stream would be ~27 MiB; the worker keeps the bound (1 MiB)
  // plus gRPC's send window to the client.
  EXPECT_LT(rss_stalled - rss_before, int64_t{kStalledTokens} * kVocab * 4 / 3)
      << "the worker buffered the stalled stream";

  // Reading on, the client gets what the windows held, then the error.
  ReadToEnd(*reader, &seen);
  EXPECT_EQ(seen.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << seen.status.error_message();
  EXPECT_TRUE(absl::StrContains(seen.status.error_message(), "--max-stream-buffered-bytes"))
      << seen.status.error_message();
  EXPECT_LT(seen.tokens.size(), static_cast<size_t>(kStalledTokens));

  // The worker serves a whole generation afterwards.
  const Stream next = GenerateAll(*OwnConnection(), LogitsRequest(5, 50, "tenant-next"));
  ASSERT_TRUE(next.status.ok()) << next.status.error_message();
  EXPECT_EQ(next.tokens.size(), 50u);
}

}  // namespace
}  // namespace asymcache
