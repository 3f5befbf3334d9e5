// GpuCalibration: the daemon's on-start measurement of its own GPU, producing
// the cost model's CalibrationParams (cachecore/cost_model.h) in seconds.
//
// What (docs/pool.md "Calibration on start"; the offline pipeline it mirrors is
// docs/calibration.md + bench/gpu/make_calibration.py): with the model's shapes,
//   attn_flops_per_s    MSA rebuild chunks (1024 queries after 8k cached keys,
//                       2048 after 16k), one layer; FLOPs = 4*D*Hq per
//                       (query, key) pair; the median rate.
//   attn_kv_bytes_per_s MSA decode, batch 32, contexts 4k and 8k, one KV
//                       segment; bytes = scanned tokens * 2*Hkv*D*e; median.
//   segment_overhead_s  least-squares slope of MSA time (one layer) over
//                       query segments: 512 queries at the end of a 16k
//                       context in 1, 4, 16, 32 runs; clamped at 0.
//   step_overhead_s     host wall time of replaying a CUDA graph of
//                       num_layers * 8 near-empty MSA kernels + synchronize;
//                       the median.
//   num_sms             the GPU's SM count (the cost model's prefill launch
//                       model, docs/calibration.md "Prefill waves").
//   linear_step_s       for each of `linear_tokens`: one step's linear layers,
//                       cuBLAS bf16 GEMMs with fp32 accumulation, per layer
//                       QKV [(Hq+2Hkv)*D x hidden], O [hidden x Hq*D],
//                       gate+up [2*intermediate x hidden], down [hidden x
//                       intermediate], over all layers, plus the LM head
//                       [vocab x hidden] for min(lm_head_tokens, T) tokens.
//                       Weights rotate over enough distinct copies to exceed
//                       4x the L2 cache (all layers when they fit), so small
//                       steps stream weights from memory as a real model does.
//                       Non-decreasing: a point measured below the previous
//                       one (noise) is raised to it.
// Pages are scattered randomly over the scratch pool, contents are random.
// Timing: CUDA events around each call (median over samples); the number of
// samples adapts to `budget` (at least 3, at most `repeats`), so the whole run
// takes about `budget` after CUDA start-up; a model whose largest step alone
// exceeds the budget overruns it by that step's minimum of 5 calls.
// Scratch memory: the MSA pool of the decode case (32 * 8192 tokens of one
// layer: 1 GiB for Llama-3-8B) and the rotating weights + activations of the
// largest step (about 2 GiB for Llama-3-8B at 4096 tokens); all freed before
// returning. Run it BEFORE sizing the KV pool by a fraction of free memory.
//
// Contract: CalibrateGpu blocks the calling thread for about `budget`; it uses
// the device exclusively in spirit (other work on the GPU skews the numbers)
// and restores the calling thread's current device. Thread-safe (no shared
// state); two concurrent runs on one GPU measure each other.
//
// Errors: INVALID_ARGUMENT for bad options or a model MSA cannot run (KV dtype
// not 16-bit, head_dim not in {64,128,256}, Hq/Hkv not in {1,2,4,8}) or a bad
// device ordinal; FAILED_PRECONDITION "built without CUDA" / "no CUDA device";
// RESOURCE_EXHAUSTED when the scratch memory does not fit; INTERNAL for a CUDA
// or cuBLAS error or a measurement that is not a positive finite number.
#ifndef ASYMCACHE_SERVICES_DAEMON_GPU_CALIBRATION_H_
#define ASYMCACHE_SERVICES_DAEMON_GPU_CALIBRATION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cachecore/cost_model.h"
#include "cachecore/model_config.h"

namespace asymcache::daemon {

struct GpuCalibrationOptions {
  int device = 0;                          // CUDA device ordinal
  absl::Duration budget = absl::Seconds(5);  // target wall time of the measurements, > 0
  int repeats = 10;                        // most timed samples per measurement, >= 3
  // Step sizes (tokens) of the linear_step_s points: positive, strictly increasing,
  // at most 16 points and 65536 tokens.
  std::vector<int64_t> linear_tokens = {1, 64, 256, 1024, 4096};
  // Tokens through the LM head per step, capped at the step's tokens. 1 matches
  // the offline calibration (one sampled token per step).
  int64_t lm_head_tokens = 1;

  absl::Status Validate() const;  // INVALID_ARGUMENT naming the field
};

// The parameters plus what was measured, for the daemon's start-up log.
struct GpuCalibrationReport {
  CalibrationParams params;          // validated
  absl::Duration elapsed;            // wall time of CalibrateGpuWithReport
  std::vector<std::string> details;  // one line per measurement (config, time, rate)
};

// Measures and returns validated params with `device` = the GPU's name and
// `source` = "asymcache-daemon on-start calibration <UTC date-time>".
absl::StatusOr<CalibrationParams> CalibrateGpu(const ModelConfig& model,
                                               const GpuCalibrationOptions& options);
absl::StatusOr<GpuCalibrationReport> CalibrateGpuWithReport(const ModelConfig& model,
                                                            const GpuCalibrationOptions& options);

// The backend half (gpu_calibration_cuda.cc, or gpu_calibration_unavailable.cc
// returning FAILED_PRECONDITION "built without CUDA"). CalibrateGpuWithReport
// checks the model, its MSA shape and the options, then calls this; call that
// instead. Precondition: those checks passed.
absl::StatusOr<GpuCalibrationReport> MeasureGpuCalibration(const ModelConfig& model,
                                                           const GpuCalibrationOptions& options);

}  // namespace asymcache::daemon

#endif  // ASYMCACHE_SERVICES_DAEMON_GPU_CALIBRATION_H_
