#include "cachecore/step_planner.h"

#include <iostream>
#include <random>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "cachecore/block_hash.h"

namespace asymcache {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Kind = Segment::Kind;

// Independent expectation of a position's kind: resident page; or a missing
// page with a resident page after it (hole); or tail.
Kind ExpectedKind(const std::vector<bool>& resident, int64_t page) {
  if (resident[page]) return Kind::kResident;
  for (size_t k = page + 1; k < resident.size(); ++k) {
    if (resident[k]) return Kind::kHole;
  }
  return Kind::kTail;
}

// Checks a plan against per-page residency without trusting ValidateStepPlan.
void CheckPlanAgainstResidency(const StepPlan& plan, const std::vector<bool>& resident, int b) {
  const int64_t n = plan.context_tokens;
  // Coverage: every position in exactly one segment, with the expected kind.
  std::vector<int> covered(static_cast<size_t>(n), 0);
  for (size_t i = 0; i < plan.segments.size(); ++i) {
    const Segment& s = plan.segments[i];
    for (int64_t p = s.begin; p < s.end; ++p) {
      ASSERT_GE(p, 0);
      ASSERT_LT(p, n);
      ++covered[p];
      ASSERT_EQ(s.kind, ExpectedKind(resident, p / b)) << "position " << p;
    }
    if (i > 0) {
      ASSERT_EQ(plan.segments[i - 1].end, s.begin);
      ASSERT_NE(plan.segments[i - 1].kind, s.kind) << "unmerged segments";
    }
  }
  for (int64_t p = 0; p < n; ++p) ASSERT_EQ(covered[p], 1) << "position " << p;
  // Query positions: exactly the non-resident positions, increasing.
  std::vector<int32_t> queries;
  int64_t hits = 0, holes = 0, tail = 0;
  for (int64_t p = 0; p < n; ++p) {
    const Kind k = ExpectedKind(resident, p / b);
    if (k != Kind::kResident) queries.push_back(static_cast<int32_t>(p));
    (k == Kind::kResident ? hits : k == Kind::kHole ? holes : tail)++;
  }
  ASSERT_EQ(plan.query_positions, queries);
  ASSERT_EQ(plan.hit_tokens, hits);
  ASSERT_EQ(plan.rebuild_tokens, holes);
  ASSERT_EQ(plan.new_tokens, tail);
  // Pages: one per block, exact geometry, allocated ones in order.
  const int64_t pages = (n + b - 1) / b;
  ASSERT_EQ(static_cast<int64_t>(plan.page_ids.size()), pages);
  size_t next_alloc = 0;
  for (int64_t k = 0; k < pages; ++k) {
    ASSERT_EQ(plan.page_positions[k], k * b);
    ASSERT_EQ(plan.page_lengths[k], std::min<int64_t>(b, n - k * b));
    ASSERT_EQ(plan.page_resident[k] != 0, resident[k]);
    if (!resident[k]) {
      ASSERT_LT(next_alloc, plan.allocated.size());
      ASSERT_EQ(plan.allocated[next_alloc], plan.page_ids[k]);
      ASSERT_EQ(plan.allocated_pages[next_alloc], k);
      ++next_alloc;
    }
  }
  ASSERT_EQ(next_alloc, plan.allocated.size());
  ASSERT_TRUE(ValidateStepPlan(plan).ok()) << ValidateStepPlan(plan);
}

TEST(AssemblePlanTest, RandomResidencyPatterns) {
  const uint32_t seed = std::random_device{}();
  std::cout << "AssemblePlanTest seed " << seed << "\n";
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  for (int trial = 0; trial < 400; ++trial) {
    const int b = 1 + static_cast<int>(rng() % 17);
    const int64_t n = 1 + static_cast<int64_t>(rng() % 300);
    const int64_t pages = (n + b - 1) / b;
    std::vector<bool> resident(static_cast<size_t>(pages));
    const int pattern = trial % 5;  // empty, full, random, front-hole, tail-only-missing
    for (int64_t k = 0; k < pages; ++k) {
      resident[k] = pattern == 1 || (pattern == 2 && rng() % 2) || (pattern == 3 && k >= pages / 2) ||
                    (pattern == 4 && k + 1 < pages);
    }
    std::vector<BlockId> ids(static_cast<size_t>(pages), kNoBlock);
    std::vector<BlockId> allocated;
    std::vector<BlockHash> hashes(static_cast<size_t>(pages));
    for (int64_t k = 0; k < pages; ++k) {
      hashes[k] = BlockHash{static_cast<uint64_t>(k), 1};
      if (resident[k]) {
        ids[k] = static_cast<BlockId>(k);
      } else {
        allocated.push_back(static_cast<BlockId>(1000 + k));
      }
    }
    const StepPlan plan = AssemblePlan(9, n, b, hashes, ids, allocated);
    ASSERT_NO_FATAL_FAILURE(CheckPlanAgainstResidency(plan, resident, b)) << "trial " << trial;
  }
}

TEST(AssemblePlanTest, ExactSegmentsForAMiddleHoleAndPartialTail) {
  // B=4, 18 tokens = 5 pages (last has 2): resident, hole, resident, resident, missing.
  std::vector<BlockHash> hashes(5);
  std::vector<BlockId> ids = {10, kNoBlock, 12, 13, kNoBlock};
  std::vector<BlockId> allocated = {21, 24};
  const StepPlan plan = AssemblePlan(1, 18, 4, hashes, ids, allocated);
  EXPECT_THAT(plan.segments, ElementsAre(Segment{0, 4, Kind::kResident}, Segment{4, 8, Kind::kHole},
                                         Segment{8, 16, Kind::kResident}, Segment{16, 18, Kind::kTail}));
  EXPECT_THAT(plan.query_positions, ElementsAre(4, 5, 6, 7, 16, 17));
  EXPECT_THAT(plan.page_ids, ElementsAre(10, 21, 12, 13, 24));
  EXPECT_THAT(plan.page_lengths, ElementsAre(4, 4, 4, 4, 2));
  EXPECT_EQ(plan.rebuild_tokens, 4);
  EXPECT_EQ(plan.new_tokens, 2);
  EXPECT_EQ(plan.hit_tokens, 12);
}

TEST(StepPlanTest, ValidateRejectsBrokenPlans) {
  std::vector<BlockHash> hashes(3);
  std::vector<BlockId> ids = {1, kNoBlock, 3};
  std::vector<BlockId> allocated = {7};
  StepPlan good = AssemblePlan(1, 12, 4, hashes, ids, allocated);
  ASSERT_TRUE(ValidateStepPlan(good).ok());
  StepPlan gap = good;
  gap.segments[1].begin += 1;
  EXPECT_THAT(ValidateStepPlan(gap).message(), HasSubstr("does not continue"));
  StepPlan queries = good;
  queries.query_positions.pop_back();
  EXPECT_THAT(ValidateStepPlan(queries).message(), HasSubstr("query positions"));
  StepPlan counters = good;
  counters.hit_tokens += 1;
  EXPECT_THAT(ValidateStepPlan(counters).message(), HasSubstr("counters"));
  StepPlan geometry = good;
  geometry.page_lengths[0] = 3;
  EXPECT_EQ(ValidateStepPlan(geometry).code(), absl::StatusCode::kInvalidArgument);
}

// One mutation per ValidateStepPlan branch; each message names the branch, so
// the test fails if that check were removed (a later check would not name it).
TEST(StepPlanTest, ValidateRejectsEachBrokenInvariant) {
  auto expect_rejected = [](const StepPlan& plan, const std::string& what) {
    const absl::Status status = ValidateStepPlan(plan);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << what;
    EXPECT_THAT(status.message(), HasSubstr(what));
  };
  std::vector<BlockHash> hashes(3);
  // B=4, 12 tokens: resident, hole, resident.
  const StepPlan holed = AssemblePlan(1, 12, 4, hashes, {1, kNoBlock, 3}, {7});
  ASSERT_TRUE(ValidateStepPlan(holed).ok()) << ValidateStepPlan(holed);
  // All three pages resident: one segment.
  const StepPlan cached = AssemblePlan(1, 12, 4, hashes, {1, 2, 3}, {});
  ASSERT_TRUE(ValidateStepPlan(cached).ok()) << ValidateStepPlan(cached);
  ASSERT_EQ(cached.segments.size(), 1u);
  // Resident page then a two-page tail.
  const StepPlan tailed = AssemblePlan(1, 12, 4, hashes, {1, kNoBlock, kNoBlock}, {7, 8});
  ASSERT_TRUE(ValidateStepPlan(tailed).ok()) << ValidateStepPlan(tailed);
  ASSERT_EQ(tailed.segments.size(), 2u);
  ASSERT_EQ(tailed.segments[1].kind, Kind::kTail);

  StepPlan p = holed;
  p.context_tokens = 0;
  expect_rejected(p, "context_tokens=0");
  p = holed;
  p.block_tokens = 0;
  expect_rejected(p, "block_tokens=0");
  p = holed;
  p.hashes.pop_back();
  expect_rejected(p, "page arrays");
  p = holed;
  p.segments[0].end = 5;  // continuous, but cuts page 1
  p.segments[1].begin = 5;
  expect_rejected(p, "not page aligned");
  p = cached;  // split the single resident segment in two of the same kind
  p.segments = {Segment{0, 4, Kind::kResident}, Segment{4, 12, Kind::kResident}};
  expect_rejected(p, "not merged");
  p = tailed;  // a tail followed by (a hole at the end)
  p.segments = {Segment{0, 4, Kind::kResident}, Segment{4, 8, Kind::kTail},
                Segment{8, 12, Kind::kHole}};
  expect_rejected(p, "is not last");
  p = tailed;  // the missing suffix labelled as a hole
  p.segments[1].kind = Kind::kHole;
  expect_rejected(p, "not followed by a resident");
  p = cached;
  p.segments[0].end = 8;
  expect_rejected(p, "segments end at 8");
  p = cached;
  p.page_ids[1] = kNoBlock;
  expect_rejected(p, "has no block");
  p = holed;
  p.page_resident[0] = 0;
  expect_rejected(p, "residency disagrees");
  p = holed;
  p.allocated[0] = 8;
  expect_rejected(p, "out of order");
  p = holed;
  p.allocated_pages.clear();
  expect_rejected(p, "out of order");
  p = holed;
  p.allocated.push_back(9);
  p.allocated_pages.push_back(2);
  expect_rejected(p, "extra allocated");
}

TEST(BatchCsrTest, AppendsPlansInKernelLayout) {
  std::vector<BlockHash> h2(2), h3(3);
  std::vector<BlockId> ids_a = {4, kNoBlock};
  std::vector<BlockId> alloc_a = {9};
  std::vector<BlockId> ids_b = {kNoBlock, 5, 6};
  std::vector<BlockId> alloc_b = {8};
  const StepPlan a = AssemblePlan(1, 6, 4, h2, ids_a, alloc_a);    // queries 4,5
  const StepPlan b = AssemblePlan(2, 12, 4, h3, ids_b, alloc_b);   // queries 0..3
  BatchCsr csr;
  ASSERT_TRUE(csr.Append(a).ok());
  ASSERT_TRUE(csr.Append(b).ok());
  EXPECT_EQ(csr.batch_size(), 2);
  EXPECT_THAT(csr.q_indptr, ElementsAre(0, 2, 6));
  EXPECT_THAT(csr.q_pos, ElementsAre(4, 5, 0, 1, 2, 3));
  EXPECT_THAT(csr.kv_indptr, ElementsAre(0, 2, 5));
  EXPECT_THAT(csr.kv_page_ids, ElementsAre(4, 9, 8, 5, 6));
  EXPECT_THAT(csr.kv_page_pos, ElementsAre(0, 4, 0, 4, 8));
  EXPECT_THAT(csr.kv_page_len, ElementsAre(4, 2, 4, 4, 4));
  csr.Clear();
  EXPECT_EQ(csr.batch_size(), 0);
  EXPECT_THAT(csr.q_indptr, ElementsAre(0));
}

// Planner over a real pool + index.
class StepPlannerTest : public ::testing::Test {
 protected:
  static constexpr int kB = 4;

  void SetUp() override { Reset(64, "lru"); }

  void Reset(int64_t capacity, const std::string& policy_name) {
    planner_.reset();
    pool_.reset();
    index_ = std::make_unique<PrefixIndex>();
    auto policy = MakeEvictionPolicy(policy_name, nullptr);
    ASSERT_TRUE(policy.ok()) << policy.status();
    pool_ = std::make_unique<BlockPool>(BlockPoolOptions{capacity}, *std::move(policy), &clock_);
    planner_ = std::make_unique<StepPlanner>(pool_.get(), index_.get(), kB);
  }

  // Makes page `k` of `tokens` resident (sealed, indexed, unpinned).
  BlockId MakeResident(const std::vector<TokenId>& tokens, int64_t k) {
    const auto hashes = ChainHashes("salt", tokens, kB);
    auto ids = pool_->Allocate(1, 1, nullptr);
    EXPECT_TRUE(ids.ok());
    IndexedBlockInfo info;
    info.id = (*ids)[0];
    info.hash = hashes[k];
    info.position = k * kB;
    info.tokens = std::min<int64_t>(kB, static_cast<int64_t>(tokens.size()) - k * kB);
    EXPECT_TRUE(index_->Insert(info.hash, PrefixIndex::Entry{info.id, info.position}).ok());
    EXPECT_TRUE(pool_->Seal(info).ok());  // the handle unpins at once
    return info.id;
  }

  absl::StatusOr<PlannedStep> Plan(const std::vector<TokenId>& tokens, bool contiguous = false,
                                   absl::Span<const BlockId> hint = {}) {
    hashes_ = ChainHashes("salt", tokens, kB);
    PlanInput input;
    input.sequence = 3;
    input.context_tokens = static_cast<int64_t>(tokens.size());
    input.hashes = hashes_;
    input.residency_hint = hint;
    input.contiguous_prefix_only = contiguous;
    return planner_->Plan(input);
  }

  static std::vector<TokenId> Tokens(int n) {
    std::vector<TokenId> t(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) t[i] = 100 + i;
    return t;
  }

  FakeClock clock_;
  std::unique_ptr<PrefixIndex> index_;
  std::unique_ptr<BlockPool> pool_;
  std::unique_ptr<StepPlanner> planner_;
  std::vector<BlockHash> hashes_;
};

TEST_F(StepPlannerTest, EmptyCacheIsAllTail) {
  const auto tokens = Tokens(10);
  auto step = Plan(tokens);
  ASSERT_TRUE(step.ok()) << step.status();
  CheckPlanAgainstResidency(step->plan, {false, false, false}, kB);
  EXPECT_EQ(step->plan.allocated.size(), 3u);
  EXPECT_TRUE(step->resident_pins.empty());
  EXPECT_EQ(pool_->GetStats().writing, 3);
}

TEST_F(StepPlannerTest, FullyCachedNeedsNoQueriesAndPinsEveryPage) {
  const auto tokens = Tokens(12);
  for (int k = 0; k < 3; ++k) MakeResident(tokens, k);
  auto step = Plan(tokens);
  ASSERT_TRUE(step.ok());
  CheckPlanAgainstResidency(step->plan, {true, true, true}, kB);
  EXPECT_TRUE(step->plan.query_positions.empty());
  EXPECT_EQ(step->resident_pins.size(), 3u);
  EXPECT_EQ(pool_->GetStats().pinned, 3);
  step->resident_pins.Reset();
  EXPECT_EQ(pool_->GetStats().pinned, 0);
}

TEST_F(StepPlannerTest, HolesFrontMiddleAndTail) {
  const auto tokens = Tokens(30);  // 8 pages, last has 2 tokens
  for (int k : {2, 3, 5}) MakeResident(tokens, k);
  auto step = Plan(tokens);
  ASSERT_TRUE(step.ok());
  CheckPlanAgainstResidency(step->plan, {false, false, true, true, false, true, false, false}, kB);
  EXPECT_THAT(step->plan.segments,
              ElementsAre(Segment{0, 8, Kind::kHole}, Segment{8, 16, Kind::kResident},
                          Segment{16, 20, Kind::kHole}, Segment{20, 24, Kind::kResident},
                          Segment{24, 30, Kind::kTail}));
}

TEST_F(StepPlannerTest, PartialLastBlockIsResidentOnlyForItsExactHash) {
  const auto tokens = Tokens(10);  // pages: 4, 4, 2
  for (int k = 0; k < 3; ++k) MakeResident(tokens, k);
  auto same = Plan(tokens);
  ASSERT_TRUE(same.ok());
  CheckPlanAgainstResidency(same->plan, {true, true, true}, kB);
  same->resident_pins.Reset();
  // Follow-up extends the partial page: that page is recomputed (tail).
  const auto longer = Tokens(13);
  auto next = Plan(longer);
  ASSERT_TRUE(next.ok());
  CheckPlanAgainstResidency(next->plan, {true, true, false, false}, kB);
  EXPECT_THAT(next->plan.query_positions, ElementsAre(8, 9, 10, 11, 12));
}

TEST_F(StepPlannerTest, ContiguousPrefixOnlyStopsAtTheFirstMiss) {
  const auto tokens = Tokens(20);
  for (int k : {0, 2, 3}) MakeResident(tokens, k);
  auto step = Plan(tokens, /*contiguous=*/true);
  ASSERT_TRUE(step.ok());
  CheckPlanAgainstResidency(step->plan, {true, false, false, false, false}, kB);
  EXPECT_EQ(step->resident_pins.size(), 1u);
  EXPECT_EQ(pool_->GetStats().pinned, 1);  // pages 2, 3 not held
  step->resident_pins.Reset();
  // With a stale hint pointing 2 and 3 elsewhere the answer is the same.
  std::vector<BlockId> hint = {kNoBlock, kNoBlock, 40, 41};
  auto hinted = Plan(tokens, true, hint);
  ASSERT_TRUE(hinted.ok());
  CheckPlanAgainstResidency(hinted->plan, {true, false, false, false, false}, kB);
  EXPECT_EQ(pool_->GetStats().pinned, 1);
}

TEST_F(StepPlannerTest, StaleHintFallsBackToTheIndex) {
  const auto tokens = Tokens(12);
  std::vector<BlockId> real;
  for (int k = 0; k < 3; ++k) real.push_back(MakeResident(tokens, k));
  std::vector<BlockId> hint = {real[1], real[0], 63};  // wrong ids everywhere
  auto step = Plan(tokens, false, hint);
  ASSERT_TRUE(step.ok());
  CheckPlanAgainstResidency(step->plan, {true, true, true}, kB);
  EXPECT_EQ(step->plan.page_ids, real);
}

TEST_F(StepPlannerTest, NeverEvictsItsOwnResidentBlocks) {
  Reset(4, "lru");
  const auto tokens = Tokens(20);  // 5 pages; pool holds 4
  for (int k = 0; k < 4; ++k) MakeResident(tokens, k);
  // Pages 0-3 are resident and the only evictable blocks; page 4 needs one
  // more block, which only an eviction of the request's own pages could give.
  auto step = Plan(tokens);
  EXPECT_EQ(step.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(step.status().message(), HasSubstr("pinned=4"));
  // Nothing left behind: no pins, nothing allocated, nothing evicted.
  const BlockPool::Stats s = pool_->GetStats();
  EXPECT_EQ(s.pinned, 0);
  EXPECT_EQ(s.writing, 0);
  EXPECT_EQ(s.sealed_evictable, 4);
  EXPECT_EQ(s.evictions, 0);
  EXPECT_EQ(index_->size(), 4u);
}

TEST_F(StepPlannerTest, EvictedBlocksLeaveTheIndex) {
  Reset(4, "lru");
  const auto other = std::vector<TokenId>{7, 7, 7, 7, 8, 8, 8, 8};
  MakeResident(other, 0);
  MakeResident(other, 1);
  const auto tokens = Tokens(12);
  auto step = Plan(tokens);
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_EQ(step->evicted.size(), 1u);  // 2 free + 1 evicted
  EXPECT_EQ(index_->size(), 1u);
  for (const EvictedBlock& e : step->evicted) EXPECT_FALSE(index_->Lookup(e.hash).has_value());
}

TEST_F(StepPlannerTest, BadInput) {
  PlanInput input;
  input.context_tokens = 0;
  EXPECT_EQ(planner_->Plan(input).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<BlockHash> one(1);
  input.context_tokens = 9;  // needs 3 hashes
  input.hashes = one;
  const auto status = planner_->Plan(input).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("expected 3"));
}

}  // namespace
}  // namespace asymcache
