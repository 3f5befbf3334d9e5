// End-to-end: asymcache::Client against a real in-process CacheDaemon over
// gRPC on 127.0.0.1 — the step protocol (plan, commit, release, follow-up
// hits), eviction under pressure, RESOURCE_EXHAUSTED, lease expiry, ScopedLease
// and concurrent use of one client.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>
#include <vector>

#include "cachecore/block_hash.h"
#include "cachecore/step_plan.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/client/client.h"
#include "tests/services/client/test_daemon.h"

namespace asymcache::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(ClientOptionsTest, ValidateNamesTheField) {
  ClientOptions options;
  EXPECT_THAT(options.Validate().message(), HasSubstr("target"));
  EXPECT_EQ(Client::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.target = "127.0.0.1:1";
  EXPECT_OK(options.Validate());
  options.default_timeout = absl::ZeroDuration();
  EXPECT_THAT(options.Validate().message(), HasSubstr("default_timeout"));
  options.default_timeout = absl::Seconds(1);
  options.max_message_bytes = 0;
  EXPECT_THAT(options.Validate().message(), HasSubstr("max_message_bytes"));
}

// A port nothing listens on: bind an ephemeral port, then close it.
int ClosedPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  close(fd);
  return ntohs(addr.sin_port);
}

TEST(ClientConnectTest, NoDaemonIsUnavailable) {
  ClientOptions options;
  options.target = absl::StrCat("127.0.0.1:", ClosedPort());
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Client> client, Client::Create(options));
  const absl::StatusOr<DaemonStats> stats = client->GetStats(absl::Seconds(5));
  EXPECT_EQ(stats.status().code(), absl::StatusCode::kUnavailable) << stats.status();
  const absl::Status ready = client->WaitForReady(absl::Milliseconds(300));
  EXPECT_EQ(ready.code(), absl::StatusCode::kDeadlineExceeded) << ready;
  EXPECT_THAT(ready.message(), HasSubstr(options.target));
}

class ClientStepsTest : public DaemonFixture {};

TEST_F(ClientStepsTest, CommittedBlocksAreHitByTheFollowUpAndOnlyUnderTheSameSalt) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(SmallDaemonOptions(/*pool_blocks=*/16)));
  const int B = TinyBlockTokens();
  ASSERT_EQ(B, 16);
  const std::vector<TokenId> first = Tokens(2 * B + 8, /*seed=*/1);  // 2 full blocks + 8

  ASSERT_OK_AND_ASSIGN(LeasedStep step, client_->PlanStep("tenant-a", 7, first));
  EXPECT_NE(step.lease_id, 0u);
  EXPECT_EQ(step.lease_timeout, absl::Seconds(30));  // DaemonOptions default
  const StepPlan& plan = step.plan;
  EXPECT_OK(ValidateStepPlan(plan));  // hashes computed client side
  EXPECT_EQ(plan.sequence, 7u);
  EXPECT_EQ(plan.context_tokens, 2 * B + 8);
  EXPECT_EQ(plan.block_tokens, B);
  EXPECT_EQ(plan.hit_tokens, 0);
  EXPECT_EQ(plan.new_tokens, 2 * B + 8);
  EXPECT_EQ(step.contiguous_hit_tokens, 0);
  EXPECT_THAT(plan.page_lengths, ElementsAre(B, B, 8));
  EXPECT_THAT(plan.page_positions, ElementsAre(0, B, 2 * B));
  EXPECT_THAT(plan.page_resident, ElementsAre(0, 0, 0));
  EXPECT_EQ(plan.allocated.size(), 3u);
  EXPECT_EQ(plan.query_positions.size(), static_cast<size_t>(2 * B + 8));
  EXPECT_EQ(plan.hashes, ChainHashes("tenant-a", first, B));

  DaemonStats stats = Stats();
  EXPECT_EQ(stats.active_leases, 1);
  EXPECT_EQ(stats.writing_blocks, 3);

  ASSERT_OK_AND_ASSIGN(CommitResult commit, client_->CommitStep(step.lease_id));
  EXPECT_EQ(commit.sealed_blocks, 3);
  EXPECT_EQ(commit.duplicate_blocks, 0);
  ASSERT_OK_AND_ASSIGN(std::optional<JobPinDecision> pin, client_->ReleaseStep(step.lease_id));
  EXPECT_FALSE(pin.has_value());

  stats = Stats();
  EXPECT_EQ(stats.active_leases, 0);
  EXPECT_EQ(stats.indexed_blocks, 3);
  EXPECT_EQ(stats.sealed_blocks, 3);
  EXPECT_EQ(stats.pinned_blocks, 0);
  EXPECT_EQ(stats.free_blocks + stats.sealed_blocks, stats.capacity_blocks);

  // The daemon indexed exactly the chain hashes the client computes.
  ASSERT_OK_AND_ASSIGN(std::vector<std::optional<int64_t>> resident,
                       client_->Lookup(ChainHashes("tenant-a", first, B)));
  EXPECT_THAT(resident, ElementsAre(std::optional<int64_t>(0), std::optional<int64_t>(B),
                                    std::optional<int64_t>(2 * B)));
  ASSERT_OK_AND_ASSIGN(resident, client_->Lookup(ChainHashes("tenant-b", first, B)));
  EXPECT_THAT(resident, ElementsAre(std::nullopt, std::nullopt, std::nullopt));

  // Follow-up turn: the two full blocks hit; the old partial block does not
  // (the grown block has another hash).
  std::vector<TokenId> second = first;
  for (int i = 0; i < 16; ++i) second.push_back((500 + i) % kTinyVocab);  // 56 tokens
  ASSERT_OK_AND_ASSIGN(LeasedStep follow, client_->PlanStep("tenant-a", 7, second));
  EXPECT_OK(ValidateStepPlan(follow.plan));
  EXPECT_EQ(follow.plan.hit_tokens, 2 * B);
  EXPECT_EQ(follow.contiguous_hit_tokens, 2 * B);
  EXPECT_EQ(follow.plan.new_tokens, static_cast<int64_t>(second.size()) - 2 * B);
  EXPECT_THAT(follow.plan.page_resident, ElementsAre(1, 1, 0, 0));
  EXPECT_EQ(follow.plan.page_ids[0], plan.page_ids[0]);
  EXPECT_EQ(follow.plan.page_ids[1], plan.page_ids[1]);
  ASSERT_OK(client_->CommitStep(follow.lease_id));
  ASSERT_OK(client_->ReleaseStep(follow.lease_id));

  // Another salt shares nothing, even with the same tokens.
  ASSERT_OK_AND_ASSIGN(LeasedStep other, client_->PlanStep("tenant-b", 8, second));
  EXPECT_EQ(other.plan.hit_tokens, 0);
  EXPECT_EQ(other.plan.new_tokens, static_cast<int64_t>(second.size()));
  ASSERT_OK(client_->ReleaseStep(other.lease_id));  // never committed: blocks freed

  stats = Stats();
  EXPECT_EQ(stats.steps, 3);
  EXPECT_EQ(stats.hit_tokens, 2 * B);
  EXPECT_EQ(stats.active_leases, 0);
  EXPECT_EQ(stats.writing_blocks, 0);
  EXPECT_EQ(stats.free_blocks + stats.sealed_blocks, stats.capacity_blocks);
}

TEST_F(ClientStepsTest, ClientSuppliedHashesAreAcceptedAndFillThePlan) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(SmallDaemonOptions(16)));
  const std::vector<TokenId> tokens = Tokens(40, 3);
  PlanStepOptions options;
  options.block_hashes = ChainHashes("s", tokens, TinyBlockTokens());
  options.expected_model = ModelConfig::Named("tiny").value();
  ASSERT_OK_AND_ASSIGN(LeasedStep step, client_->PlanStep("s", 1, tokens, options));
  EXPECT_EQ(step.plan.hashes, options.block_hashes);
  EXPECT_OK(ValidateStepPlan(step.plan));
  ASSERT_OK(client_->ReleaseStep(step.lease_id));

  PlanStepOptions no_hashes;
  no_hashes.compute_plan_hashes = false;
  ASSERT_OK_AND_ASSIGN(LeasedStep bare, client_->PlanStep("s", 2, tokens, no_hashes));
  EXPECT_TRUE(bare.plan.hashes.empty());
  EXPECT_EQ(bare.plan.page_ids.size(), 3u);
  ASSERT_OK(client_->ReleaseStep(bare.lease_id));
}

TEST_F(ClientStepsTest, KeepPartialLastPageKeepsItPrivateAndFreesItAtRelease) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(SmallDaemonOptions(16)));
  const int B = TinyBlockTokens();
  ASSERT_OK_AND_ASSIGN(ScopedLease lease, client_->BeginStep("s", 1, Tokens(2 * B + 5, 7)));
  ASSERT_OK_AND_ASSIGN(CommitResult committed,
                       lease.Commit(CommitOptions{.keep_partial_last_page = true}));
  EXPECT_EQ(committed.sealed_blocks, 2);
  EXPECT_EQ(committed.private_blocks, 1);
  DaemonStats stats = Stats();
  EXPECT_EQ(stats.indexed_blocks, 2);
  EXPECT_EQ(stats.writing_blocks, 1);
  ASSERT_OK(lease.Release());
  stats = Stats();
  EXPECT_EQ(stats.writing_blocks, 0);
  EXPECT_EQ(stats.indexed_blocks, 2);
  EXPECT_EQ(stats.free_blocks + stats.sealed_blocks, stats.capacity_blocks);
}

TEST_F(ClientStepsTest, ExtendLeaseRollsTheDecodePageOverWithoutAPlan) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(SmallDaemonOptions(16)));
  const int B = TinyBlockTokens();
  std::vector<TokenId> context = Tokens(2 * B + 5, 7);
  ASSERT_OK_AND_ASSIGN(ScopedLease lease, client_->BeginStep("s", 1, context));
  const int32_t private_block = lease.plan().page_ids[2];
  ASSERT_OK(lease.Commit(CommitOptions{.keep_partial_last_page = true}).status());
  for (int i = 0; i < B - 5; ++i) context.push_back(900 + i);
  const absl::Span<const TokenId> page = absl::MakeConstSpan(context).subspan(2 * B, B);

  // Bad input: precise errors, nothing changes.
  EXPECT_EQ(client_->ExtendLease(lease.lease_id() + 1, 2 * B, page).status().code(),
            absl::StatusCode::kNotFound);
  const absl::Status short_page = lease.Extend(2 * B, page.first(B - 1)).status();
  EXPECT_EQ(short_page.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(short_page.message()), HasSubstr("block_tokens"));
  DaemonStats stats = Stats();
  EXPECT_EQ(stats.indexed_blocks, 2);
  EXPECT_EQ(stats.writing_blocks, 1);
  EXPECT_EQ(stats.lease_extensions, 0);

  ASSERT_OK_AND_ASSIGN(LeaseExtension extension, lease.Extend(2 * B, page));
  EXPECT_TRUE(extension.sealed);
  EXPECT_EQ(extension.position, 3 * B);
  EXPECT_NE(extension.block, private_block);
  EXPECT_EQ(extension.lease_timeout, absl::Seconds(30));
  stats = Stats();
  EXPECT_EQ(stats.indexed_blocks, 3);
  EXPECT_EQ(stats.writing_blocks, 1);  // the next page
  EXPECT_EQ(stats.lease_extensions, 1);
  EXPECT_EQ(stats.steps, 1);

  EXPECT_EQ(extension.spare, kNoBlock);  // none asked for
  // With reserve_spare the lease keeps the following page's block too.
  for (int i = 0; i < B; ++i) context.push_back(950 + i);
  ASSERT_OK_AND_ASSIGN(LeaseExtension spared,
                       lease.Extend(3 * B, absl::MakeConstSpan(context).subspan(3 * B, B),
                                    /*reserve_spare=*/true));
  EXPECT_NE(spared.spare, kNoBlock);
  EXPECT_EQ(Stats().writing_blocks, 2);  // the private page and the spare
  context.resize(3 * B);  // the request below reads the first three pages

  // The sealed page serves another request of the same context.
  context.push_back(1);
  ASSERT_OK_AND_ASSIGN(LeasedStep other, client_->PlanStep("s", 2, context));
  EXPECT_EQ(other.plan.hit_tokens, 3 * B);
  ASSERT_OK(client_->ReleaseStep(other.lease_id));
  ASSERT_OK(lease.Release());
  stats = Stats();
  EXPECT_EQ(stats.writing_blocks, 0);
  EXPECT_EQ(stats.free_blocks + stats.sealed_blocks, stats.capacity_blocks);
  EXPECT_EQ(lease.Extend(2 * B, page).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(ClientStepsTest, ScopedLeaseReleasesOnDestructionAndRenews) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(SmallDaemonOptions(16)));
  {
    ASSERT_OK_AND_ASSIGN(ScopedLease lease, client_->BeginStep("s", 1, Tokens(40, 4)));
    EXPECT_TRUE(lease.active());
    EXPECT_EQ(Stats().active_leases, 1);
    ASSERT_OK_AND_ASSIGN(absl::Duration renewed, lease.Renew());
    EXPECT_EQ(renewed, absl::Seconds(30));
    ASSERT_OK(lease.Commit());
    ScopedLease moved = std::move(lease);  // ownership moves; still one lease
    EXPECT_FALSE(lease.active());          // NOLINT(bugprone-use-after-move)
    EXPECT_EQ(Stats().active_leases, 1);
  }
  DaemonStats stats = Stats();
  EXPECT_EQ(stats.active_leases, 0);
  EXPECT_EQ(stats.sealed_blocks, 3);  // committed, then released by the destructor
  EXPECT_EQ(stats.pinned_blocks, 0);

  // Explicit release: inactive afterwards, the destructor does nothing.
  ASSERT_OK_AND_ASSIGN(ScopedLease lease, client_->BeginStep("s", 2, Tokens(20, 5)));
  ASSERT_OK(lease.Release());
  EXPECT_FALSE(lease.active());
  EXPECT_EQ(lease.Commit().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Stats().active_leases, 0);

  // Detach: the lease stays with the daemon.
  ASSERT_OK_AND_ASSIGN(ScopedLease kept, client_->BeginStep("s", 3, Tokens(20, 6)));
  const uint64_t id = kept.Detach();
  EXPECT_NE(id, 0u);
  EXPECT_EQ(Stats().active_leases, 1);
  ASSERT_OK(client_->ReleaseStep(id));
}

TEST_F(ClientStepsTest, EvictionUnderPressureAndResourceExhaustedLeakNothing) {
  constexpr int64_t kPoolBlocks = 8;
  ASSERT_NO_FATAL_FAILURE(StartDaemon(SmallDaemonOptions(kPoolBlocks)));
  const int B = TinyBlockTokens();
  ASSERT_EQ(Stats().capacity_blocks, kPoolBlocks);

  // 12 distinct 3-block contexts through an 8-block pool: every plan succeeds
  // by evicting older contexts.
  for (int i = 0; i < 12; ++i) {
    ASSERT_OK_AND_ASSIGN(LeasedStep step, client_->PlanStep("s", 100 + i, Tokens(3 * B, 10 + i)));
    EXPECT_EQ(step.plan.hit_tokens, 0);
    ASSERT_OK(client_->CommitStep(step.lease_id));
    ASSERT_OK(client_->ReleaseStep(step.lease_id));
  }
  DaemonStats stats = Stats();
  EXPECT_GE(stats.evictions, 12 * 3 - kPoolBlocks);
  EXPECT_EQ(stats.active_leases, 0);
  EXPECT_EQ(stats.writing_blocks, 0);
  EXPECT_EQ(stats.pinned_blocks, 0);
  EXPECT_EQ(stats.free_blocks + stats.sealed_blocks, stats.capacity_blocks);
  EXPECT_EQ(stats.indexed_blocks, stats.sealed_blocks);

  // A context longer than the whole pool can never be planned.
  const std::string before = StateOf(stats);
  absl::StatusOr<LeasedStep> too_long =
      client_->PlanStep("s", 500, Tokens((kPoolBlocks + 1) * B, 99));
  EXPECT_EQ(too_long.status().code(), absl::StatusCode::kResourceExhausted) << too_long.status();
  EXPECT_EQ(StateOf(Stats()), before);

  // Blocks pinned by a live lease cannot be evicted: 3 pinned leave 5, so a
  // 6-block context is refused now and fits after the release.
  ASSERT_OK_AND_ASSIGN(LeasedStep held, client_->PlanStep("s", 600, Tokens(3 * B, 60)));
  const std::string while_held = StateOf(Stats());
  absl::StatusOr<LeasedStep> blocked = client_->PlanStep("s", 601, Tokens(6 * B, 61));
  EXPECT_EQ(blocked.status().code(), absl::StatusCode::kResourceExhausted) << blocked.status();
  EXPECT_EQ(StateOf(Stats()), while_held);
  ASSERT_OK(client_->ReleaseStep(held.lease_id));
  ASSERT_OK_AND_ASSIGN(LeasedStep fits, client_->PlanStep("s", 601, Tokens(6 * B, 61)));
  ASSERT_OK(client_->ReleaseStep(fits.lease_id));

  stats = Stats();
  EXPECT_EQ(stats.active_leases, 0);
  EXPECT_EQ(stats.writing_blocks, 0);
  EXPECT_EQ(stats.pinned_blocks, 0);
  EXPECT_EQ(stats.free_blocks + stats.sealed_blocks, stats.capacity_blocks);
}

TEST_F(ClientStepsTest, ExpiredLeaseFreesItsBlocksAndIsNotFoundAfterwards) {
  DaemonOptions options = SmallDaemonOptions(8);
  options.lease_timeout = absl::Milliseconds(300);
  options.maintenance_interval = absl::Milliseconds(20);
  ASSERT_NO_FATAL_FAILURE(StartDaemon(options));

  // Uncommitted lease: its allocated blocks go back to free.
  ASSERT_OK_AND_ASSIGN(LeasedStep step, client_->PlanStep("s", 1, Tokens(40, 1)));
  EXPECT_EQ(step.lease_timeout, absl::Milliseconds(300));
  DaemonStats stats = Stats();
  EXPECT_EQ(stats.active_leases, 1);
  EXPECT_EQ(stats.writing_blocks, 3);
  ASSERT_TRUE(WaitUntil([&] { return Stats().active_leases == 0; }))
      << "lease not expired: " << StateOf(Stats());
  stats = Stats();
  EXPECT_EQ(stats.writing_blocks, 0);
  EXPECT_EQ(stats.free_blocks, stats.capacity_blocks);
  const absl::StatusOr<CommitResult> late = client_->CommitStep(step.lease_id);
  EXPECT_EQ(late.status().code(), absl::StatusCode::kNotFound) << late.status();
  EXPECT_EQ(client_->RenewLease(step.lease_id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->ReleaseStep(step.lease_id).status().code(), absl::StatusCode::kNotFound);

  // Committed lease: its blocks stay indexed, only the pins go.
  ASSERT_OK_AND_ASSIGN(LeasedStep committed, client_->PlanStep("s", 2, Tokens(40, 2)));
  ASSERT_OK(client_->CommitStep(committed.lease_id));
  EXPECT_EQ(Stats().pinned_blocks, 3);
  ASSERT_TRUE(WaitUntil([&] { return Stats().active_leases == 0; }));
  stats = Stats();
  EXPECT_EQ(stats.pinned_blocks, 0);
  EXPECT_EQ(stats.sealed_blocks, 3);
  EXPECT_EQ(stats.indexed_blocks, 3);
  EXPECT_EQ(stats.free_blocks + stats.sealed_blocks, stats.capacity_blocks);
}

TEST_F(ClientStepsTest, OneClientIsSafeToShareBetweenThreads) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon(SmallDaemonOptions(64)));
  constexpr int kThreads = 4;
  constexpr int kStepsPerThread = 25;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kStepsPerThread; ++i) {
        // Threads share a prefix (seed t % 2) so hits and duplicates race.
        absl::StatusOr<ScopedLease> lease =
            client_->BeginStep("shared", 1000 * (t + 1) + i, Tokens(32 + i % 3 * 8, t % 2));
        if (!lease.ok() || !lease->Commit().ok() || !lease->Release().ok()) ++failures;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  const DaemonStats stats = Stats();
  EXPECT_EQ(stats.steps, kThreads * kStepsPerThread);
  EXPECT_EQ(stats.active_leases, 0);
  EXPECT_EQ(stats.pinned_blocks, 0);
  EXPECT_EQ(stats.writing_blocks, 0);
  EXPECT_EQ(stats.free_blocks + stats.sealed_blocks, stats.capacity_blocks);
  EXPECT_EQ(stats.indexed_blocks, stats.sealed_blocks);
}

}  // namespace
}  // namespace asymcache::testing
