// MSA CUDA backend host side (msa_cuda.h): device queries, buffers, plan
// upload, dtype/head-dim dispatch of the attention and merge launchers.
#include "kernels/msa_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/msa_launch.cuh"

namespace asymcache::msa {
namespace {

absl::Status CudaStatus(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return absl::OkStatus();
  if (error == cudaErrorNoDevice || error == cudaErrorInsufficientDriver) {
    return absl::UnavailableError(absl::StrCat(what, ": ", cudaGetErrorString(error)));
  }
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorName(error), " (",
                                          cudaGetErrorString(error), ")"));
}

#define ASYMCACHE_CUDA_RETURN_IF_ERROR(expr)                    \
  do {                                                          \
    const cudaError_t cuda_err_ = (expr);                       \
    if (cuda_err_ != cudaSuccess) return CudaStatus(cuda_err_, #expr); \
  } while (0)

cudaStream_t AsStream(void* stream) { return static_cast<cudaStream_t>(stream); }

// Launches the plan's items with the resolved prefill kernel (kWgmma and
// kWgmmaOverlap: the caller checked head_dim == 128 and availability).
template <typename T>
cudaError_t DispatchHeadDim(int32_t head_dim, const cuda::MsaKernelParams& params,
                            int32_t num_prefill, int32_t num_decode, MsaPrefillKernel kernel,
                            cudaStream_t stream) {
  const bool wgmma =
      kernel == MsaPrefillKernel::kWgmma || kernel == MsaPrefillKernel::kWgmmaOverlap;
  switch (head_dim) {
    case 64:
      return cuda::LaunchMsaAttention<T, 64>(params, num_prefill, num_decode, true, stream);
    case 128:
#if defined(ASYMCACHE_MSA_WGMMA)
      if (wgmma) {
        const cudaError_t error = cuda::LaunchMsaWgmmaPrefill<T>(
            params, num_prefill, kernel == MsaPrefillKernel::kWgmmaOverlap, stream);
        if (error != cudaSuccess) return error;
        return cuda::LaunchMsaAttention<T, 128>(params, num_prefill, num_decode, false, stream);
      }
#else
      (void)wgmma;
      (void)kernel;
#endif
      return cuda::LaunchMsaAttention<T, 128>(params, num_prefill, num_decode, true, stream);
    case 256:
      return cuda::LaunchMsaAttention<T, 256>(params, num_prefill, num_decode, true, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

#if defined(ASYMCACHE_MSA_WGMMA)
// Per-device answers of MsaWgmmaAvailable: 0 unknown, 1 no, 2 yes.
constexpr int kMaxCachedDevices = 64;
std::atomic<int8_t> g_wgmma_available[kMaxCachedDevices];

// Runs on a thread of its own: the CUDA runtime keeps the last error and the
// current device per host thread, so the probe's failures (a device that
// cannot load the sm_90a image answers cudaFuncGetAttributes with an error)
// are cleared there, and the caller's pending error and current device stay
// as they were.
bool ProbeWgmma(int device) {
  bool ok = false;
  std::thread probe([device, &ok] {
    int major = 0;
    int minor = 0;
    // sm_90a code runs on 9.0 only.
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess &&
        major == 9 && minor == 0 && cudaSetDevice(device) == cudaSuccess) {
      ok = cuda::ProbeMsaWgmmaPrefill<__nv_bfloat16>() == cudaSuccess &&
           cuda::ProbeMsaWgmmaPrefill<__half>() == cudaSuccess;
    }
    cudaGetLastError();  // this thread's own errors only
  });
  probe.join();
  return ok;
}
#endif

bool WgmmaAvailableOnCurrentDevice() {
  const cudaError_t pending = cudaPeekAtLastError();
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    if (pending == cudaSuccess) cudaGetLastError();  // ours; a caller's error stays
    return false;
  }
  return MsaWgmmaAvailable(device);
}

absl::Status CheckPlanMatches(const MsaPlan& plan, const AttentionShape& shape) {
  if (plan.num_q_heads != shape.num_q_heads || plan.num_kv_heads != shape.num_kv_heads ||
      plan.head_dim != shape.head_dim || plan.page_size != shape.page_size ||
      plan.dtype != shape.dtype) {
    return absl::InvalidArgumentError(absl::StrCat(
        "plan was built for Hq=", plan.num_q_heads, " Hkv=", plan.num_kv_heads,
        " D=", plan.head_dim, " page_size=", plan.page_size, " dtype=",
        static_cast<int>(plan.dtype), "; shape has Hq=", shape.num_q_heads,
        " Hkv=", shape.num_kv_heads, " D=", shape.head_dim, " page_size=", shape.page_size,
        " dtype=", static_cast<int>(shape.dtype)));
  }
  return absl::OkStatus();
}

}  // namespace

bool MsaWgmmaAvailable() { return WgmmaAvailableOnCurrentDevice(); }

bool MsaWgmmaAvailable(int device) {
#if defined(ASYMCACHE_MSA_WGMMA)
  if (device < 0) return false;
  if (device >= kMaxCachedDevices) return ProbeWgmma(device);
  const int8_t known = g_wgmma_available[device].load(std::memory_order_relaxed);
  if (known != 0) return known == 2;
  const bool ok = ProbeWgmma(device);
  g_wgmma_available[device].store(ok ? 2 : 1, std::memory_order_relaxed);
  return ok;
#else
  (void)device;
  return false;
#endif
}

MsaPrefillKernel ResolvedPrefillKernel(const MsaPlan& plan) {
  // kAuto where the wgmma kernel is available (head dim 128, cc 9.0, sm_90a
  // code): it was faster than kMma on every prefill configuration measured;
  // the overlapped loop only where a tile has more than one warpgroup's 64
  // rows (docs/msa_kernel.md, "version 3: wgmma").
  const MsaPrefillKernel wanted =
      plan.prefill_kernel != MsaPrefillKernel::kAuto ? plan.prefill_kernel
      : plan.max_prefill_tile_rows > 64              ? MsaPrefillKernel::kWgmmaOverlap
                                                     : MsaPrefillKernel::kWgmma;
  if ((wanted == MsaPrefillKernel::kWgmma || wanted == MsaPrefillKernel::kWgmmaOverlap) &&
      plan.head_dim == 128 && WgmmaAvailableOnCurrentDevice()) {
    return wanted;
  }
  return MsaPrefillKernel::kMma;
}

absl::StatusOr<WgmmaTileTestOutput> RunMsaWgmmaTileTest(DType dtype, const void* host_a,
                                                        const void* host_b, const void* host_v,
                                                        int variant) {
  if (dtype != DType::kBFloat16 && dtype != DType::kFloat16) {
    return absl::InvalidArgumentError("the wgmma tile test takes bf16 or fp16");
  }
  if (!WgmmaAvailableOnCurrentDevice()) {
    return absl::UnavailableError("the wgmma kernel cannot run here (no sm_90a code or not cc 9.0)");
  }
#if defined(ASYMCACHE_MSA_WGMMA)
  constexpr size_t kA = 128 * 128;
  constexpr size_t kB = 64 * 128;
  constexpr size_t kS = 128 * 64;
  constexpr size_t kO = 128 * 128;
  absl::StatusOr<DeviceBuffer> d_a = DeviceBuffer::Allocate(kA * 2);
  absl::StatusOr<DeviceBuffer> d_b = DeviceBuffer::Allocate(kB * 2);
  absl::StatusOr<DeviceBuffer> d_v = DeviceBuffer::Allocate(kB * 2);
  absl::StatusOr<DeviceBuffer> d_s = DeviceBuffer::Allocate(kS * 4);
  absl::StatusOr<DeviceBuffer> d_o = DeviceBuffer::Allocate(kO * 4);
  for (const auto* buffer : {&d_a, &d_b, &d_v, &d_s, &d_o}) {
    if (!buffer->ok()) return buffer->status();
  }
  ASYMCACHE_CUDA_RETURN_IF_ERROR(cudaMemcpy(d_a->data(), host_a, kA * 2, cudaMemcpyHostToDevice));
  ASYMCACHE_CUDA_RETURN_IF_ERROR(cudaMemcpy(d_b->data(), host_b, kB * 2, cudaMemcpyHostToDevice));
  ASYMCACHE_CUDA_RETURN_IF_ERROR(cudaMemcpy(d_v->data(), host_v, kB * 2, cudaMemcpyHostToDevice));
  ASYMCACHE_CUDA_RETURN_IF_ERROR(cudaMemset(d_s->data(), 0xFF, kS * 4));
  ASYMCACHE_CUDA_RETURN_IF_ERROR(cudaMemset(d_o->data(), 0xFF, kO * 4));
  auto* s_out = static_cast<float*>(d_s->data());
  auto* o_out = static_cast<float*>(d_o->data());
  if (dtype == DType::kBFloat16) {
    ASYMCACHE_CUDA_RETURN_IF_ERROR(cuda::LaunchMsaWgmmaTileTest<__nv_bfloat16>(
        d_a->data(), d_b->data(), d_v->data(), s_out, o_out, variant, nullptr));
  } else {
    ASYMCACHE_CUDA_RETURN_IF_ERROR(cuda::LaunchMsaWgmmaTileTest<__half>(
        d_a->data(), d_b->data(), d_v->data(), s_out, o_out, variant, nullptr));
  }
  ASYMCACHE_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  WgmmaTileTestOutput output;
  output.s.resize(kS);
  output.o.resize(kO);
  ASYMCACHE_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(output.s.data(), s_out, kS * 4, cudaMemcpyDeviceToHost));
  ASYMCACHE_CUDA_RETURN_IF_ERROR(
      cudaMemcpy(output.o.data(), o_out, kO * 4, cudaMemcpyDeviceToHost));
  return output;
#else
  (void)host_a;
  (void)host_b;
  (void)host_v;
  (void)variant;
  return absl::UnavailableError("built without the wgmma kernel");
#endif
}

absl::StatusOr<GpuInfo> QueryGpu(int device) {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    return absl::UnavailableError(
        absl::StrCat("no usable CUDA device: ", cudaGetErrorString(error)));
  }
  if (device < 0 || device >= count) {
    return absl::UnavailableError(
        absl::StrCat("CUDA device ", device, " not present (", count, " devices)"));
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    return absl::UnavailableError(absl::StrCat("cannot query CUDA device ", device));
  }
  GpuInfo info;
  info.name = prop.name;
  info.sm_count = prop.multiProcessorCount;
  info.cc_major = prop.major;
  info.cc_minor = prop.minor;
  info.total_bytes = static_cast<int64_t>(prop.totalGlobalMem);
  info.l2_bytes = prop.l2CacheSize;
  info.max_smem_per_block_optin = static_cast<int64_t>(prop.sharedMemPerBlockOptin);
  return info;
}

absl::Status UploadMsaPlan(const MsaPlan& plan, const void* host_ws, void* device_ws,
                           size_t device_bytes, void* stream) {
  if (device_bytes < plan.device_bytes_used) {
    return absl::InvalidArgumentError(absl::StrCat("plan needs ", plan.device_bytes_used,
                                                   " device workspace bytes, have ",
                                                   device_bytes));
  }
  if (plan.upload_bytes == 0) return absl::OkStatus();
  if (host_ws == nullptr || device_ws == nullptr) {
    return absl::InvalidArgumentError("host_ws and device_ws must be non-null");
  }
  ASYMCACHE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(device_ws, host_ws, plan.upload_bytes,
                                                 cudaMemcpyHostToDevice, AsStream(stream)));
  return absl::OkStatus();
}

absl::Status RunMsaCuda(const MsaPlan& plan, const AttentionShape& shape, const void* q,
                        const void* kv_pool, void* out, float* lse, void* device_ws,
                        void* stream) {
  // The plan fixes the structure but not sm_scale: the shape is checked whole.
  if (absl::Status status = shape.Validate(); !status.ok()) return status;
  if (absl::Status status = CheckPlanMatches(plan, shape); !status.ok()) return status;
  if (plan.total_q == 0) return absl::OkStatus();
  if (q == nullptr || out == nullptr || device_ws == nullptr ||
      (kv_pool == nullptr && plan.total_pages > 0)) {
    return absl::InvalidArgumentError("q, out, device_ws (and kv_pool with pages) must be non-null");
  }
  auto* ws = static_cast<unsigned char*>(device_ws);
  cuda::MsaKernelParams params;
  params.q = q;
  params.kv_pool = kv_pool != nullptr ? kv_pool : q;
  params.out = out;
  params.lse = lse;
  params.items = reinterpret_cast<const MsaWorkItem*>(ws + plan.items_offset);
  params.q_pos = reinterpret_cast<const int32_t*>(ws + plan.q_pos_offset);
  params.page_ids = reinterpret_cast<const int32_t*>(ws + plan.page_ids_offset);
  params.page_pos = reinterpret_cast<const int32_t*>(ws + plan.page_pos_offset);
  params.page_token_start = reinterpret_cast<const int32_t*>(ws + plan.page_token_start_offset);
  params.partial_out = reinterpret_cast<float*>(ws + plan.partial_out_offset);
  params.partial_lse = reinterpret_cast<float*>(ws + plan.partial_lse_offset);
  params.num_q_heads = shape.num_q_heads;
  params.group_size = shape.group_size();
  params.page_size = shape.page_size;
  params.scale_log2 = shape.EffectiveScale() * static_cast<float>(M_LOG2E);
  params.token_stride = static_cast<int64_t>(shape.num_kv_heads) * shape.head_dim;
  params.kv_half_stride = params.token_stride * shape.page_size;
  params.page_stride = 2 * params.kv_half_stride;

  const cudaStream_t s = AsStream(stream);
  const MsaPrefillKernel prefill_kernel =
      plan.num_prefill_items > 0 ? ResolvedPrefillKernel(plan) : MsaPrefillKernel::kMma;
  const int32_t merge_rows = plan.num_prefill_items > 0 ? kMsaPrefillTileRows : kMsaDecodeTileRows;
  const auto* groups = reinterpret_cast<const MsaMergeGroup*>(ws + plan.merge_groups_offset);
  if (shape.dtype == DType::kBFloat16) {
    ASYMCACHE_CUDA_RETURN_IF_ERROR(DispatchHeadDim<__nv_bfloat16>(
        shape.head_dim, params, plan.num_prefill_items, plan.num_decode_items, prefill_kernel, s));
    ASYMCACHE_CUDA_RETURN_IF_ERROR(cuda::LaunchMsaMerge<__nv_bfloat16>(
        groups, plan.num_merge_groups, params.partial_out, params.partial_lse, out, lse,
        shape.num_q_heads, shape.group_size(), shape.head_dim, merge_rows, s));
  } else if (shape.dtype == DType::kFloat16) {
    ASYMCACHE_CUDA_RETURN_IF_ERROR(DispatchHeadDim<__half>(
        shape.head_dim, params, plan.num_prefill_items, plan.num_decode_items, prefill_kernel, s));
    ASYMCACHE_CUDA_RETURN_IF_ERROR(cuda::LaunchMsaMerge<__half>(
        groups, plan.num_merge_groups, params.partial_out, params.partial_lse, out, lse,
        shape.num_q_heads, shape.group_size(), shape.head_dim, merge_rows, s));
  } else {
    return absl::InvalidArgumentError("MSA CUDA supports bf16 and fp16 only");
  }
  return absl::OkStatus();
}

// ---- buffers ----------------------------------------------------------------

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes) {
  DeviceBuffer buffer;
  if (bytes == 0) return buffer;
  ASYMCACHE_CUDA_RETURN_IF_ERROR(cudaMalloc(&buffer.data_, bytes));
  buffer.size_ = bytes;
  return buffer;
}
DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) cudaFree(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}
DeviceBuffer::~DeviceBuffer() {
  if (data_ != nullptr) cudaFree(data_);
}

absl::StatusOr<PinnedHostBuffer> PinnedHostBuffer::Allocate(size_t bytes) {
  PinnedHostBuffer buffer;
  if (bytes == 0) return buffer;
  ASYMCACHE_CUDA_RETURN_IF_ERROR(cudaMallocHost(&buffer.data_, bytes));
  buffer.size_ = bytes;
  return buffer;
}
PinnedHostBuffer::PinnedHostBuffer(PinnedHostBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
PinnedHostBuffer& PinnedHostBuffer::operator=(PinnedHostBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) cudaFreeHost(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}
PinnedHostBuffer::~PinnedHostBuffer() {
  if (data_ != nullptr) cudaFreeHost(data_);
}

absl::StatusOr<CudaStream> CudaStream::Create() {
  CudaStream stream;
  cudaStream_t s = nullptr;
  ASYMCACHE_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  stream.stream_ = s;
  return stream;
}
CudaStream::CudaStream(CudaStream&& other) noexcept
    : stream_(std::exchange(other.stream_, nullptr)) {}
CudaStream& CudaStream::operator=(CudaStream&& other) noexcept {
  if (this != &other) {
    if (stream_ != nullptr) cudaStreamDestroy(AsStream(stream_));
    stream_ = std::exchange(other.stream_, nullptr);
  }
  return *this;
}
CudaStream::~CudaStream() {
  if (stream_ != nullptr) cudaStreamDestroy(AsStream(stream_));
}

absl::Status CopyHostToDevice(void* device_dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  ASYMCACHE_CUDA_RETURN_IF_ERROR(cudaMemcpy(device_dst, host_src, bytes, cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

absl::Status CopyDeviceToHost(void* host_dst, const void* device_src, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  ASYMCACHE_CUDA_RETURN_IF_ERROR(cudaMemcpy(host_dst, device_src, bytes, cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}

absl::Status FillDeviceBytes(void* device_dst, uint8_t value, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  ASYMCACHE_CUDA_RETURN_IF_ERROR(cudaMemset(device_dst, value, bytes));
  ASYMCACHE_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  return absl::OkStatus();
}

absl::Status SynchronizeStream(void* stream) {
  ASYMCACHE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(AsStream(stream)));
  ASYMCACHE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status CaptureAndReplay(const std::function<absl::Status(void* stream)>& body, int replays) {
  absl::StatusOr<CudaStream> stream = CudaStream::Create();
  if (!stream.ok()) return stream.status();
  cudaStream_t s = AsStream(stream->get());
  ASYMCACHE_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  absl::Status body_status = body(stream->get());
  cudaGraph_t graph = nullptr;
  const cudaError_t end_error = cudaStreamEndCapture(s, &graph);
  if (!body_status.ok()) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    return body_status;
  }
  ASYMCACHE_CUDA_RETURN_IF_ERROR(end_error);
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst_error = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  ASYMCACHE_CUDA_RETURN_IF_ERROR(inst_error);
  cudaError_t error = cudaSuccess;
  for (int i = 0; i < replays && error == cudaSuccess; ++i) error = cudaGraphLaunch(exec, s);
  if (error == cudaSuccess) error = cudaStreamSynchronize(s);
  cudaGraphExecDestroy(exec);
  ASYMCACHE_CUDA_RETURN_IF_ERROR(error);
  return absl::OkStatus();
}

absl::StatusOr<double> TimeOnStream(const std::function<absl::Status(void* stream)>& body,
                                    int warmup, int iterations) {
  if (iterations <= 0) return absl::InvalidArgumentError("iterations must be positive");
  absl::StatusOr<CudaStream> stream = CudaStream::Create();
  if (!stream.ok()) return stream.status();
  cudaStream_t s = AsStream(stream->get());
  for (int i = 0; i < warmup; ++i) {
    if (absl::Status status = body(stream->get()); !status.ok()) return status;
  }
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  ASYMCACHE_CUDA_RETURN_IF_ERROR(cudaEventCreate(&start));
  ASYMCACHE_CUDA_RETURN_IF_ERROR(cudaEventCreate(&stop));
  absl::Status status = CudaStatus(cudaEventRecord(start, s), "cudaEventRecord");
  for (int i = 0; i < iterations && status.ok(); ++i) status.Update(body(stream->get()));
  if (status.ok()) status.Update(CudaStatus(cudaEventRecord(stop, s), "cudaEventRecord"));
  if (status.ok()) status.Update(CudaStatus(cudaEventSynchronize(stop), "cudaEventSynchronize"));
  float ms = 0.0f;
  if (status.ok()) {
    status.Update(CudaStatus(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime"));
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (!status.ok()) return status;
  return static_cast<double>(ms) / iterations;
}

}  // namespace asymcache::msa
