#include "cachecore/agent_pins.h"

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "cachecore/block_pool.h"
#include "cachecore/clock.h"
#include "cachecore/eviction_policy.h"
#include "cachecore/tool_duration_stats.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asymcache {
namespace {

using ::testing::HasSubstr;

// A real BlockPool (lru policy) whose blocks are sealed and held only by the
// pins a test hands to the table.
class AgentPinTableTest : public ::testing::Test {
 protected:
  static constexpr int64_t kCapacity = 100;

  AgentPinTableTest() {
    auto policy = MakeEvictionPolicy("lru", nullptr);
    EXPECT_TRUE(policy.ok()) << policy.status();
    BlockPoolOptions options;
    options.capacity_blocks = kCapacity;
    pool_ = std::make_unique<BlockPool>(options, *std::move(policy), &clock_);
  }

  // Allocates and seals `n` blocks for `owner`; returns one pin per block (the
  // writer's pins, which the test hands to the table).
  std::vector<BlockPool::PinHandle> SealedPins(int64_t n, SequenceId owner) {
    std::vector<BlockPool::PinHandle> pins;
    absl::StatusOr<std::vector<BlockId>> ids = pool_->Allocate(n, owner, nullptr);
    EXPECT_TRUE(ids.ok()) << ids.status();
    if (!ids.ok()) return pins;
    for (size_t i = 0; i < ids->size(); ++i) {
      IndexedBlockInfo info;
      info.id = (*ids)[i];
      info.hash = BlockHash{next_hash_++, owner};
      info.position = static_cast<int64_t>(i) * 16;
      info.tokens = 16;
      info.owner = owner;
      absl::StatusOr<BlockPool::PinHandle> pin = pool_->Seal(info);
      EXPECT_TRUE(pin.ok()) << pin.status();
      if (pin.ok()) pins.push_back(*std::move(pin));
    }
    return pins;
  }

  int64_t PoolPinned() const { return pool_->GetStats().pinned; }
  int64_t PoolEvictable() const { return pool_->GetStats().sealed_evictable; }

  // Runs one tool call of `duration` for `tool` through the table (not pinned:
  // no blocks), so its statistics learn the duration.
  void Observe(AgentPinTable& table, const std::string& tool, absl::Duration duration) {
    const std::string job = absl::StrCat("observer-", observed_++);
    table.PinJob(job, tool, /*last_step=*/false, std::vector<BlockPool::PinHandle>{}, 1.0);
    clock_.Advance(duration);
    EXPECT_TRUE(table.OnJobResumed(job));
  }

  FakeClock clock_;
  std::unique_ptr<BlockPool> pool_;
  uint64_t next_hash_ = 1;
  int observed_ = 0;
};

TEST(AgentPinOptionsTest, ValidateRejectsBadOptions) {
  EXPECT_TRUE(AgentPinOptions{}.Validate().ok());
  auto expect_invalid = [](const AgentPinOptions& o, const char* field) {
    absl::Status s = o.Validate();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_THAT(std::string(s.message()), HasSubstr(field));
  };
  AgentPinOptions o;
  o.max_pinned_fraction = 1.5;
  expect_invalid(o, "max_pinned_fraction");
  o = {};
  o.max_ttl = absl::ZeroDuration();
  expect_invalid(o, "max_ttl");
  o = {};
  o.default_ttl = absl::Seconds(60);  // above max_ttl
  expect_invalid(o, "default_ttl");
  o = {};
  o.ttl_quantile = 0;
  expect_invalid(o, "ttl_quantile");
  o = {};
  o.ttl_margin = 0.5;
  expect_invalid(o, "ttl_margin");
  o = {};
  o.min_samples = 0;
  expect_invalid(o, "min_samples");
  o = {};
  o.max_samples_per_tool = 2;  // below min_samples (3)
  expect_invalid(o, "max_samples_per_tool");
  o = {};
  o.max_tools = 0;
  expect_invalid(o, "max_tools");
  o = {};
  o.hold_cost_s_per_block_s = -1;
  expect_invalid(o, "hold_cost_s_per_block_s");
  o = {};
  o.max_tool_wait_tracked = absl::Seconds(5);  // below max_ttl
  expect_invalid(o, "max_tool_wait_tracked");
}

TEST(ToolDurationStatsTest, NearestRankQuantilesOverRecentSamples) {
  ToolDurationStats stats(/*max_samples_per_tool=*/10, /*max_tools=*/2);
  EXPECT_FALSE(stats.Quantile("grep", 0.5).has_value());
  EXPECT_EQ(stats.count("grep"), 0);
  // 10 samples 1..10 s, recorded out of order.
  for (int s : {7, 3, 10, 1, 9, 2, 8, 4, 6, 5}) EXPECT_TRUE(stats.Record("grep", absl::Seconds(s)));
  EXPECT_EQ(stats.count("grep"), 10);
  EXPECT_EQ(*stats.Quantile("grep", 0.9), absl::Seconds(9));
  EXPECT_EQ(*stats.Quantile("grep", 0.7), absl::Seconds(7));  // exact rank despite float error
  EXPECT_EQ(*stats.Quantile("grep", 0.91), absl::Seconds(10));
  EXPECT_EQ(*stats.Quantile("grep", 0.0), absl::Seconds(1));
  EXPECT_EQ(*stats.Quantile("grep", 1.0), absl::Seconds(10));
  // The ring keeps the 10 most recent: five 100 s samples replace the five oldest (7,3,10,1,9).
  for (int i = 0; i < 5; ++i) stats.Record("grep", absl::Seconds(100));
  EXPECT_EQ(stats.count("grep"), 10);
  EXPECT_EQ(*stats.Quantile("grep", 0.0), absl::Seconds(2));
  EXPECT_EQ(*stats.Quantile("grep", 0.5), absl::Seconds(8));
  // Negative durations count as zero.
  EXPECT_TRUE(stats.Record("ls", absl::Seconds(-3)));
  EXPECT_EQ(*stats.Quantile("ls", 0.5), absl::ZeroDuration());
  // max_tools: a third name is not tracked.
  EXPECT_FALSE(stats.Record("curl", absl::Seconds(1)));
  EXPECT_EQ(stats.count("curl"), 0);
  EXPECT_EQ(stats.tool_count(), 2u);
}

TEST_F(AgentPinTableTest, PinsAndExpiresAfterDefaultTtlWithoutSleeping) {
  AgentPinTable table(kCapacity, AgentPinOptions{}, &clock_);
  PinDecision d = table.PinJob("job-1", "bash", false, SealedPins(10, 1), 0.05);
  EXPECT_TRUE(d.pinned) << d.reason;
  EXPECT_EQ(d.outcome, PinOutcome::kPinned);
  EXPECT_EQ(d.ttl, absl::Seconds(2));  // never-seen tool: default_ttl
  EXPECT_EQ(table.pinned_blocks(), 10);
  EXPECT_EQ(table.pinned_jobs(), 1u);
  EXPECT_EQ(PoolPinned(), 10);

  clock_.Advance(absl::Milliseconds(1999));
  EXPECT_EQ(table.ExpirePins(), 0);
  EXPECT_EQ(PoolPinned(), 10);
  clock_.Advance(absl::Milliseconds(1));
  EXPECT_EQ(table.ExpirePins(), 1);
  EXPECT_EQ(table.pinned_blocks(), 0);
  EXPECT_EQ(table.pinned_jobs(), 0u);
  EXPECT_EQ(PoolPinned(), 0);
  EXPECT_EQ(PoolEvictable(), 10);  // back to the eviction policy
  // The job still waits on its tool: resuming records the duration.
  EXPECT_TRUE(table.OnJobResumed("job-1"));
  EXPECT_EQ(table.ToolSamples("bash"), 1);
}

TEST_F(AgentPinTableTest, PinnedCapacityNeverExceedsCap) {
  AgentPinTable table(kCapacity, AgentPinOptions{}, &clock_);  // cap = 25 blocks
  ASSERT_EQ(table.pinned_capacity_cap(), 25);
  EXPECT_TRUE(table.PinJob("a", "bash", false, SealedPins(20, 1), 1.0).pinned);
  PinDecision d = table.PinJob("b", "bash", false, SealedPins(10, 2), 1.0);
  EXPECT_FALSE(d.pinned);
  EXPECT_EQ(d.outcome, PinOutcome::kCapacityCap);
  EXPECT_THAT(d.reason, HasSubstr("cap"));
  EXPECT_EQ(table.pinned_blocks(), 20);
  EXPECT_EQ(PoolPinned(), 20);  // b's pins were released, not kept
  EXPECT_TRUE(table.PinJob("c", "bash", false, SealedPins(5, 3), 1.0).pinned);  // exactly the cap
  EXPECT_EQ(table.pinned_blocks(), 25);
  EXPECT_EQ(table.PinJob("d", "bash", false, SealedPins(1, 4), 1.0).outcome,
            PinOutcome::kCapacityCap);
  // Re-pinning a job releases its old pins first, so it may re-use its share.
  EXPECT_TRUE(table.PinJob("a", "bash", false, SealedPins(20, 1), 1.0).pinned);
  EXPECT_EQ(table.pinned_blocks(), 25);
  EXPECT_EQ(PoolPinned(), 25);
  EXPECT_LE(table.pinned_blocks(), table.pinned_capacity_cap());
}

TEST_F(AgentPinTableTest, LastStepNeverPinsAndForgetsTheJob) {
  AgentPinTable table(kCapacity, AgentPinOptions{}, &clock_);
  EXPECT_TRUE(table.PinJob("job", "bash", false, SealedPins(4, 1), 1.0).pinned);
  PinDecision d = table.PinJob("job", "bash", /*last_step=*/true, SealedPins(6, 1), 1.0);
  EXPECT_FALSE(d.pinned);
  EXPECT_EQ(d.outcome, PinOutcome::kLastStep);
  EXPECT_EQ(table.pinned_blocks(), 0);
  EXPECT_EQ(PoolPinned(), 0);  // old and new pins both released
  EXPECT_FALSE(table.OnJobResumed("job"));
  EXPECT_EQ(table.waiting_jobs(), 0u);
}

TEST_F(AgentPinTableTest, ToolStatisticsDriveTheTtl) {
  AgentPinTable table(kCapacity, AgentPinOptions{}, &clock_);
  EXPECT_EQ(table.TtlFor("pytest"), absl::Seconds(2));
  Observe(table, "pytest", absl::Seconds(1));
  Observe(table, "pytest", absl::Seconds(2));
  EXPECT_EQ(table.TtlFor("pytest"), absl::Seconds(2)) << "below min_samples: default";
  for (int s = 3; s <= 10; ++s) Observe(table, "pytest", absl::Seconds(s));
  EXPECT_EQ(table.ToolSamples("pytest"), 10);
  // 1.25 x nearest-rank p90 of {1..10 s} = 1.25 x 9 s.
  EXPECT_EQ(table.TtlFor("pytest"), absl::Milliseconds(11250));
  PinDecision d = table.PinJob("job", "pytest", false, SealedPins(3, 1), 1.0);
  EXPECT_TRUE(d.pinned) << d.reason;
  EXPECT_EQ(d.ttl, absl::Milliseconds(11250));
  clock_.Advance(absl::Seconds(11));
  EXPECT_EQ(table.ExpirePins(), 0);
  clock_.Advance(absl::Milliseconds(250));
  EXPECT_EQ(table.ExpirePins(), 1);

  // A slow tool: its TTL would exceed max_ttl, so it is not pinned.
  for (int i = 0; i < 3; ++i) Observe(table, "train", absl::Seconds(40));
  d = table.PinJob("slow", "train", false, SealedPins(3, 2), 100.0);
  EXPECT_FALSE(d.pinned);
  EXPECT_EQ(d.outcome, PinOutcome::kWaitTooLong);
  EXPECT_THAT(d.reason, HasSubstr("max_ttl"));
  EXPECT_EQ(PoolPinned(), 0);
}

TEST_F(AgentPinTableTest, ResumedJobReleasesPinsAndRecordsDuration) {
  AgentPinTable table(kCapacity, AgentPinOptions{}, &clock_);
  EXPECT_TRUE(table.PinJob("job", "grep", false, SealedPins(8, 1), 1.0).pinned);
  clock_.Advance(absl::Milliseconds(700));
  EXPECT_TRUE(table.OnJobResumed("job"));
  EXPECT_EQ(table.pinned_blocks(), 0);
  EXPECT_EQ(PoolPinned(), 0);
  EXPECT_EQ(table.ToolSamples("grep"), 1);
  EXPECT_FALSE(table.OnJobResumed("job"));  // already resumed
  EXPECT_FALSE(table.OnJobResumed("never-seen"));
  // The recorded duration is what drives the TTL once enough samples exist.
  Observe(table, "grep", absl::Milliseconds(700));
  Observe(table, "grep", absl::Milliseconds(700));
  EXPECT_EQ(table.TtlFor("grep"), absl::Milliseconds(875));  // 1.25 x 700 ms
}

TEST_F(AgentPinTableTest, UnpinAndRefresh) {
  AgentPinTable table(kCapacity, AgentPinOptions{}, &clock_);
  EXPECT_EQ(table.Refresh("job", absl::Seconds(5)).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(table.PinJob("job", "bash", false, SealedPins(2, 1), 1.0).pinned);
  EXPECT_EQ(table.Refresh("job", absl::ZeroDuration()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(table.Refresh("job", absl::Seconds(31)).code(), absl::StatusCode::kInvalidArgument);
  clock_.Advance(absl::Seconds(1));
  EXPECT_TRUE(table.Refresh("job", absl::Seconds(5)).ok());
  clock_.Advance(absl::Seconds(4));  // past the original 2 s, before the refreshed 6 s
  EXPECT_EQ(table.ExpirePins(), 0);
  EXPECT_EQ(PoolPinned(), 2);
  EXPECT_TRUE(table.Unpin("job"));
  EXPECT_FALSE(table.Unpin("job"));
  EXPECT_EQ(PoolPinned(), 0);
  EXPECT_EQ(table.Refresh("job", absl::Seconds(5)).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(table.OnJobResumed("job"));  // still waiting on its tool
}

TEST_F(AgentPinTableTest, NotWorthPinningWhenSavingDoesNotCoverHolding) {
  AgentPinOptions options;
  options.hold_cost_s_per_block_s = 0.001;
  AgentPinTable table(kCapacity, options, &clock_);
  // 10 blocks for 2 s cost 0.02 s; saving 0.9 x 0.01 s = 0.009 s: no.
  PinDecision d = table.PinJob("cheap", "bash", false, SealedPins(10, 1), 0.01);
  EXPECT_FALSE(d.pinned);
  EXPECT_EQ(d.outcome, PinOutcome::kNotWorthIt);
  EXPECT_EQ(PoolPinned(), 0);
  // Saving 0.9 x 0.1 s = 0.09 s > 0.02 s: yes.
  EXPECT_TRUE(table.PinJob("dear", "bash", false, SealedPins(10, 2), 0.1).pinned);
  // Nothing to save is never worth a pin, even at zero holding cost.
  AgentPinTable free_table(kCapacity, AgentPinOptions{}, &clock_);
  EXPECT_EQ(free_table.PinJob("x", "bash", false, SealedPins(1, 3), 0.0).outcome,
            PinOutcome::kNotWorthIt);
  EXPECT_EQ(
      free_table.PinJob("y", "bash", false, std::vector<BlockPool::PinHandle>{}, 1.0).outcome,
      PinOutcome::kNoBlocks);
}

TEST_F(AgentPinTableTest, PressureReleasesOldestPinsFirst) {
  AgentPinTable table(kCapacity, AgentPinOptions{}, &clock_);
  EXPECT_TRUE(table.PinJob("oldest", "bash", false, SealedPins(5, 1), 0.2).pinned);
  clock_.Advance(absl::Milliseconds(100));
  EXPECT_TRUE(table.PinJob("middle", "bash", false, SealedPins(5, 2), 0.2).pinned);
  clock_.Advance(absl::Milliseconds(100));
  EXPECT_TRUE(table.PinJob("newest", "bash", false, SealedPins(5, 3), 0.2).pinned);
  clock_.Advance(absl::Milliseconds(100));
  EXPECT_TRUE(table.PinJob("precious", "bash", false, SealedPins(5, 4), 5.0).pinned);

  // Waiting less than the pins' benefit: pins stay.
  EXPECT_EQ(table.ReleaseUnderPressure(8, absl::Milliseconds(150)), 0);
  EXPECT_EQ(table.pinned_blocks(), 20);
  // Waiting longer: oldest first until 8 blocks are freed (whole jobs: 10).
  EXPECT_EQ(table.ReleaseUnderPressure(8, absl::Seconds(1)), 10);
  std::vector<JobPinInfo> left = table.List();
  ASSERT_EQ(left.size(), 2u);
  EXPECT_EQ(left[0].job_id, "newest");
  EXPECT_EQ(left[1].job_id, "precious");
  EXPECT_EQ(PoolPinned(), 10);
  // Even a large need never releases a pin worth more than the wait.
  EXPECT_EQ(table.ReleaseUnderPressure(100, absl::Seconds(1)), 5);
  EXPECT_EQ(table.List().front().job_id, "precious");
  EXPECT_EQ(table.pinned_blocks(), 5);
}

TEST_F(AgentPinTableTest, ListReportsOldestFirstWithExpiry) {
  AgentPinTable table(kCapacity, AgentPinOptions{}, &clock_);
  const absl::Time t0 = clock_.Now();
  EXPECT_TRUE(table.PinJob("a", "bash", false, SealedPins(2, 1), 0.5).pinned);
  EXPECT_TRUE(table.PinJob("b", "grep", false, SealedPins(3, 2), 0.7).pinned);  // same instant
  std::vector<JobPinInfo> list = table.List();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].job_id, "a");
  EXPECT_EQ(list[0].blocks, 2);
  EXPECT_EQ(list[0].expires_at, t0 + absl::Seconds(2));
  EXPECT_EQ(list[1].job_id, "b");
  EXPECT_EQ(list[1].tool, "grep");
  EXPECT_DOUBLE_EQ(list[1].expected_benefit_s, 0.7);
}

TEST_F(AgentPinTableTest, PinSetFormIsHeldAndReleasedLikeHandles) {
  AgentPinTable table(kCapacity, AgentPinOptions{}, &clock_);
  absl::StatusOr<std::vector<BlockId>> ids = pool_->Allocate(6, 9, nullptr);
  ASSERT_TRUE(ids.ok());
  std::vector<IndexedBlockInfo> infos;
  for (size_t i = 0; i < ids->size(); ++i) {
    IndexedBlockInfo info;
    info.id = (*ids)[i];
    info.hash = BlockHash{1000 + i, 9};
    info.position = static_cast<int64_t>(i) * 16;
    info.tokens = 16;
    info.owner = 9;
    infos.push_back(info);
  }
  BlockPool::PinSet pins;
  ASSERT_TRUE(pool_->SealMany(infos, &pins).ok());
  EXPECT_TRUE(table.PinJob("set", "bash", false, std::move(pins), 1.0).pinned);
  EXPECT_EQ(table.pinned_blocks(), 6);
  EXPECT_EQ(PoolPinned(), 6);
  clock_.Advance(absl::Seconds(2));
  EXPECT_EQ(table.ExpirePins(), 1);
  EXPECT_EQ(PoolPinned(), 0);
}

TEST_F(AgentPinTableTest, AbandonedJobIsForgottenAndCountsAsSlow) {
  AgentPinOptions options;
  options.min_samples = 1;
  AgentPinTable table(kCapacity, options, &clock_);
  table.PinJob("gone", "deploy", false, SealedPins(2, 1), 1.0);
  clock_.Advance(absl::Minutes(10));
  EXPECT_EQ(table.ExpirePins(), 1);
  EXPECT_EQ(table.waiting_jobs(), 0u);
  EXPECT_FALSE(table.OnJobResumed("gone"));
  EXPECT_EQ(table.ToolSamples("deploy"), 1);
  EXPECT_GT(table.TtlFor("deploy"), options.max_ttl);  // learned: do not pin this tool
}

TEST_F(AgentPinTableTest, DestroyingTheTableReleasesAllPins) {
  {
    AgentPinTable table(kCapacity, AgentPinOptions{}, &clock_);
    EXPECT_TRUE(table.PinJob("a", "bash", false, SealedPins(7, 1), 1.0).pinned);
    EXPECT_TRUE(table.PinJob("b", "bash", false, SealedPins(9, 2), 1.0).pinned);
    EXPECT_EQ(PoolPinned(), 16);
  }
  BlockPool::Stats stats = pool_->GetStats();
  EXPECT_EQ(stats.pinned, 0);
  EXPECT_EQ(stats.sealed_evictable, 16);
}

// Many threads pinning, resuming, expiring and releasing at once: the pool's
// pin counts and the table's totals stay consistent (run under ASan/TSan too).
TEST_F(AgentPinTableTest, ConcurrentUseKeepsCountsConsistent) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  AgentPinOptions options;
  options.max_pinned_fraction = 0.5;
  AgentPinTable table(kCapacity, options, &clock_);
  // One shared set of sealed blocks: each thread takes extra pins on them.
  std::vector<BlockPool::PinHandle> writer_pins = SealedPins(20, 1);
  std::vector<BlockId> ids;
  for (const auto& pin : writer_pins) ids.push_back(pin.id());
  writer_pins.clear();

  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(seed + static_cast<uint32_t>(t));
      for (int i = 0; i < 300; ++i) {
        const std::string job = absl::StrCat("job-", t, "-", rng() % 8);
        switch (rng() % 5) {
          case 0:
          case 1: {
            std::vector<BlockPool::PinHandle> pins;
            const int n = static_cast<int>(rng() % 6);
            for (int k = 0; k < n; ++k) {
              auto pin = pool_->PinSealed(ids[rng() % ids.size()]);
              if (pin.ok()) pins.push_back(*std::move(pin));
            }
            table.PinJob(job, "bash", rng() % 7 == 0, std::move(pins), 1.0);
            break;
          }
          case 2: table.OnJobResumed(job); break;
          case 3: table.ReleaseUnderPressure(5, absl::Seconds(2)); break;
          default: table.ExpirePins(); break;
        }
        EXPECT_LE(table.pinned_blocks(), table.pinned_capacity_cap());
      }
    });
  }
  for (auto& thread : threads) thread.join();
  int64_t listed = 0;
  for (const JobPinInfo& info : table.List()) listed += info.blocks;
  EXPECT_EQ(listed, table.pinned_blocks());
  int64_t pool_pins = 0;
  for (BlockId id : ids) pool_pins += pool_->pin_count(id);
  EXPECT_EQ(pool_pins, table.pinned_blocks());
}

}  // namespace
}  // namespace asymcache
