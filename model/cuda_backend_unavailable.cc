// CreateCudaBackend in builds without CUDA (model/CMakeLists.txt picks this
// file when ASYMCACHE_HAVE_CUDA is off): FAILED_PRECONDITION "built without
// CUDA", so callers and tests compile and link the same everywhere
// (STYLE.md §17).
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/model_backend.h"
#include "model/weight_source.h"

namespace asymcache::model {

absl::StatusOr<std::unique_ptr<ModelBackend>> CreateCudaBackend(const WeightSource& /*weights*/,
                                                                KvPoolView /*pool*/,
                                                                CudaBackendOptions options) {
  if (absl::Status status = options.Validate(); !status.ok()) return status;
  return absl::FailedPreconditionError("CUDA backend: built without CUDA");
}

}  // namespace asymcache::model
