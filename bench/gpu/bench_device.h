// What the GPU benchmarks (msa_gpu_bench, model_step_bench) share: device
// helpers (random fills, near-empty kernels), the status macros their
// measurement code returns through, the percentile of their timings and the
// --name=value flag syntax.
//
// Contract: launches are asynchronous on the given stream and return the
// launch's cudaError_t (cudaSuccess when enqueued). Pointers are device memory.
// BENCH_CUDA_OK / BENCH_RETURN_IF_ERROR return from the enclosing function
// (which returns absl::Status or absl::StatusOr): INTERNAL "EXPR: cuda error"
// for a failed CUDA call, the status itself for a failed one. Thread-safe (no
// state).
#ifndef ASYMCACHE_BENCH_GPU_BENCH_DEVICE_H_
#define ASYMCACHE_BENCH_GPU_BENCH_DEVICE_H_

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

#define BENCH_CUDA_OK(expr)                                                                  \
  do {                                                                                       \
    const cudaError_t bench_err_ = (expr);                                                   \
    if (bench_err_ != cudaSuccess) {                                                         \
      return absl::InternalError(absl::StrCat(#expr, ": ", cudaGetErrorString(bench_err_))); \
    }                                                                                        \
  } while (0)

#define BENCH_RETURN_IF_ERROR(expr)        \
  do {                                     \
    const absl::Status bench_st_ = (expr); \
    if (!bench_st_.ok()) return bench_st_; \
  } while (0)

namespace asymcache::msa::bench {

// Writes `count` bf16 values, uniform in [-scale, scale), derived from a hash of
// (seed, index): a different seed gives independent data, never zeros.
cudaError_t FillRandomBf16(void* dst, size_t count, uint64_t seed, float scale,
                           cudaStream_t stream);

// Launches `count` one-thread kernels that do (almost) nothing.
cudaError_t LaunchEmptyKernels(int count, cudaStream_t stream);

// The q-quantile (q in [0, 1]) of ascending `sorted`: the entry at the
// rounded rank q * (size - 1); NaN when empty.
inline double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return NAN;
  const auto idx = static_cast<size_t>(std::lround(q * static_cast<double>(sorted.size() - 1)));
  return sorted[std::min(idx, sorted.size() - 1)];
}

// The value of `arg` when it is "--NAME=value" (pointing into `arg`), else
// nullptr.
inline const char* FlagValue(const std::string& arg, const std::string& name) {
  const std::string prefix = "--" + name + "=";
  return arg.rfind(prefix, 0) == 0 ? arg.c_str() + prefix.size() : nullptr;
}

}  // namespace asymcache::msa::bench

#endif  // ASYMCACHE_BENCH_GPU_BENCH_DEVICE_H_
