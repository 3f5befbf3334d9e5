// MSA CUDA backend: Multi-Segment Attention on NVIDIA GPUs (sm_90), plan/run.
//
// What: the CUDA implementation of kernels/msa.h (math, layouts, batch tables
// there). Usage per step:
//   1. sizes = MsaWorkspaceSizesFor(shape, max_batch, max_q, max_pages, opts);
//      allocate host_ws (plain or PinnedHostBuffer) and device_ws (DeviceBuffer)
//      once, at those sizes.
//   2. plan = PlanMsa(shape, batch, num_pool_pages, opts, host_ws, ...)  (CPU,
//      msa_plan.h); UploadMsaPlan(plan, host_ws, device_ws, ...) (one async
//      H2D copy on the stream).
//   3. for each layer: RunMsaCuda(plan, shape, q, kv_pool, out, lse, device_ws,
//      stream). No allocation, no host synchronisation: capturable in a CUDA
//      graph. Grid sizes come from the plan's counts and are baked into a
//      captured graph: replay a graph only with the plan it was captured with.
//   AppendKvCuda writes new K/V rows into their pages.
//
// Pointers: every `void*` buffer argument below is DEVICE memory unless named
// host_*; streams are cudaStream_t passed as void* (nullptr = the legacy
// default stream). This header includes no CUDA header, and every entry point
// exists in every build: without CUDA (or without a device) they return
// UNAVAILABLE (kernels/cuda_unavailable.cc).
//
// Errors: INVALID_ARGUMENT for bad arguments or a plan that does not match the
// shape; UNAVAILABLE when CUDA or the device is missing; INTERNAL for a CUDA
// error (message names the CUDA error string and the call).
//
// Ownership: functions borrow pointers for the call only (kernels run
// asynchronously: keep buffers alive until the stream is synchronised).
// Buffers below own their memory (RAII, move-only).
// Thread-safety: entry points are reentrant; the usual CUDA stream rules apply.
#ifndef ASYMCACHE_KERNELS_MSA_CUDA_H_
#define ASYMCACHE_KERNELS_MSA_CUDA_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/msa.h"
#include "kernels/msa_plan.h"

namespace asymcache::msa {

struct GpuInfo {
  std::string name;
  int sm_count = 0;
  int cc_major = 0;
  int cc_minor = 0;
  int64_t total_bytes = 0;
  int64_t l2_bytes = 0;
  int64_t max_smem_per_block_optin = 0;
};

// UNAVAILABLE without CUDA, without a device, or if the device cannot be used.
absl::StatusOr<GpuInfo> QueryGpu(int device = 0);

// Copies plan.upload_bytes from host_ws to device_ws asynchronously on the
// stream. INVALID_ARGUMENT if device_bytes < plan.device_bytes_used. host_ws
// must stay unchanged until the copy completes (pinned memory: asynchronous;
// pageable memory: CUDA stages it).
absl::Status UploadMsaPlan(const MsaPlan& plan, const void* host_ws, void* device_ws,
                           size_t device_bytes, void* stream);

// Runs one layer with an uploaded plan. q/out [total_q][Hq][D], kv_pool
// [num_pool_pages][2][page_size][Hkv][D] in shape.dtype, lse [total_q][Hq]
// float or nullptr. out (and lse) are fully written; a query with no visible
// key gets 0 / -inf. INVALID_ARGUMENT if the shape differs from the plan's.
// Prefill items run the kernel ResolvedPrefillKernel names; the first such
// run on a device probes it (MsaWgmmaAvailable) unless the caller already did.
absl::Status RunMsaCuda(const MsaPlan& plan, const AttentionShape& shape, const void* q,
                        const void* kv_pool, void* out, float* lse, void* device_ws,
                        void* stream);

// True when prefill tiles can run the Hopper kernels (MsaPrefillKernel::kWgmma
// and kWgmmaOverlap, msa_plan.h) on the current device (cudaGetDevice; the
// one RunMsaCuda launches on), or on `device`: the binary carries their
// sm_90a code (a build with ASYMCACHE_MSA_WGMMA, kernels/CMakeLists.txt), the
// device is compute capability 9.0 and it loads that code. False without
// CUDA or a device.
// The first call for a device probes it (loads the kernels' module) and the
// answer is cached per device. RunMsaCuda asks on its first launch with
// prefill items, so call this once before capturing a CUDA graph
// (model/cuda_backend.cu does, in CudaBackend::Init) to keep the probe out
// of the capture. The probe runs on a thread of its own: the caller's CUDA
// state (its pending error, its current device) is left as it was.
// Thread-safe.
bool MsaWgmmaAvailable();
bool MsaWgmmaAvailable(int device);

// The kernel RunMsaCuda runs the plan's prefill items with on the current
// device: kWgmma or kWgmmaOverlap when the plan asks for it, the head dim is
// 128 and MsaWgmmaAvailable; for kAuto (the default) under the same
// conditions kWgmmaOverlap when the launch's largest prefill tile
// (MsaPlan::max_prefill_tile_rows) has more than 64 rows, else kWgmma; kMma
// otherwise. Never kAuto. One choice per launch: 64-row tiles beside a
// larger one run the overlapped loop too.
MsaPrefillKernel ResolvedPrefillKernel(const MsaPlan& plan);

// Test hook for the wgmma kernel's layouts and descriptors (no attention):
// one 128 x 64 x 128 tile of its two GEMMs, run with the kernel's own
// shared-memory layout, descriptors and GEMM helpers. Host inputs in `dtype`
// (bf16 or fp16), row-major: a [128][128] (query rows), b [64][128] (key rows),
// v [64][128] (value rows). Returns s = a b^T [128][64] (fp32) and
// o = dtype(s) v [128][128] (fp32). variant 0: the kernel's encoding; 1: the
// V descriptor's leading and stride byte offsets swapped (a diagnostic).
// UNAVAILABLE when !MsaWgmmaAvailable() for the current device.
struct WgmmaTileTestOutput {
  std::vector<float> s;
  std::vector<float> o;
};
absl::StatusOr<WgmmaTileTestOutput> RunMsaWgmmaTileTest(DType dtype, const void* host_a,
                                                        const void* host_b, const void* host_v,
                                                        int variant);

// Writes K/V rows of num_tokens tokens into the pool: token t goes to page
// d_slot_page_ids[t], row d_slot_offsets[t] (device int32 arrays). k, v:
// [num_tokens][Hkv][D] in shape.dtype. Slots are not checked on the device
// (callers validate; out-of-range slots are skipped, never written).
absl::Status AppendKvCuda(const AttentionShape& shape, const int32_t* d_slot_page_ids,
                          const int32_t* d_slot_offsets, int32_t num_tokens, const void* k,
                          const void* v, void* kv_pool, int64_t num_pool_pages, void* stream);

// ---- small device utilities (tests, benchmarks, the CPU-free callers) ----

// Owning device allocation (cudaMalloc). Move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static absl::StatusOr<DeviceBuffer> Allocate(size_t bytes);
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  void* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

// Owning page-locked host allocation (cudaMallocHost). Move-only.
class PinnedHostBuffer {
 public:
  PinnedHostBuffer() = default;
  static absl::StatusOr<PinnedHostBuffer> Allocate(size_t bytes);
  PinnedHostBuffer(PinnedHostBuffer&& other) noexcept;
  PinnedHostBuffer& operator=(PinnedHostBuffer&& other) noexcept;
  PinnedHostBuffer(const PinnedHostBuffer&) = delete;
  PinnedHostBuffer& operator=(const PinnedHostBuffer&) = delete;
  ~PinnedHostBuffer();

  void* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

// Owning CUDA stream (non-blocking). Move-only; get() is a cudaStream_t.
class CudaStream {
 public:
  CudaStream() = default;
  static absl::StatusOr<CudaStream> Create();
  CudaStream(CudaStream&& other) noexcept;
  CudaStream& operator=(CudaStream&& other) noexcept;
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  ~CudaStream();

  void* get() const { return stream_; }

 private:
  void* stream_ = nullptr;
};

// Synchronous copies (cudaMemcpy) and fills; SynchronizeStream waits for a
// stream and reports any asynchronous error.
absl::Status CopyHostToDevice(void* device_dst, const void* host_src, size_t bytes);
absl::Status CopyDeviceToHost(void* host_dst, const void* device_src, size_t bytes);
absl::Status FillDeviceBytes(void* device_dst, uint8_t value, size_t bytes);
absl::Status SynchronizeStream(void* stream);

// Captures body(stream) into a CUDA graph on a fresh stream, instantiates it
// and launches it `replays` times, then synchronises. The body must only
// enqueue work on the stream it is given.
absl::Status CaptureAndReplay(const std::function<absl::Status(void* stream)>& body, int replays);

// Times body(stream) with CUDA events: `warmup` calls, then `iterations`
// calls between two events; returns the mean milliseconds per call.
absl::StatusOr<double> TimeOnStream(const std::function<absl::Status(void* stream)>& body,
                                    int warmup, int iterations);

}  // namespace asymcache::msa

#endif  // ASYMCACHE_KERNELS_MSA_CUDA_H_
