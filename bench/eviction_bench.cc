// Eviction under full pressure: PopVictim + re-add cycles at 1M indexed blocks
// spread over ~10k sequences, for every policy (issue 2: target < 1 us per
// block for lru / lru-tail; asym and front-first reported).
//
//   build/<dir>/bench/eviction_bench --benchmark_filter=.
//
// Setup (not timed): kBlocks blocks in kSequences chains of equal length, each
// indexed, accessed by its sequence and released; sequences get staggered last
// access times. One timed iteration = PopVictim(now) followed by re-adding the
// victim id as the next block of a round-robin sequence (OnIndexed, OnAccess,
// SetEvictable(true)), with the clock advancing 1 ms per iteration; every 8th
// iteration a random evictable block of another sequence is also accessed (a
// planner hit), so recency and rates keep moving.
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "benchmark/benchmark.h"
#include "cachecore/cost_model.h"
#include "cachecore/eviction_policy.h"
#include "cachecore/model_config.h"

namespace asymcache {
namespace {

constexpr int64_t kBlocks = 1 << 20;
constexpr int64_t kSequences = 10000;

BlockHash HashOf(SequenceId seq, int64_t index) {
  return BlockHash{seq * 1000003 + static_cast<uint64_t>(index) + 1, seq};
}

void BM_PopVictimAndReadd(benchmark::State& state, const std::string& name, int sample) {
  static const CostModel* cost = new CostModel(ModelConfig{}, CostModel::DefaultH100Llama3_8B());
  EvictionPolicyOptions options;
  options.sample_sequences = sample;
  std::unique_ptr<EvictionPolicy> policy = *MakeEvictionPolicy(name, cost, options);
  std::vector<int64_t> next_index(kSequences, 0);
  absl::Time now = absl::UnixEpoch() + absl::Hours(1);
  auto add = [&](BlockId id, SequenceId seq) {
    const int64_t index = next_index[seq]++;
    IndexedBlockInfo info{.id = id, .hash = HashOf(seq, index),
                          .parent_hash = index == 0 ? BlockHash{} : HashOf(seq, index - 1),
                          .position = index * 16, .tokens = 16, .owner = seq};
    policy->OnIndexed(info, now);
    policy->OnAccess(id, seq, now);
    policy->SetEvictable(id, true, now);
  };
  for (BlockId id = 0; id < kBlocks; ++id) {
    const SequenceId seq = static_cast<SequenceId>(id % kSequences);
    if (seq == 0) now += absl::Milliseconds(1);
    add(id, seq);
  }
  policy->SetLoadHint(512);
  std::mt19937 rng(7);
  SequenceId round_robin = 0;
  int64_t iteration = 0;
  for (auto _ : state) {
    now += absl::Milliseconds(1);
    std::optional<BlockId> victim = policy->PopVictim(now);
    if (!victim) {
      state.SkipWithError("no victim");
      break;
    }
    add(*victim, round_robin);
    round_robin = (round_robin + 1) % kSequences;
    if (++iteration % 8 == 0) {
      const BlockId hit = static_cast<BlockId>(rng() % kBlocks);
      policy->OnAccess(hit, static_cast<SequenceId>(rng() % kSequences), now);
    }
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["tracked"] = static_cast<double>(policy->tracked_count());
}

BENCHMARK_CAPTURE(BM_PopVictimAndReadd, lru, std::string("lru"), 0)->Unit(benchmark::kNanosecond);
BENCHMARK_CAPTURE(BM_PopVictimAndReadd, lfu, std::string("lfu"), 0)->Unit(benchmark::kNanosecond);
BENCHMARK_CAPTURE(BM_PopVictimAndReadd, lru_tail, std::string("lru-tail"), 0)
    ->Unit(benchmark::kNanosecond);
BENCHMARK_CAPTURE(BM_PopVictimAndReadd, front_first, std::string("front-first"), 0)
    ->Unit(benchmark::kNanosecond);
BENCHMARK_CAPTURE(BM_PopVictimAndReadd, asym, std::string("asym"), 0)
    ->Unit(benchmark::kNanosecond);
BENCHMARK_CAPTURE(BM_PopVictimAndReadd, asym_sample64, std::string("asym"), 64)
    ->Unit(benchmark::kNanosecond);

}  // namespace
}  // namespace asymcache

BENCHMARK_MAIN();
