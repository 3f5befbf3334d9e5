// CudaBackendOptions::Validate (model/model_backend.h). Compiled in every
// build, with or without CUDA, so flag parsing can check options anywhere.
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "model/model_backend.h"

namespace asymcache::model {

absl::Status CudaBackendOptions::Validate() const {
  if (device < 0) {
    return absl::InvalidArgumentError(absl::StrCat("device must be >= 0, got ", device));
  }
  if (max_step_tokens <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_step_tokens must be > 0, got ", max_step_tokens));
  }
  if (max_batch <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_batch must be > 0, got ", max_batch));
  }
  if (max_step_pages <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_step_pages must be > 0, got ", max_step_pages));
  }
  return absl::OkStatus();
}

}  // namespace asymcache::model
