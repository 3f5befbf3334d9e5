// Allocation with eviction under full pressure (issue 2): a BlockPool of 1M
// blocks, every block sealed and evictable (contexts of 2048 blocks, owners and
// positions set, so position-aware policies see a realistic layout). Each
// iteration allocates a batch of blocks (every one evicts a victim chosen by
// the policy) — timed — and then, untimed, seals them again and drops the
// writer pins so the pool stays full of evictable blocks. Reported per block
// (items_per_second; ns/block = 1e9 / items_per_second).
#include <memory>
#include <vector>

#include <benchmark/benchmark.h>

#include "cachecore/block_pool.h"
#include "cachecore/cost_model.h"

namespace asymcache {
namespace {

constexpr int64_t kCapacity = 1 << 20;
constexpr int64_t kBlocksPerContext = 2048;

IndexedBlockInfo InfoFor(BlockId id, uint64_t generation) {
  const int64_t k = id % kBlocksPerContext;
  IndexedBlockInfo info;
  info.id = id;
  info.hash = BlockHash{static_cast<uint64_t>(id) * 0x9E3779B97F4A7C15ull + generation, generation};
  info.parent_hash = k == 0 ? BlockHash{} : BlockHash{static_cast<uint64_t>(id - 1), generation};
  info.position = k * 16;
  info.tokens = 16;
  info.owner = static_cast<SequenceId>(id / kBlocksPerContext) + 1;
  return info;
}

void BM_AllocateWithEviction(benchmark::State& state, const std::string& policy_name) {
  const int64_t batch = state.range(0);
  const ModelConfig model;
  const CostModel cost(model, CostModel::DefaultCpu(model));
  FakeClock clock;
  BlockPool pool(BlockPoolOptions{kCapacity}, *MakeEvictionPolicy(policy_name, &cost), &clock);
  {
    auto ids = pool.Allocate(kCapacity, 0, nullptr);
    std::vector<IndexedBlockInfo> infos;
    infos.reserve(ids->size());
    for (BlockId id : *ids) infos.push_back(InfoFor(id, 0));
    BlockPool::PinSet pins;
    (void)pool.SealMany(infos, &pins);
    clock.Advance(absl::Seconds(1));
  }
  std::vector<EvictedBlock> evicted;
  std::vector<IndexedBlockInfo> infos;
  uint64_t generation = 1;
  for (auto _ : state) {
    evicted.clear();
    absl::StatusOr<std::vector<BlockId>> ids = pool.Allocate(batch, 1, &evicted);
    if (!ids.ok()) {
      state.SkipWithError(std::string(ids.status().message()).c_str());
      break;
    }
    state.PauseTiming();
    infos.clear();
    for (BlockId id : *ids) infos.push_back(InfoFor(id, generation));
    ++generation;
    {
      BlockPool::PinSet pins;
      (void)pool.SealMany(infos, &pins);
    }
    clock.Advance(absl::Milliseconds(1));
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * batch);
  state.counters["evictions"] = static_cast<double>(pool.GetStats().evictions);
}

// Full churn, all timed: allocate (evicting), seal, release.
void BM_AllocateSealReleaseCycle(benchmark::State& state, const std::string& policy_name) {
  const int64_t batch = state.range(0);
  const ModelConfig model;
  const CostModel cost(model, CostModel::DefaultCpu(model));
  FakeClock clock;
  BlockPool pool(BlockPoolOptions{kCapacity}, *MakeEvictionPolicy(policy_name, &cost), &clock);
  {
    auto ids = pool.Allocate(kCapacity, 0, nullptr);
    std::vector<IndexedBlockInfo> infos;
    for (BlockId id : *ids) infos.push_back(InfoFor(id, 0));
    BlockPool::PinSet pins;
    (void)pool.SealMany(infos, &pins);
  }
  std::vector<EvictedBlock> evicted;
  std::vector<IndexedBlockInfo> infos;
  uint64_t generation = 1;
  for (auto _ : state) {
    evicted.clear();
    auto ids = pool.Allocate(batch, 1, &evicted);
    infos.clear();
    for (BlockId id : *ids) infos.push_back(InfoFor(id, generation));
    ++generation;
    BlockPool::PinSet pins;
    (void)pool.SealMany(infos, &pins);
  }
  state.SetItemsProcessed(state.iterations() * batch);
}

BENCHMARK_CAPTURE(BM_AllocateWithEviction, lru, std::string("lru"))->Arg(1)->Arg(64)->Arg(512);
BENCHMARK_CAPTURE(BM_AllocateWithEviction, asym, std::string("asym"))->Arg(1)->Arg(64)->Arg(512);
BENCHMARK_CAPTURE(BM_AllocateSealReleaseCycle, lru, std::string("lru"))->Arg(64);
BENCHMARK_CAPTURE(BM_AllocateSealReleaseCycle, asym, std::string("asym"))->Arg(64);

}  // namespace
}  // namespace asymcache

BENCHMARK_MAIN();
