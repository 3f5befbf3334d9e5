// MSA CUDA launch interface: the kernels' POD parameter block and the
// templated host launchers (defined in msa_kernel.cuh, explicitly
// instantiated in msa_inst_*.cu and merge_states.cu; declared here so the
// dispatcher in msa_cuda.cu compiles no device code).
//
// Launchers return cudaError_t (the launch error; kernels run asynchronously)
// and allocate nothing, so they are capturable in a CUDA graph.
// Thread-safety: reentrant.
#ifndef ASYMCACHE_KERNELS_MSA_LAUNCH_CUH_
#define ASYMCACHE_KERNELS_MSA_LAUNCH_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/msa_plan.h"

namespace asymcache::msa::cuda {

// Early-return on a CUDA error inside functions returning cudaError_t.
#define ASYMCACHE_CUDA_TRY(expr)          \
  do {                                    \
    const cudaError_t cuda_try_ = (expr); \
    if (cuda_try_ != cudaSuccess) {       \
      return cuda_try_;                   \
    }                                     \
  } while (0)

// Everything the attention kernels read; passed by value as __grid_constant__.
struct MsaKernelParams {
  const void* q = nullptr;        // [total_q][Hq][D]
  const void* kv_pool = nullptr;  // [pages][2][page_size][Hkv][D]
  void* out = nullptr;            // [total_q][Hq][D]
  float* lse = nullptr;           // [total_q][Hq] or null
  const MsaWorkItem* items = nullptr;
  const int32_t* q_pos = nullptr;
  const int32_t* page_ids = nullptr;
  const int32_t* page_pos = nullptr;
  const int32_t* page_token_start = nullptr;
  float* partial_out = nullptr;  // [partial rows][D]
  float* partial_lse = nullptr;  // [partial rows]
  int32_t num_q_heads = 0;
  int32_t group_size = 0;
  int32_t page_size = 0;
  float scale_log2 = 0.0f;      // sm_scale * log2(e)
  int64_t page_stride = 0;      // elements per page: 2 * page_size * Hkv * D
  int64_t kv_half_stride = 0;   // elements from K to V of a page: page_size * Hkv * D
  int64_t token_stride = 0;     // elements per token row of a page: Hkv * D
};

// Runs items [0, num_prefill) with 128-row tiles (unless run_prefill is
// false: another kernel runs them) and [num_prefill, num_prefill + num_decode)
// with 16-row tiles.
template <typename T, int kHeadDim>
cudaError_t LaunchMsaAttention(const MsaKernelParams& params, int32_t num_prefill,
                               int32_t num_decode, bool run_prefill, cudaStream_t stream);

// The Hopper prefill kernel (msa_wgmma.cuh; head dim 128, compiled for sm_90a
// only, in msa_wgmma_<dtype>.cu): runs items [0, num_prefill) with the same
// 128-row tiles and outputs as the mma.sync prefill kernel. Defined only in
// builds with ASYMCACHE_MSA_WGMMA. overlap: MsaWgmmaPrefillOverlapKernel
// (MsaPrefillKernel::kWgmmaOverlap) instead of the serial main loop.
template <typename T>
cudaError_t LaunchMsaWgmmaPrefill(const MsaKernelParams& params, int32_t num_prefill,
                                  bool overlap, cudaStream_t stream);

// cudaSuccess when the wgmma kernel has an image the current device can load
// (cudaFuncGetAttributes), else that call's error.
template <typename T>
cudaError_t ProbeMsaWgmmaPrefill();

// Test hook: one 128 x 64 x 128 tile of the wgmma kernel's two GEMMs with its
// shared-memory layouts and descriptors. a [128][128] (Q rows), b [64][128]
// (K rows), v [64][128] (V rows), all device memory of T; writes
// s_out [128][64] = a b^T (fp32) and o_out [128][128] = T(s) v (fp32).
// variant 0 is the kernel's encoding; 1 swaps the V descriptor's two byte
// offsets (a probe that tells a layout bug from a descriptor bug).
template <typename T>
cudaError_t LaunchMsaWgmmaTileTest(const void* a, const void* b, const void* v, float* s_out,
                                   float* o_out, int variant, cudaStream_t stream);

// Merges the partial states of split items into out/lse. max_rows bounds
// the groups' num_rows (16 when every split item is a decode tile, else 128).
template <typename T>
cudaError_t LaunchMsaMerge(const MsaMergeGroup* groups, int32_t num_groups,
                           const float* partial_out, const float* partial_lse, void* out,
                           float* lse, int32_t num_q_heads, int32_t group_size, int32_t head_dim,
                           int32_t max_rows, cudaStream_t stream);

}  // namespace asymcache::msa::cuda

#endif  // ASYMCACHE_KERNELS_MSA_LAUNCH_CUH_
