// The CUDA backend of pool_memory.h: one cudaMalloc exported by CUDA IPC.
// CUDA runtime API only (plain C++; compiled when ASYMCACHE_HAVE_CUDA).
#include <cuda_runtime.h>

#include <cstring>
#include <map>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "services/daemon/pool_memory.h"

namespace asymcache::daemon {
namespace {

static_assert(sizeof(cudaIpcMemHandle_t) == kCudaIpcHandleBytes,
              "kCudaIpcHandleBytes must match cudaIpcMemHandle_t");

absl::Status CudaError(cudaError_t error, absl::string_view what) {
  const std::string message =
      absl::StrCat(what, ": ", cudaGetErrorName(error), " (", cudaGetErrorString(error), ")");
  switch (error) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(message);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
      return absl::FailedPreconditionError(absl::StrCat("no CUDA device: ", message));
    case cudaErrorInvalidDevice:
      return absl::InvalidArgumentError(message);
    default:
      return absl::InternalError(message);
  }
}

// FAILED_PRECONDITION without a device, INVALID_ARGUMENT for a bad ordinal.
absl::Status CheckDevice(int device) {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess || count == 0) {
    cudaGetLastError();  // clear the last-error state
    return absl::FailedPreconditionError(
        absl::StrCat("no CUDA device (cudaGetDeviceCount: ",
                     error == cudaSuccess ? "0 devices" : cudaGetErrorString(error), ")"));
  }
  if (device < 0 || device >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA device ", device, " does not exist (", count, " devices)"));
  }
  return absl::OkStatus();
}

// Makes `device` current for the scope and restores the caller's device.
class ScopedDevice {
 public:
  ScopedDevice() = default;
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;
  ~ScopedDevice() {
    if (saved_ >= 0) cudaSetDevice(saved_);
  }
  absl::Status Enter(int device) {
    if (cudaGetDevice(&saved_) != cudaSuccess) saved_ = -1;
    const cudaError_t error = cudaSetDevice(device);
    if (error != cudaSuccess) return CudaError(error, absl::StrCat("cudaSetDevice(", device, ")"));
    return absl::OkStatus();
  }

 private:
  int saved_ = -1;
};

std::string HandleBytes(const cudaIpcMemHandle_t& handle) {
  return std::string(reinterpret_cast<const char*>(&handle), sizeof(handle));
}

// Pools exported by this process, by IPC handle: CUDA cannot open its own
// process's handle, so MapPool serves those from here.
class ExportedPools {
 public:
  struct Entry {
    void* base = nullptr;
    PoolLayout layout;
    int device = 0;
  };
  void Add(const std::string& handle, Entry entry) {
    absl::MutexLock lock(&mu_);
    pools_[handle] = entry;
  }
  void Remove(const std::string& handle) {
    absl::MutexLock lock(&mu_);
    pools_.erase(handle);
  }
  bool Find(const std::string& handle, Entry* entry) const {
    absl::MutexLock lock(&mu_);
    auto it = pools_.find(handle);
    if (it == pools_.end()) return false;
    *entry = it->second;
    return true;
  }

 private:
  mutable absl::Mutex mu_;
  std::map<std::string, Entry> pools_ ABSL_GUARDED_BY(mu_);
};

ExportedPools& Exported() {
  static ExportedPools* pools = new ExportedPools();
  return *pools;
}

class CudaPoolMemory final : public PoolMemory {
 public:
  CudaPoolMemory(PoolLayout layout, int device, void* base, std::string handle, int max_pitch)
      : layout_(layout), device_(device), base_(static_cast<uint8_t*>(base)),
        handle_(std::move(handle)), max_pitch_(max_pitch) {
    Exported().Add(handle_, {base_, layout_, device_});
  }
  ~CudaPoolMemory() override {
    Exported().Remove(handle_);
    ScopedDevice scoped;
    if (scoped.Enter(device_).ok()) cudaFree(base_);
  }
  CudaPoolMemory(const CudaPoolMemory&) = delete;
  CudaPoolMemory& operator=(const CudaPoolMemory&) = delete;

  PoolBackend backend() const override { return PoolBackend::kCuda; }
  const PoolLayout& layout() const override { return layout_; }
  void* base() override { return base_; }
  PoolDescriptor Describe() const override {
    PoolDescriptor descriptor;
    descriptor.backend = PoolBackend::kCuda;
    descriptor.layout = layout_;
    descriptor.cuda_ipc_handle = handle_;
    descriptor.cuda_device = device_;
    return descriptor;
  }

  absl::Status CopyBlocksToHost(absl::Span<const int64_t> blocks,
                                absl::Span<uint8_t> out) override {
    if (absl::Status s = layout_.ValidateBlockCopy(blocks, out.size(), false); !s.ok()) return s;
    return Copy(blocks, out.data(), nullptr);
  }
  absl::Status CopyBlocksFromHost(absl::Span<const int64_t> blocks,
                                  absl::Span<const uint8_t> in) override {
    if (absl::Status s = layout_.ValidateBlockCopy(blocks, in.size(), true); !s.ok()) return s;
    return Copy(blocks, nullptr, in.data());
  }
  absl::Status PinHost(void* base, size_t bytes) override {
    ScopedDevice scoped;
    if (absl::Status status = scoped.Enter(device_); !status.ok()) return status;
    const cudaError_t error = cudaHostRegister(base, bytes, cudaHostRegisterDefault);
    if (error != cudaSuccess) {
      cudaGetLastError();
      return absl::ResourceExhaustedError(absl::StrCat("cudaHostRegister of ", bytes,
                                                       " bytes: ", cudaGetErrorString(error)));
    }
    return absl::OkStatus();
  }
  void UnpinHost(void* base) override {
    ScopedDevice scoped;
    if (scoped.Enter(device_).ok() && cudaHostUnregister(base) != cudaSuccess) cudaGetLastError();
  }
  absl::StatusOr<StagingBuffer> AllocateStaging(size_t bytes) override {
    ScopedDevice scoped;
    if (absl::Status status = scoped.Enter(device_); !status.ok()) return status;
    void* data = nullptr;
    const cudaError_t error = cudaHostAlloc(&data, bytes == 0 ? 1 : bytes, cudaHostAllocDefault);
    if (error != cudaSuccess) {
      cudaGetLastError();
      return absl::ResourceExhaustedError(absl::StrCat("cudaHostAlloc of ", bytes,
                                                       " bytes of staging memory: ",
                                                       cudaGetErrorString(error)));
    }
    return StagingBuffer(static_cast<uint8_t*>(data), bytes,
                         [](uint8_t* p) { cudaFreeHost(p); });
  }

 private:
  // One block = num_layers pieces strided by layer_stride: one 2D copy per
  // block (rows = layers) when the stride fits the device's pitch limit, else
  // one copy per piece. Enqueued on the calling thread's per-thread stream,
  // then waited for (pageable host memory: CUDA stages it). Exactly one of
  // to_host (pool -> buffer) and from_host (buffer -> pool) is non-null.
  absl::Status Copy(absl::Span<const int64_t> blocks, uint8_t* to_host,
                    const uint8_t* from_host) {
    if (blocks.empty()) return absl::OkStatus();
    const bool down = to_host != nullptr;
    ScopedDevice scoped;
    if (absl::Status status = scoped.Enter(device_); !status.ok()) return status;
    const size_t piece = static_cast<size_t>(layout_.piece_bytes());
    const size_t stride = static_cast<size_t>(layout_.layer_stride_bytes());
    const cudaMemcpyKind kind = down ? cudaMemcpyDeviceToHost : cudaMemcpyHostToDevice;
    const bool two_d = stride <= static_cast<size_t>(max_pitch_);
    cudaError_t error = cudaSuccess;
    for (size_t i = 0; i < blocks.size() && error == cudaSuccess; ++i) {
      uint8_t* device = base_ + layout_.PieceOffset(0, blocks[i]);
      const int64_t wire = static_cast<int64_t>(i) * layout_.block_bytes();
      if (two_d) {
        error = down ? cudaMemcpy2DAsync(to_host + wire, piece, device, stride, piece,
                                         layout_.num_layers, kind, cudaStreamPerThread)
                     : cudaMemcpy2DAsync(device, stride, from_host + wire, piece, piece,
                                         layout_.num_layers, kind, cudaStreamPerThread);
        continue;
      }
      for (int32_t layer = 0; layer < layout_.num_layers && error == cudaSuccess; ++layer) {
        uint8_t* d = device + int64_t{layer} * layout_.layer_stride_bytes();
        const int64_t h = wire + int64_t{layer} * layout_.piece_bytes();
        error = down ? cudaMemcpyAsync(to_host + h, d, piece, kind, cudaStreamPerThread)
                     : cudaMemcpyAsync(d, from_host + h, piece, kind, cudaStreamPerThread);
      }
    }
    const cudaError_t sync = cudaStreamSynchronize(cudaStreamPerThread);
    if (error != cudaSuccess) {
      return CudaError(error, down ? "pool -> host block copy" : "host -> pool block copy");
    }
    if (sync != cudaSuccess) return CudaError(sync, "cudaStreamSynchronize after block copy");
    return absl::OkStatus();
  }

  // Immutable after construction.
  const PoolLayout layout_;
  const int device_;
  uint8_t* const base_;
  const std::string handle_;
  const int max_pitch_;
};

// A mapping opened with cudaIpcOpenMemHandle (owning) or, in the exporting
// process, a view of the pool's own allocation (non-owning).
class CudaMappedPool final : public MappedPool {
 public:
  CudaMappedPool(PoolLayout layout, int device, void* base, bool opened)
      : layout_(layout), device_(device), base_(base), opened_(opened) {}
  ~CudaMappedPool() override {
    if (!opened_) return;
    ScopedDevice scoped;
    if (scoped.Enter(device_).ok()) cudaIpcCloseMemHandle(base_);
  }
  CudaMappedPool(const CudaMappedPool&) = delete;
  CudaMappedPool& operator=(const CudaMappedPool&) = delete;

  PoolBackend backend() const override { return PoolBackend::kCuda; }
  const PoolLayout& layout() const override { return layout_; }
  void* base() const override { return base_; }

 private:
  const PoolLayout layout_;
  const int device_;
  void* const base_;
  const bool opened_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<PoolMemory>> CreateCudaPoolMemory(const PoolLayout& layout,
                                                                 int device) {
  if (absl::Status status = layout.Validate(); !status.ok()) return status;
  if (absl::Status status = CheckDevice(device); !status.ok()) return status;
  ScopedDevice scoped;
  if (absl::Status status = scoped.Enter(device); !status.ok()) return status;
  const size_t bytes = static_cast<size_t>(layout.bytes());
  void* base = nullptr;
  if (const cudaError_t error = cudaMalloc(&base, bytes); error != cudaSuccess) {
    cudaGetLastError();
    return CudaError(error, absl::StrCat("cudaMalloc of a ", bytes, "-byte pool on device ",
                                         device));
  }
  auto fail = [&](cudaError_t error, absl::string_view what) {
    cudaFree(base);
    return CudaError(error, what);
  };
  if (const cudaError_t error = cudaMemset(base, 0, bytes); error != cudaSuccess) {
    return fail(error, "cudaMemset of the new pool");
  }
  cudaIpcMemHandle_t handle{};
  if (const cudaError_t error = cudaIpcGetMemHandle(&handle, base); error != cudaSuccess) {
    return fail(error, "cudaIpcGetMemHandle");
  }
  int max_pitch = 0;
  if (const cudaError_t error = cudaDeviceGetAttribute(&max_pitch, cudaDevAttrMaxPitch, device);
      error != cudaSuccess) {
    return fail(error, "cudaDeviceGetAttribute(cudaDevAttrMaxPitch)");
  }
  return std::make_unique<CudaPoolMemory>(layout, device, base, HandleBytes(handle), max_pitch);
}

absl::StatusOr<std::unique_ptr<MappedPool>> MapCudaPool(const PoolDescriptor& descriptor) {
  if (absl::Status status = ValidatePoolDescriptor(descriptor); !status.ok()) return status;
  if (descriptor.backend != PoolBackend::kCuda) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MapCudaPool: descriptor backend is ", PoolBackendName(descriptor.backend)));
  }
  if (absl::Status status = CheckDevice(descriptor.cuda_device); !status.ok()) return status;
  ExportedPools::Entry own;
  if (Exported().Find(descriptor.cuda_ipc_handle, &own)) {
    if (!(own.layout == descriptor.layout) || own.device != descriptor.cuda_device) {
      return absl::FailedPreconditionError(absl::StrCat(
          "CUDA pool of this process on device ", own.device, " holds ", own.layout.bytes(),
          " bytes (", own.layout.num_blocks, " blocks); the descriptor says device ",
          descriptor.cuda_device, ", ", descriptor.layout.bytes(), " bytes (",
          descriptor.layout.num_blocks, " blocks)"));
    }
    return std::make_unique<CudaMappedPool>(descriptor.layout, descriptor.cuda_device, own.base,
                                            /*opened=*/false);
  }
  ScopedDevice scoped;
  if (absl::Status status = scoped.Enter(descriptor.cuda_device); !status.ok()) return status;
  cudaIpcMemHandle_t handle{};
  std::memcpy(&handle, descriptor.cuda_ipc_handle.data(), sizeof(handle));
  void* base = nullptr;
  const cudaError_t error =
      cudaIpcOpenMemHandle(&base, handle, cudaIpcMemLazyEnablePeerAccess);
  if (error != cudaSuccess) {
    cudaGetLastError();
    return absl::NotFoundError(absl::StrCat(
        "cudaIpcOpenMemHandle on device ", descriptor.cuda_device, ": ", cudaGetErrorName(error),
        " (", cudaGetErrorString(error),
        "); the exporting daemon may have exited or the handle is stale"));
  }
  return std::make_unique<CudaMappedPool>(descriptor.layout, descriptor.cuda_device, base,
                                          /*opened=*/true);
}

absl::StatusOr<int64_t> CudaFreeMemoryBytes(int cuda_device) {
  if (absl::Status status = CheckDevice(cuda_device); !status.ok()) return status;
  ScopedDevice scoped;
  if (absl::Status status = scoped.Enter(cuda_device); !status.ok()) return status;
  size_t free = 0;
  size_t total = 0;
  if (const cudaError_t error = cudaMemGetInfo(&free, &total); error != cudaSuccess) {
    return CudaError(error, absl::StrCat("cudaMemGetInfo on device ", cuda_device));
  }
  return static_cast<int64_t>(free);
}

}  // namespace asymcache::daemon
