// The msa_cuda.h entry points in builds without CUDA: every call returns
// UNAVAILABLE "built without CUDA", so callers and tests compile and link the
// same everywhere (STYLE.md §17). Compiled only when CUDA is off.
#include <utility>

#include "kernels/msa_cuda.h"

namespace asymcache::msa {
namespace {

absl::Status NoCuda() { return absl::UnavailableError("built without CUDA"); }

}  // namespace

absl::StatusOr<GpuInfo> QueryGpu(int /*device*/) { return NoCuda(); }

absl::Status UploadMsaPlan(const MsaPlan&, const void*, void*, size_t, void*) { return NoCuda(); }

absl::Status RunMsaCuda(const MsaPlan&, const AttentionShape&, const void*, const void*, void*,
                        float*, void*, void*) {
  return NoCuda();
}

bool MsaWgmmaAvailable() { return false; }
bool MsaWgmmaAvailable(int /*device*/) { return false; }

MsaPrefillKernel ResolvedPrefillKernel(const MsaPlan&) { return MsaPrefillKernel::kMma; }

absl::StatusOr<WgmmaTileTestOutput> RunMsaWgmmaTileTest(DType, const void*, const void*,
                                                        const void*, int) {
  return NoCuda();
}

absl::Status AppendKvCuda(const AttentionShape&, const int32_t*, const int32_t*, int32_t,
                          const void*, const void*, void*, int64_t, void*) {
  return NoCuda();
}

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t) { return NoCuda(); }
DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  data_ = std::exchange(other.data_, nullptr);
  size_ = std::exchange(other.size_, 0);
  return *this;
}
DeviceBuffer::~DeviceBuffer() = default;

absl::StatusOr<PinnedHostBuffer> PinnedHostBuffer::Allocate(size_t) { return NoCuda(); }
PinnedHostBuffer::PinnedHostBuffer(PinnedHostBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
PinnedHostBuffer& PinnedHostBuffer::operator=(PinnedHostBuffer&& other) noexcept {
  data_ = std::exchange(other.data_, nullptr);
  size_ = std::exchange(other.size_, 0);
  return *this;
}
PinnedHostBuffer::~PinnedHostBuffer() = default;

absl::StatusOr<CudaStream> CudaStream::Create() { return NoCuda(); }
CudaStream::CudaStream(CudaStream&& other) noexcept
    : stream_(std::exchange(other.stream_, nullptr)) {}
CudaStream& CudaStream::operator=(CudaStream&& other) noexcept {
  stream_ = std::exchange(other.stream_, nullptr);
  return *this;
}
CudaStream::~CudaStream() = default;

absl::Status CopyHostToDevice(void*, const void*, size_t) { return NoCuda(); }
absl::Status CopyDeviceToHost(void*, const void*, size_t) { return NoCuda(); }
absl::Status FillDeviceBytes(void*, uint8_t, size_t) { return NoCuda(); }
absl::Status SynchronizeStream(void*) { return NoCuda(); }
absl::Status CaptureAndReplay(const std::function<absl::Status(void*)>&, int) { return NoCuda(); }
absl::StatusOr<double> TimeOnStream(const std::function<absl::Status(void*)>&, int, int) {
  return NoCuda();
}

}  // namespace asymcache::msa
