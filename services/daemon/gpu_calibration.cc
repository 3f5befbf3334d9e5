// The backend-independent half of gpu_calibration.h: option and model checks,
// then the backend's measurements (gpu_calibration_cuda.cc or
// gpu_calibration_unavailable.cc).
#include "services/daemon/gpu_calibration.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/msa.h"

namespace asymcache::daemon {
namespace {

constexpr size_t kMaxLinearPoints = 16;
constexpr int64_t kMaxLinearTokens = 65536;

// The MSA kernels run 16-bit KV only, with the shapes AttentionShape accepts.
absl::Status CheckMsaRunsModel(const ModelConfig& model) {
  if (model.dtype_bytes != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GPU calibration runs MSA, which needs a 16-bit KV dtype; model '", model.name,
        "' has dtype_bytes = ", model.dtype_bytes));
  }
  msa::AttentionShape shape;
  shape.num_q_heads = model.num_q_heads;
  shape.num_kv_heads = model.num_kv_heads;
  shape.head_dim = model.head_dim;
  shape.page_size = model.block_tokens;
  shape.dtype = msa::DType::kBFloat16;
  if (absl::Status status = shape.Validate(); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("GPU calibration: model '", model.name,
                                                   "' is not an MSA shape: ", status.message()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status GpuCalibrationOptions::Validate() const {
  if (device < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("GpuCalibrationOptions.device must be >= 0, got ", device));
  }
  if (budget <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GpuCalibrationOptions.budget must be positive, got ", absl::FormatDuration(budget)));
  }
  if (repeats < 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("GpuCalibrationOptions.repeats must be >= 3, got ", repeats));
  }
  if (linear_tokens.empty() || linear_tokens.size() > kMaxLinearPoints) {
    return absl::InvalidArgumentError(
        absl::StrCat("GpuCalibrationOptions.linear_tokens must hold 1..", kMaxLinearPoints,
                     " step sizes, got ", linear_tokens.size()));
  }
  for (size_t i = 0; i < linear_tokens.size(); ++i) {
    const int64_t t = linear_tokens[i];
    if (t <= 0 || t > kMaxLinearTokens || (i > 0 && t <= linear_tokens[i - 1])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "GpuCalibrationOptions.linear_tokens must be strictly increasing in [1, ",
          kMaxLinearTokens, "], got [", absl::StrJoin(linear_tokens, ", "), "] (index ", i,
          ")"));
    }
  }
  if (lm_head_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GpuCalibrationOptions.lm_head_tokens must be >= 1, got ", lm_head_tokens));
  }
  return absl::OkStatus();
}

absl::StatusOr<GpuCalibrationReport> CalibrateGpuWithReport(const ModelConfig& model,
                                                            const GpuCalibrationOptions& options) {
  if (absl::Status status = model.Validate(); !status.ok()) return status;
  if (absl::Status status = options.Validate(); !status.ok()) return status;
  if (absl::Status status = CheckMsaRunsModel(model); !status.ok()) return status;
  return MeasureGpuCalibration(model, options);
}

absl::StatusOr<CalibrationParams> CalibrateGpu(const ModelConfig& model,
                                               const GpuCalibrationOptions& options) {
  absl::StatusOr<GpuCalibrationReport> report = CalibrateGpuWithReport(model, options);
  if (!report.ok()) return report.status();
  return std::move(report->params);
}

}  // namespace asymcache::daemon
