// Planning a follow-up turn (issue 2): a 32k-token context fully cached, its
// hash chain cached for the session, 512 new tokens.
//
// BM_PlanFollowUpTurn_Planner drives the StepPlanner directly: per iteration it
// (untimed) copies the session's 32k-token HashChain, then (timed) extends it by
// the 512 new tokens, plans (residency hint from the previous plan, confirmed
// by hash; pins 2048 resident pages; allocates 32 tail blocks) and releases
// (unpins, frees the tail blocks).
// BM_PlanFollowUpTurn_KvCache drives KvCache::BeginStep + ReleaseStep with the
// same 32k+512 request each iteration; the session chain already covers it,
// so per-iteration hashing is only the token-by-token prefix check, plus lease
// and session bookkeeping.
// BM_DecodeRollover compares the two ways a decoding request gets its next
// page at a 32k-token context on a full pool (every new block evicts a
// sealed one, as at saturation): ExtendLease (seal the full private page,
// allocate one block) against BeginStep of the longer context + CommitStep
// (keep the partial page) + ReleaseStep of the previous lease, the worker's
// path before ExtendLease (its gRPC and row copy not included).
// Counters p50_us / p99_us are over individual plans (the mean is the usual
// Google Benchmark time).
#include <algorithm>
#include <chrono>
#include <memory>
#include <vector>

#include <benchmark/benchmark.h>

#include "cachecore/block_hash.h"
#include "cachecore/cost_model.h"
#include "cachecore/kv_cache.h"
#include "cachecore/step_planner.h"

namespace asymcache {
namespace {

constexpr int kContext = 32 * 1024;
constexpr int kNew = 512;
constexpr int64_t kCapacity = 1 << 16;

std::vector<TokenId> MakeTokens(int n, uint32_t seed) {
  std::vector<TokenId> t(static_cast<size_t>(n));
  uint32_t x = seed;
  for (TokenId& v : t) {
    x = x * 1664525u + 1013904223u;
    v = static_cast<TokenId>(x % 128000);
  }
  return t;
}

void ReportPercentiles(benchmark::State& state, std::vector<double>& us) {
  if (us.empty()) return;
  std::sort(us.begin(), us.end());
  state.counters["p50_us"] = us[us.size() / 2];
  state.counters["p99_us"] = us[std::min(us.size() - 1, us.size() * 99 / 100)];
}

std::unique_ptr<EvictionPolicy> Policy(const std::string& name, const CostModel* cost) {
  return *MakeEvictionPolicy(name, cost);
}

void BM_PlanFollowUpTurn_Planner(benchmark::State& state, const std::string& policy_name) {
  const ModelConfig model;
  const CostModel cost(model, CostModel::DefaultCpu(model));
  FakeClock clock;
  BlockPool pool(BlockPoolOptions{kCapacity}, Policy(policy_name, &cost), &clock);
  PrefixIndex index;
  StepPlanner planner(&pool, &index, model.block_tokens);
  const std::vector<TokenId> context = MakeTokens(kContext, 1);
  const std::vector<TokenId> fresh = MakeTokens(kNew, 2);

  // Turn 1: make the 32k context resident (planned, sealed, indexed, released).
  HashChain session("tenant", model.block_tokens);
  session.Extend(context);
  std::vector<BlockId> hint;
  {
    PlanInput input{1, kContext, session.hashes(), {}, pool.contiguous_prefix_only()};
    auto step = planner.Plan(input);
    std::vector<IndexedBlockInfo> infos;
    for (size_t i = 0; i < step->plan.allocated.size(); ++i) {
      const int k = step->plan.allocated_pages[i];
      IndexedBlockInfo info{step->plan.allocated[i], step->plan.hashes[k],
                            k == 0 ? BlockHash{} : step->plan.hashes[k - 1],
                            step->plan.page_positions[k], step->plan.page_lengths[k], 1};
      (void)index.Insert(info.hash, PrefixIndex::Entry{info.id, info.position});
      infos.push_back(info);
    }
    BlockPool::PinSet pins;
    (void)pool.SealMany(infos, &pins);
    hint = step->plan.page_ids;
  }
  std::vector<double> us;
  for (auto _ : state) {
    state.PauseTiming();
    HashChain chain = session;  // the cached chain of the session
    state.ResumeTiming();
    const auto t0 = std::chrono::steady_clock::now();
    chain.Extend(fresh);
    PlanInput input{1, chain.token_count(), chain.hashes(), hint, pool.contiguous_prefix_only()};
    absl::StatusOr<PlannedStep> step = planner.Plan(input);
    if (!step.ok()) {
      state.SkipWithError(std::string(step.status().message()).c_str());
      break;
    }
    benchmark::DoNotOptimize(step->plan.query_positions.data());
    step->resident_pins.Reset();
    (void)pool.AbortMany(step->plan.allocated);
    us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  ReportPercentiles(state, us);
}

void BM_PlanFollowUpTurn_KvCache(benchmark::State& state, const std::string& policy_name) {
  const ModelConfig model;
  const CostModel cost(model, CostModel::DefaultCpu(model));
  FakeClock clock;
  KvCacheOptions options;
  options.model = model;
  options.capacity_blocks = kCapacity;
  auto cache = *KvCache::Create(options, Policy(policy_name, &cost), &clock);
  std::vector<TokenId> tokens = MakeTokens(kContext, 1);
  {
    auto lease = cache->BeginStep("tenant", 1, tokens);
    (void)cache->CommitStep(lease->lease_id);
    (void)cache->ReleaseStep(lease->lease_id);
  }
  const std::vector<TokenId> fresh = MakeTokens(kNew, 2);
  tokens.insert(tokens.end(), fresh.begin(), fresh.end());
  std::vector<double> us;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    absl::StatusOr<StepLease> lease = cache->BeginStep("tenant", 1, tokens);
    if (!lease.ok()) {
      state.SkipWithError(std::string(lease.status().message()).c_str());
      break;
    }
    benchmark::DoNotOptimize(lease->plan.page_ids.data());
    (void)cache->ReleaseStep(lease->lease_id);
    us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  ReportPercentiles(state, us);
}

// arg 0: ExtendLease; 1: plan + commit + release of the longer context.
void BM_DecodeRollover(benchmark::State& state, const std::string& policy_name) {
  const bool extend = state.range(0) == 0;
  const ModelConfig model;
  const int b = model.block_tokens;
  const CostModel cost(model, CostModel::DefaultCpu(model));
  FakeClock clock;
  KvCacheOptions options;
  options.model = model;
  constexpr int64_t kPool = 12288;  // the e2e runs' 24 GiB llama-3-8b pool
  options.capacity_blocks = kPool;
  auto cache = *KvCache::Create(options, Policy(policy_name, &cost), &clock);
  std::vector<TokenId> tokens = MakeTokens(kContext + 5, 1);
  absl::StatusOr<StepLease> lease = cache->BeginStep("tenant", 1, tokens);
  (void)cache->CommitStep(lease->lease_id, KvCache::CommitOptions{true}, nullptr);
  // Fill the rest of the pool with sealed, evictable blocks of other
  // documents (4k tokens each, then 16-token ones): every allocation evicts.
  for (int64_t doc = 0; cache->GetStats().pool.free > 0; ++doc) {
    const int n = cache->GetStats().pool.free >= 256 ? 4096 : b;
    auto other = cache->BeginStep("tenant", 100 + doc, MakeTokens(n, 100 + doc));
    (void)cache->CommitStep(other->lease_id);
    (void)cache->ReleaseStep(other->lease_id);
  }
  uint32_t next_token = 7;
  std::vector<double> us;
  for (auto _ : state) {
    state.PauseTiming();
    while (tokens.size() % b != 0) tokens.push_back(static_cast<TokenId>(next_token++ % 128000));
    tokens.push_back(static_cast<TokenId>(next_token++ % 128000));  // the next page's first
    state.ResumeTiming();
    const auto t0 = std::chrono::steady_clock::now();
    if (extend) {
      const auto page = absl::MakeConstSpan(tokens).subspan(tokens.size() - 1 - b, b);
      absl::StatusOr<KvCache::LeaseExtension> next = cache->ExtendLease(
          lease->lease_id, static_cast<int64_t>(tokens.size()) - 1 - b, page);
      if (!next.ok()) {
        state.SkipWithError(std::string(next.status().message()).c_str());
        break;
      }
    } else {
      absl::StatusOr<StepLease> longer = cache->BeginStep("tenant", 1, tokens);
      if (!longer.ok()) {
        state.SkipWithError(std::string(longer.status().message()).c_str());
        break;
      }
      (void)cache->CommitStep(longer->lease_id, KvCache::CommitOptions{true}, nullptr);
      (void)cache->ReleaseStep(lease->lease_id);
      lease = *std::move(longer);
    }
    us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  (void)cache->ReleaseStep(lease->lease_id);
  ReportPercentiles(state, us);
}

BENCHMARK_CAPTURE(BM_DecodeRollover, asym, std::string("asym"))
    ->Arg(0)->Arg(1)->Iterations(2000)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_DecodeRollover, lru_tail, std::string("lru-tail"))
    ->Arg(0)->Arg(1)->Iterations(2000)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_PlanFollowUpTurn_Planner, lru, std::string("lru"))->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_PlanFollowUpTurn_Planner, asym, std::string("asym"))->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_PlanFollowUpTurn_KvCache, lru, std::string("lru"))->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_PlanFollowUpTurn_KvCache, asym, std::string("asym"))->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace asymcache

BENCHMARK_MAIN();
