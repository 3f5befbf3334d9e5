// step_grid_bench: whole-step latency of the CUDA model backend over a grid of
// step shapes, what the cost model predicts for each, and a calibration fitted
// to the engine's own steps (issue #7: the simulator has to predict measured
// TTFT, and the kernel micro-benchmark calibration of scripts/gpu_run.sh
// leaves out what a real step adds: small kernels, launches, sampling, the
// step's host work).
//
// One run, one GPU, a named shape (default llama-3-8b; random bf16 weights
// generated on the device) over a KV pool of random values (pages in a random
// order):
//   decode   batches {1, 4, 16, 32, 64, 128} x contexts {256, 1024, 4096,
//            16384} (pairs whose KV exceeds --max_context_tokens are skipped);
//   prefill  one chunk of {256, 512, 1024, 2048, 4096, 8192} query tokens at
//            positions {0, 8192, 24576} of one sequence (the keys before the
//            chunk already in the pool: a rebuild or a later chunk);
//   mixed    decodes plus one chunk, and decodes of unequal contexts: the
//            shapes an engine really runs, never fitted, only predicted.
// Each step is timed on the host around Forward() (synchronous: the table
// upload, every kernel, sampling and the copy-back inside), median of
// --iters (decode, mixed) or --prefill_iters (prefill) after warm-up.
// --quick: contexts {256, 4096}, chunks {256, 1024, 4096}, fewer iterations.
// The grid itself is bench/step_grid.h (shared with the offline refit).
//
// The measured steps go to cachecore's FitCalibrationToSteps (anchors fix the
// linear curve, decode pairs the KV-scan bandwidth, prefill pairs the
// attention FLOP rate; cachecore/step_calibration_fit.h), starting from
// --calibration. Output: --out (JSON: every step with measured, base-predicted
// and fitted-predicted ms, and the grid options; asymcache-fit-steps refits
// from it on any machine), --out_md (a markdown table), --fit_out (the fitted
// calibration file, schema asymcache.calibration.v1, `source` naming this
// command, the card and the date).
//
// Usage: step_grid_bench --calibration=FILE [--shape=llama-3-8b] [--quick]
//          [--iters=10] [--prefill_iters=4] [--max_context_tokens=270000]
//          [--seed=N] [--out=step_grid.json] [--out_md=FILE] [--fit_out=FILE]
// Exit code 0 when every step ran and the fit succeeded.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "bench/gpu/bench_device.h"
#include "bench/gpu/forward_timing.h"
#include "bench/step_grid.h"
#include "cachecore/cost_model.h"
#include "cachecore/model_config.h"
#include "kernels/msa.h"
#include "kernels/msa_cuda.h"
#include "model/llama_config.h"
#include "model/model_backend.h"
#include "model/weight_source.h"
#include "nlohmann/json.hpp"
#include "tests/model/step_arrays.h"
#include "util/absl_flags_main.h"

ABSL_FLAG(std::string, shape, "llama-3-8b", "named model shape");
ABSL_FLAG(std::string, calibration, "", "base calibration file the fit starts from (required)");
ABSL_FLAG(std::string, out, "step_grid.json", "JSON of every step (measured, predicted)");
ABSL_FLAG(std::string, out_md, "", "markdown table of the same");
ABSL_FLAG(std::string, fit_out, "", "write the fitted calibration file here");
ABSL_FLAG(bool, quick, false, "smaller grid, at most 5 / 2 repetitions");
ABSL_FLAG(int, iters, 10, "timed repetitions of each decode and mixed step (>= 3)");
ABSL_FLAG(int, prefill_iters, 4, "timed repetitions of each prefill step (>= 1)");
ABSL_FLAG(int64_t, max_context_tokens, 270000,
          "most KV tokens of one step (sizes the pool: 270k tokens of llama-3-8b are 33 GiB)");
ABSL_FLAG(uint64_t, seed, 1, "weights, pool contents and page order");

namespace asymcache::model::bench {
namespace {

struct BenchOptions {
  std::string shape = "llama-3-8b";
  std::string calibration;  // base calibration file (required)
  std::string out_path = "step_grid.json";
  std::string out_md;
  std::string fit_out;
  bool quick = false;
  int iters = 10;           // timed decode and mixed steps per shape
  int prefill_iters = 4;    // timed prefill steps per shape
  // Most KV tokens one step may span (sizes the pool: 270k tokens of
  // llama-3-8b are 33 GiB).
  int64_t max_context_tokens = 270000;
  uint64_t seed = 1;

  absl::Status Validate() const {
    if (calibration.empty()) return absl::InvalidArgumentError("--calibration is required");
    if (iters < 3 || prefill_iters < 1) {
      return absl::InvalidArgumentError("--iters must be >= 3 and --prefill_iters >= 1");
    }
    if (max_context_tokens < 40000) {
      return absl::InvalidArgumentError("--max_context_tokens must be >= 40000 (the prefill grid)");
    }
    if (out_path.empty()) return absl::InvalidArgumentError("--out must not be empty");
    return absl::OkStatus();
  }
};

// The options from the flags (after ParseDashedAbslFlags), validated.
absl::StatusOr<BenchOptions> OptionsFromFlags() {
  BenchOptions o;
  o.shape = absl::GetFlag(FLAGS_shape);
  o.calibration = absl::GetFlag(FLAGS_calibration);
  o.out_path = absl::GetFlag(FLAGS_out);
  o.out_md = absl::GetFlag(FLAGS_out_md);
  o.fit_out = absl::GetFlag(FLAGS_fit_out);
  o.quick = absl::GetFlag(FLAGS_quick);
  o.iters = absl::GetFlag(FLAGS_iters);
  o.prefill_iters = absl::GetFlag(FLAGS_prefill_iters);
  o.max_context_tokens = absl::GetFlag(FLAGS_max_context_tokens);
  o.seed = absl::GetFlag(FLAGS_seed);
  if (o.quick) {
    o.iters = std::min(o.iters, 5);
    o.prefill_iters = std::min(o.prefill_iters, 2);
  }
  BENCH_RETURN_IF_ERROR(o.Validate());
  return o;
}

using ::asymcache::bench::GridStep;
using ::asymcache::bench::SequenceShape;

StepArrays BuildStepArrays(const GridStep& step, int32_t block_tokens,
                           const std::vector<int32_t>& pages, std::mt19937_64& rng,
                           int64_t vocab) {
  StepArrays arrays;
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab) - 1);
  size_t next_page = 0;
  for (const SequenceShape& shape : step.sequences) {
    const int32_t total = shape.cached + shape.queries;
    const size_t sequence_pages = static_cast<size_t>((total + block_tokens - 1) / block_tokens);
    std::vector<int32_t> tokens(total);  // only the query positions are read
    for (int32_t p = shape.cached; p < total; ++p) tokens[p] = token(rng);
    std::vector<int32_t> positions(shape.queries);
    std::iota(positions.begin(), positions.end(), shape.cached);
    arrays.Append(tokens, absl::MakeConstSpan(pages).subspan(next_page, sequence_pages), positions,
                  block_tokens);
    next_page += sequence_pages;
  }
  return arrays;
}

std::string UtcNow() {
  const std::time_t now = std::time(nullptr);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return text;
}

int Main(int argc, char** argv) {
  absl::StatusOr<BenchOptions> options = OptionsFromFlags();
  if (!options.ok()) {
    std::fprintf(stderr, "[step_grid_bench] %s\n", options.status().ToString().c_str());
    return 2;
  }
  absl::StatusOr<CalibrationParams> base = CostModel::LoadCalibrationFile(options->calibration);
  if (!base.ok()) {
    std::fprintf(stderr, "[step_grid_bench] %s\n", base.status().ToString().c_str());
    return 2;
  }
  absl::StatusOr<ModelConfig> cost_shape = ModelConfig::Named(options->shape);
  absl::StatusOr<LlamaConfig> config = LlamaConfig::Named(options->shape);
  if (!cost_shape.ok() || !config.ok()) {
    std::fprintf(stderr, "[step_grid_bench] unknown shape %s\n", options->shape.c_str());
    return 2;
  }
  absl::StatusOr<msa::GpuInfo> gpu = msa::QueryGpu(0);
  if (!gpu.ok()) {
    std::fprintf(stderr, "[step_grid_bench] no usable GPU: %s\n", gpu.status().ToString().c_str());
    return 2;
  }
  if (config->dtype == msa::DType::kFloat32) config->dtype = msa::DType::kBFloat16;
  std::string command = "step_grid_bench";
  for (int i = 1; i < argc; ++i) absl::StrAppend(&command, " ", argv[i]);
  const std::string date = UtcNow();
  std::printf("# step_grid_bench on %s, shape %s, base calibration %s, %s\n", gpu->name.c_str(),
              config->name.c_str(), options->calibration.c_str(), date.c_str());

  ::asymcache::bench::StepGridOptions grid_options;
  grid_options.quick = options->quick;
  grid_options.max_context_tokens = options->max_context_tokens;
  std::vector<GridStep> grid = ::asymcache::bench::BuildStepGrid(grid_options);
  int64_t most_tokens = 0;
  int32_t most_queries = 0;
  int32_t most_sequences = 0;
  for (const GridStep& step : grid) {
    most_tokens = std::max(most_tokens, step.kv_tokens());
    most_queries = std::max(most_queries, static_cast<int32_t>(step.query_tokens()));
    most_sequences = std::max(most_sequences, static_cast<int32_t>(step.sequences.size()));
  }
  const int32_t bt = config->block_tokens;
  // Each sequence rounds up to whole pages.
  const int64_t num_blocks = most_tokens / bt + most_sequences + 16;
  const int64_t page_bytes =
      config->attention_shape().PageElements() * msa::DTypeBytes(config->dtype);
  const size_t pool_bytes = static_cast<size_t>(num_blocks * page_bytes * config->num_layers);

  cudaStream_t stream = nullptr;
  if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
    std::fprintf(stderr, "[step_grid_bench] cannot create a stream\n");
    return 1;
  }
  absl::StatusOr<WeightSource> weights = WeightSource::Random(*config, options->seed);
  absl::StatusOr<msa::DeviceBuffer> pool = msa::DeviceBuffer::Allocate(pool_bytes);
  if (!weights.ok() || !pool.ok()) {
    std::fprintf(stderr, "[step_grid_bench] %s\n",
                 (!weights.ok() ? weights.status() : pool.status()).ToString().c_str());
    return 1;
  }
  if (msa::bench::FillRandomBf16(pool->data(), pool_bytes / 2, options->seed + 3, 1.0f, stream) !=
          cudaSuccess ||
      cudaStreamSynchronize(stream) != cudaSuccess) {
    std::fprintf(stderr, "[step_grid_bench] pool fill failed\n");
    return 1;
  }
  CudaBackendOptions backend_options;
  backend_options.max_batch = most_sequences;
  backend_options.max_step_tokens = most_queries;
  backend_options.max_step_pages = static_cast<int32_t>(num_blocks);
  absl::StatusOr<std::unique_ptr<ModelBackend>> backend = CreateCudaBackend(
      *weights, KvPoolView{pool->data(), num_blocks, num_blocks * page_bytes}, backend_options);
  if (!backend.ok()) {
    std::fprintf(stderr, "[step_grid_bench] backend: %s\n", backend.status().ToString().c_str());
    return 1;
  }
  std::printf("# pool %.2f GiB (%lld pages), %zu steps\n", pool_bytes / double(1 << 30),
              static_cast<long long>(num_blocks), grid.size());

  std::mt19937_64 rng(options->seed);
  std::vector<int32_t> pages(num_blocks);
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), rng);

  int failures = 0;
  for (GridStep& step : grid) {
    const StepArrays arrays = BuildStepArrays(step, bt, pages, rng, config->vocab_size);
    const bool prefill = step.kind == "prefill";
    absl::StatusOr<ForwardTiming> t =
        TimeForward(**backend, arrays.batch(/*want_logits=*/false), prefill ? 1 : 3,
                    prefill ? options->prefill_iters : options->iters);
    if (!t.ok()) {
      std::fprintf(stderr, "[step_grid_bench] %s: %s\n", step.step.label.c_str(),
                   t.status().ToString().c_str());
      ++failures;
      continue;
    }
    step.step.seconds = t->median_ms * 1e-3;
    step.p10_ms = t->p10_ms;
    step.p90_ms = t->p90_ms;
    std::printf("%-36s %10.3f ms\n", step.step.label.c_str(), t->median_ms);
    std::fflush(stdout);
  }

  const nlohmann::json header = {{"command", command},
                                 {"card", gpu->name},
                                 {"date", date},
                                 {"shape", config->name},
                                 {"base_calibration", options->calibration},
                                 {"grid", {{"quick", options->quick},
                                           {"max_context_tokens", options->max_context_tokens}}}};
  const absl::Status reported = ::asymcache::bench::FitAndReport(
      grid, *cost_shape, *base, header, gpu->name,
      absl::StrCat(command, " (whole CUDA-backend steps fitted from ", options->calibration, "), ",
                   date),
      options->out_path, options->out_md, options->fit_out);
  if (!reported.ok()) {
    std::fprintf(stderr, "[step_grid_bench] %s\n", reported.ToString().c_str());
    ++failures;
  }
  cudaStreamDestroy(stream);
  std::printf("# wrote %s; %d failures\n", options->out_path.c_str(), failures);
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace asymcache::model::bench

int main(int argc, char** argv) {
  asymcache::ParseDashedAbslFlags(argc, argv, "bench/gpu/step_grid_bench.cc",
                                  "step_grid_bench --calibration=BASE.json [--quick] "
                                  "[--out=step_grid.json] [--out_md=FILE] [--fit_out=FILE]");
  return asymcache::model::bench::Main(argc, argv);
}
