// model_step_bench: step latency of the CUDA model backend (issue 6) against
// its roofline, on one GPU.
//
// With a named shape (default llama-3-8b; random weights generated on the
// device, bf16) and a device KV pool filled with random values (pages in a
// random order), one run measures:
//   gemm     the bf16 rate of a large cuBLAS GEMM (8192^3, fp32 accumulate);
//   copy     device-to-device copy bandwidth (2 GiB, bytes read + written);
//   decode   one decode step (ModelBackend::Forward, greedy) at each batch of
//            --batches, every sequence with --context cached tokens;
//   prefill  one step of --prefill_tokens query tokens of one sequence
//            (positions 0..T-1, causal), sampling the last.
// Each step is timed on the host around Forward() (which is synchronous:
// planning, the table upload, every kernel and the copy-back are inside),
// after warm-up steps; median and p10/p90 of the timed steps.
//
// Rooflines, from the measured ceilings:
//   decode   max(bytes / copy bandwidth, FLOPs / GEMM rate), bytes = every
//            weight read once (layers, final norm, LM head; embedding rows of
//            the batch) + the K/V of the whole context read once + the new K/V
//            written; FLOPs = 2 * B * (linear parameters + LM head) + 4 * B *
//            context * Hq * D * layers (attention);
//   prefill  max(FLOPs / GEMM rate, bytes / bandwidth), FLOPs = 2 * T *
//            linear parameters + causal attention 4 * Hq * D * layers *
//            T (T + 1) / 2 + the LM head of the sampled row.
// "fraction" = roofline time / measured time. The goals of issue 6 are
// >= 0.6 for decode at batch 32 and for the 4k prefill (printed as PASS/FAIL).
//
// Output: a JSON document to --out (default model_step.json) and a table on
// stdout. Exit code 0 when every measurement ran (whatever the fractions).
//
// Usage: model_step_bench [--shape=llama-3-8b] [--context=1024]
//          [--batches=1,32,128 (empty: no decode)] [--prefill_tokens=4096] [--warmup=3]
//          [--iters=20] [--prefill_iters=5] [--seed=N] [--out=FILE]
//          [--gemm_tflops=X] [--copy_gb_per_s=Y]   (given ceilings: not measured)
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
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

namespace asymcache::model::bench {
namespace {

using msa::bench::FlagValue;

constexpr double kGoalFraction = 0.6;

struct BenchOptions {
  std::string shape = "llama-3-8b";
  std::string out_path = "model_step.json";
  int32_t context = 1024;  // cached tokens per decoding sequence
  std::vector<int32_t> batches = {1, 32, 128};
  int32_t prefill_tokens = 4096;  // 0: no prefill measurement
  int warmup = 3;                 // untimed steps first (GEMM heuristics, caches)
  int iters = 20;                 // timed decode steps per batch
  int prefill_iters = 5;          // timed prefill steps
  uint64_t seed = 1;              // weights and page order
  double gemm_tflops = 0;         // > 0: use this GEMM rate instead of measuring it
  double copy_gb_per_s = 0;       // > 0: use this copy bandwidth instead of measuring it

  absl::Status Validate() const {
    if (context < 0) return absl::InvalidArgumentError("--context must be >= 0");
    if (batches.empty() && prefill_tokens == 0) {
      return absl::InvalidArgumentError("nothing to measure: empty --batches and no prefill");
    }
    for (int32_t b : batches) {
      if (b <= 0) return absl::InvalidArgumentError("--batches entries must be > 0");
    }
    if (prefill_tokens < 0) return absl::InvalidArgumentError("--prefill_tokens must be >= 0");
    if (warmup < 1) return absl::InvalidArgumentError("--warmup must be >= 1");
    if (iters < 3 || prefill_iters < 1) {
      return absl::InvalidArgumentError("--iters must be >= 3 and --prefill_iters >= 1");
    }
    if (out_path.empty()) return absl::InvalidArgumentError("--out must not be empty");
    return absl::OkStatus();
  }
};

absl::StatusOr<BenchOptions> ParseFlags(int argc, char** argv) {
  BenchOptions o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto parse_int = [&](const char* text, int32_t* out) -> absl::Status {
      if (!absl::SimpleAtoi(text, out)) {
        return absl::InvalidArgumentError(absl::StrCat("bad integer in ", arg));
      }
      return absl::OkStatus();
    };
    if (const char* v = FlagValue(arg, "shape")) {
      o.shape = v;
    } else if (const char* v = FlagValue(arg, "out")) {
      o.out_path = v;
    } else if (const char* v = FlagValue(arg, "context")) {
      BENCH_RETURN_IF_ERROR(parse_int(v, &o.context));
    } else if (const char* v = FlagValue(arg, "prefill_tokens")) {
      BENCH_RETURN_IF_ERROR(parse_int(v, &o.prefill_tokens));
    } else if (const char* v = FlagValue(arg, "warmup")) {
      BENCH_RETURN_IF_ERROR(parse_int(v, &o.warmup));
    } else if (const char* v = FlagValue(arg, "iters")) {
      BENCH_RETURN_IF_ERROR(parse_int(v, &o.iters));
    } else if (const char* v = FlagValue(arg, "prefill_iters")) {
      BENCH_RETURN_IF_ERROR(parse_int(v, &o.prefill_iters));
    } else if (const char* v = FlagValue(arg, "gemm_tflops")) {
      if (!absl::SimpleAtod(v, &o.gemm_tflops)) {
        return absl::InvalidArgumentError("bad --gemm_tflops");
      }
    } else if (const char* v = FlagValue(arg, "copy_gb_per_s")) {
      if (!absl::SimpleAtod(v, &o.copy_gb_per_s)) {
        return absl::InvalidArgumentError("bad --copy_gb_per_s");
      }
    } else if (const char* v = FlagValue(arg, "seed")) {
      if (!absl::SimpleAtoi(v, &o.seed)) return absl::InvalidArgumentError("bad --seed");
    } else if (const char* v = FlagValue(arg, "batches")) {
      o.batches.clear();
      for (absl::string_view part : absl::StrSplit(v, ',', absl::SkipEmpty())) {
        int32_t b = 0;
        if (!absl::SimpleAtoi(part, &b)) {
          return absl::InvalidArgumentError(absl::StrCat("bad batch '", part, "' in ", arg));
        }
        o.batches.push_back(b);
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag ", arg));
    }
  }
  BENCH_RETURN_IF_ERROR(o.Validate());
  return o;
}

struct Timing {
  double median_ms = 0;
  double p10_ms = 0;
  double p90_ms = 0;
  int iters = 0;
};

Timing Summarize(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  return Timing{msa::bench::Percentile(ms, 0.5), msa::bench::Percentile(ms, 0.1),
                msa::bench::Percentile(ms, 0.9), static_cast<int>(ms.size())};
}

// Median of `iters` timings of body(stream) with CUDA events, after `warmup`.
absl::StatusOr<double> MedianEventMs(const std::function<absl::Status(cudaStream_t)>& body,
                                     cudaStream_t stream, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) BENCH_RETURN_IF_ERROR(body(stream));
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  BENCH_CUDA_OK(cudaEventCreate(&start));
  BENCH_CUDA_OK(cudaEventCreate(&stop));
  std::vector<double> ms;
  absl::Status status;
  for (int i = 0; i < iters && status.ok(); ++i) {
    status.Update(cudaEventRecord(start, stream) == cudaSuccess
                      ? absl::OkStatus()
                      : absl::InternalError("cudaEventRecord"));
    if (status.ok()) status.Update(body(stream));
    if (status.ok() && cudaEventRecord(stop, stream) != cudaSuccess) {
      status = absl::InternalError("cudaEventRecord");
    }
    if (status.ok() && cudaEventSynchronize(stop) != cudaSuccess) {
      status = absl::InternalError("cudaEventSynchronize");
    }
    float elapsed = 0;
    if (status.ok()) cudaEventElapsedTime(&elapsed, start, stop);
    ms.push_back(elapsed);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  BENCH_RETURN_IF_ERROR(status);
  return Summarize(ms).median_ms;
}

// ---- ceilings ---------------------------------------------------------------------------

absl::StatusOr<double> MeasureGemmTflops(cudaStream_t stream) {
  constexpr int kN = 8192;
  const size_t elems = size_t{kN} * kN;
  absl::StatusOr<msa::DeviceBuffer> a = msa::DeviceBuffer::Allocate(elems * 2);
  absl::StatusOr<msa::DeviceBuffer> b = msa::DeviceBuffer::Allocate(elems * 2);
  absl::StatusOr<msa::DeviceBuffer> c = msa::DeviceBuffer::Allocate(elems * 2);
  if (!a.ok()) return a.status();
  if (!b.ok()) return b.status();
  if (!c.ok()) return c.status();
  BENCH_CUDA_OK(msa::bench::FillRandomBf16(a->data(), elems, 11, 1.0f, stream));
  BENCH_CUDA_OK(msa::bench::FillRandomBf16(b->data(), elems, 12, 1.0f, stream));
  cublasHandle_t handle = nullptr;
  if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError("cublasCreate failed");
  }
  cublasSetStream(handle, stream);
  const float alpha = 1.0f;
  const float beta = 0.0f;
  absl::StatusOr<double> ms = MedianEventMs(
      [&](cudaStream_t) -> absl::Status {
        const cublasStatus_t st =
            cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, kN, kN, kN, &alpha, a->data(),
                         CUDA_R_16BF, kN, b->data(), CUDA_R_16BF, kN, &beta, c->data(), CUDA_R_16BF,
                         kN, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (st != CUBLAS_STATUS_SUCCESS) {
          return absl::InternalError(absl::StrCat("cublasGemmEx: ", cublasGetStatusString(st)));
        }
        return absl::OkStatus();
      },
      stream, 5, 30);
  cublasDestroy(handle);
  if (!ms.ok()) return ms.status();
  return 2.0 * kN * kN * double{kN} / (*ms * 1e-3) / 1e12;
}

absl::StatusOr<double> MeasureCopyGbps(cudaStream_t stream) {
  const size_t bytes = size_t{2} << 30;
  absl::StatusOr<msa::DeviceBuffer> src = msa::DeviceBuffer::Allocate(bytes);
  absl::StatusOr<msa::DeviceBuffer> dst = msa::DeviceBuffer::Allocate(bytes);
  if (!src.ok()) return src.status();
  if (!dst.ok()) return dst.status();
  BENCH_CUDA_OK(msa::bench::FillRandomBf16(src->data(), bytes / 2, 13, 1.0f, stream));
  absl::StatusOr<double> ms = MedianEventMs(
      [&](cudaStream_t s) -> absl::Status {
        BENCH_CUDA_OK(
            cudaMemcpyAsync(dst->data(), src->data(), bytes, cudaMemcpyDeviceToDevice, s));
        return absl::OkStatus();
      },
      stream, 3, 20);
  if (!ms.ok()) return ms.status();
  return 2.0 * bytes / (*ms * 1e-3) / 1e9;
}

// ---- model steps -----------------------------------------------------------------------

// Sequence s holds positions [0, cached + queries) on pages taken in order
// from `pages`; its queries are the last `queries` positions (random
// tokens), the last one sampled.
StepArrays BuildStep(int32_t sequences, int32_t cached, int32_t queries, int32_t block_tokens,
                     const std::vector<int32_t>& pages, std::mt19937_64& rng, int64_t vocab) {
  StepArrays step;
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab) - 1);
  const int32_t total = cached + queries;
  const size_t pages_per_sequence = static_cast<size_t>((total + block_tokens - 1) / block_tokens);
  std::vector<int32_t> tokens(total);  // only the query positions are read
  for (int32_t s = 0; s < sequences; ++s) {
    for (int32_t p = cached; p < total; ++p) tokens[p] = token(rng);
    step.Append(tokens,
                absl::MakeConstSpan(pages).subspan(s * pages_per_sequence, pages_per_sequence),
                Range(cached, total), block_tokens);
  }
  return step;
}

absl::StatusOr<Timing> TimeSteps(ModelBackend& backend, const StepArrays& step, int warmup,
                                 int iters) {
  absl::StatusOr<ForwardTiming> t = TimeForward(backend, step.batch(/*want_logits=*/false), warmup,
                                                iters);
  if (!t.ok()) return t.status();
  return Timing{t->median_ms, t->p10_ms, t->p90_ms, t->iters};
}

struct Costs {
  double linear_params = 0;  // per token: all layers' linear weights
  double weight_bytes = 0;   // every weight read once (layers, norms, LM head)
  double kv_bytes_per_token_layer = 0;
  double lm_head_params = 0;
};

Costs CostsOf(const LlamaConfig& c) {
  Costs k;
  const double h = static_cast<double>(c.hidden_size);
  const double per_layer = h * (c.q_dim() + 2.0 * c.kv_dim()) + h * c.q_dim() +
                           3.0 * h * static_cast<double>(c.intermediate_size);
  const double e = msa::DTypeBytes(c.dtype);
  k.linear_params = per_layer * c.num_layers;
  k.lm_head_params = static_cast<double>(c.vocab_size) * h;
  k.weight_bytes = k.linear_params * e + k.lm_head_params * e + (2.0 * c.num_layers + 1) * h * 4;
  k.kv_bytes_per_token_layer = 2.0 * c.kv_dim() * e;
  return k;
}

int Main(int argc, char** argv) {
  absl::StatusOr<BenchOptions> options = ParseFlags(argc, argv);
  if (!options.ok()) {
    std::fprintf(stderr, "%s\n", options.status().ToString().c_str());
    return 2;
  }
  absl::StatusOr<msa::GpuInfo> gpu = msa::QueryGpu(0);
  if (!gpu.ok()) {
    std::fprintf(stderr, "[model_step_bench] no usable GPU: %s\n", gpu.status().ToString().c_str());
    return 2;
  }
  absl::StatusOr<LlamaConfig> config = LlamaConfig::Named(options->shape);
  if (!config.ok()) {
    std::fprintf(stderr, "[model_step_bench] %s\n", config.status().ToString().c_str());
    return 2;
  }
  if (config->dtype == msa::DType::kFloat32) config->dtype = msa::DType::kBFloat16;
  std::string command = argv[0];
  for (int i = 1; i < argc; ++i) absl::StrAppend(&command, " ", argv[i]);
  std::printf("# model_step_bench on %s (%d SMs), shape %s, %s\n", gpu->name.c_str(), gpu->sm_count,
              config->name.c_str(), config->dtype == msa::DType::kBFloat16 ? "bf16" : "fp16");
  nlohmann::json out = {{"command", command},
                        {"card", gpu->name},
                        {"sms", gpu->sm_count},
                        {"shape", config->name},
                        {"dtype", config->dtype == msa::DType::kBFloat16 ? "bf16" : "fp16"},
                        {"context", options->context},
                        {"goal_fraction", kGoalFraction}};
  int failures = 0;
  auto fail = [&](absl::string_view what, const absl::Status& status) {
    std::fprintf(stderr, "[model_step_bench] %s: %s\n", std::string(what).c_str(),
                 status.ToString().c_str());
    ++failures;
  };

  cudaStream_t stream = nullptr;
  if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
    std::fprintf(stderr, "[model_step_bench] cannot create a stream\n");
    return 1;
  }
  // Given ceilings (a profiler run that should see only the model's kernels)
  // or measured ones.
  absl::StatusOr<double> tflops =
      options->gemm_tflops > 0 ? options->gemm_tflops : MeasureGemmTflops(stream);
  absl::StatusOr<double> gbps =
      options->copy_gb_per_s > 0 ? options->copy_gb_per_s : MeasureCopyGbps(stream);
  if (!tflops.ok() || !gbps.ok()) {
    fail("ceilings", !tflops.ok() ? tflops.status() : gbps.status());
    return 1;
  }
  out["gemm_tflops"] = *tflops;
  out["copy_gb_per_s"] = *gbps;
  out["ceilings_measured"] = options->gemm_tflops <= 0 && options->copy_gb_per_s <= 0;
  std::printf("%-8s %-28s %10.1f TFLOP/s\n", "gemm", "8192^3 bf16 (cuBLAS)", *tflops);
  std::printf("%-8s %-28s %10.0f GB/s (read+write)\n", "copy", "2 GiB D2D", *gbps);

  // Weights, pool, backend.
  const auto load_start = std::chrono::steady_clock::now();
  absl::StatusOr<WeightSource> weights = WeightSource::Random(*config, options->seed);
  if (!weights.ok()) {
    fail("weights", weights.status());
    return 1;
  }
  const int32_t bt = config->block_tokens;
  const int32_t max_batch = options->batches.empty() ? 1
                                                     : *std::max_element(options->batches.begin(),
                                                                         options->batches.end());
  const int64_t decode_pages = int64_t{max_batch} * ((options->context + 1 + bt - 1) / bt);
  const int64_t prefill_pages = (int64_t{options->prefill_tokens} + bt - 1) / bt;
  const int64_t num_blocks = std::max(decode_pages, prefill_pages) + 16;
  const int64_t page_bytes =
      config->attention_shape().PageElements() * msa::DTypeBytes(config->dtype);
  const size_t pool_bytes = static_cast<size_t>(num_blocks * page_bytes * config->num_layers);
  absl::StatusOr<msa::DeviceBuffer> pool = msa::DeviceBuffer::Allocate(pool_bytes);
  if (!pool.ok()) {
    fail("pool", pool.status());
    return 1;
  }
  if (msa::bench::FillRandomBf16(pool->data(), pool_bytes / 2, options->seed + 3, 1.0f, stream) !=
          cudaSuccess ||
      cudaStreamSynchronize(stream) != cudaSuccess) {
    fail("pool fill", absl::InternalError("FillRandomBf16"));
    return 1;
  }
  CudaBackendOptions backend_options;
  backend_options.max_batch = std::max(max_batch, 1);
  backend_options.max_step_tokens = std::max(options->prefill_tokens, max_batch);
  backend_options.max_step_pages = static_cast<int32_t>(num_blocks);
  absl::StatusOr<std::unique_ptr<ModelBackend>> backend = CreateCudaBackend(
      *weights, KvPoolView{pool->data(), num_blocks, num_blocks * page_bytes}, backend_options);
  if (!backend.ok()) {
    fail("backend", backend.status());
    return 1;
  }
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  std::printf("%-8s %-28s %10.2f s (pool %.2f GiB, %lld pages)\n", "create", "random weights",
              load_s, pool_bytes / double(1 << 30), static_cast<long long>(num_blocks));
  out["create_s"] = load_s;

  std::mt19937_64 rng(options->seed);
  std::vector<int32_t> pages(num_blocks);
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), rng);
  const Costs costs = CostsOf(*config);
  const double layers = config->num_layers;
  const double attn_flops_per_pair = 4.0 * config->q_dim() * layers;  // QK^T + PV per (q, k)
  const double bw = *gbps * 1e9;
  const double rate = *tflops * 1e12;

  std::printf("\n%-8s %6s %8s %10s %10s %10s %9s %8s\n", "step", "batch", "tokens", "median_ms",
              "p90_ms", "roof_ms", "bound", "fraction");
  out["decode"] = nlohmann::json::array();
  for (int32_t b : options->batches) {
    const StepArrays step = BuildStep(b, options->context, 1, bt, pages, rng, config->vocab_size);
    absl::StatusOr<Timing> t = TimeSteps(**backend, step, options->warmup, options->iters);
    if (!t.ok()) {
      fail(absl::StrCat("decode batch ", b), t.status());
      continue;
    }
    const double ctx = options->context + 1.0;  // keys read, the new one included
    const double bytes = costs.weight_bytes + b * static_cast<double>(config->hidden_size) * 2 +
                         b * ctx * layers * costs.kv_bytes_per_token_layer +
                         b * layers * costs.kv_bytes_per_token_layer;
    const double flops =
        2.0 * b * (costs.linear_params + costs.lm_head_params) + attn_flops_per_pair * b * ctx;
    const double memory_ms = bytes / bw * 1e3;
    const double compute_ms = flops / rate * 1e3;
    const double roof_ms = std::max(memory_ms, compute_ms);
    const double fraction = roof_ms / t->median_ms;
    const char* bound = memory_ms >= compute_ms ? "memory" : "compute";
    std::printf(
        "%-8s %6d %8d %10.3f %10.3f %10.3f %9s %8.2f%s\n", "decode", b, b, t->median_ms, t->p90_ms,
        roof_ms, bound, fraction,
        b == 32 ? (fraction >= kGoalFraction ? "  PASS (goal 0.60)" : "  FAIL (goal 0.60)") : "");
    out["decode"].push_back({{"batch", b},
                             {"context", options->context},
                             {"median_ms", t->median_ms},
                             {"p10_ms", t->p10_ms},
                             {"p90_ms", t->p90_ms},
                             {"iters", t->iters},
                             {"bytes", bytes},
                             {"flops", flops},
                             {"memory_roof_ms", memory_ms},
                             {"compute_roof_ms", compute_ms},
                             {"roofline_ms", roof_ms},
                             {"bound", bound},
                             {"fraction", fraction},
                             {"tokens_per_s", b / (t->median_ms * 1e-3)}});
  }

  if (options->prefill_tokens > 0) {
    const int32_t tokens = options->prefill_tokens;
    const StepArrays step = BuildStep(1, 0, tokens, bt, pages, rng, config->vocab_size);
    absl::StatusOr<Timing> t = TimeSteps(**backend, step, 1, options->prefill_iters);
    if (!t.ok()) {
      fail("prefill", t.status());
    } else {
      const double tk = tokens;
      const double flops = 2.0 * tk * costs.linear_params + 2.0 * costs.lm_head_params +
                           attn_flops_per_pair * tk * (tk + 1) / 2;
      const double bytes = costs.weight_bytes + tk * layers * costs.kv_bytes_per_token_layer;
      const double compute_ms = flops / rate * 1e3;
      const double memory_ms = bytes / bw * 1e3;
      const double roof_ms = std::max(compute_ms, memory_ms);
      const double fraction = roof_ms / t->median_ms;
      const char* bound = memory_ms >= compute_ms ? "memory" : "compute";
      std::printf("%-8s %6d %8d %10.3f %10.3f %10.3f %9s %8.2f%s\n", "prefill", 1, tokens,
                  t->median_ms, t->p90_ms, roof_ms, bound, fraction,
                  fraction >= kGoalFraction ? "  PASS (goal 0.60)" : "  FAIL (goal 0.60)");
      out["prefill"] = {{"tokens", tokens},
                        {"median_ms", t->median_ms},
                        {"p10_ms", t->p10_ms},
                        {"p90_ms", t->p90_ms},
                        {"iters", t->iters},
                        {"flops", flops},
                        {"bytes", bytes},
                        {"compute_roof_ms", compute_ms},
                        {"memory_roof_ms", memory_ms},
                        {"roofline_ms", roof_ms},
                        {"bound", bound},
                        {"fraction", fraction},
                        {"tokens_per_s", tk / (t->median_ms * 1e-3)},
                        {"tflops", flops / (t->median_ms * 1e-3) / 1e12}};
    }
  }

  std::ofstream file(options->out_path);
  file << out.dump(2) << "\n";
  if (!file) {
    std::fprintf(stderr, "[model_step_bench] cannot write %s\n", options->out_path.c_str());
    ++failures;
  }
  cudaStreamDestroy(stream);
  std::printf("# wrote %s; %d failed measurements\n", options->out_path.c_str(), failures);
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace asymcache::model::bench

int main(int argc, char** argv) { return asymcache::model::bench::Main(argc, argv); }
