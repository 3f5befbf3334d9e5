// PoolMemory: the memory behind the daemon's KV pool, and how a co-located
// worker maps it (docs/pool.md).
//
// What: one allocation of PoolLayout::bytes() laid out as pool_layout.h says
// (layer-major; layer l's slice is the MSA pool of layer l). Two backends:
//   kHost  POSIX shared memory: shm_open(O_CREAT|O_EXCL) + posix_fallocate +
//          mmap(MAP_SHARED). A worker maps it by name (MapPool). The daemon
//          unlinks the name when its PoolMemory is destroyed; mappings made
//          before stay valid until unmapped. The owner holds a shared
//          flock(2) on the segment while it lives, so a daemon killed
//          without destructors (SIGKILL, a crash) leaves a segment that the
//          next host pool created on the machine removes: generated names
//          ("/asymcache-<pid>-<n>") at least 60 s old with no owner lock.
//   kCuda  one cudaMalloc on the daemon's GPU, exported with
//          cudaIpcGetMemHandle. A worker in another process maps it with
//          cudaIpcOpenMemHandle (MapPool). CUDA cannot open an IPC handle in
//          the process that exported it, so MapPool in the daemon's own
//          process returns a non-owning view of the allocation instead.
// The daemon owns a PoolMemory; workers own MappedPools. Describe() is what a
// worker needs to call MapPool; it carries no pointer, only names/handles.
//
// Errors (absl codes by meaning): INVALID_ARGUMENT for bad arguments or
// descriptors (naming the field); NOT_FOUND when the named shared memory (or
// the exported CUDA allocation) does not exist; PERMISSION_DENIED when the
// shm object belongs to another user; FAILED_PRECONDITION when the
// mapped object's size differs from the descriptor's layout, or for CUDA in a
// build without CUDA ("built without CUDA") or on a machine without a device
// ("no CUDA device"); RESOURCE_EXHAUSTED when memory cannot be allocated;
// INTERNAL for an unexpected system or CUDA error (the message names the call).
//
// Thread-safety: PoolMemory and MappedPool are immutable after creation;
// CopyBlocksToHost / CopyBlocksFromHost are reentrant and may run concurrently
// from several threads; keeping concurrent copies (and kernels) off each
// other's blocks is the caller's job. Free functions are thread-safe.
#ifndef ASYMCACHE_SERVICES_DAEMON_POOL_MEMORY_H_
#define ASYMCACHE_SERVICES_DAEMON_POOL_MEMORY_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "cachecore/model_config.h"
#include "services/daemon/pool_layout.h"

namespace asymcache::daemon {

enum class PoolBackend { kHost, kCuda };

// "host" | "cuda"; INVALID_ARGUMENT naming the known names otherwise.
absl::StatusOr<PoolBackend> ParsePoolBackend(absl::string_view name);
absl::string_view PoolBackendName(PoolBackend backend);

// Bytes of a cudaIpcMemHandle_t.
inline constexpr size_t kCudaIpcHandleBytes = 64;

// What a co-located worker needs to map the pool. A plain value.
struct PoolDescriptor {
  PoolBackend backend = PoolBackend::kHost;
  PoolLayout layout;
  std::string shm_name;         // kHost: POSIX shm name "/name" (no other '/'); empty for kCuda
  std::string cuda_ipc_handle;  // kCuda: the 64 raw bytes of cudaIpcMemHandle_t; empty for kHost
  int cuda_device = 0;          // kCuda: device ordinal as the DAEMON numbers it; unused for kHost
};

// INVALID_ARGUMENT naming the field: layout invalid; kHost without a valid shm
// name or with a CUDA handle; kCuda with a shm name, a handle that is not 64
// bytes, or a negative device.
absl::Status ValidatePoolDescriptor(const PoolDescriptor& descriptor);

// The daemon's pool. Owns its memory (unlinks / frees on destruction).
// A move-only host buffer with the deleter that matches its allocator.
class StagingBuffer {
 public:
  StagingBuffer() = default;
  StagingBuffer(uint8_t* data, size_t size, void (*release)(uint8_t*))
      : data_(data), size_(size), release_(release) {}
  StagingBuffer(StagingBuffer&& other) noexcept { *this = std::move(other); }
  StagingBuffer& operator=(StagingBuffer&& other) noexcept {
    if (this != &other) {
      Reset();
      data_ = other.data_;
      size_ = other.size_;
      release_ = other.release_;
      other.data_ = nullptr;
      other.size_ = 0;
    }
    return *this;
  }
  StagingBuffer(const StagingBuffer&) = delete;
  StagingBuffer& operator=(const StagingBuffer&) = delete;
  ~StagingBuffer() { Reset(); }

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  absl::Span<uint8_t> span() const { return absl::Span<uint8_t>(data_, size_); }

 private:
  void Reset() {
    if (data_ != nullptr && release_ != nullptr) release_(data_);
    data_ = nullptr;
    size_ = 0;
  }
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  void (*release_)(uint8_t*) = nullptr;
};

class PoolMemory {
 public:
  virtual ~PoolMemory();

  virtual PoolBackend backend() const = 0;
  virtual const PoolLayout& layout() const = 0;
  // Host pointer (kHost) or device pointer (kCuda) to byte 0 of the pool;
  // layer l's MSA pool is base() + layout().layer_stride_bytes() * l.
  virtual void* base() = 0;
  virtual PoolDescriptor Describe() const = 0;

  // Staging for transfers. The host buffer is block-major, the wire format:
  // block i of `blocks` occupies bytes [i * B, (i + 1) * B), B =
  // layout().block_bytes(), and inside it layer l's piece occupies
  // [l * P, (l + 1) * P), P = layout().piece_bytes(). Only the first
  // blocks.size() * B bytes of the buffer are used. INVALID_ARGUMENT (nothing
  // copied) for a block id outside the pool, a buffer smaller than
  // blocks.size() * B, or (FromHost only) a block id listed twice. Synchronous:
  // the copy is complete when the call returns.
  virtual absl::Status CopyBlocksToHost(absl::Span<const int64_t> blocks,
                                        absl::Span<uint8_t> out) = 0;
  virtual absl::Status CopyBlocksFromHost(absl::Span<const int64_t> blocks,
                                          absl::Span<const uint8_t> in) = 0;

  // Host memory for staging transfers of this pool: page-locked
  // (cudaHostAlloc) for a CUDA pool, so CopyBlocksTo/FromHost run at DMA
  // speed instead of through CUDA's pageable bounce buffer; ordinary memory
  // for a host pool. RESOURCE_EXHAUSTED when it cannot be allocated.
  virtual absl::StatusOr<StagingBuffer> AllocateStaging(size_t bytes);

  // Page-locks host memory allocated elsewhere (e.g. by the transport) for
  // fast copies with this pool: cudaHostRegister for a CUDA pool, nothing
  // for a host pool. UnpinHost must be called before the memory is freed.
  virtual absl::Status PinHost(void* /*base*/, size_t /*bytes*/) { return absl::OkStatus(); }
  virtual void UnpinHost(void* /*base*/) {}
};

// A worker's mapping of a pool. Unmaps (munmap / cudaIpcCloseMemHandle) on
// destruction; the pool itself belongs to the daemon.
class MappedPool {
 public:
  virtual ~MappedPool();

  virtual PoolBackend backend() const = 0;
  virtual const PoolLayout& layout() const = 0;
  // Host pointer (kHost) or device pointer (kCuda), as PoolMemory::base().
  virtual void* base() const = 0;
};

// Creates a host pool. `shm_name` "" generates a unique "/asymcache-<pid>-<n>".
// INVALID_ARGUMENT for an invalid layout or name; ALREADY_EXISTS if the name
// is taken; RESOURCE_EXHAUSTED if the memory cannot be reserved (the whole
// pool is reserved up front with posix_fallocate, so a too-small /dev/shm
// fails here, not later with SIGBUS). The memory starts zeroed.
absl::StatusOr<std::unique_ptr<PoolMemory>> CreateHostPoolMemory(const PoolLayout& layout,
                                                                 absl::string_view shm_name);

// Creates a CUDA pool on `device` (cudaMalloc + cudaIpcGetMemHandle), zeroed.
// INVALID_ARGUMENT for an invalid layout or device ordinal; FAILED_PRECONDITION
// "built without CUDA" / "no CUDA device"; RESOURCE_EXHAUSTED if cudaMalloc
// fails for lack of memory. The calling thread's current device is restored.
absl::StatusOr<std::unique_ptr<PoolMemory>> CreateCudaPoolMemory(const PoolLayout& layout,
                                                                 int device);

// Maps a pool by its descriptor (the worker side). ValidatePoolDescriptor's
// INVALID_ARGUMENT first; then NOT_FOUND for a missing shm name / an IPC
// handle that cannot be opened (the exporting daemon exited, or the handle is
// stale); FAILED_PRECONDITION when the shm object's size differs from
// layout.bytes() (CUDA: checked only in the exporting process; another
// process trusts the descriptor), or CUDA is unavailable.
absl::StatusOr<std::unique_ptr<MappedPool>> MapPool(const PoolDescriptor& descriptor);

// The per-backend halves of MapPool, called after ValidatePoolDescriptor.
absl::StatusOr<std::unique_ptr<MappedPool>> MapHostPool(const PoolDescriptor& descriptor);
absl::StatusOr<std::unique_ptr<MappedPool>> MapCudaPool(const PoolDescriptor& descriptor);

// ---- sizing -------------------------------------------------------------------

// Pool size: exactly one of the two fields is > 0.
struct PoolSizeSpec {
  int64_t bytes = 0;              // the pool's size in bytes (rounded down to whole blocks)
  double fraction_of_free = 0;    // in (0, 1]: this share of FreeMemoryBytes()
};

// Memory a new pool could take now. kHost: min(MemAvailable of /proc/meminfo,
// free space of /dev/shm, the cgroup v2 limit minus usage when a limit is
// set). kCuda: cudaMemGetInfo's free bytes on `cuda_device`
// (FAILED_PRECONDITION without CUDA or a device; INVALID_ARGUMENT for a bad
// ordinal). INTERNAL when /proc/meminfo cannot be read or parsed.
absl::StatusOr<int64_t> FreeMemoryBytes(PoolBackend backend, int cuda_device);
// kHost's parts, exposed for tests: MemAvailable (bytes) of a /proc/meminfo
// text (INTERNAL if the line is missing or malformed), and the CUDA half.
absl::StatusOr<int64_t> ParseMemAvailableBytes(absl::string_view proc_meminfo);
absl::StatusOr<int64_t> CudaFreeMemoryBytes(int cuda_device);

// Blocks of `model` for a pool sized by `spec`. INVALID_ARGUMENT: model
// invalid, both or neither field set, a negative field, fraction outside
// (0, 1] (or NaN), `bytes` smaller than one block or holding more than
// kMaxPoolBlocks blocks. With a fraction, FreeMemoryBytes' errors pass through,
// RESOURCE_EXHAUSTED when the share holds no whole block, and the result is
// capped at kMaxPoolBlocks.
absl::StatusOr<int64_t> ResolvePoolBlocks(PoolBackend backend, int cuda_device,
                                          const PoolSizeSpec& spec, const ModelConfig& model);

}  // namespace asymcache::daemon

#endif  // ASYMCACHE_SERVICES_DAEMON_POOL_MEMORY_H_
