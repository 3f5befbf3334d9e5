// TimeForward: host wall time of whole ModelBackend::Forward steps, the
// measurement model_step_bench and step_grid_bench share. Forward is
// synchronous (planning, the table upload, every kernel, sampling and the
// copy-back are inside), so a host clock around it times the step as an
// engine sees it.
//
// Contract: header only; `warmup` untimed steps first, then `iters` timed
// ones; the median and the 10th/90th percentiles. The first failing
// Forward's status is returned. Not thread-safe (the backend is not).
#ifndef ASYMCACHE_BENCH_GPU_FORWARD_TIMING_H_
#define ASYMCACHE_BENCH_GPU_FORWARD_TIMING_H_

#include <algorithm>
#include <chrono>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/gpu/bench_device.h"
#include "model/model_backend.h"

namespace asymcache::model::bench {

struct ForwardTiming {
  double median_ms = 0;
  double p10_ms = 0;
  double p90_ms = 0;
  int iters = 0;
};

inline absl::StatusOr<ForwardTiming> TimeForward(ModelBackend& backend, const ForwardBatch& batch,
                                                 int warmup, int iters) {
  ForwardResult result;
  for (int i = 0; i < warmup; ++i) BENCH_RETURN_IF_ERROR(backend.Forward(batch, &result));
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    const auto start = std::chrono::steady_clock::now();
    BENCH_RETURN_IF_ERROR(backend.Forward(batch, &result));
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                     .count());
  }
  std::sort(ms.begin(), ms.end());
  return ForwardTiming{msa::bench::Percentile(ms, 0.5), msa::bench::Percentile(ms, 0.1),
                       msa::bench::Percentile(ms, 0.9), static_cast<int>(ms.size())};
}

}  // namespace asymcache::model::bench

#endif  // ASYMCACHE_BENCH_GPU_FORWARD_TIMING_H_
