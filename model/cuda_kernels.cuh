// Device kernels of the CUDA model backend (model/cuda_backend.cu): the small
// fused steps between the GEMMs and MSA, FlashInfer style (STYLE.md §11):
// device code in this header, a POD params struct passed as __grid_constant__
// where there are many arguments, and templated host launchers that return the
// launch's cudaError_t. T is the 16-bit storage type (__nv_bfloat16 or __half).
//
//   RandomFill         weights from RandomWeightValue (model/random_weight.h),
//                      rounded to T (or kept fp32 for norms), on the device
//   EmbeddingGather    residual[t][:] = fp32(embedding[token[t]][:])
//   RmsNorm            out[r][:] = T(x[row_r][:] * rsqrt(mean(x^2) + eps) * w),
//                      x fp32, optionally reading rows through an index list
//   RopeAppend         rotary (rotate_half, cos/sin from a table indexed by the
//                      absolute position) of Q into a [T][Hq][D] buffer and of
//                      K into its pool slot, V copied into its pool slot (a
//                      token whose slot page is outside the pool, e.g. -1,
//                      writes no K/V)
//   SwiGlu             act = silu(gate) * up from the fused [T][2I] projection
//   CopyPageRows       rows [0, r) of K and V of one page into another, every layer
//
// Layout preconditions (the backend checks them at creation): hidden and
// intermediate sizes multiples of 8, head_dim in {64, 128, 256}, every pointer
// 16-byte aligned. All math in fp32. Launchers are asynchronous on `stream` and
// allocate nothing.
#ifndef ASYMCACHE_MODEL_CUDA_KERNELS_CUH_
#define ASYMCACHE_MODEL_CUDA_KERNELS_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "model/random_weight.h"

namespace asymcache::model::cuda {

// ---- conversions -------------------------------------------------------------

__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float ToFloat(__half x) { return __half2float(x); }
__device__ __forceinline__ float ToFloat(float x) { return x; }

template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half FromFloat<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ float FromFloat<float>(float x) {
  return x;
}

// 8 16-bit values in one 16-byte vector.
template <typename T>
__device__ __forceinline__ void Unpack8(const uint4& v, float* out) {
  const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = ToFloat(e[i]);
}

template <typename T>
__device__ __forceinline__ uint4 Pack8(const float* in) {
  uint4 v;
  T* e = reinterpret_cast<T*>(&v);
#pragma unroll
  for (int i = 0; i < 8; ++i) e[i] = FromFloat<T>(in[i]);
  return v;
}

inline int GridFor(int64_t work, int threads, int max_blocks) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, max_blocks)));
}

// Enough blocks to fill an H100 several times over with grid-stride loops.
inline constexpr int kMaxGridBlocks = 132 * 32;

// ---- random weights ------------------------------------------------------------

template <typename OutT>
__global__ void RandomFillKernel(OutT* dst, int64_t count, uint64_t seed, uint32_t tensor_id,
                                 int kind, float scale) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    dst[i] =
        FromFloat<OutT>(RandomWeightValue(seed, tensor_id, static_cast<uint64_t>(i), kind, scale));
  }
}

// OutT: float, __nv_bfloat16 or __half.
template <typename OutT>
cudaError_t LaunchRandomFill(OutT* dst, int64_t count, uint64_t seed, uint32_t tensor_id, int kind,
                             float scale, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  constexpr int kThreads = 256;
  RandomFillKernel<OutT><<<GridFor(count, kThreads, kMaxGridBlocks), kThreads, 0, stream>>>(
      dst, count, seed, tensor_id, kind, scale);
  return cudaGetLastError();
}

// ---- embedding -------------------------------------------------------------------

template <typename T>
__global__ void EmbeddingGatherKernel(const int32_t* __restrict__ tokens, int32_t num_tokens,
                                      const T* __restrict__ embedding, int64_t hidden,
                                      float* __restrict__ out) {
  const int64_t chunks = hidden / 8;
  for (int32_t t = blockIdx.x; t < num_tokens; t += gridDim.x) {
    const uint4* src = reinterpret_cast<const uint4*>(embedding + tokens[t] * hidden);
    float4* dst = reinterpret_cast<float4*>(out + t * hidden);
    for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
      float f[8];
      Unpack8<T>(src[c], f);
      dst[2 * c] = make_float4(f[0], f[1], f[2], f[3]);
      dst[2 * c + 1] = make_float4(f[4], f[5], f[6], f[7]);
    }
  }
}

template <typename T>
cudaError_t LaunchEmbeddingGather(const int32_t* tokens, int32_t num_tokens, const T* embedding,
                                  int64_t hidden, float* out, cudaStream_t stream) {
  if (num_tokens <= 0) return cudaSuccess;
  EmbeddingGatherKernel<T><<<std::min(num_tokens, kMaxGridBlocks), 256, 0, stream>>>(
      tokens, num_tokens, embedding, hidden, out);
  return cudaGetLastError();
}

// ---- RMSNorm ------------------------------------------------------------------------

template <int kThreads>
__device__ __forceinline__ float BlockSum(float value, float* scratch) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    value += __shfl_xor_sync(0xFFFFFFFFu, value, offset);
  }
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < kThreads / 32 ? scratch[lane] : 0.0f;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      value += __shfl_xor_sync(0xFFFFFFFFu, value, offset);
    }
    if (lane == 0) scratch[0] = value;
  }
  __syncthreads();
  const float total = scratch[0];
  __syncthreads();  // scratch is reused by the next row
  return total;
}

// One block per output row; rows == nullptr reads row r of x for output row r.
template <typename T, int kThreads>
__global__ void __launch_bounds__(kThreads)
    RmsNormKernel(const float* __restrict__ x, const int32_t* __restrict__ rows, int32_t num_rows,
                  int64_t hidden, const float* __restrict__ weight, float eps,
                  T* __restrict__ out) {
  __shared__ float scratch[32];
  const int64_t quads = hidden / 4;
  for (int32_t r = blockIdx.x; r < num_rows; r += gridDim.x) {
    const int64_t src_row = rows != nullptr ? rows[r] : r;
    const float4* xr = reinterpret_cast<const float4*>(x + src_row * hidden);
    float sum = 0.0f;
    for (int64_t c = threadIdx.x; c < quads; c += kThreads) {
      const float4 v = xr[c];
      sum += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    const float total = BlockSum<kThreads>(sum, scratch);
    const float inv = rsqrtf(total / static_cast<float>(hidden) + eps);
    const float4* w4 = reinterpret_cast<const float4*>(weight);
    uint2* o = reinterpret_cast<uint2*>(out + static_cast<int64_t>(r) * hidden);
    for (int64_t c = threadIdx.x; c < quads; c += kThreads) {
      const float4 v = xr[c];
      const float4 w = w4[c];
      uint2 packed;
      T* e = reinterpret_cast<T*>(&packed);
      e[0] = FromFloat<T>(v.x * inv * w.x);
      e[1] = FromFloat<T>(v.y * inv * w.y);
      e[2] = FromFloat<T>(v.z * inv * w.z);
      e[3] = FromFloat<T>(v.w * inv * w.w);
      o[c] = packed;  // 4 values in one 8-byte store
    }
  }
}

template <typename T>
cudaError_t LaunchRmsNorm(const float* x, const int32_t* rows, int32_t num_rows, int64_t hidden,
                          const float* weight, float eps, T* out, cudaStream_t stream) {
  if (num_rows <= 0) return cudaSuccess;
  constexpr int kThreads = 256;
  RmsNormKernel<T, kThreads><<<std::min(num_rows, kMaxGridBlocks), kThreads, 0, stream>>>(
      x, rows, num_rows, hidden, weight, eps, out);
  return cudaGetLastError();
}

// ---- rotary + KV append ------------------------------------------------------------

template <typename T>
struct RopeAppendParams {
  const T* qkv;  // [num_tokens][(Hq + 2 Hkv) * D]: q heads, k heads, v heads
  int32_t num_tokens;
  const int32_t* positions;     // [num_tokens] absolute positions (< table rows)
  const int32_t* slot_pages;    // [num_tokens] page receiving the token's K/V (-1: none)
  const int32_t* slot_offsets;  // [num_tokens] row in that page
  const float* cos_table;       // [table rows][D / 2]
  const float* sin_table;       // [table rows][D / 2]
  int32_t num_q_heads;
  int32_t num_kv_heads;
  int32_t head_dim;
  T* q_out;  // [num_tokens][Hq][D]
  T* pool;   // this layer's pages: [num_pages][2][page_size][Hkv][D]
  int64_t num_pages;
  int32_t page_size;
};

// One thread per 8 rotary pairs of a q/k head, or per 8 values of a v head.
template <typename T>
__global__ void RopeAppendKernel(const __grid_constant__ RopeAppendParams<T> p) {
  const int32_t half = p.head_dim / 2;
  const int32_t rot_chunks = half / 8;         // per head
  const int32_t copy_chunks = p.head_dim / 8;  // per v head
  const int32_t rot_units = (p.num_q_heads + p.num_kv_heads) * rot_chunks;
  const int32_t units = rot_units + p.num_kv_heads * copy_chunks;
  const int64_t row_elems = static_cast<int64_t>(p.num_q_heads + 2 * p.num_kv_heads) * p.head_dim;
  const int64_t kv_row = static_cast<int64_t>(p.num_kv_heads) * p.head_dim;
  const int64_t total = static_cast<int64_t>(p.num_tokens) * units;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t t = i / units;
    const int32_t u = static_cast<int32_t>(i % units);
    const T* src = p.qkv + t * row_elems;
    const int32_t page = p.slot_pages[t];
    const int32_t offset = p.slot_offsets[t];
    const bool slot_ok = page >= 0 && page < p.num_pages && offset >= 0 && offset < p.page_size;
    if (u < rot_units) {
      const int32_t head = u / rot_chunks;  // q heads, then k heads
      const int32_t j = (u % rot_chunks) * 8;
      const T* h = src + static_cast<int64_t>(head) * p.head_dim;
      float lo[8], hi[8], c[8], s[8];
      Unpack8<T>(*reinterpret_cast<const uint4*>(h + j), lo);
      Unpack8<T>(*reinterpret_cast<const uint4*>(h + half + j), hi);
      const int64_t trow = static_cast<int64_t>(p.positions[t]) * half + j;
      const float4* c4 = reinterpret_cast<const float4*>(p.cos_table + trow);
      const float4* s4 = reinterpret_cast<const float4*>(p.sin_table + trow);
      *reinterpret_cast<float4*>(c) = c4[0];
      *reinterpret_cast<float4*>(c + 4) = c4[1];
      *reinterpret_cast<float4*>(s) = s4[0];
      *reinterpret_cast<float4*>(s + 4) = s4[1];
      float out_lo[8], out_hi[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        out_lo[e] = lo[e] * c[e] - hi[e] * s[e];
        out_hi[e] = hi[e] * c[e] + lo[e] * s[e];
      }
      T* dst;
      if (head < p.num_q_heads) {
        dst = p.q_out + (t * p.num_q_heads + head) * p.head_dim;
      } else {
        if (!slot_ok) continue;
        dst = p.pool + ((static_cast<int64_t>(page) * 2) * p.page_size + offset) * kv_row +
              static_cast<int64_t>(head - p.num_q_heads) * p.head_dim;
      }
      *reinterpret_cast<uint4*>(dst + j) = Pack8<T>(out_lo);
      *reinterpret_cast<uint4*>(dst + half + j) = Pack8<T>(out_hi);
    } else {
      if (!slot_ok) continue;
      const int32_t c = u - rot_units;
      const int32_t head = c / copy_chunks;
      const int32_t j = (c % copy_chunks) * 8;
      const T* v = src + static_cast<int64_t>(p.num_q_heads + p.num_kv_heads + head) * p.head_dim;
      T* dst = p.pool + ((static_cast<int64_t>(page) * 2 + 1) * p.page_size + offset) * kv_row +
               static_cast<int64_t>(head) * p.head_dim;
      *reinterpret_cast<uint4*>(dst + j) = *reinterpret_cast<const uint4*>(v + j);
    }
  }
}

template <typename T>
cudaError_t LaunchRopeAppend(const RopeAppendParams<T>& params, cudaStream_t stream) {
  if (params.num_tokens <= 0) return cudaSuccess;
  const int64_t units =
      static_cast<int64_t>(params.num_q_heads + params.num_kv_heads) * (params.head_dim / 16) +
      static_cast<int64_t>(params.num_kv_heads) * (params.head_dim / 8);
  constexpr int kThreads = 256;
  RopeAppendKernel<T>
      <<<GridFor(units * params.num_tokens, kThreads, kMaxGridBlocks), kThreads, 0, stream>>>(
          params);
  return cudaGetLastError();
}

// ---- SwiGLU -------------------------------------------------------------------------------

template <typename T>
__global__ void SwiGluKernel(const T* __restrict__ gate_up, int32_t num_tokens,
                             int64_t intermediate, T* __restrict__ out) {
  const int64_t chunks = intermediate / 8;
  const int64_t total = static_cast<int64_t>(num_tokens) * chunks;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t t = i / chunks;
    const int64_t c = (i % chunks) * 8;
    const T* row = gate_up + t * 2 * intermediate;
    float g[8], u[8], a[8];
    Unpack8<T>(*reinterpret_cast<const uint4*>(row + c), g);
    Unpack8<T>(*reinterpret_cast<const uint4*>(row + intermediate + c), u);
#pragma unroll
    for (int e = 0; e < 8; ++e) a[e] = g[e] / (1.0f + expf(-g[e])) * u[e];
    *reinterpret_cast<uint4*>(out + t * intermediate + c) = Pack8<T>(a);
  }
}

template <typename T>
cudaError_t LaunchSwiGlu(const T* gate_up, int32_t num_tokens, int64_t intermediate, T* out,
                         cudaStream_t stream) {
  if (num_tokens <= 0) return cudaSuccess;
  constexpr int kThreads = 256;
  SwiGluKernel<T>
      <<<GridFor(num_tokens * (intermediate / 8), kThreads, kMaxGridBlocks), kThreads, 0, stream>>>(
          gate_up, num_tokens, intermediate, out);
  return cudaGetLastError();
}

// ---- page row copy ---------------------------------------------------------------------

// Copies bytes [0, copy_bytes) of the K half and of the V half of page `src`
// into page `dst`, in every layer. copy_bytes and half_bytes are multiples of 16.
static __global__ void CopyPageRowsKernel(uint8_t* __restrict__ base, int64_t layer_stride_bytes,
                                          int64_t page_bytes, int64_t half_bytes, int32_t src,
                                          int32_t dst, int64_t copy_bytes, int32_t num_layers) {
  const int64_t chunks = copy_bytes / 16;
  const int64_t total = static_cast<int64_t>(num_layers) * 2 * chunks;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t layer = i / (2 * chunks);
    const int64_t rem = i % (2 * chunks);
    const int64_t offset =
        layer * layer_stride_bytes + (rem / chunks) * half_bytes + (rem % chunks) * 16;
    *reinterpret_cast<uint4*>(base + dst * page_bytes + offset) =
        *reinterpret_cast<const uint4*>(base + src * page_bytes + offset);
  }
}

static inline cudaError_t LaunchCopyPageRows(void* base, int64_t layer_stride_bytes,
                                             int64_t page_bytes, int32_t src, int32_t dst,
                                             int64_t copy_bytes, int32_t num_layers,
                                             cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t work = static_cast<int64_t>(num_layers) * 2 * (copy_bytes / 16);
  CopyPageRowsKernel<<<GridFor(work, kThreads, kMaxGridBlocks), kThreads, 0, stream>>>(
      static_cast<uint8_t*>(base), layer_stride_bytes, page_bytes, page_bytes / 2, src, dst,
      copy_bytes, num_layers);
  return cudaGetLastError();
}

}  // namespace asymcache::model::cuda

#endif  // ASYMCACHE_MODEL_CUDA_KERNELS_CUH_
