// first_step_bench: what the first engine step of a new size costs on the
// CUDA model backend, against the same step repeated.
//
// Why: an adaptive-chunking engine runs steps of many distinct token counts;
// the step traces of docs/results/e2e_h100_steps.md showed the first step of
// each new count 6-8 ms slower than the cost model (cuBLASLt's heuristic and
// the chosen kernels' first load), the repeats within 1%. This bench creates
// one backend with the options under test (--gemm_row_buckets,
// --warm_gemm_buckets: model/model_backend.h CudaBackendOptions), then for
// --sizes distinct prefill chunk sizes (one sequence, positions from 0,
// drawn from [17, --max_tokens] with --seed) times the first Forward of that
// size and the median of --repeats more. Run it once per option setting:
// each process starts with cold caches, which is the point.
//
// Output: one line per size and a summary (creation time, mean first, mean
// repeat, mean and max first-step penalty); --out writes the same as JSON.
// Exit status: 0, or 1 when a step fails, 2 on bad flags or no GPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "bench/gpu/bench_device.h"
#include "bench/gpu/forward_timing.h"
#include "kernels/msa.h"
#include "kernels/msa_cuda.h"
#include "model/llama_config.h"
#include "model/model_backend.h"
#include "model/weight_source.h"
#include "nlohmann/json.hpp"
#include "tests/model/step_arrays.h"
#include "util/absl_flags_main.h"

ABSL_FLAG(std::string, shape, "llama-3-8b", "named model shape");
ABSL_FLAG(int, sizes, 24, "distinct step sizes to time (>= 1)");
ABSL_FLAG(int, max_tokens, 2048, "largest step size drawn (>= 17); also max_step_tokens");
ABSL_FLAG(int, repeats, 3, "timed repeats of each size after its first step (>= 1)");
ABSL_FLAG(bool, gemm_row_buckets, false, "CudaBackendOptions::gemm_row_buckets (its default)");
ABSL_FLAG(bool, warm_gemm_buckets, true, "CudaBackendOptions::warm_gemm_buckets (its default)");
ABSL_FLAG(bool, gemm_heuristic_off_thread, true,
          "CudaBackendOptions::gemm_heuristic_off_thread (its default)");
ABSL_FLAG(uint64_t, seed, 1, "weights, pool contents, page order and the sizes drawn");
ABSL_FLAG(std::string, out, "", "write the results as JSON here");

namespace asymcache::model::bench {
namespace {

double MsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

int Main() {
  const int sizes = absl::GetFlag(FLAGS_sizes);
  const int max_tokens = absl::GetFlag(FLAGS_max_tokens);
  const int repeats = absl::GetFlag(FLAGS_repeats);
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  if (sizes < 1 || max_tokens < 17 || repeats < 1 || sizes > max_tokens - 16) {
    std::fprintf(stderr,
                 "[first_step_bench] need --sizes in [1, max_tokens - 16], --max_tokens >= 17, "
                 "--repeats >= 1\n");
    return 2;
  }
  absl::StatusOr<LlamaConfig> config = LlamaConfig::Named(absl::GetFlag(FLAGS_shape));
  if (!config.ok()) {
    std::fprintf(stderr, "[first_step_bench] %s\n", config.status().ToString().c_str());
    return 2;
  }
  if (config->dtype == msa::DType::kFloat32) config->dtype = msa::DType::kBFloat16;
  absl::StatusOr<msa::GpuInfo> gpu = msa::QueryGpu(0);
  if (!gpu.ok()) {
    std::fprintf(stderr, "[first_step_bench] no usable GPU: %s\n",
                 gpu.status().ToString().c_str());
    return 2;
  }

  const int32_t bt = config->block_tokens;
  const int64_t num_blocks = max_tokens / bt + 2;
  const int64_t page_bytes =
      config->attention_shape().PageElements() * msa::DTypeBytes(config->dtype);
  const size_t pool_bytes = static_cast<size_t>(num_blocks * page_bytes * config->num_layers);
  absl::StatusOr<WeightSource> weights = WeightSource::Random(*config, seed);
  absl::StatusOr<msa::DeviceBuffer> pool = msa::DeviceBuffer::Allocate(pool_bytes);
  if (!weights.ok() || !pool.ok()) {
    std::fprintf(stderr, "[first_step_bench] %s\n",
                 (!weights.ok() ? weights.status() : pool.status()).ToString().c_str());
    return 1;
  }
  if (msa::bench::FillRandomBf16(pool->data(), pool_bytes / 2, seed + 3, 1.0f, nullptr) !=
          cudaSuccess ||
      cudaDeviceSynchronize() != cudaSuccess) {
    std::fprintf(stderr, "[first_step_bench] pool fill failed\n");
    return 1;
  }
  CudaBackendOptions options;
  options.max_batch = 1;
  options.max_step_tokens = max_tokens;
  options.max_step_pages = static_cast<int32_t>(num_blocks);
  options.gemm_row_buckets = absl::GetFlag(FLAGS_gemm_row_buckets);
  options.warm_gemm_buckets = absl::GetFlag(FLAGS_warm_gemm_buckets);
  options.gemm_heuristic_off_thread = absl::GetFlag(FLAGS_gemm_heuristic_off_thread);
  const auto created_at = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<ModelBackend>> backend = CreateCudaBackend(
      *weights, KvPoolView{pool->data(), num_blocks, num_blocks * page_bytes}, options);
  const double create_ms = MsSince(created_at);
  if (!backend.ok()) {
    std::fprintf(stderr, "[first_step_bench] backend: %s\n", backend.status().ToString().c_str());
    return 1;
  }
  std::printf("# first_step_bench on %s, %s, gemm_row_buckets=%d warm_gemm_buckets=%d "
              "gemm_heuristic_off_thread=%d: backend created in %.0f ms\n",
              gpu->name.c_str(), config->name.c_str(), options.gemm_row_buckets,
              options.warm_gemm_buckets, options.gemm_heuristic_off_thread, create_ms);

  std::mt19937_64 rng(seed);
  std::set<int> drawn;
  std::uniform_int_distribution<int> size_of(17, max_tokens);
  while (static_cast<int>(drawn.size()) < sizes) drawn.insert(size_of(rng));
  std::vector<int> order(drawn.begin(), drawn.end());
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<int32_t> pages(num_blocks);
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), rng);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(config->vocab_size) - 1);

  nlohmann::json steps = nlohmann::json::array();
  double first_sum = 0;
  double repeat_sum = 0;
  double worst = 0;
  for (const int n : order) {
    std::vector<int32_t> tokens(n);
    for (int32_t& t : tokens) t = token(rng);
    std::vector<int32_t> positions(n);
    std::iota(positions.begin(), positions.end(), 0);
    StepArrays arrays;
    arrays.Append(tokens, pages, positions, bt);
    const ForwardBatch batch = arrays.batch(/*want_logits=*/false);
    ForwardResult result;
    const auto start = std::chrono::steady_clock::now();
    if (absl::Status s = (*backend)->Forward(batch, &result); !s.ok()) {
      std::fprintf(stderr, "[first_step_bench] %d tokens: %s\n", n, s.ToString().c_str());
      return 1;
    }
    const double first_ms = MsSince(start);
    absl::StatusOr<ForwardTiming> again = TimeForward(**backend, batch, 0, repeats);
    if (!again.ok()) {
      std::fprintf(stderr, "[first_step_bench] %d tokens: %s\n", n,
                   again.status().ToString().c_str());
      return 1;
    }
    const double penalty = first_ms - again->median_ms;
    first_sum += first_ms;
    repeat_sum += again->median_ms;
    worst = std::max(worst, penalty);
    std::printf("%5d tokens: first %8.2f ms, repeat %8.2f ms, first-step penalty %+7.2f ms\n", n,
                first_ms, again->median_ms, penalty);
    steps.push_back(
        {{"tokens", n}, {"first_ms", first_ms}, {"repeat_ms", again->median_ms}});
  }
  const double count = static_cast<double>(order.size());
  std::printf("# %zu sizes: mean first %.2f ms, mean repeat %.2f ms, mean penalty %.2f ms, "
              "max %.2f ms; backend creation %.0f ms\n",
              order.size(), first_sum / count, repeat_sum / count, (first_sum - repeat_sum) / count,
              worst, create_ms);
  const std::string out = absl::GetFlag(FLAGS_out);
  if (!out.empty()) {
    nlohmann::json doc = {{"card", gpu->name},
                          {"shape", config->name},
                          {"gemm_row_buckets", options.gemm_row_buckets},
                          {"warm_gemm_buckets", options.warm_gemm_buckets},
                          {"gemm_heuristic_off_thread", options.gemm_heuristic_off_thread},
                          {"create_ms", create_ms},
                          {"mean_first_ms", first_sum / count},
                          {"mean_repeat_ms", repeat_sum / count},
                          {"mean_penalty_ms", (first_sum - repeat_sum) / count},
                          {"max_penalty_ms", worst},
                          {"steps", steps}};
    std::ofstream file(out);
    file << doc.dump(2) << "\n";
    if (!file) {
      std::fprintf(stderr, "[first_step_bench] cannot write %s\n", out.c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace asymcache::model::bench

int main(int argc, char** argv) {
  asymcache::ParseDashedAbslFlags(argc, argv, "bench/gpu/first_step_bench.cc",
                                  "first_step_bench [--sizes=N] [--max_tokens=N] "
                                  "[--gemm_row_buckets=BOOL] [--warm_gemm_buckets=BOOL] "
                                  "[--out=FILE]");
  return asymcache::model::bench::Main();
}
