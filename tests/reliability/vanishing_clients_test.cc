// Clients that disappear (issue #9, "Faults"; docs/reliability.md): a real
// coordinator, cache daemon and worker on 127.0.0.1. Each case starts a
// generation far longer than the test (100,000 new tokens), checks that it
// holds blocks (a live lease in the daemon's GetStats), makes its client go
// away, and then requires the daemon back at the idle baseline — every block
// free or sealed-evictable, no lease, nothing writing or pinned — and the
// worker running and queueing nothing, within a bound. Had the request gone
// on it would have held its lease for minutes, so the bound is what fails.
//
//   - the client cancels mid-stream (TryCancel);
//   - the client's deadline passes mid-generation;
//   - the client process is SIGKILLed mid-stream (reliability_generate_client
//     as a child: no cancel is sent, the connection just drops);
// each against the worker directly and through the coordinator's Generate
// proxy, which must pass the cancellation on. And two daemon clients that
// vanish mid-lease:
//   - a PlanStep whose caller never commits or releases: the daemon's lease
//     timeout releases it;
//   - the worker itself SIGKILLed mid-generation: its leases expire the same
//     way.
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "tests/reliability/service_cluster.h"

namespace asymcache {
namespace {

using testing::BlockAccounting;
using testing::ClientProcess;
using testing::ServiceCluster;
using testing::ServiceClusterOptions;

constexpr uint32_t kVocab = 1024;  // the tiny shape's
constexpr int kPromptTokens = 64;
// Far more than the test waits for: a request not stopped would still run
// (tens of seconds on this VM) when the release bound below has passed.
constexpr int kEndlessNewTokens = 100000;
// The daemon's pool: 4096 blocks of 32 KiB hold 65,536 tokens, so the
// endless request does not outgrow the pool within the test either.
constexpr char kPoolBytes[] = "128MiB";
// The daemon's lease timeout in these tests (a lease no one renews or
// releases is released this long after its last renewal). 3 s leaves the
// worker's renewals (every third of it) ample slack on a loaded 2-core VM.
constexpr absl::Duration kLeaseTimeout = absl::Seconds(3);
// Bound on the return to the idle baseline after a client vanishes: a
// cancelled request ends at the worker's next step; a dead daemon client's
// lease at the lease timeout plus a maintenance tick.
constexpr absl::Duration kReleaseBound = absl::Seconds(15);
constexpr absl::Duration kProcessBound = absl::Seconds(30);

v1::GenerateRequest EndlessRequest(uint64_t seed) {
  v1::GenerateRequest request;
  std::mt19937_64 rng(seed);
  for (int i = 0; i < kPromptTokens; ++i) {
    request.add_prompt_tokens(static_cast<int32_t>(rng() % kVocab));
  }
  request.set_max_new_tokens(kEndlessNewTokens);
  request.set_salt("tenant-vanishing");
  return request;
}

class VanishingClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/asymcache_vanish_XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr) << std::strerror(errno);
    log_dir_ = dir;
    ServiceClusterOptions options;
    options.log_dir = log_dir_;
    options.coordinator = true;
    options.pool_bytes = kPoolBytes;
    options.daemon_flags = {
        absl::StrCat("--lease-timeout=", absl::ToInt64Milliseconds(kLeaseTimeout), "ms")};
    absl::StatusOr<std::unique_ptr<ServiceCluster>> cluster = ServiceCluster::Start(options);
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = *std::move(cluster);
    absl::StatusOr<BlockAccounting> baseline = cluster_->Accounting();
    ASSERT_TRUE(baseline.ok()) << baseline.status();
    ASSERT_TRUE(baseline->Idle()) << baseline->DebugString();
  }
  void TearDown() override {
    if (HasFailure() && cluster_ != nullptr) std::fprintf(stderr, "%s", cluster_->Logs().c_str());
    cluster_.reset();
    ::rmdir(log_dir_.c_str());
  }

  // The request holds at least one lease in the daemon right now.
  void ExpectHoldsLease() {
    absl::StatusOr<BlockAccounting> held = cluster_->Accounting();
    ASSERT_TRUE(held.ok()) << held.status();
    EXPECT_GE(held->active_leases, 1) << held->DebugString();
    EXPECT_FALSE(held->Idle()) << held->DebugString();
  }

  // Back at the idle baseline within kReleaseBound.
  void ExpectReleased(bool include_worker = true) {
    absl::StatusOr<BlockAccounting> after =
        cluster_->WaitForIdlePool(kReleaseBound, include_worker);
    ASSERT_TRUE(after.ok()) << after.status();
    EXPECT_EQ(after->capacity - after->free - after->sealed_evictable, 0) << after->DebugString();
  }

  std::string log_dir_;
  std::unique_ptr<ServiceCluster> cluster_;
};

// Which server the client talks to.
enum class Target { kWorker, kCoordinatorProxy };
std::string TargetName(Target target) {
  return target == Target::kWorker ? "Worker" : "CoordinatorProxy";
}
void PrintTo(Target target, std::ostream* os) { *os << TargetName(target); }

class VanishingGenerateClientTest : public VanishingClientTest,
                                    public ::testing::WithParamInterface<Target> {
 protected:
  v1::Worker::Stub& stub() {
    return GetParam() == Target::kWorker ? cluster_->worker() : cluster_->coordinator_proxy();
  }
  std::string address() {
    return GetParam() == Target::kWorker ? cluster_->worker_process().address()
                                         : cluster_->coordinator_process().address();
  }
};

TEST_P(VanishingGenerateClientTest, CancelMidStreamReleasesEveryBlock) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(2));
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub().Generate(&context, EndlessRequest(1));
  v1::GenerateResponse response;
  int tokens = 0;
  while (tokens < 4 && reader->Read(&response)) tokens += response.tokens_size();
  ASSERT_GE(tokens, 4) << "the stream ended early: " << reader->Finish().error_message();
  ASSERT_NO_FATAL_FAILURE(ExpectHoldsLease());

  context.TryCancel();
  while (reader->Read(&response)) {
  }
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED) << status.error_message();
  ExpectReleased();
}

TEST_P(VanishingGenerateClientTest, DeadlinePassingMidGenerationReleasesEveryBlock) {
  grpc::ClientContext context;
  // Long enough for the first tokens even on a loaded VM, far shorter than
  // the generation.
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub().Generate(&context, EndlessRequest(2));
  v1::GenerateResponse response;
  int tokens = 0;
  bool checked = false;
  while (reader->Read(&response)) {
    tokens += response.tokens_size();
    if (!checked && tokens >= 2) {
      ASSERT_NO_FATAL_FAILURE(ExpectHoldsLease());
      checked = true;
    }
  }
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << status.error_message();
  EXPECT_TRUE(checked) << "the deadline passed before the generation was under way (" << tokens
                       << " tokens)";
  EXPECT_LT(tokens, kEndlessNewTokens);
  ExpectReleased();
}

TEST_P(VanishingGenerateClientTest, SigkilledClientProcessReleasesEveryBlock) {
  const std::string binary = testing::GenerateClientBinary();
  ASSERT_FALSE(binary.empty()) << "no reliability_generate_client binary";
  absl::StatusOr<std::unique_ptr<ClientProcess>> client = ClientProcess::Spawn(
      binary, {absl::StrCat("--target=", address()),
               absl::StrCat("--prompt-tokens=", kPromptTokens),
               absl::StrCat("--max-new-tokens=", kEndlessNewTokens), "--seed=3"});
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<std::string> line = (*client)->ReadLine(kProcessBound);
  ASSERT_TRUE(line.ok()) << line.status();
  ASSERT_EQ(*line, "STREAMING");
  ASSERT_NO_FATAL_FAILURE(ExpectHoldsLease());

  (*client)->Kill();  // no cancel, no goodbye: the connection drops
  ExpectReleased();
}

INSTANTIATE_TEST_SUITE_P(Targets, VanishingGenerateClientTest,
                         ::testing::Values(Target::kWorker, Target::kCoordinatorProxy),
                         [](const ::testing::TestParamInfo<Target>& info) {
                           return TargetName(info.param);
                         });

TEST_F(VanishingClientTest, DaemonClientGoneMidLeaseIsReleasedByTheLeaseTimeout) {
  v1::PlanStepRequest plan;
  plan.set_salt("tenant-vanishing");
  plan.set_sequence_id(42);
  std::mt19937_64 rng(4);
  for (int i = 0; i < kPromptTokens; ++i) plan.add_tokens(static_cast<int32_t>(rng() % kVocab));
  v1::PlanStepResponse planned;
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    const grpc::Status status = cluster_->daemon().PlanStep(&context, plan, &planned);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  EXPECT_EQ(planned.lease_timeout_ms(), absl::ToInt64Milliseconds(kLeaseTimeout));
  absl::StatusOr<BlockAccounting> held = cluster_->Accounting();
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_EQ(held->active_leases, 1) << held->DebugString();
  EXPECT_EQ(held->writing, kPromptTokens / 16) << held->DebugString();

  // The client is gone: no CommitStep, no ReleaseStep, no RenewLease.
  ExpectReleased();
  // The lease is gone for good: a late release finds nothing.
  v1::ReleaseStepRequest release;
  release.set_lease_id(planned.lease_id());
  v1::ReleaseStepResponse released;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  const grpc::Status status = cluster_->daemon().ReleaseStep(&context, release, &released);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();
}

TEST_F(VanishingClientTest, WorkerKilledMidGenerationItsLeasesExpire) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(2));
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      cluster_->worker().Generate(&context, EndlessRequest(5));
  v1::GenerateResponse response;
  int tokens = 0;
  while (tokens < 4 && reader->Read(&response)) tokens += response.tokens_size();
  ASSERT_GE(tokens, 4) << "the stream ended early: " << reader->Finish().error_message();
  ASSERT_NO_FATAL_FAILURE(ExpectHoldsLease());

  cluster_->worker_process().Kill();  // the daemon's client dies holding leases
  while (reader->Read(&response)) {
  }
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  ExpectReleased(/*include_worker=*/false);
}

}  // namespace
}  // namespace asymcache
