// MSA CUDA device code: the paged multi-segment attention kernel (prefill and
// decode tiles) and its launcher template. Included only by msa_inst_*.cu.
//
// Tile (docs/msa_kernel.md): a CTA of 4 warps runs one MsaWorkItem. Prefill
// tiles hold 64 packed query rows (4 warps x 16 rows, each warp over the whole
// KV tile); decode tiles hold 16 rows and the 4 warps split every KV tile into
// 4 slices, combining their softmax states at the end. K/V tiles of kBlockN
// keys are gathered page by page with cp.async (16-byte vectors, zero-fill
// past the end) into a kStages-deep shared-memory ring with an XOR swizzle;
// QK^T and PV use mma.sync m16n8k16 (16-bit in, fp32 accumulate) fed by
// ldmatrix. Online softmax in fp32, base 2 (scale * log2 e folded in). Only
// tiles whose last key position exceeds the item's smallest query position
// (or that end early) are masked.
#ifndef ASYMCACHE_KERNELS_MSA_KERNEL_CUH_
#define ASYMCACHE_KERNELS_MSA_KERNEL_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/msa_launch.cuh"

namespace asymcache::msa::cuda {

constexpr int kMsaThreads = 128;

// ---- element types --------------------------------------------------------

template <typename T>
struct ElementOps;

template <>
struct ElementOps<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t Pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <>
struct ElementOps<__half> {
  static __device__ __forceinline__ uint32_t Pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

// ---- PTX helpers ----------------------------------------------------------

__device__ __forceinline__ uint32_t SmemAddr(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

__device__ __forceinline__ void CpAsync16(uint32_t smem_addr, const void* global_ptr, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr),
               "l"(global_ptr), "r"(src_bytes));
}

__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

__device__ __forceinline__ void Ldmatrix4(uint32_t (&r)[4], uint32_t smem_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr));
}

__device__ __forceinline__ void Ldmatrix4Trans(uint32_t (&r)[4], uint32_t smem_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr));
}

__device__ __forceinline__ float FastExp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

#define ASYMCACHE_MSA_NEG_INF (-__int_as_float(0x7f800000))

// Element offset of 16-byte chunk `chunk` of row `row` in a swizzled tile with
// kHeadDim elements per row (chunk index XOR row mod 8: conflict-free ldmatrix).
template <int kHeadDim>
__device__ __forceinline__ int Swizzle(int row, int chunk) {
  return row * kHeadDim + ((chunk ^ (row & 7)) << 3);
}

// ---- tile configuration ---------------------------------------------------

template <int kHeadDim, bool kDecode>
struct MsaTileConfig {
  static constexpr int kWarpsM = kDecode ? 1 : 4;
  static constexpr int kWarpsN = kDecode ? 4 : 1;
  static constexpr int kRows = 16 * kWarpsM;
  static constexpr int kBlockN = (!kDecode && kHeadDim == 256) ? 32 : 64;
  static constexpr int kStages = 2;
  static constexpr int kWarpKeys = kBlockN / kWarpsN;  // keys per warp per tile
  static constexpr int kChunks = kHeadDim / 8;         // 16-byte chunks per row
  static constexpr int kOStride = kHeadDim + 8;        // fp32 epilogue row stride
  static_assert(kWarpKeys % 16 == 0, "each warp needs whole k16 steps of keys");

  static constexpr int kQBytes = kRows * kHeadDim * 2;
  static constexpr int kKvBytes = 2 * kStages * kBlockN * kHeadDim * 2;
  static constexpr int kEpilogueBytes = kWarpsN * kRows * (kOStride + 2) * 4;
  static constexpr int kRegionBytes = kKvBytes > kEpilogueBytes ? kKvBytes : kEpilogueBytes;
  static constexpr int kTableBytes = kStages * kBlockN * (8 + 4) + 16 + kRows * 4;
  static constexpr int kSmemBytes = kQBytes + kRegionBytes + kTableBytes;
};

// ---- attention kernel -----------------------------------------------------

template <typename T, int kHeadDim, bool kDecode>
__global__ void __launch_bounds__(kMsaThreads)
    MsaAttentionKernel(const __grid_constant__ MsaKernelParams p, int32_t item_base) {
  using Cfg = MsaTileConfig<kHeadDim, kDecode>;
  using Ops = ElementOps<T>;
  constexpr int D = kHeadDim;
  constexpr int kBlockN = Cfg::kBlockN;
  constexpr int kStages = Cfg::kStages;
  constexpr int kChunks = Cfg::kChunks;
  constexpr int kRows = Cfg::kRows;

  extern __shared__ __align__(128) unsigned char smem[];
  T* s_q = reinterpret_cast<T*>(smem);
  T* s_k = reinterpret_cast<T*>(smem + Cfg::kQBytes);
  T* s_v = s_k + kStages * kBlockN * D;
  float* s_o = reinterpret_cast<float*>(smem + Cfg::kQBytes);  // epilogue alias of the KV ring
  int64_t* s_tok_off = reinterpret_cast<int64_t*>(smem + Cfg::kQBytes + Cfg::kRegionBytes);
  int32_t* s_tok_pos = reinterpret_cast<int32_t*>(s_tok_off + kStages * kBlockN);
  int32_t* s_flag = s_tok_pos + kStages * kBlockN;  // 4 slots reserved
  int32_t* s_row_qpos = s_flag + 4;

  const MsaWorkItem item = p.items[item_base + blockIdx.x];
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int wm = warp / Cfg::kWarpsN;
  const int wn = warp % Cfg::kWarpsN;
  const int group = p.group_size;
  const T* q = static_cast<const T*>(p.q);
  const T* kv = static_cast<const T*>(p.kv_pool);

  // Q tile (rows past num_rows are zero) and each row's query position.
  for (int c = tid; c < kRows * kChunks; c += kMsaThreads) {
    const int r = c / kChunks;
    const int ch = c % kChunks;
    const bool valid = r < item.num_rows;
    const T* src = q;
    if (valid) {
      const int64_t token = item.q_token_begin + r / group;
      const int head = item.kv_head * group + r % group;
      src = q + (token * p.num_q_heads + head) * D + ch * 8;
    }
    CpAsync16(SmemAddr(s_q + Swizzle<D>(r, ch)), src, valid);
  }
  for (int r = tid; r < kRows; r += kMsaThreads) {
    s_row_qpos[r] = r < item.num_rows ? p.q_pos[item.q_token_begin + r / group] : -1;
  }

  // Key -> (page id, page position, row in page) for this thread's key of a
  // KV tile, loaded one tile before it is written to shared memory, so the
  // page-table loads overlap a whole tile of compute.
  struct KeyEntry {
    int32_t page_id;
    int32_t page_pos;
    int32_t in_page;  // -1: past the item's end
  };
  auto load_entry = [&](int tile) {
    KeyEntry e{0, 0, -1};
    const int t = item.kv_begin + tile * kBlockN + tid;
    if (tid < kBlockN && t < item.kv_end) {
      int gp;
      if (item.uniform_pages) {
        const int page = t / p.page_size;
        gp = item.page_begin + page;
        e.in_page = t - page * p.page_size;
      } else {
        int lo = 0;
        int hi = item.num_pages - 1;  // largest page with token_start <= t
        while (lo < hi) {
          const int mid = (lo + hi + 1) >> 1;
          if (p.page_token_start[item.page_begin + mid] <= t) {
            lo = mid;
          } else {
            hi = mid - 1;
          }
        }
        gp = item.page_begin + lo;
        e.in_page = t - p.page_token_start[gp];
      }
      e.page_id = p.page_ids[gp];
      e.page_pos = p.page_pos[gp];
    }
    return e;
  };
  auto write_entry = [&](const KeyEntry& e, int tile, int slot) {
    if (tid < kBlockN) {
      int64_t off = -1;
      int32_t pos = INT32_MAX;
      if (e.in_page >= 0) {
        off = static_cast<int64_t>(e.page_id) * p.page_stride + e.in_page * p.token_stride +
              static_cast<int64_t>(item.kv_head) * D;
        pos = e.page_pos + e.in_page;
      }
      s_tok_off[slot * kBlockN + tid] = off;
      s_tok_pos[slot * kBlockN + tid] = pos;
      const int last = min(kBlockN, item.kv_end - (item.kv_begin + tile * kBlockN)) - 1;
      if (tid == last) s_flag[slot] = (last < kBlockN - 1 || pos > item.q_pos_min) ? 1 : 0;
    }
  };
  auto issue_tile = [&](int slot) {
    for (int c = tid; c < kBlockN * kChunks; c += kMsaThreads) {
      const int r = c / kChunks;
      const int ch = c % kChunks;
      const int64_t off = s_tok_off[slot * kBlockN + r];
      const bool valid = off >= 0;
      const T* src_k = valid ? kv + off + ch * 8 : kv;
      const T* src_v = valid ? kv + off + p.kv_half_stride + ch * 8 : kv;
      const int so = slot * kBlockN * D + Swizzle<D>(r, ch);
      CpAsync16(SmemAddr(s_k + so), src_k, valid);
      CpAsync16(SmemAddr(s_v + so), src_v, valid);
    }
  };

  const int num_tiles = (item.kv_end - item.kv_begin + kBlockN - 1) / kBlockN;
  static_assert(kStages == 2, "the table/data pipeline below is written for 2 stages");
  KeyEntry next_entry{0, 0, -1};
  if (num_tiles > 0) write_entry(load_entry(0), 0, 0);
  if (num_tiles > 1) next_entry = load_entry(1);
  __syncthreads();
  if (num_tiles > 0) issue_tile(0);
  CpAsyncCommit();

  const int g = lane >> 2;
  const int t4 = lane & 3;
  const int row_base = wm * 16;
  const int key_base = wn * Cfg::kWarpKeys;
  float o_acc[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o_acc[i][0] = o_acc[i][1] = o_acc[i][2] = o_acc[i][3] = 0.0f;
  float row_max[2] = {ASYMCACHE_MSA_NEG_INF, ASYMCACHE_MSA_NEG_INF};
  float row_sum[2] = {0.0f, 0.0f};

  for (int tile = 0; tile < num_tiles; ++tile) {
    const int ahead = tile + 1;
    if (ahead < num_tiles) write_entry(next_entry, ahead, ahead % kStages);
    if (ahead + 1 < num_tiles) next_entry = load_entry(ahead + 1);
    __syncthreads();
    if (ahead < num_tiles) issue_tile(ahead % kStages);
    CpAsyncCommit();
    CpAsyncWait<kStages - 1>();
    __syncthreads();

    const int slot = tile % kStages;
    const T* k_s = s_k + slot * kBlockN * D;
    const T* v_s = s_v + slot * kBlockN * D;

    // S = Q K^T for this warp's 16 rows x kWarpKeys keys.
    constexpr int kNb = Cfg::kWarpKeys / 8;
    float s_acc[kNb][4];
#pragma unroll
    for (int i = 0; i < kNb; ++i) s_acc[i][0] = s_acc[i][1] = s_acc[i][2] = s_acc[i][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4];
      {
        const int r = row_base + (lane & 15);
        Ldmatrix4(a, SmemAddr(s_q + Swizzle<D>(r, kk * 2 + (lane >> 4))));
      }
#pragma unroll
      for (int nb = 0; nb < kNb; nb += 2) {
        uint32_t b[4];
        const int r = key_base + nb * 8 + (lane & 7) + ((lane >> 4) << 3);
        Ldmatrix4(b, SmemAddr(k_s + Swizzle<D>(r, kk * 2 + ((lane >> 3) & 1))));
        Ops::Mma(s_acc[nb], a, b[0], b[1]);
        Ops::Mma(s_acc[nb + 1], a, b[2], b[3]);
      }
    }

    // Scale, mask, online softmax (rows g and g + 8 of the warp's 16).
    const bool need_mask = s_flag[slot] != 0;
    const int qp0 = s_row_qpos[row_base + g];
    const int qp1 = s_row_qpos[row_base + g + 8];
    float new_max0 = row_max[0];
    float new_max1 = row_max[1];
#pragma unroll
    for (int nb = 0; nb < kNb; ++nb) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float v0 = s_acc[nb][e] * p.scale_log2;
        float v1 = s_acc[nb][2 + e] * p.scale_log2;
        if (need_mask) {
          const int kp = s_tok_pos[slot * kBlockN + key_base + nb * 8 + 2 * t4 + e];
          if (kp > qp0) v0 = ASYMCACHE_MSA_NEG_INF;
          if (kp > qp1) v1 = ASYMCACHE_MSA_NEG_INF;
        }
        s_acc[nb][e] = v0;
        s_acc[nb][2 + e] = v1;
        new_max0 = fmaxf(new_max0, v0);
        new_max1 = fmaxf(new_max1, v1);
      }
    }
    new_max0 = fmaxf(new_max0, __shfl_xor_sync(0xffffffffu, new_max0, 1));
    new_max0 = fmaxf(new_max0, __shfl_xor_sync(0xffffffffu, new_max0, 2));
    new_max1 = fmaxf(new_max1, __shfl_xor_sync(0xffffffffu, new_max1, 1));
    new_max1 = fmaxf(new_max1, __shfl_xor_sync(0xffffffffu, new_max1, 2));
    const float base0 = new_max0 == ASYMCACHE_MSA_NEG_INF ? 0.0f : new_max0;
    const float base1 = new_max1 == ASYMCACHE_MSA_NEG_INF ? 0.0f : new_max1;
    const float alpha0 = FastExp2(row_max[0] - base0);
    const float alpha1 = FastExp2(row_max[1] - base1);
    row_max[0] = new_max0;
    row_max[1] = new_max1;
    row_sum[0] *= alpha0;
    row_sum[1] *= alpha1;
#pragma unroll
    for (int nb = 0; nb < kNb; ++nb) {
      s_acc[nb][0] = FastExp2(s_acc[nb][0] - base0);
      s_acc[nb][1] = FastExp2(s_acc[nb][1] - base0);
      s_acc[nb][2] = FastExp2(s_acc[nb][2] - base1);
      s_acc[nb][3] = FastExp2(s_acc[nb][3] - base1);
      row_sum[0] += s_acc[nb][0] + s_acc[nb][1];
      row_sum[1] += s_acc[nb][2] + s_acc[nb][3];
    }
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) {
      o_acc[nd][0] *= alpha0;
      o_acc[nd][1] *= alpha0;
      o_acc[nd][2] *= alpha1;
      o_acc[nd][3] *= alpha1;
    }

    // O += P V.
#pragma unroll
    for (int kt = 0; kt < Cfg::kWarpKeys / 16; ++kt) {
      uint32_t a[4];
      a[0] = Ops::Pack(s_acc[2 * kt][0], s_acc[2 * kt][1]);
      a[1] = Ops::Pack(s_acc[2 * kt][2], s_acc[2 * kt][3]);
      a[2] = Ops::Pack(s_acc[2 * kt + 1][0], s_acc[2 * kt + 1][1]);
      a[3] = Ops::Pack(s_acc[2 * kt + 1][2], s_acc[2 * kt + 1][3]);
      const int r = key_base + kt * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
#pragma unroll
      for (int nd = 0; nd < D / 8; nd += 2) {
        uint32_t b[4];
        Ldmatrix4Trans(b, SmemAddr(v_s + Swizzle<D>(r, nd + (lane >> 4))));
        Ops::Mma(o_acc[nd], a, b[0], b[1]);
        Ops::Mma(o_acc[nd + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();
  }
  CpAsyncWait<0>();
  __syncthreads();

  // Epilogue: every warp's (max, sum, O) to shared memory, then combine.
  row_sum[0] += __shfl_xor_sync(0xffffffffu, row_sum[0], 1);
  row_sum[0] += __shfl_xor_sync(0xffffffffu, row_sum[0], 2);
  row_sum[1] += __shfl_xor_sync(0xffffffffu, row_sum[1], 1);
  row_sum[1] += __shfl_xor_sync(0xffffffffu, row_sum[1], 2);
  constexpr int kOStride = Cfg::kOStride;
  float* s_ow = s_o + wn * kRows * kOStride;
  float* s_m = s_o + Cfg::kWarpsN * kRows * kOStride;
  float* s_l = s_m + Cfg::kWarpsN * kRows;
  {
    const int r0 = row_base + g;
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) {
      const int col = nd * 8 + 2 * t4;
      *reinterpret_cast<float2*>(&s_ow[r0 * kOStride + col]) = make_float2(o_acc[nd][0], o_acc[nd][1]);
      *reinterpret_cast<float2*>(&s_ow[(r0 + 8) * kOStride + col]) =
          make_float2(o_acc[nd][2], o_acc[nd][3]);
    }
    if (t4 == 0) {
      s_m[wn * kRows + r0] = row_max[0];
      s_l[wn * kRows + r0] = row_sum[0];
      s_m[wn * kRows + r0 + 8] = row_max[1];
      s_l[wn * kRows + r0 + 8] = row_sum[1];
    }
  }
  __syncthreads();

  const bool partial = item.partial_row >= 0;
  T* out = static_cast<T*>(p.out);
  for (int c = tid; c < item.num_rows * kChunks; c += kMsaThreads) {
    const int r = c / kChunks;
    const int ch = c % kChunks;
    float mx = ASYMCACHE_MSA_NEG_INF;
#pragma unroll
    for (int w = 0; w < Cfg::kWarpsN; ++w) mx = fmaxf(mx, s_m[w * kRows + r]);
    const float base = mx == ASYMCACHE_MSA_NEG_INF ? 0.0f : mx;
    float sum = 0.0f;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll
    for (int w = 0; w < Cfg::kWarpsN; ++w) {
      const float scale = FastExp2(s_m[w * kRows + r] - base);
      sum += s_l[w * kRows + r] * scale;
      const float* src = s_o + (w * kRows + r) * kOStride + ch * 8;
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[j] += src[j] * scale;
    }
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    const float lse_value = sum > 0.0f ? base + __log2f(sum) : ASYMCACHE_MSA_NEG_INF;
    if (partial) {
      float* dst = p.partial_out + static_cast<int64_t>(item.partial_row + r) * D + ch * 8;
      *reinterpret_cast<float4*>(dst) =
          make_float4(acc[0] * inv, acc[1] * inv, acc[2] * inv, acc[3] * inv);
      *reinterpret_cast<float4*>(dst + 4) =
          make_float4(acc[4] * inv, acc[5] * inv, acc[6] * inv, acc[7] * inv);
      if (ch == 0) p.partial_lse[item.partial_row + r] = lse_value;
    } else {
      const int64_t token = item.q_token_begin + r / group;
      const int head = item.kv_head * group + r % group;
      const int64_t row = token * p.num_q_heads + head;
      uint4 packed;
      packed.x = Ops::Pack(acc[0] * inv, acc[1] * inv);
      packed.y = Ops::Pack(acc[2] * inv, acc[3] * inv);
      packed.z = Ops::Pack(acc[4] * inv, acc[5] * inv);
      packed.w = Ops::Pack(acc[6] * inv, acc[7] * inv);
      *reinterpret_cast<uint4*>(out + row * D + ch * 8) = packed;
      if (ch == 0 && p.lse != nullptr) p.lse[row] = lse_value;
    }
  }
}

template <typename T, int kHeadDim, bool kDecode>
cudaError_t LaunchMsaAttentionTiles(const MsaKernelParams& params, int32_t item_base,
                                    int32_t num_items, cudaStream_t stream) {
  if (num_items <= 0) return cudaSuccess;
  constexpr int kSmem = MsaTileConfig<kHeadDim, kDecode>::kSmemBytes;
  auto kernel = MsaAttentionKernel<T, kHeadDim, kDecode>;
  ASYMCACHE_CUDA_TRY(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  kernel<<<num_items, kMsaThreads, kSmem, stream>>>(params, item_base);
  return cudaGetLastError();
}

template <typename T, int kHeadDim>
cudaError_t LaunchMsaAttention(const MsaKernelParams& params, int32_t num_prefill,
                               int32_t num_decode, cudaStream_t stream) {
  ASYMCACHE_CUDA_TRY((LaunchMsaAttentionTiles<T, kHeadDim, false>(params, 0, num_prefill, stream)));
  ASYMCACHE_CUDA_TRY(
      (LaunchMsaAttentionTiles<T, kHeadDim, true>(params, num_prefill, num_decode, stream)));
  return cudaSuccess;
}

}  // namespace asymcache::msa::cuda

#endif  // ASYMCACHE_KERNELS_MSA_KERNEL_CUH_
