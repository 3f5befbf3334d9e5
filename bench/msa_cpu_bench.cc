// Google Benchmark of the MSA CPU backend (kernels/msa_cpu.h), fp32.
//
// One iteration = one layer's attention (RunMsaCpu) for:
//   BM_MsaCpuDecode        B=8 sequences, 4096-token context each, one query per
//                          sequence at position 4095 (its K/V already appended);
//   BM_MsaCpuPrefillChunk  B=1, a 512-token chunk at positions [4096, 4608) over
//                          the 4096 cached tokens plus itself (causal).
// Shapes from cachecore's ModelConfig: "tiny" (4 q / 2 kv heads, D=64) and
// "llama-3-8b" (32 q / 8 kv heads, D=128); page size 16, pages placed at random
// ids in the pool. Second argument: worker threads (0 = hardware concurrency).
//
// Counters: tokens_per_s = query tokens per second (per layer); kv_GB_per_s =
// distinct K/V bytes of the context per second; GFLOP_per_s = 4*D*Hq*visible keys.
//
// Run: build/<dir>/bench/msa_cpu_bench [--benchmark_filter=...]
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "cachecore/model_config.h"
#include "kernels/msa.h"
#include "kernels/msa_cpu.h"

namespace asymcache::msa {
namespace {

constexpr int32_t kPageSize = 16;
constexpr int32_t kDecodeBatch = 8;
constexpr int32_t kContext = 4096;
constexpr int32_t kChunk = 512;

const char* ModelName(int64_t index) { return index == 0 ? "tiny" : "llama-3-8b"; }

absl::StatusOr<AttentionShape> ShapeFor(int64_t model_index) {
  const absl::StatusOr<ModelConfig> config = ModelConfig::Named(ModelName(model_index));
  if (!config.ok()) return config.status();
  AttentionShape shape;
  shape.num_q_heads = config->num_q_heads;
  shape.num_kv_heads = config->num_kv_heads;
  shape.head_dim = config->head_dim;
  shape.page_size = kPageSize;
  shape.dtype = DType::kFloat32;
  return shape;
}

// Tables, pool and q for sequences whose KV covers [0, kv_len) and whose
// queries are [q_begin, kv_len), pages shuffled over the pool.
struct BenchBatch {
  BatchTablesStorage tables;
  int64_t num_pages = 0;
  std::vector<float> q;
  std::vector<float> kv_pool;
  std::vector<float> out;
  std::vector<float> lse;
  double flops = 0.0;  // 4 * D * Hq * sum over queries of visible keys
  double kv_bytes = 0.0;
};

BenchBatch MakeBatch(const AttentionShape& shape, int32_t num_sequences, int32_t kv_len,
                     int32_t q_begin) {
  BenchBatch batch;
  std::mt19937_64 rng(12345);
  const int32_t pages_per_sequence = (kv_len + kPageSize - 1) / kPageSize;
  batch.num_pages = int64_t{num_sequences} * pages_per_sequence;
  std::vector<int32_t> ids(static_cast<size_t>(batch.num_pages));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  for (int32_t seq = 0; seq < num_sequences; ++seq) {
    for (int32_t pos = q_begin; pos < kv_len; ++pos) {
      batch.tables.q_pos.push_back(pos);
      batch.flops += 4.0 * shape.head_dim * shape.num_q_heads * (pos + 1);
    }
    batch.tables.q_indptr.push_back(static_cast<int32_t>(batch.tables.q_pos.size()));
    for (int32_t page = 0; page < pages_per_sequence; ++page) {
      batch.tables.kv_page_ids.push_back(ids[seq * pages_per_sequence + page]);
      batch.tables.kv_page_pos.push_back(page * kPageSize);
      batch.tables.kv_page_len.push_back(std::min(kPageSize, kv_len - page * kPageSize));
    }
    batch.tables.kv_indptr.push_back(static_cast<int32_t>(batch.tables.kv_page_ids.size()));
  }
  batch.kv_bytes = 2.0 * num_sequences * kv_len * shape.num_kv_heads * shape.head_dim * 4;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t total_q = static_cast<int64_t>(batch.tables.q_pos.size());
  batch.q.resize(total_q * shape.num_q_heads * shape.head_dim);
  for (float& x : batch.q) x = normal(rng);
  batch.kv_pool.resize(batch.num_pages * shape.PageElements());
  for (float& x : batch.kv_pool) x = normal(rng);
  batch.out.resize(batch.q.size());
  batch.lse.resize(total_q * shape.num_q_heads);
  return batch;
}

void RunBench(benchmark::State& state, int32_t num_sequences, int32_t kv_len, int32_t q_begin) {
  const absl::StatusOr<AttentionShape> shape_or = ShapeFor(state.range(0));
  if (!shape_or.ok()) {
    state.SkipWithError(std::string(shape_or.status().message()).c_str());
    return;
  }
  const AttentionShape& shape = *shape_or;
  BenchBatch batch = MakeBatch(shape, num_sequences, kv_len, q_begin);
  CpuRunOptions options;
  options.num_threads = static_cast<int>(state.range(1));
  if (absl::Status status =
          RunMsaCpu(shape, batch.tables.view(), batch.q.data(), batch.kv_pool.data(),
                    batch.num_pages, batch.out.data(), batch.lse.data(), options);
      !status.ok()) {
    state.SkipWithError(std::string(status.message()).c_str());
    return;
  }
  for (auto _ : state) {
    const absl::Status status =
        RunMsaCpu(shape, batch.tables.view(), batch.q.data(), batch.kv_pool.data(),
                  batch.num_pages, batch.out.data(), batch.lse.data(), options);
    benchmark::DoNotOptimize(status);
    benchmark::DoNotOptimize(batch.out.data());
    benchmark::ClobberMemory();
  }
  const double iterations = static_cast<double>(state.iterations());
  const double query_tokens = static_cast<double>(batch.tables.q_pos.size());
  state.counters["tokens_per_s"] =
      benchmark::Counter(query_tokens * iterations, benchmark::Counter::kIsRate);
  state.counters["kv_GB_per_s"] =
      benchmark::Counter(batch.kv_bytes * iterations / 1e9, benchmark::Counter::kIsRate);
  state.counters["GFLOP_per_s"] =
      benchmark::Counter(batch.flops * iterations / 1e9, benchmark::Counter::kIsRate);
  state.SetLabel(absl::StrCat(ModelName(state.range(0)), " fp32 threads=",
                              options.num_threads == 0 ? std::string("hw")
                                                       : std::to_string(options.num_threads)));
}

void BM_MsaCpuDecode(benchmark::State& state) {
  RunBench(state, kDecodeBatch, kContext, kContext - 1);
}
void BM_MsaCpuPrefillChunk(benchmark::State& state) {
  RunBench(state, 1, kContext + kChunk, kContext);
}

// Args: {model (0 = tiny, 1 = llama-3-8b), threads (0 = hardware concurrency)}.
BENCHMARK(BM_MsaCpuDecode)
    ->ArgsProduct({{0, 1}, {1, 0}})
    ->ArgNames({"model", "threads"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_MsaCpuPrefillChunk)
    ->ArgsProduct({{0, 1}, {1, 0}})
    ->ArgNames({"model", "threads"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace asymcache::msa

BENCHMARK_MAIN();
