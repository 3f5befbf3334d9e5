#include "cachecore/chunk_scheduler.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "cachecore/cost_model.h"
#include "cachecore/model_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asymcache {
namespace {

using ::testing::ElementsAre;
using Mode = ChunkSchedulerOptions::Mode;

class ChunkSchedulerTest : public ::testing::Test {
 protected:
  ChunkSchedulerTest() : cost_(ModelConfig{}, CostModel::DefaultH100Llama3_8B()) {}

  static ChunkSchedulerOptions Fixed(int64_t budget) {
    ChunkSchedulerOptions options;
    options.mode = Mode::kFixed;
    options.fixed_budget_tokens = budget;
    return options;
  }
  static std::vector<DecodeWork> Decodes(int n, int64_t context) {
    std::vector<DecodeWork> decodes;
    for (int i = 0; i < n; ++i) decodes.push_back({static_cast<SequenceId>(1000 + i), context});
    return decodes;
  }
  static PrefillWork Tail(SequenceId seq, int64_t begin, int64_t end) {
    return PrefillWork{seq, {{begin, end}}, end};
  }

  CostModel cost_;
};

int64_t SumTokens(const std::vector<Chunk>& chunks) {
  int64_t total = 0;
  for (const Chunk& c : chunks) total += c.tokens();
  return total;
}

// Checks every rule a schedule must obey against the work it was cut from:
// budget, service order, position order without skipping, alignment.
void ExpectWellFormed(const StepSchedule& schedule, const std::vector<PrefillWork>& pending,
                      int64_t tile) {
  EXPECT_EQ(schedule.prefill_tokens, SumTokens(schedule.chunks));
  EXPECT_LE(schedule.prefill_tokens, schedule.budget_tokens);
  size_t c = 0;
  size_t last_work = 0;
  while (c < schedule.chunks.size()) {
    // Sequences appear in the order given, each once, its chunks consecutive.
    size_t w = last_work;
    while (w < pending.size() && pending[w].sequence != schedule.chunks[c].sequence) ++w;
    ASSERT_LT(w, pending.size()) << "chunk of an unknown or out-of-order sequence";
    last_work = w + 1;
    const PrefillWork& work = pending[w];
    // The k-th chunk of a sequence starts at its k-th run; only the last may be cut.
    for (size_t r = 0; c < schedule.chunks.size() &&
                       schedule.chunks[c].sequence == work.sequence;
         ++r, ++c) {
      ASSERT_LT(r, work.runs.size());
      const Chunk& chunk = schedule.chunks[c];
      EXPECT_EQ(chunk.begin, work.runs[r].first) << "sequence skipped earlier positions";
      EXPECT_GT(chunk.end, chunk.begin);
      EXPECT_LE(chunk.end, work.runs[r].second);
      if (chunk.end < work.runs[r].second) {
        EXPECT_EQ(chunk.end % tile, 0) << "cut inside a run not tile aligned";
        const bool last_of_sequence = c + 1 == schedule.chunks.size() ||
                                      schedule.chunks[c + 1].sequence != work.sequence;
        EXPECT_TRUE(last_of_sequence) << "a later run was served before this one finished";
      }
    }
  }
}

// Removes what `schedule` ran from `pending` (runs shrink from the front).
void Consume(const StepSchedule& schedule, std::vector<PrefillWork>* pending) {
  for (const Chunk& chunk : schedule.chunks) {
    for (PrefillWork& work : *pending) {
      if (work.sequence != chunk.sequence) continue;
      ASSERT_FALSE(work.runs.empty());
      ASSERT_EQ(work.runs.front().first, chunk.begin);
      work.runs.front().first = chunk.end;
      if (work.runs.front().first == work.runs.front().second) work.runs.erase(work.runs.begin());
    }
  }
  pending->erase(std::remove_if(pending->begin(), pending->end(),
                                [](const PrefillWork& w) { return w.runs.empty(); }),
                 pending->end());
}

TEST_F(ChunkSchedulerTest, ValidateRejectsBadOptions) {
  EXPECT_TRUE(ChunkSchedulerOptions{}.Validate().ok());
  auto expect_invalid = [](ChunkSchedulerOptions o, const char* field) {
    absl::Status s = o.Validate();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr(field));
  };
  ChunkSchedulerOptions o;
  o.tile_tokens = 0;
  expect_invalid(o, "tile_tokens");
  o = {};
  o.fixed_budget_tokens = 1000;  // not a multiple of 16
  expect_invalid(o, "fixed_budget_tokens");
  o = {};
  o.max_budget_tokens = 0;
  expect_invalid(o, "max_budget_tokens");
  o = {};
  o.min_budget_tokens = -16;
  expect_invalid(o, "min_budget_tokens");
  o = {};
  o.min_budget_tokens = 32768;
  expect_invalid(o, "min_budget_tokens");
  o = {};
  o.overload_budget_tokens = -16;
  expect_invalid(o, "overload_budget_tokens");
  o = {};
  o.overload_budget_tokens = 1000;  // not a multiple of 16
  expect_invalid(o, "overload_budget_tokens");
  o = {};
  o.overload_budget_tokens = 0;  // off
  EXPECT_TRUE(o.Validate().ok());
  o.overload_budget_tokens = 65536;  // above max_budget_tokens: acts as it
  EXPECT_TRUE(o.Validate().ok());
  o = {};
  o.tpot_target = absl::ZeroDuration();
  expect_invalid(o, "tpot_target");
  o = {};
  o.tpot_target = absl::InfiniteDuration();
  expect_invalid(o, "tpot_target");
  o = {};
  o.max_step_latency = absl::InfiniteDuration();
  expect_invalid(o, "max_step_latency");
  o = {};
  o.max_step_latency = absl::Milliseconds(-1);
  expect_invalid(o, "max_step_latency");
  o = {};
  o.max_step_latency = absl::Milliseconds(10);  // below the target: acts as the target
  EXPECT_TRUE(o.Validate().ok());
  o = {};
  o.tpot_slo = static_cast<ChunkSchedulerOptions::TpotSlo>(7);
  expect_invalid(o, "tpot_slo");
  o = ChunkSchedulerOptions{};
  o.prefill_order = static_cast<ChunkSchedulerOptions::PrefillOrder>(5);
  expect_invalid(o, "prefill_order");
  o = ChunkSchedulerOptions{};
  o.reorder_wait_limit = absl::ZeroDuration();
  expect_invalid(o, "reorder_wait_limit");
}

TEST(PrefillOrderNames, RoundTripAndRefuseOthers) {
  for (auto order : {ChunkSchedulerOptions::PrefillOrder::kArrival,
                     ChunkSchedulerOptions::PrefillOrder::kLeastRemaining}) {
    absl::StatusOr<ChunkSchedulerOptions::PrefillOrder> parsed =
        ParsePrefillOrder(PrefillOrderName(order));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, order);
  }
  EXPECT_EQ(PrefillOrderName(ChunkSchedulerOptions::PrefillOrder::kLeastRemaining),
            "least-remaining");
  const absl::StatusOr<ChunkSchedulerOptions::PrefillOrder> bad = ParsePrefillOrder("sjf");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(), "must be arrival or least-remaining, got 'sjf'");
}

TEST(TpotSloNames, RoundTripAndRefuseOthers) {
  for (auto slo : {ChunkSchedulerOptions::TpotSlo::kRequestMean,
                   ChunkSchedulerOptions::TpotSlo::kPerStep}) {
    absl::StatusOr<ChunkSchedulerOptions::TpotSlo> parsed = ParseTpotSlo(TpotSloName(slo));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, slo);
  }
  EXPECT_EQ(TpotSloName(ChunkSchedulerOptions::TpotSlo::kRequestMean), "request-mean");
  EXPECT_EQ(TpotSloName(ChunkSchedulerOptions::TpotSlo::kPerStep), "per-step");
  const absl::StatusOr<ChunkSchedulerOptions::TpotSlo> bad = ParseTpotSlo("Per-Step");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(), "must be request-mean or per-step, got 'Per-Step'");
}

// A decode that produced `after_first` tokens after its first one in `seconds`.
DecodeWork DecodeWithHistory(SequenceId seq, int64_t context, int64_t after_first, double seconds) {
  DecodeWork decode{seq, context};
  decode.tokens_after_first = after_first;
  decode.seconds_since_first = seconds;
  return decode;
}

TEST_F(ChunkSchedulerTest, StepLatencyLimitIsTheSlowestDecodesMeanTpotAllowance) {
  ChunkSchedulerOptions options;  // kRequestMean, 50 ms target, 250 ms cap
  ASSERT_EQ(options.tpot_slo, ChunkSchedulerOptions::TpotSlo::kRequestMean);
  ChunkScheduler scheduler(&cost_, options);
  auto limit = [&](std::vector<DecodeWork> decodes) { return scheduler.StepLatencyLimit(decodes); };
  EXPECT_DOUBLE_EQ(limit({}), 0.05);
  EXPECT_DOUBLE_EQ(limit({DecodeWithHistory(1, 100, 0, 0)}), 0.05) << "no tokens yet: no slack";
  // 10 tokens after the first in 0.45 s: the 11th may come 0.05 * 11 - 0.45 = 0.1 s later.
  EXPECT_NEAR(limit({DecodeWithHistory(1, 100, 10, 0.45)}), 0.10, 1e-12);
  // The least allowance over the step's decodes (the other one: 0.05 * 21 - 0.3 = 0.75).
  EXPECT_NEAR(limit({DecodeWithHistory(2, 100, 20, 0.3), DecodeWithHistory(1, 100, 10, 0.45)}),
              0.10, 1e-12);
  // Capped at max_step_latency; never below the target (a decode already behind).
  EXPECT_DOUBLE_EQ(limit({DecodeWithHistory(1, 100, 10, 0.2)}), 0.25);
  EXPECT_DOUBLE_EQ(limit({DecodeWithHistory(1, 100, 10, 0.6)}), 0.05);
  EXPECT_DOUBLE_EQ(limit({DecodeWithHistory(1, 100, 10, std::nan(""))}), 0.05);
  // A cap below the target acts as the target.
  options.max_step_latency = absl::Milliseconds(10);
  EXPECT_DOUBLE_EQ(ChunkScheduler(&cost_, options).StepLatencyLimit(
                       std::vector<DecodeWork>{DecodeWithHistory(1, 100, 10, 0.2)}),
                   0.05);
  // kPerStep: the target, whatever the history.
  options = {};
  options.tpot_slo = ChunkSchedulerOptions::TpotSlo::kPerStep;
  EXPECT_DOUBLE_EQ(ChunkScheduler(&cost_, options).StepLatencyLimit(
                       std::vector<DecodeWork>{DecodeWithHistory(1, 100, 10, 0.2)}),
                   0.05);
}

TEST_F(ChunkSchedulerTest, BankedSlackBuysTheLargestChunkWithinTheLimit) {
  // The long-doc-qa case: a chunk deep in a document beside two long decodes.
  const std::vector<PrefillWork> deep = {Tail(1, 48000, 60000)};
  ChunkSchedulerOptions per_step_options;
  per_step_options.tpot_slo = ChunkSchedulerOptions::TpotSlo::kPerStep;
  ChunkScheduler per_step(&cost_, per_step_options);
  ChunkScheduler request_mean(&cost_, ChunkSchedulerOptions{});
  // Decodes that ran 100 tokens at 26 ms each: 2.45 s of slack, capped at 250 ms.
  std::vector<DecodeWork> banked = {DecodeWithHistory(1000, 50000, 100, 2.6),
                                    DecodeWithHistory(1001, 50000, 100, 2.6)};
  const StepSchedule old_rule = per_step.Schedule(banked, deep);
  const StepSchedule slack = request_mean.Schedule(banked, deep);
  ExpectWellFormed(slack, deep, 16);
  EXPECT_GT(slack.budget_tokens, old_rule.budget_tokens);
  EXPECT_GT(slack.predicted_latency_s, 0.05);
  EXPECT_LE(slack.predicted_latency_s, 0.25);
  // The largest such budget: one tile more predicts past the limit.
  const std::vector<Chunk> more = request_mean.FillBudget(slack.budget_tokens + 16, deep);
  EXPECT_GT(request_mean.PredictStepLatency(banked, more), 0.25);
  // One decode without slack (it just produced its first token) holds the step
  // to the target: the old rule's budget.
  banked.push_back(DecodeWithHistory(1002, 30000, 0, 0));
  EXPECT_EQ(request_mean.Schedule(banked, deep).budget_tokens,
            per_step.Schedule(banked, deep).budget_tokens);
  EXPECT_LE(request_mean.Schedule(banked, deep).predicted_latency_s, 0.05);
}

TEST(ChunkSchedulerStatic, CausalAttendedPairsMatchesBruteForce) {
  for (int64_t begin = 0; begin < 70; begin += 3) {
    for (int64_t end = begin; end < begin + 70; end += 5) {
      int64_t brute = 0;
      for (int64_t q = begin; q < end; ++q) brute += q + 1;
      EXPECT_EQ(ChunkScheduler::CausalAttendedPairs(begin, end), brute) << begin << "," << end;
    }
  }
  // Large values stay exact (a 128k context).
  EXPECT_EQ(ChunkScheduler::CausalAttendedPairs(0, 131072), int64_t{131072} * 131073 / 2);
}

TEST_F(ChunkSchedulerTest, PredictStepLatencyCountsSegmentsAndSharedScan) {
  ChunkScheduler scheduler(&cost_, ChunkSchedulerOptions{});
  const std::vector<DecodeWork> decodes = {{7, 4000}};
  // Sequence 1: two holes and a tail adjacent to the second hole (one segment).
  const std::vector<Chunk> chunks = {{1, 32, 48}, {1, 96, 112}, {1, 112, 200}, {2, 0, 64}};
  const AttentionWork decode{1, 4000, 4000, 1};
  const AttentionWork seq1{16 + 16 + 88,
                           ChunkScheduler::CausalAttendedPairs(32, 48) +
                               ChunkScheduler::CausalAttendedPairs(96, 200),
                           200, 2};
  const AttentionWork seq2{64, ChunkScheduler::CausalAttendedPairs(0, 64), 64, 1};
  const std::vector<AttentionWork> works = {decode, seq1, seq2};
  EXPECT_DOUBLE_EQ(scheduler.PredictStepLatency(decodes, chunks),
                   cost_.StepLatency(1 + 120 + 64, works));
}

TEST_F(ChunkSchedulerTest, FixedBudgetCutsLongTailAtBudget) {
  ChunkScheduler scheduler(&cost_, Fixed(512));
  const std::vector<PrefillWork> pending = {Tail(1, 0, 5000)};
  StepSchedule s = scheduler.Schedule({}, pending);
  EXPECT_EQ(s.budget_tokens, 512);
  EXPECT_THAT(s.chunks, ElementsAre(Chunk{1, 0, 512}));
  EXPECT_EQ(s.prefill_tokens, 512);
  EXPECT_GT(s.predicted_latency_s, 0);
}

// kArrival serves the caller's order; kLeastRemaining the sequence with the
// fewest tokens left first (a follow-up turn ahead of a document), except one
// that waited reorder_wait_limit or longer, which keeps its place ahead.
TEST_F(ChunkSchedulerTest, LeastRemainingServesTheShortestPrefillFirstUnlessOneWaitedTooLong) {
  const std::vector<PrefillWork> pending = {Tail(1, 0, 40000), Tail(2, 5000, 5100),
                                            PrefillWork{3, {{0, 64}, {900, 932}}, 932}};
  ChunkSchedulerOptions options = Fixed(512);
  ChunkScheduler arrival(&cost_, options);
  EXPECT_THAT(arrival.Schedule({}, pending).chunks, ElementsAre(Chunk{1, 0, 512}));

  options.prefill_order = ChunkSchedulerOptions::PrefillOrder::kLeastRemaining;
  ChunkScheduler least(&cost_, options);
  const StepSchedule s = least.Schedule({}, pending);
  // 3 (96 tokens), then 2 (100), then 1 with what is left (316, tile-aligned).
  EXPECT_THAT(s.chunks, ElementsAre(Chunk{3, 0, 64}, Chunk{3, 900, 932}, Chunk{2, 5000, 5100},
                                    Chunk{1, 0, 304}));
  EXPECT_EQ(s.prefill_tokens, 96 + 100 + 304);

  std::vector<PrefillWork> starved = pending;
  starved[0].waited_s = 20.0;  // the default limit: it keeps its place ahead
  starved[2].waited_s = 19.9;
  EXPECT_THAT(least.Schedule({}, starved).chunks, ElementsAre(Chunk{1, 0, 512}));
  starved[0].waited_s = 0;
  starved[1].waited_s = 25;  // ahead of 3 although 3 has less left
  EXPECT_THAT(least.Schedule({}, starved).chunks,
              ElementsAre(Chunk{2, 5000, 5100}, Chunk{3, 0, 64}, Chunk{3, 900, 932},
                          Chunk{1, 0, 304}));
}

TEST_F(ChunkSchedulerTest, FixedModeIgnoresLoad) {
  ChunkScheduler scheduler(&cost_, Fixed(2048));
  const std::vector<PrefillWork> pending = {Tail(1, 0, 30000), Tail(2, 0, 900)};
  StepSchedule idle = scheduler.Schedule({}, pending);
  StepSchedule busy = scheduler.Schedule(Decodes(512, 32000), pending);
  EXPECT_EQ(idle.budget_tokens, 2048);
  EXPECT_EQ(busy.budget_tokens, 2048);
  EXPECT_EQ(idle.chunks, busy.chunks);
  EXPECT_EQ(busy.prefill_tokens, 2048);
  EXPECT_GT(busy.predicted_latency_s, idle.predicted_latency_s);
  // Less work than the budget: all of it, nothing more.
  StepSchedule small = scheduler.Schedule(Decodes(4, 1000), {Tail(3, 0, 700)});
  EXPECT_THAT(small.chunks, ElementsAre(Chunk{3, 0, 700}));
}

TEST_F(ChunkSchedulerTest, CutsAreTileAlignedInAbsolutePositions) {
  ChunkScheduler scheduler(&cost_, Fixed(64));
  // A tail starting mid-block (follow-up turn after a partial last block).
  StepSchedule s = scheduler.Schedule({}, {Tail(1, 8, 1000)});
  EXPECT_THAT(s.chunks, ElementsAre(Chunk{1, 8, 64}));
  // A run shorter than the budget ends where it ends, unaligned.
  s = scheduler.Schedule({}, {Tail(1, 8, 50)});
  EXPECT_THAT(s.chunks, ElementsAre(Chunk{1, 8, 50}));
}

TEST_F(ChunkSchedulerTest, PacksSmallHolesOfSeveralSequencesIntoOneStep) {
  ChunkScheduler scheduler(&cost_, Fixed(256));
  const std::vector<PrefillWork> pending = {
      PrefillWork{1, {{32, 48}, {96, 112}}, 4000},
      PrefillWork{2, {{0, 16}, {160, 192}}, 8000},
      PrefillWork{3, {{4096, 4100}}, 4100},
      PrefillWork{4, {{16, 32}, {500, 2000}}, 2000},
  };
  StepSchedule s = scheduler.Schedule(Decodes(8, 4000), pending);
  ExpectWellFormed(s, pending, 16);
  EXPECT_THAT(s.chunks, ElementsAre(Chunk{1, 32, 48}, Chunk{1, 96, 112}, Chunk{2, 0, 16},
                                    Chunk{2, 160, 192}, Chunk{3, 4096, 4100}, Chunk{4, 16, 32},
                                    Chunk{4, 500, 656}));
  // 16 + 16 + 16 + 32 + 4 + 16 = 100 in whole holes; sequence 4's tail takes
  // the remaining 156, cut at the aligned position 656.
  EXPECT_EQ(s.prefill_tokens, 256);
}

TEST_F(ChunkSchedulerTest, LeftoverAfterAlignedCutGoesToLaterSequences) {
  ChunkScheduler scheduler(&cost_, Fixed(96));
  // Sequence 1 reaches only the aligned cut at 96 (88 tokens); the 8 left over
  // fit sequence 2's 5-token partial-block hole; sequence 3's 16-token hole
  // does not fit and waits.
  const std::vector<PrefillWork> pending = {Tail(1, 8, 1000), PrefillWork{2, {{200, 205}}, 300},
                                            PrefillWork{3, {{0, 16}}, 300}};
  StepSchedule s = scheduler.Schedule({}, pending);
  ExpectWellFormed(s, pending, 16);
  EXPECT_THAT(s.chunks, ElementsAre(Chunk{1, 8, 96}, Chunk{2, 200, 205}));
  EXPECT_EQ(s.prefill_tokens, 93);
}

TEST_F(ChunkSchedulerTest, NoDecodesBudgetGrowsToFinishPrefill) {
  ChunkScheduler scheduler(&cost_, ChunkSchedulerOptions{});
  const std::vector<PrefillWork> pending = {Tail(1, 0, 9000), PrefillWork{2, {{64, 80}}, 500}};
  StepSchedule s = scheduler.Schedule({}, pending);
  EXPECT_EQ(s.prefill_tokens, 9016);
  EXPECT_EQ(s.budget_tokens, 9024);  // the work rounded up to a tile
  EXPECT_THAT(s.chunks, ElementsAre(Chunk{1, 0, 9000}, Chunk{2, 64, 80}));
  // More work than max_budget_tokens: the cap.
  s = scheduler.Schedule({}, {Tail(1, 0, 100000)});
  EXPECT_EQ(s.budget_tokens, 16384);
  EXPECT_THAT(s.chunks, ElementsAre(Chunk{1, 0, 16384}));
  // With a decode waiting the same work is cut to keep the step under target.
  s = scheduler.Schedule(Decodes(1, 1000), pending);
  EXPECT_LT(s.prefill_tokens, 9016);
  EXPECT_LE(s.predicted_latency_s, 0.050);
}

TEST_F(ChunkSchedulerTest, AdaptiveBudgetShrinksAsDecodeBatchGrowsAndMeetsTarget) {
  ChunkSchedulerOptions options;
  ChunkScheduler scheduler(&cost_, options);
  const double target_s = absl::ToDoubleSeconds(options.tpot_target);
  const std::vector<PrefillWork> pending = {Tail(1, 0, 60000)};
  int64_t previous_budget = options.max_budget_tokens + 1;
  std::vector<int64_t> budgets;
  for (int batch : {1, 8, 32, 64, 128, 256, 1024}) {
    const std::vector<DecodeWork> decodes = Decodes(batch, 16384);
    StepSchedule s = scheduler.Schedule(decodes, pending);
    ExpectWellFormed(s, pending, options.tile_tokens);
    budgets.push_back(s.budget_tokens);
    EXPECT_EQ(s.budget_tokens % options.tile_tokens, 0);
    EXPECT_LE(s.budget_tokens, previous_budget) << "batch " << batch;
    previous_budget = s.budget_tokens;
    if (s.budget_tokens > options.min_budget_tokens) {
      EXPECT_LE(s.predicted_latency_s, target_s) << "batch " << batch;
      // Maximal: one more tile would break the target.
      const std::vector<Chunk> more = scheduler.FillBudget(s.budget_tokens + 16, pending);
      EXPECT_GT(scheduler.PredictStepLatency(decodes, more), target_s) << "batch " << batch;
    } else {
      EXPECT_EQ(s.budget_tokens, options.min_budget_tokens);
      EXPECT_EQ(s.prefill_tokens, options.min_budget_tokens) << "prefill never starves";
    }
  }
  EXPECT_LT(budgets.back(), budgets.front());
  EXPECT_GT(budgets.front(), 1024);  // one decode leaves room for a large chunk
  EXPECT_EQ(budgets.back(), options.min_budget_tokens);  // 1024 x 16k decodes exceed 50 ms alone
}

TEST_F(ChunkSchedulerTest, AdaptiveChunksShrinkDeeperInTheContext) {
  // Sarathi's observation, derived from the cost model: the same decode load
  // leaves a smaller budget for a chunk deep in a long context.
  ChunkScheduler scheduler(&cost_, ChunkSchedulerOptions{});
  const std::vector<DecodeWork> decodes = Decodes(16, 8192);
  StepSchedule shallow = scheduler.Schedule(decodes, {PrefillWork{1, {{0, 100000}}, 100000}});
  StepSchedule deep = scheduler.Schedule(decodes, {PrefillWork{1, {{96000, 100000}}, 100000}});
  EXPECT_LT(deep.budget_tokens, shallow.budget_tokens);
}

// Overload (requests wait for admission behind the step): a budget the
// target would shrink below overload_budget_tokens is raised to it, a larger
// budget that fits the target is kept, kFixed ignores the signal, 0 turns the
// rule off, and the floor never exceeds the pending work.
TEST_F(ChunkSchedulerTest, OverloadKeepsAtLeastTheOverloadBudget) {
  ChunkSchedulerOptions options;  // overload_budget_tokens 2048
  ChunkScheduler scheduler(&cost_, options);
  const double target_s = absl::ToDoubleSeconds(scheduler.options().tpot_target);
  // Deep in a long context beside two long decodes: the 50 ms target leaves
  // far less than 2048 tokens (the long-doc-qa case of docs/scheduling.md).
  const std::vector<DecodeWork> decodes = Decodes(2, 50000);
  const std::vector<PrefillWork> deep = {Tail(1, 48000, 60000)};
  const StepSchedule calm = scheduler.Schedule(decodes, deep, /*overloaded=*/false);
  ASSERT_LT(calm.budget_tokens, 2048);
  EXPECT_LE(calm.predicted_latency_s, target_s);
  const StepSchedule busy = scheduler.Schedule(decodes, deep, /*overloaded=*/true);
  ExpectWellFormed(busy, deep, options.tile_tokens);
  EXPECT_EQ(busy.budget_tokens, 2048);
  EXPECT_EQ(busy.prefill_tokens, 2048);
  EXPECT_GT(busy.predicted_latency_s, target_s) << "the floor overrides the target";

  // Shallow work where the target already allows more: unchanged.
  const std::vector<DecodeWork> one = Decodes(1, 1024);
  const std::vector<PrefillWork> shallow = {Tail(2, 0, 60000)};
  const StepSchedule shallow_calm = scheduler.Schedule(one, shallow, false);
  ASSERT_GT(shallow_calm.budget_tokens, 2048);
  EXPECT_EQ(scheduler.Schedule(one, shallow, true).budget_tokens, shallow_calm.budget_tokens);

  // Less pending work than the floor: all of it, no more.
  const std::vector<PrefillWork> small = {Tail(3, 49000, 49500)};
  const StepSchedule small_busy = scheduler.Schedule(decodes, small, true);
  EXPECT_EQ(small_busy.prefill_tokens, 500);
  EXPECT_EQ(small_busy.budget_tokens, 512);

  // Off, and kFixed: the signal changes nothing.
  options.overload_budget_tokens = 0;
  ChunkScheduler off(&cost_, options);
  EXPECT_EQ(off.Schedule(decodes, deep, true).budget_tokens, calm.budget_tokens);
  ChunkScheduler fixed(&cost_, Fixed(512));
  EXPECT_EQ(fixed.Schedule(decodes, deep, true).budget_tokens, 512);
  // A floor above max_budget_tokens acts as max_budget_tokens.
  options.overload_budget_tokens = 65536;
  options.max_budget_tokens = 4096;
  ChunkScheduler capped(&cost_, options);
  EXPECT_EQ(capped.Schedule(decodes, deep, true).budget_tokens, 4096);
}

TEST_F(ChunkSchedulerTest, EmptyPendingSchedulesNothing) {
  ChunkScheduler scheduler(&cost_, ChunkSchedulerOptions{});
  StepSchedule s = scheduler.Schedule(Decodes(3, 100), {});
  EXPECT_TRUE(s.chunks.empty());
  EXPECT_EQ(s.budget_tokens, 0);
  EXPECT_EQ(s.prefill_tokens, 0);
  EXPECT_DOUBLE_EQ(s.predicted_latency_s, scheduler.PredictStepLatency(Decodes(3, 100), {}));
}

// Random work drained step by step: every step obeys the rules and every
// pending position runs exactly once, in position order per sequence.
TEST_F(ChunkSchedulerTest, RandomWorkDrainsInPositionOrderWithinBudget) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  for (Mode mode : {Mode::kFixed, Mode::kAdaptive}) {
    for (int trial = 0; trial < 20; ++trial) {
      ChunkSchedulerOptions options;
      options.mode = mode;
      options.fixed_budget_tokens = 16 * std::uniform_int_distribution<int64_t>(1, 64)(rng);
      ChunkScheduler scheduler(&cost_, options);
      std::vector<PrefillWork> pending;
      std::map<SequenceId, int64_t> expected_tokens;
      const int sequences = std::uniform_int_distribution<int>(1, 6)(rng);
      for (int s = 0; s < sequences; ++s) {
        PrefillWork work;
        work.sequence = static_cast<SequenceId>(s + 1);
        int64_t pos = 16 * std::uniform_int_distribution<int64_t>(0, 8)(rng);
        const int holes = std::uniform_int_distribution<int>(0, 4)(rng);
        for (int h = 0; h < holes; ++h) {
          const int64_t len = 16 * std::uniform_int_distribution<int64_t>(1, 6)(rng);
          work.runs.push_back({pos, pos + len});
          pos += len + 16 * std::uniform_int_distribution<int64_t>(1, 50)(rng);
        }
        const int64_t tail = std::uniform_int_distribution<int64_t>(1, 3000)(rng);
        work.runs.push_back({pos, pos + tail});
        work.context_tokens = pos + tail;
        for (auto& [b, e] : work.runs) expected_tokens[work.sequence] += e - b;
        pending.push_back(std::move(work));
      }
      const std::vector<DecodeWork> decodes =
          Decodes(std::uniform_int_distribution<int>(0, 200)(rng),
                  std::uniform_int_distribution<int64_t>(1, 40000)(rng));
      std::map<SequenceId, int64_t> done;
      for (int step = 0; !pending.empty(); ++step) {
        ASSERT_LT(step, 100000) << "no progress";
        StepSchedule s = scheduler.Schedule(decodes, pending);
        ExpectWellFormed(s, pending, 16);
        ASSERT_GT(s.prefill_tokens, 0) << "a step made no progress";
        if (mode == Mode::kFixed) {
          EXPECT_EQ(s.budget_tokens, options.fixed_budget_tokens);
        }
        for (const Chunk& c : s.chunks) done[c.sequence] += c.tokens();
        Consume(s, &pending);
        if (HasFatalFailure() || HasFailure()) return;
      }
      EXPECT_EQ(done, expected_tokens);
    }
  }
}

}  // namespace
}  // namespace asymcache
