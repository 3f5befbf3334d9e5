// The measurement half of gpu_calibration.h in builds without CUDA:
// FAILED_PRECONDITION "built without CUDA" (STYLE.md §17: the API is the same
// in every build). Compiled only when ASYMCACHE_HAVE_CUDA is off.
#include "services/daemon/gpu_calibration.h"

#include "absl/strings/str_cat.h"

namespace asymcache::daemon {

absl::StatusOr<GpuCalibrationReport> MeasureGpuCalibration(const ModelConfig& /*model*/,
                                                           const GpuCalibrationOptions& options) {
  return absl::FailedPreconditionError(absl::StrCat(
      "GPU calibration on device ", options.device, ": built without CUDA"));
}

}  // namespace asymcache::daemon
