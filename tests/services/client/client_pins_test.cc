// End-to-end: agent pins through asymcache::Client — ReleaseStep with agent
// fields and PinJob pin a job's blocks, which then survive eviction pressure;
// RefreshPin, Unpin, ListPins; TTL expiry; a resumed job's pins are released.
#include <string>
#include <vector>

#include "cachecore/block_hash.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/client/client.h"
#include "tests/services/client/test_daemon.h"

namespace asymcache::testing {
namespace {

constexpr int64_t kPoolBlocks = 16;

class ClientPinsTest : public DaemonFixture {
 protected:
  void SetUp() override {
    DaemonOptions options = SmallDaemonOptions(kPoolBlocks);
    options.agent_pins.max_pinned_fraction = 0.5;  // cap 8 blocks
    ASSERT_NO_FATAL_FAILURE(StartDaemon(options));
  }

  // Whether every block of the context is resident.
  bool AllResident(absl::string_view salt, const std::vector<TokenId>& tokens) {
    absl::StatusOr<std::vector<std::optional<int64_t>>> resident =
        client_->Lookup(ChainHashes(salt, tokens, TinyBlockTokens()));
    EXPECT_TRUE(resident.ok()) << resident.status();
    if (!resident.ok()) return false;
    for (const std::optional<int64_t>& position : *resident) {
      if (!position.has_value()) return false;
    }
    return true;
  }

  // Distinct contexts through the pool until `blocks` blocks were allocated.
  void Pressure(int64_t blocks, int seed) {
    const int B = TinyBlockTokens();
    for (int i = 0; i * 4 < blocks; ++i) {
      RunStep("pressure", 10000 + seed + i, Tokens(4 * B, seed + i));
    }
  }
};

TEST_F(ClientPinsTest, ReleasedJobIsPinnedSurvivesPressureAndUnpins) {
  const int B = TinyBlockTokens();
  const std::vector<TokenId> context = Tokens(3 * B, 1);
  ASSERT_OK_AND_ASSIGN(LeasedStep step, client_->PlanStep("agent", 1, context));
  ASSERT_OK(client_->CommitStep(step.lease_id));
  ASSERT_OK_AND_ASSIGN(
      std::optional<JobPinDecision> released,
      client_->ReleaseStep(step.lease_id, AgentJob{.job_id = "job-1", .tool = "search"}));
  ASSERT_TRUE(released.has_value());
  EXPECT_TRUE(released->decision.pinned) << released->decision.reason;
  EXPECT_EQ(released->decision.outcome, PinOutcome::kPinned);
  EXPECT_EQ(released->decision.ttl, absl::Seconds(2));  // AgentPinOptions default_ttl
  EXPECT_EQ(released->blocks, 3);

  ASSERT_OK_AND_ASSIGN(PinList pins, client_->ListPins());
  ASSERT_EQ(pins.jobs.size(), 1u);
  EXPECT_EQ(pins.jobs[0].job_id, "job-1");
  EXPECT_EQ(pins.jobs[0].tool, "search");
  EXPECT_EQ(pins.jobs[0].blocks, 3);
  EXPECT_EQ(pins.pinned_blocks, 3);
  EXPECT_EQ(pins.pinned_capacity_cap, kPoolBlocks / 2);
  DaemonStats stats = Stats();
  EXPECT_EQ(stats.agent_pinned_jobs, 1);
  EXPECT_EQ(stats.agent_pinned_blocks, 3);
  EXPECT_EQ(stats.pinned_blocks, 3);

  // A long TTL so that the pressure below cannot outlast it.
  ASSERT_OK(client_->RefreshPin("job-1", absl::Seconds(30)));
  ASSERT_OK_AND_ASSIGN(pins, client_->ListPins());
  ASSERT_EQ(pins.jobs.size(), 1u);
  EXPECT_GE(pins.jobs[0].expires_at - absl::Now(), absl::Seconds(25));

  // Pressure: 3 pool-fulls of other contexts. The pinned blocks stay.
  const int64_t evictions_before = stats.evictions;
  Pressure(3 * kPoolBlocks, 100);
  stats = Stats();
  EXPECT_GT(stats.evictions, evictions_before);
  EXPECT_TRUE(AllResident("agent", context));
  EXPECT_EQ(stats.agent_pinned_blocks, 3);

  ASSERT_OK_AND_ASSIGN(bool unpinned, client_->Unpin("job-1"));
  EXPECT_TRUE(unpinned);
  ASSERT_OK_AND_ASSIGN(unpinned, client_->Unpin("job-1"));
  EXPECT_FALSE(unpinned);
  ASSERT_OK_AND_ASSIGN(pins, client_->ListPins());
  EXPECT_TRUE(pins.jobs.empty());
  EXPECT_EQ(pins.pinned_blocks, 0);
  stats = Stats();
  EXPECT_EQ(stats.agent_pinned_jobs, 0);
  EXPECT_EQ(stats.pinned_blocks, 0);
  EXPECT_EQ(stats.free_blocks + stats.sealed_blocks, stats.capacity_blocks);
}

TEST_F(ClientPinsTest, PinJobPinsResidentBlocksAndTheTtlExpires) {
  const int B = TinyBlockTokens();
  const std::vector<TokenId> context = Tokens(2 * B, 2);
  RunStep("agent", 2, context);
  ASSERT_OK_AND_ASSIGN(JobPinDecision decision,
                       client_->PinJob(AgentJob{.job_id = "job-2", .tool = "compile"}, "agent",
                                       context));
  EXPECT_TRUE(decision.decision.pinned) << decision.decision.reason;
  EXPECT_EQ(decision.blocks, 2);
  EXPECT_EQ(Stats().agent_pinned_blocks, 2);

  // Bad TTLs change nothing.
  const std::string before = StateOf(Stats());
  EXPECT_EQ(client_->RefreshPin("job-2", absl::ZeroDuration()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->RefreshPin("job-2", absl::Minutes(5)).code(),  // > max_ttl 30 s
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(StateOf(Stats()), before);

  // A short TTL: the daemon's maintenance drops the pins.
  ASSERT_OK(client_->RefreshPin("job-2", absl::Milliseconds(200)));
  ASSERT_TRUE(WaitUntil([&] {
    absl::StatusOr<PinList> pins = client_->ListPins();
    return pins.ok() && pins->jobs.empty();
  })) << "pin did not expire";
  const DaemonStats stats = Stats();
  EXPECT_EQ(stats.agent_pinned_jobs, 0);
  EXPECT_EQ(stats.agent_pinned_blocks, 0);
  EXPECT_EQ(stats.pinned_blocks, 0);
  EXPECT_TRUE(AllResident("agent", context));  // expired pins fall back to the policy
  EXPECT_EQ(client_->RefreshPin("job-2", absl::Seconds(1)).code(), absl::StatusCode::kNotFound);
}

TEST_F(ClientPinsTest, ResumedJobReleasesItsPinsAndLastStepPinsNothing) {
  const int B = TinyBlockTokens();
  std::vector<TokenId> context = Tokens(2 * B, 3);
  ASSERT_OK_AND_ASSIGN(LeasedStep step, client_->PlanStep("agent", 3, context));
  ASSERT_OK(client_->CommitStep(step.lease_id));
  ASSERT_OK_AND_ASSIGN(
      std::optional<JobPinDecision> released,
      client_->ReleaseStep(step.lease_id, AgentJob{.job_id = "job-3", .tool = "grep"}));
  ASSERT_TRUE(released.has_value());
  ASSERT_TRUE(released->decision.pinned);

  // The job's next step (tool result appended) resumes it: its pins go, and
  // the new plan hits the blocks the pins kept.
  for (int i = 0; i < B; ++i) context.push_back((600 + i) % kTinyVocab);
  PlanStepOptions resume;
  resume.agent = AgentJob{.job_id = "job-3", .tool = ""};
  ASSERT_OK_AND_ASSIGN(LeasedStep next, client_->PlanStep("agent", 3, context, resume));
  EXPECT_EQ(next.plan.hit_tokens, 2 * B);
  ASSERT_OK_AND_ASSIGN(PinList pins, client_->ListPins());
  EXPECT_TRUE(pins.jobs.empty());
  ASSERT_OK(client_->CommitStep(next.lease_id));

  // The last step of the job: nothing is pinned.
  ASSERT_OK_AND_ASSIGN(
      released, client_->ReleaseStep(next.lease_id, AgentJob{.job_id = "job-3", .tool = "done",
                                                            .last_step = true}));
  ASSERT_TRUE(released.has_value());
  EXPECT_FALSE(released->decision.pinned);
  EXPECT_EQ(released->decision.outcome, PinOutcome::kLastStep);
  const DaemonStats stats = Stats();
  EXPECT_EQ(stats.agent_pinned_jobs, 0);
  EXPECT_EQ(stats.pinned_blocks, 0);
  EXPECT_EQ(stats.active_leases, 0);
}

// Soft pins: a plan refused for memory that keeps being retried takes a
// pinned job's blocks once it has waited longer than their expected benefit
// (DESIGN.md §3.5); the first refusal releases nothing.
TEST_F(ClientPinsTest, BlockedPlanTakesSoftPinsAfterWaitingLongerThanTheirBenefit) {
  const int B = TinyBlockTokens();
  // Job: 8 blocks committed and pinned (the cap: half the 16-block pool).
  const std::vector<TokenId> job = Tokens(8 * B, 1);
  ASSERT_OK_AND_ASSIGN(LeasedStep step, client_->PlanStep("agent", 1, job));
  ASSERT_OK(client_->CommitStep(step.lease_id));
  ASSERT_OK_AND_ASSIGN(std::optional<JobPinDecision> released,
                       client_->ReleaseStep(step.lease_id, AgentJob{.job_id = "job-1", .tool = "bash"}));
  ASSERT_TRUE(released.has_value() && released->decision.pinned) << released->decision.reason;
  ASSERT_OK(client_->RefreshPin("job-1", absl::Seconds(30)));
  // Another sequence holds the other 8 blocks in a lease.
  ASSERT_OK_AND_ASSIGN(LeasedStep holder, client_->PlanStep("other", 2, Tokens(8 * B, 2)));

  // A third needs 4 blocks: none free, 8 pinned. First refusal: nothing released.
  const std::vector<TokenId> blocked = Tokens(4 * B, 3);
  absl::StatusOr<LeasedStep> first = client_->PlanStep("new", 3, blocked);
  EXPECT_EQ(first.status().code(), absl::StatusCode::kResourceExhausted) << first.status();
  EXPECT_EQ(Stats().agent_pinned_blocks, 8);
  // Retried after waiting longer than the pin's benefit (rebuilding 8 tiny
  // blocks on the built-in CPU calibration takes well under 200 ms): the
  // job's pins are released, the plan succeeds.
  absl::SleepFor(absl::Milliseconds(200));
  ASSERT_OK_AND_ASSIGN(LeasedStep admitted, client_->PlanStep("new", 3, blocked));
  EXPECT_EQ(Stats().agent_pinned_blocks, 0);
  ASSERT_OK_AND_ASSIGN(PinList pins, client_->ListPins());
  EXPECT_TRUE(pins.jobs.empty());
  ASSERT_OK(client_->ReleaseStep(admitted.lease_id).status());
  ASSERT_OK(client_->ReleaseStep(holder.lease_id).status());
}

}  // namespace
}  // namespace asymcache::testing
