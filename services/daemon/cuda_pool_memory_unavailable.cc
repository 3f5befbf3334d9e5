// The CUDA backend of pool_memory.h in builds without CUDA: every entry point
// returns FAILED_PRECONDITION "built without CUDA" (after the argument checks
// that need no device), so callers compile and link the same everywhere
// (STYLE.md §17). Compiled only when ASYMCACHE_HAVE_CUDA is off.
#include "absl/strings/str_cat.h"
#include "services/daemon/pool_memory.h"

namespace asymcache::daemon {
namespace {

absl::Status NoCuda(absl::string_view what) {
  return absl::FailedPreconditionError(absl::StrCat(what, ": built without CUDA"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<PoolMemory>> CreateCudaPoolMemory(const PoolLayout& layout,
                                                                 int device) {
  if (absl::Status status = layout.Validate(); !status.ok()) return status;
  return NoCuda(absl::StrCat("CUDA pool on device ", device));
}

absl::StatusOr<std::unique_ptr<MappedPool>> MapCudaPool(const PoolDescriptor& descriptor) {
  if (absl::Status status = ValidatePoolDescriptor(descriptor); !status.ok()) return status;
  if (descriptor.backend != PoolBackend::kCuda) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MapCudaPool: descriptor backend is ", PoolBackendName(descriptor.backend)));
  }
  return NoCuda("mapping a CUDA pool");
}

absl::StatusOr<int64_t> CudaFreeMemoryBytes(int cuda_device) {
  return NoCuda(absl::StrCat("free memory of CUDA device ", cuda_device));
}

}  // namespace asymcache::daemon
