// CheckSampleOnDeviceArgs (model/device_sampling.h): the argument checks
// both builds of SampleOnDevice run first (model/cuda_sampling.cu with CUDA,
// model/cuda_backend_unavailable.cc without).
#include "model/device_sampling.h"

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "model/model_backend.h"

namespace asymcache::model {

absl::Status CheckSampleOnDeviceArgs(absl::Span<const float> logits, int64_t vocab,
                                     absl::Span<const SamplingParams> params,
                                     absl::Span<const int64_t> positions) {
  if (vocab <= 0 || params.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("SampleOnDevice: vocab ", vocab, " and ",
                                                   params.size(), " rows must be positive"));
  }
  if (positions.size() != params.size() ||
      logits.size() != params.size() * static_cast<size_t>(vocab)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SampleOnDevice: ", params.size(), " rows of ", vocab, " logits need ",
        params.size() * static_cast<size_t>(vocab), " logits and ", params.size(),
        " positions, got ", logits.size(), " and ", positions.size()));
  }
  for (size_t i = 0; i < params.size(); ++i) {
    if (!std::isfinite(params[i].temperature)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "SampleOnDevice: params[", i, "].temperature = ", params[i].temperature,
          " is not finite"));
    }
    if (!(params[i].top_p > 0.0f && params[i].top_p <= 1.0f)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "SampleOnDevice: params[", i, "].top_p = ", params[i].top_p, " is outside (0, 1]"));
    }
  }
  return absl::OkStatus();
}

}  // namespace asymcache::model
