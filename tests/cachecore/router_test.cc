#include "cachecore/router.h"

#include <set>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "cachecore/block_hash.h"
#include "gtest/gtest.h"

namespace asymcache {
namespace {

class RouterTest : public ::testing::Test {
 protected:
  RouterTest() : cost_(ModelConfig{}, CostModel::DefaultH100Llama3_8B()) {}

  // A context of `tokens` random tokens under a fresh salt.
  void MakeContext(int64_t tokens) {
    absl::BitGen gen;
    std::vector<TokenId> ids(static_cast<size_t>(tokens));
    for (TokenId& t : ids) t = absl::Uniform<TokenId>(gen, 0, 128000);
    tokens_ = tokens;
    hashes_ = ChainHashes(absl::StrCat("tenant-", absl::Uniform<uint64_t>(gen)), ids, 16);
  }
  // Member `m` holds blocks [first, last) of the context.
  void Hold(MemberSlot m, int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      ASSERT_TRUE(index_.AddStored(m, hashes_[b], static_cast<BlockId>(b), b * 16));
    }
  }
  RouteCandidate Candidate(MemberSlot m, int64_t load = 0) const {
    RouteCandidate c;
    c.member = m;
    c.cost = &cost_;
    c.queued_prefill_tokens = load;
    return c;
  }
  RouteQuery Query() const {
    RouteQuery q;
    q.hashes = hashes_;
    q.tokens = tokens_;
    return q;
  }

  CostModel cost_;
  BlockLocationIndex index_{BlockLocationIndexOptions{}};
  std::vector<BlockHash> hashes_;
  int64_t tokens_ = 0;
};

TEST(RouterOptionsTest, ValidateNamesTheField) {
  RouterOptions o;
  EXPECT_TRUE(o.Validate().ok());
  o.fetch_bytes_per_s = 0;
  EXPECT_NE(o.Validate().message().find("fetch_bytes_per_s"), std::string::npos);
  o = {};
  o.imbalance_relative = 0.5;
  EXPECT_NE(o.Validate().message().find("imbalance_relative"), std::string::npos);
  o = {};
  o.tie_relative = -1;
  EXPECT_NE(o.Validate().message().find("tie_relative"), std::string::npos);
  o = {};
  o.memory_imbalance_fraction = 0;
  EXPECT_NE(o.Validate().message().find("memory_imbalance_fraction"), std::string::npos);
  o = {};
  o.queue_step_tokens = 0;
  EXPECT_EQ(Router::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(RouterOptionsTest, ModeNamesRoundTrip) {
  for (RoutingMode m :
       {RoutingMode::kHoleAware, RoutingMode::kContiguousPrefix, RoutingMode::kRoundRobin}) {
    auto parsed = ParseRoutingMode(RoutingModeName(m));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, m);
  }
  EXPECT_EQ(ParseRoutingMode("least-loaded").status().code(), absl::StatusCode::kInvalidArgument);
}

// The headline case: front-first eviction left daemon 1 with the deep 7/8 of
// a long context and a hole at the front; daemon 2 holds a contiguous 1/4
// prefix. A contiguous-prefix router picks daemon 2; the hole-aware router
// sees that rebuilding the cheap front is far less work.
TEST_F(RouterTest, HoleAwarePrefersDeepResidentBlocksOverALongerPrefix) {
  MakeContext(8192);  // 512 blocks
  Hold(1, 64, 512);
  Hold(2, 0, 128);
  const std::vector<RouteCandidate> candidates = {Candidate(1), Candidate(2), Candidate(3)};

  Router hole_aware(RouterOptions{});
  auto d = hole_aware.Route(Query(), candidates, index_, /*explain=*/true);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(candidates[d->candidate].member, 1u);
  EXPECT_EQ(d->reason, RouteReason::kBestPredictedTtft);
  EXPECT_EQ(d->score.hit_tokens, 448 * 16);
  EXPECT_EQ(d->score.contiguous_hit_tokens, 0);
  EXPECT_EQ(d->score.rebuild_tokens, 64 * 16);
  EXPECT_EQ(d->score.new_tokens, 0);
  ASSERT_EQ(d->rebuild.size(), 1u);
  EXPECT_EQ(d->rebuild[0].first_block, 0);
  EXPECT_EQ(d->rebuild[0].blocks, 64);
  ASSERT_EQ(d->all.size(), 3u);
  EXPECT_LT(d->all[0].predicted_ttft_s, d->all[1].predicted_ttft_s);
  EXPECT_LT(d->all[1].predicted_ttft_s, d->all[2].predicted_ttft_s);

  RouterOptions prefix_options;
  prefix_options.mode = RoutingMode::kContiguousPrefix;
  Router prefix(prefix_options);
  auto p = prefix.Route(Query(), candidates, index_);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(candidates[p->candidate].member, 2u);
  EXPECT_EQ(p->score.contiguous_hit_tokens, 128 * 16);
  // The prediction is reported whatever the mode, and is worse here.
  EXPECT_GT(p->score.predicted_ttft_s, d->score.predicted_ttft_s);
}

TEST_F(RouterTest, BreakdownAddsUpAndRunsFollowPositions) {
  MakeContext(150);  // 10 blocks, the last one 6 tokens
  Hold(4, 2, 4);
  Hold(4, 6, 7);
  Router router(RouterOptions{});
  auto d = router.Route(Query(), {Candidate(4, /*load=*/5000)}, index_);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->reason, RouteReason::kOnlyCandidate);
  EXPECT_EQ(d->score.hit_tokens, 48);
  EXPECT_EQ(d->score.rebuild_tokens, 64);  // blocks 0, 1, 4, 5
  EXPECT_EQ(d->score.new_tokens, 38);      // blocks 7, 8, 9 (16 + 16 + 6)
  EXPECT_EQ(d->score.load_tokens, 5000);
  EXPECT_GT(d->score.queue_s, 0);
  EXPECT_DOUBLE_EQ(d->score.predicted_ttft_s,
                   std::max(d->score.queue_s, d->score.fetch_s) + d->score.compute_s);
  ASSERT_EQ(d->rebuild.size(), 3u);
  EXPECT_EQ(d->rebuild[0].first_block, 0);
  EXPECT_EQ(d->rebuild[0].tokens, 32);
  EXPECT_EQ(d->rebuild[1].first_block, 4);
  EXPECT_EQ(d->rebuild[2].first_block, 7);
  EXPECT_EQ(d->rebuild[2].blocks, 3);
  EXPECT_EQ(d->rebuild[2].tokens, 38);
  // compute_s is the cost model's step over exactly those queries.
  AttentionWork work;
  work.query_tokens = 102;
  work.kv_tokens_scanned = 150;
  work.segments = 3;
  for (int64_t b : {0, 1, 4, 5, 7, 8, 9}) {
    const int64_t t = b == 9 ? 6 : 16;
    work.attended_pairs += t * b * 16 + t * (t + 1) / 2;
  }
  EXPECT_DOUBLE_EQ(d->score.compute_s, cost_.StepLatency(102, absl::MakeConstSpan(&work, 1)));
  // A calibration with the prefill launch model routes by the same per-pair
  // estimate: the missing part runs as many chunked steps, not one launch.
  CalibrationParams with_launch_model = CostModel::DefaultH100Llama3_8B();
  with_launch_model.num_sms = 132;
  const CostModel launch_cost(ModelConfig{}, with_launch_model);
  RouteCandidate candidate = Candidate(4, /*load=*/5000);
  candidate.cost = &launch_cost;
  auto launch = router.Route(Query(), {candidate}, index_);
  ASSERT_TRUE(launch.ok()) << launch.status();
  EXPECT_DOUBLE_EQ(launch->score.compute_s, d->score.compute_s);
  EXPECT_NE(launch_cost.StepLatency(102, absl::MakeConstSpan(&work, 1)), d->score.compute_s);
}

TEST_F(RouterTest, FullHitStillCostsOneQueryRow) {
  MakeContext(4096);
  Hold(1, 0, 256);
  Router router(RouterOptions{});
  auto d = router.Route(Query(), {Candidate(1), Candidate(2)}, index_);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->candidate, 0u);
  EXPECT_EQ(d->score.hit_tokens, 4096);
  EXPECT_TRUE(d->rebuild.empty());
  EXPECT_GT(d->score.compute_s, 0);
}

TEST_F(RouterTest, QueueingMovesWorkToAnIdleDaemon) {
  MakeContext(2048);
  Hold(1, 0, 128);
  Hold(2, 0, 128);
  Router router(RouterOptions{});
  auto d = router.Route(Query(), {Candidate(1, 60000), Candidate(2, 0)}, index_);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->candidate, 1u);
  EXPECT_EQ(d->reason, RouteReason::kBestPredictedTtft);
}

TEST_F(RouterTest, TiesGoToTheLeastLoadedAndEqualTiesRotate) {
  MakeContext(512);
  Router router(RouterOptions{});
  // Nothing cached anywhere; a few queued tokens are within the tolerance.
  auto d = router.Route(Query(), {Candidate(1, 16), Candidate(2, 0), Candidate(3, 32)}, index_);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->candidate, 1u);
  EXPECT_EQ(d->reason, RouteReason::kLoadTieBreak);
  std::set<size_t> chosen;
  const std::vector<RouteCandidate> equal = {Candidate(1), Candidate(2), Candidate(3)};
  for (int i = 0; i < 3; ++i) chosen.insert(router.Route(Query(), equal, index_)->candidate);
  EXPECT_EQ(chosen.size(), 3u);
}

TEST_F(RouterTest, EqualLoadTiesPreferTheCandidateHoldingMore) {
  MakeContext(512);
  Hold(2, 0, 1);  // one 16-token block: well within the tie tolerance
  Router router(RouterOptions{});
  for (int i = 0; i < 4; ++i) {
    auto d = router.Route(Query(), {Candidate(1), Candidate(2), Candidate(3)}, index_);
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->candidate, 1u);
    EXPECT_EQ(d->reason, RouteReason::kLoadTieBreak);
  }
}

TEST_F(RouterTest, LoadBoundOverridesTheBestPrediction) {
  MakeContext(32768);
  Hold(1, 0, 2048);  // everything cached on 1, which is busy
  RouterOptions o;
  o.imbalance_abs_tokens = 100;
  o.imbalance_relative = 1.0;
  Router router(o);
  auto d = router.Route(Query(), {Candidate(1, 1000), Candidate(2, 0)}, index_, true);
  ASSERT_TRUE(d.ok());
  ASSERT_LT(d->all[0].predicted_ttft_s, d->all[1].predicted_ttft_s);  // 1 is predicted faster
  EXPECT_EQ(d->candidate, 1u);
  EXPECT_EQ(d->reason, RouteReason::kLoadBound);
  // Within the bound the prediction wins.
  Router loose(RouterOptions{});
  EXPECT_EQ(loose.Route(Query(), {Candidate(1, 1000), Candidate(2, 0)}, index_)->candidate, 0u);
}

TEST_F(RouterTest, MemoryBoundSkipsDaemonsThatCannotFitOrAreCommittedToStickyJobs) {
  MakeContext(4096);  // 256 blocks, all cached on 1
  Hold(1, 0, 256);
  Router router(RouterOptions{});
  RouteCandidate full = Candidate(1);
  full.capacity_blocks = 1000;
  full.busy_blocks = 990;  // holds the blocks, but the reserve does not fit
  RouteCandidate idle = Candidate(3);
  idle.capacity_blocks = 1000;
  idle.busy_blocks = 100;
  RouteQuery q = Query();
  q.reserve_blocks = 64;  // e.g. the tokens it will generate
  auto d = router.Route(q, {full, idle}, index_);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->candidate, 1u);
  EXPECT_EQ(d->reason, RouteReason::kMemoryBound);
  // Resident blocks need no allocation: without the reserve it fits (10 free).
  EXPECT_EQ(router.Route(Query(), {full, idle}, index_)->candidate, 0u);
  // Busy blocks alone are not balanced (shared documents are busy because
  // they are wanted), but blocks committed to sticky agent jobs are.
  RouteCandidate shared = Candidate(1);
  shared.capacity_blocks = 1000;
  shared.busy_blocks = 700;
  d = router.Route(Query(), {shared, idle}, index_);
  EXPECT_EQ(d->candidate, 0u);
  EXPECT_EQ(d->reason, RouteReason::kBestPredictedTtft);
  shared.committed_blocks = 200;  // 0.2 > 0.0 + 0.05
  d = router.Route(Query(), {shared, idle}, index_);
  EXPECT_EQ(d->candidate, 1u);
  EXPECT_EQ(d->reason, RouteReason::kMemoryBound);
  idle.committed_blocks = 180;  // within the bound again
  EXPECT_EQ(router.Route(Query(), {shared, idle}, index_)->candidate, 0u);
  // When nothing is in bounds, those that fit are considered; when none fits, all.
  RouteCandidate also_full = Candidate(4);
  also_full.capacity_blocks = 1000;
  also_full.busy_blocks = 995;
  d = router.Route(q, {full, also_full}, index_);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->candidate, 0u);  // holds the blocks
  q.reserve_blocks = -1;
  EXPECT_EQ(router.Route(q, {idle}, index_).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(RouterTest, AgentJobSticksToItsMemberWhileItIsACandidate) {
  MakeContext(4096);
  Hold(1, 0, 256);
  Router router(RouterOptions{});
  RouteQuery q = Query();
  q.sticky_member = 2;
  auto d = router.Route(q, {Candidate(1), Candidate(2)}, index_);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->candidate, 1u);
  EXPECT_EQ(d->reason, RouteReason::kAgentAffinity);
  q.sticky_member = 9;  // gone: routed on merit
  d = router.Route(q, {Candidate(1), Candidate(2)}, index_);
  EXPECT_EQ(d->candidate, 0u);
  EXPECT_EQ(d->reason, RouteReason::kBestPredictedTtft);
}

TEST_F(RouterTest, RoundRobinCyclesAndIgnoresTheCache) {
  MakeContext(1024);
  Hold(1, 0, 64);
  RouterOptions o;
  o.mode = RoutingMode::kRoundRobin;
  Router router(o);
  const std::vector<RouteCandidate> c = {Candidate(1), Candidate(2), Candidate(3)};
  std::vector<size_t> got;
  for (int i = 0; i < 6; ++i) {
    auto d = router.Route(Query(), c, index_);
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->reason, RouteReason::kRoundRobin);
    got.push_back(d->candidate);
  }
  EXPECT_EQ(got, (std::vector<size_t>{0, 1, 2, 0, 1, 2}));
}

// Fetch iff the transfer is cheaper than rebuilding: on a slow link the cheap
// leading blocks are rebuilt and the deep ones pulled (DESIGN.md §3.3).
TEST_F(RouterTest, FetchesDeepBlocksAndRebuildsCheapLeadingOnes) {
  MakeContext(16384);  // 1024 blocks, all on member 7 (not a candidate: e.g. a decode daemon)
  Hold(7, 0, 1024);
  // A link speed at which block 512's transfer equals its rebuild cost.
  const int64_t block_bytes = cost_.model().KvBytesPerBlock();
  const double rebuild_mid = cost_.RebuildCost(16, 512 * 16, 0.0, 16384);
  RouterOptions o;
  o.fetch_setup = absl::ZeroDuration();
  o.fetch_bytes_per_s = static_cast<double>(block_bytes) / rebuild_mid;
  Router router(o);
  auto d = router.Route(Query(), {Candidate(1)}, index_);
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_EQ(d->fetch.size(), 1u);
  EXPECT_EQ(d->fetch[0].from, 7u);
  EXPECT_GT(d->fetch[0].first_block, 400);
  EXPECT_LT(d->fetch[0].first_block, 600);
  EXPECT_EQ(d->fetch[0].first_block + d->fetch[0].blocks, 1024);
  EXPECT_EQ(d->fetch[0].bytes, d->fetch[0].blocks * block_bytes);
  ASSERT_EQ(d->rebuild.size(), 1u);
  EXPECT_EQ(d->rebuild[0].first_block, 0);
  EXPECT_EQ(d->rebuild[0].blocks, d->fetch[0].first_block);
  EXPECT_EQ(d->score.fetched_blocks, d->fetch[0].blocks);
  EXPECT_EQ(d->score.rebuild_tokens, d->fetch[0].first_block * 16);  // holes before fetched blocks
  EXPECT_GT(d->score.fetch_s, 0);

  RouterOptions no_fetch = o;
  no_fetch.allow_fetch = false;
  auto n = Router(no_fetch).Route(Query(), {Candidate(1)}, index_);
  ASSERT_TRUE(n.ok());
  EXPECT_TRUE(n->fetch.empty());
  EXPECT_EQ(n->score.new_tokens, 16384);
  EXPECT_GT(n->score.predicted_ttft_s, d->score.predicted_ttft_s);
}

TEST_F(RouterTest, FetchesOnlyFromAllowedSources) {
  MakeContext(16384);
  Hold(7, 0, 1024);
  RouterOptions o;
  o.fetch_setup = absl::ZeroDuration();
  o.fetch_bytes_per_s = 1e12;  // fetching beats rebuilding everywhere
  Router router(o);
  RouteQuery q = Query();
  auto d = router.Route(q, {Candidate(1)}, index_);  // any holder
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->score.fetched_blocks, 1024);
  const std::vector<MemberSlot> others = {8, 9};
  q.fetch_sources = absl::MakeConstSpan(others);  // 7 is not live
  d = router.Route(q, {Candidate(1)}, index_);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->score.fetched_blocks, 0);
  EXPECT_TRUE(d->fetch.empty());
  q.fetch_sources = absl::Span<const MemberSlot>();  // no source at all
  EXPECT_EQ(router.Route(q, {Candidate(1)}, index_)->score.fetched_blocks, 0);
  const std::vector<MemberSlot> seven = {7};
  q.fetch_sources = absl::MakeConstSpan(seven);
  d = router.Route(q, {Candidate(1)}, index_);
  ASSERT_EQ(d->fetch.size(), 1u);
  EXPECT_EQ(d->fetch[0].from, 7u);
}

TEST_F(RouterTest, FetchSetupMustPayOff) {
  MakeContext(64);  // 4 cheap blocks on member 7
  Hold(7, 0, 4);
  RouterOptions o;
  o.fetch_setup = absl::Seconds(1);
  auto d = Router(o).Route(Query(), {Candidate(1)}, index_);
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(d->fetch.empty());
  EXPECT_EQ(d->score.fetch_s, 0);
}

TEST_F(RouterTest, BadInputIsRefusedWithInvalidArgument) {
  MakeContext(100);
  Router router(RouterOptions{});
  EXPECT_EQ(router.Route(Query(), {}, index_).status().code(), absl::StatusCode::kInvalidArgument);
  RouteQuery q = Query();
  q.tokens = 200;
  auto s = router.Route(q, {Candidate(1)}, index_).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("tokens 200"), std::string::npos) << s;
  q = Query();
  q.hashes = {};
  EXPECT_EQ(router.Route(q, {Candidate(1)}, index_).status().code(),
            absl::StatusCode::kInvalidArgument);
  RouteCandidate null_cost = Candidate(2);
  null_cost.cost = nullptr;
  EXPECT_EQ(router.Route(Query(), {Candidate(1), null_cost}, index_).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(router.Route(Query(), {Candidate(1), Candidate(1)}, index_).status().code(),
            absl::StatusCode::kInvalidArgument);
  ModelConfig big_blocks;
  big_blocks.block_tokens = 32;
  const CostModel other(big_blocks, CostModel::DefaultCpu(big_blocks));
  RouteCandidate mismatched = Candidate(2);
  mismatched.cost = &other;
  EXPECT_EQ(router.Route(Query(), {Candidate(1), mismatched}, index_).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(RouterTest, PickDecodeTakesTheSmallestBatchThenTheMostFreeBlocks) {
  Router router(RouterOptions{});
  std::vector<RouteCandidate> c = {Candidate(1), Candidate(2), Candidate(3)};
  c[0].decode_batch = 8;
  c[1].decode_batch = 2;
  c[1].free_blocks = 10;
  c[2].decode_batch = 2;
  c[2].free_blocks = 50;
  auto d = router.PickDecode(c);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(*d, 2u);
  EXPECT_EQ(router.PickDecode({}).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace asymcache
