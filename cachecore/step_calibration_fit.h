// FitCalibrationToSteps: fits the cost model's parameters to measured
// whole-step latencies of a real engine (issue #7: the simulator must predict
// measured TTFT, so the model it runs has to describe the engine's own steps,
// not only the kernels' micro-benchmarks).
//
// Contract:
//   * Input: steps the engine really ran, each described the way the
//     ChunkScheduler predicts one (decodes + prefill chunks, chunk_scheduler.h)
//     with its measured wall time, and a base CalibrationParams to start from.
//   * The fit keeps the model's form (CostModel: overhead + linear(tokens) +
//     per-sequence max(flops / P, bytes / BW) + segment overhead) and changes
//     three things, each from the steps that isolate it:
//       - the KV-scan bandwidth BW from pairs of decode-only steps with the
//         same batch and different contexts (their difference is attention
//         only): the rate at which the model's differences add up to the
//         measured ones (pooled, so pairs weigh by their attention time);
//       - the attention FLOP rate P the same way from pairs of single-chunk
//         prefill steps with the same chunk length at different positions;
//       - the linear_step_s curve, one point per token count that has an
//         anchor step — a decode-only step at its batch's smallest context,
//         or a single-chunk prefill at its length's smallest position — whose
//         point is set so that the anchor is predicted exactly; the points
//         replace the base's and are made non-decreasing.
//     The three are refitted in turn for `iterations` rounds (each depends
//     on the others through the anchors' attention share).
//     step_overhead_s and segment_overhead_s stay the base's (not separable
//     from the linear curve / not exercised by these steps).
//   * Steps of any other shape (mixed decode + prefill, several chunks) are not
//     fitted; they are predicted before and after, which is how a caller
//     checks that the fitted model generalises.
//   * INVALID_ARGUMENT (naming the step) when a step has no work, a negative
//     or non-finite time, or a malformed chunk; FAILED_PRECONDITION when there
//     is no anchor at all, or when the fitted parameters do not validate.
//     Missing pairs leave BW or P at the base's value (said in `notes`).
//
// Pure function of its inputs; thread-safe.
#ifndef ASYMCACHE_CACHECORE_STEP_CALIBRATION_FIT_H_
#define ASYMCACHE_CACHECORE_STEP_CALIBRATION_FIT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cachecore/chunk_scheduler.h"
#include "cachecore/cost_model.h"
#include "cachecore/model_config.h"

namespace asymcache {

// One step the engine ran and how long it took (wall time of the whole step).
struct MeasuredStep {
  std::string label;                // for messages and reports, e.g. "decode b=32 ctx=4096"
  std::vector<DecodeWork> decodes;  // one query each, context_tokens keys (itself included)
  std::vector<Chunk> chunks;        // prefill/rebuild slices, as ChunkScheduler emits them
  double seconds = 0;
};

struct StepFitOptions {
  // Rounds of (linear curve, BW, P). 4 converges to well under 1% on the
  // grids of bench/gpu/step_grid_bench.cc (tests/cachecore check it on
  // synthetic steps).
  int iterations = 4;
};

struct StepFitResult {
  CalibrationParams params;                // the fitted parameters
  std::vector<double> predicted_base_s;    // per input step, with the base params
  std::vector<double> predicted_fitted_s;  // per input step, with the fitted params
  // Per pair (bytes/s, FLOP/s) in the last round, for reports: how far the
  // pairs agree with the pooled rate.
  std::vector<double> bandwidth_estimates;
  std::vector<double> flops_rate_estimates;
  std::vector<std::string> notes;          // what could not be fitted, and why
};

absl::StatusOr<StepFitResult> FitCalibrationToSteps(const ModelConfig& model,
                                                    const CalibrationParams& base,
                                                    absl::Span<const MeasuredStep> steps,
                                                    const StepFitOptions& options = {});

// The latency `params` predict for `step` (ChunkScheduler::PredictStepLatency).
double PredictMeasuredStep(const ModelConfig& model, const CalibrationParams& params,
                           const MeasuredStep& step);

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_STEP_CALIBRATION_FIT_H_
