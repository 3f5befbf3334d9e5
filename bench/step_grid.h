// The step grid of bench/gpu/step_grid_bench.cc and what is done with its
// measurements, without CUDA: the GPU bench measures the grid's steps, and
// asymcache-fit-steps (bench/fit_steps_main.cc) refits a calibration from a
// committed measurement file on any machine.
//
// Contract: BuildStepGrid is deterministic (the same options give the same
// steps, labels unique), so a measurement file is matched back to its steps
// by label. FitAndReport leaves every output it was not asked for untouched.
// Plain values; thread-compatible.
#ifndef ASYMCACHE_BENCH_STEP_GRID_H_
#define ASYMCACHE_BENCH_STEP_GRID_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cachecore/cost_model.h"
#include "cachecore/model_config.h"
#include "cachecore/step_calibration_fit.h"
#include "nlohmann/json.hpp"

namespace asymcache::bench {

struct StepGridOptions {
  // Contexts {256, 4096} and chunks {256, 1024, 4096} instead of the full
  // {256, 1024, 4096, 16384} and {256, 512, 1024, 2048, 4096, 8192}.
  bool quick = false;
  // Decode steps whose KV exceeds this many tokens are left out (sizes the
  // GPU pool: 270k tokens of llama-3-8b are 33 GiB).
  int64_t max_context_tokens = 270000;
};

// One sequence of a step: `cached` positions already in the pool, then
// `queries` new ones (a decode: cached > 0 and one query).
struct SequenceShape {
  int32_t cached = 0;
  int32_t queries = 1;
};

struct GridStep {
  std::string kind;  // "decode" | "prefill" | "mixed"
  std::vector<SequenceShape> sequences;
  MeasuredStep step;  // the cost model's view; step.seconds is set once measured
  double p10_ms = 0;  // spread of the timed repetitions, once measured
  double p90_ms = 0;

  int64_t kv_tokens() const;
  int64_t query_tokens() const;
};

// decode: batches {1, 4, 16, 32, 64, 128} x the contexts; prefill: one chunk
// of each length at positions {0, 8192, 24576}; mixed: decodes plus one
// chunk, and 24 decodes of unequal contexts (never fitted, only predicted).
std::vector<GridStep> BuildStepGrid(const StepGridOptions& options);

// Fits `base` to the grid's measured decode and prefill steps
// (FitCalibrationToSteps) and writes, each when its path is not empty:
// `json_path` (every step: measured, base-predicted and fitted-predicted ms,
// plus `header`'s members), `md_path` (the same as a markdown table),
// `fit_path` (the fitted calibration, `device` and `source` as given). Steps
// with seconds <= 0 (not measured) are skipped. Prints the table on stdout.
// Errors: the fit's, or INTERNAL naming a file that could not be written.
absl::Status FitAndReport(const std::vector<GridStep>& grid, const ModelConfig& model,
                          const CalibrationParams& base, const nlohmann::json& header,
                          const std::string& device, const std::string& source,
                          const std::string& json_path, const std::string& md_path,
                          const std::string& fit_path);

}  // namespace asymcache::bench

#endif  // ASYMCACHE_BENCH_STEP_GRID_H_
