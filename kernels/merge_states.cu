// MSA split-KV merge: combines the fp32 partial states of split work items
// (MsaMergeGroup, msa_plan.h) into the output and LSE, base 2, FlashInfer's
// operator with empty-state guards (all chunks empty -> 0 / -inf, never NaN).
// One warp per (merge group, row); no allocation; graph-capturable.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/msa_launch.cuh"

namespace asymcache::msa::cuda {
namespace {

constexpr int kMergeThreads = 128;
constexpr int kMergeRowsPerCta = kMergeThreads / 32;

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

template <typename T>
__device__ __forceinline__ void Store4(T* dst, float a, float b, float c, float d) {
  dst[0] = FromFloat<T>(a);
  dst[1] = FromFloat<T>(b);
  dst[2] = FromFloat<T>(c);
  dst[3] = FromFloat<T>(d);
}

// One warp per (group, row): lanes reduce the chunks' LSEs, then each lane
// merges 4-float slices of the row over all chunks.
template <typename T>
__global__ void __launch_bounds__(kMergeThreads)
    MsaMergeKernel(const MsaMergeGroup* groups, const float* partial_out,
                   const float* partial_lse, T* out, float* lse, int32_t num_q_heads,
                   int32_t group_size, int32_t head_dim) {
  const MsaMergeGroup grp = groups[blockIdx.x];
  const int lane = threadIdx.x & 31;
  const int r = blockIdx.y * kMergeRowsPerCta + (threadIdx.x >> 5);
  if (r >= grp.num_rows) return;
  const float neg_inf = -__int_as_float(0x7f800000);
  const float* row_lse = partial_lse + grp.partial_row + r;  // chunk c at c * num_rows
  float mx = neg_inf;
  for (int c = lane; c < grp.num_chunks; c += 32) mx = fmaxf(mx, row_lse[c * grp.num_rows]);
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, m));
  const float base = mx == neg_inf ? 0.0f : mx;
  float sum = 0.0f;
  for (int c = lane; c < grp.num_chunks; c += 32) sum += exp2f(row_lse[c * grp.num_rows] - base);
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, m);
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
  const int64_t token = grp.q_token_begin + r / group_size;
  const int head = grp.kv_head * group_size + r % group_size;
  const int64_t out_row = token * num_q_heads + head;
  if (lse != nullptr && lane == 0) lse[out_row] = sum > 0.0f ? base + log2f(sum) : neg_inf;
  for (int d = lane * 4; d < head_dim; d += 128) {
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    const float* src = partial_out + static_cast<int64_t>(grp.partial_row + r) * head_dim + d;
    const int64_t chunk_stride = static_cast<int64_t>(grp.num_rows) * head_dim;
#pragma unroll 4
    for (int c = 0; c < grp.num_chunks; ++c) {
      const float w = exp2f(row_lse[c * grp.num_rows] - base) * inv;
      const float4 v = *reinterpret_cast<const float4*>(src + c * chunk_stride);
      // w == 0 for empty chunks, whose values are 0: no NaN can enter.
      acc.x += w * v.x;
      acc.y += w * v.y;
      acc.z += w * v.z;
      acc.w += w * v.w;
    }
    Store4(out + out_row * head_dim + d, acc.x, acc.y, acc.z, acc.w);
  }
}

}  // namespace

template <typename T>
cudaError_t LaunchMsaMerge(const MsaMergeGroup* groups, int32_t num_groups,
                           const float* partial_out, const float* partial_lse, void* out,
                           float* lse, int32_t num_q_heads, int32_t group_size, int32_t head_dim,
                           int32_t max_rows, cudaStream_t stream) {
  if (num_groups <= 0) return cudaSuccess;
  const dim3 grid(num_groups, (max_rows + kMergeRowsPerCta - 1) / kMergeRowsPerCta);
  MsaMergeKernel<T><<<grid, kMergeThreads, 0, stream>>>(
      groups, partial_out, partial_lse, static_cast<T*>(out), lse, num_q_heads, group_size,
      head_dim);
  return cudaGetLastError();
}

template cudaError_t LaunchMsaMerge<__nv_bfloat16>(const MsaMergeGroup*, int32_t, const float*,
                                                   const float*, void*, float*, int32_t, int32_t,
                                                   int32_t, int32_t, cudaStream_t);
template cudaError_t LaunchMsaMerge<__half>(const MsaMergeGroup*, int32_t, const float*,
                                            const float*, void*, float*, int32_t, int32_t,
                                            int32_t, int32_t, cudaStream_t);

}  // namespace asymcache::msa::cuda
