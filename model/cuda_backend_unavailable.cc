// CreateCudaBackend and SampleOnDevice in builds without CUDA (model/CMakeLists.txt picks this
// file when ASYMCACHE_HAVE_CUDA is off): FAILED_PRECONDITION "built without
// CUDA", so callers and tests compile and link the same everywhere
// (STYLE.md §17).
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/device_sampling.h"
#include "model/model_backend.h"
#include "model/weight_source.h"

namespace asymcache::model {

absl::StatusOr<std::unique_ptr<ModelBackend>> CreateCudaBackend(const WeightSource& /*weights*/,
                                                                KvPoolView /*pool*/,
                                                                CudaBackendOptions options) {
  if (absl::Status status = options.Validate(); !status.ok()) return status;
  return absl::FailedPreconditionError("CUDA backend: built without CUDA");
}

absl::StatusOr<std::vector<int32_t>> SampleOnDevice(absl::Span<const float> logits,
                                                    int64_t vocab,
                                                    absl::Span<const SamplingParams> params,
                                                    absl::Span<const int64_t> positions) {
  if (absl::Status status = CheckSampleOnDeviceArgs(logits, vocab, params, positions);
      !status.ok()) {
    return status;
  }
  return absl::FailedPreconditionError("SampleOnDevice: built without CUDA");
}

}  // namespace asymcache::model
