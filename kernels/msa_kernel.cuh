// MSA CUDA device code: the paged multi-segment attention kernel (prefill and
// decode tiles) and its launcher template. Included only by msa_inst_*.cu.
//
// Tiles (docs/msa_kernel.md): one CTA runs one MsaWorkItem. Prefill tiles
// (MsaAttentionKernel): 128 packed query rows, 8 warps x 16 rows, each warp
// over the whole 64-key tile with its Q fragments in registers (D <= 128);
// each thread gathers a quarter of one key's row per tile from its own
// page-table lookup (loaded a tile ahead), so the loop has one barrier per
// tile. Decode tiles (MsaDecodeKernel): 16 rows, 4 warps split every KV tile
// into 4 slices and combine their softmax states at the end; the tile's keys
// are resolved into a shared table and copied as whole rows. K/V tiles are
// gathered page by page with cp.async (16-byte vectors, zero-fill past the
// end) into a 2-stage shared-memory ring with an XOR swizzle; QK^T and PV use
// mma.sync m16n8k16 (16-bit in, fp32 accumulate) fed by ldmatrix. Online
// softmax in fp32, base 2 (scale * log2 e folded into the exponent). Only
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

// OR of `bits` over the 32 lanes of the warp (every lane active).
__device__ __forceinline__ uint32_t WarpOr(uint32_t bits) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  return __reduce_or_sync(0xffffffffu, bits);
#else
  for (int d = 16; d > 0; d >>= 1) bits |= __shfl_xor_sync(0xffffffffu, bits, d);
  return bits;
#endif
}

#define ASYMCACHE_MSA_NEG_INF (-__int_as_float(0x7f800000))

// Element offset of 16-byte chunk `chunk` of row `row` in a swizzled tile with
// kHeadDim elements per row (chunk index XOR row mod 8: conflict-free ldmatrix).
template <int kHeadDim>
__device__ __forceinline__ int Swizzle(int row, int chunk) {
  return row * kHeadDim + ((chunk ^ (row & 7)) << 3);
}

// ---- tile configuration ---------------------------------------------------

// Prefill: 8 warps x 16 rows = 128 packed rows, every warp over the whole KV
// tile, Q fragments in registers for D <= 128, a 2-stage ring, one barrier per
// tile. The kDecode = true shape (16 rows, 4 warps over 16-key slices) still
// compiles but is not launched: decode tiles run MsaDecodeKernel below.
template <int kHeadDim, bool kDecode>
struct MsaTileConfig {
  // m16 row tiles per warp (2 = FA2-style 4 warps x 32 rows: measured
  // slower at one CTA per SM, docs/msa_kernel.md).
  static constexpr int kMT = 1;
  static constexpr int kWarpsM = kDecode ? 1 : 8 / kMT;
  static constexpr int kWarpsN = kDecode ? 4 : 1;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int kRows = 16 * kMT * kWarpsM;
  static constexpr int kBlockN = (!kDecode && kHeadDim == 256) ? 32 : 64;
  static constexpr int kStages = 2;  // 3 stages measured 1-2% slower for prefill
  static constexpr bool kQInRegs = !kDecode && kHeadDim <= 128 && kMT == 1;
  // Issue the next tile before waiting (2 barriers per tile, kStages - 1
  // tiles in flight during the wait) or after (1 barrier, kStages - 2;
  // measured 3-4% faster for prefill).
  static constexpr bool kIssueEarly = kDecode;
  static constexpr int kWarpKeys = kBlockN / kWarpsN;  // keys per warp per tile
  static constexpr int kChunks = kHeadDim / 8;         // 16-byte chunks per row
  static constexpr int kOStride = kHeadDim + 8;        // fp32 epilogue row stride
  // K/V gather: kThreadsPerKey threads copy one key's row, kChunksPerThread
  // 16-byte chunks each (the threads of a key cover adjacent chunks per copy).
  // The tile is copied in kGatherRounds rounds of kKeysPerRound keys. Decode
  // (bandwidth-bound) uses 16 threads per key so each copy instruction reads
  // whole 256-byte rows; prefill one round (fewer page-table lookups).
  static constexpr int kThreadsPerKey =
      kDecode ? (kChunks < 16 ? kChunks : 16) : kThreads / kBlockN;
  static constexpr int kChunksPerThread = kChunks / kThreadsPerKey;
  static constexpr int kKeysPerRound = kThreads / kThreadsPerKey;
  static constexpr int kGatherRounds = kBlockN / kKeysPerRound;
  static_assert(kWarpKeys % 16 == 0, "each warp needs whole k16 steps of keys");
  static_assert(kThreads % kThreadsPerKey == 0 && kChunks % kThreadsPerKey == 0 &&
                    kBlockN % kKeysPerRound == 0,
                "gather layout");
  static_assert(kStages >= 2, "the ring needs two stages at least");

  static constexpr int kQBytes = kRows * kHeadDim * 2;
  static constexpr int kKvBytes = 2 * kStages * kBlockN * kHeadDim * 2;
  static constexpr int kEpilogueBytes = kWarpsN * kRows * (kOStride + 2) * 4;
  // The epilogue's fp32 buffer aliases Q and the KV ring (both dead by then).
  static constexpr int kRegionBytes =
      kQBytes + kKvBytes > kEpilogueBytes ? kQBytes + kKvBytes : kEpilogueBytes;
  static constexpr int kTableBytes = kStages * kBlockN * 4 + 16 + kRows * 4;
  static constexpr int kSmemBytes = kRegionBytes + kTableBytes;
};

// A key's place in the KV pool, as the prefill gathers resolve it.
struct MsaKeyEntry {
  int32_t page_id;
  int32_t page_pos;
  int32_t in_page;  // -1: past the item's end
};

// Key t of the item's sequence (keys counted from 0): its page's id and
// position and its row in the page; {0, 0, -1} past item.kv_end. Uniform
// pages (all full but the last) by division; otherwise the largest page
// whose first key is <= t, by binary search of the key offsets. Shared by
// the mma.sync prefill kernel and both wgmma loops (msa_wgmma.cuh); the
// decode kernel walks pages tile by tile instead (MsaDecodeKernel).
__device__ __forceinline__ MsaKeyEntry LookupKey(const MsaKernelParams& p, const MsaWorkItem& item,
                                                 int t) {
  MsaKeyEntry e{0, 0, -1};
  if (t < item.kv_end) {
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
}

// ---- attention kernel -----------------------------------------------------

template <typename T, int kHeadDim, bool kDecode>
__global__ void __launch_bounds__(MsaTileConfig<kHeadDim, kDecode>::kThreads, 1)
    MsaAttentionKernel(const __grid_constant__ MsaKernelParams p, int32_t item_base) {
  using Cfg = MsaTileConfig<kHeadDim, kDecode>;
  using Ops = ElementOps<T>;
  constexpr int D = kHeadDim;
  constexpr int kThreads = Cfg::kThreads;
  constexpr int kBlockN = Cfg::kBlockN;
  constexpr int kStages = Cfg::kStages;
  constexpr int kChunks = Cfg::kChunks;
  constexpr int kRows = Cfg::kRows;

  extern __shared__ __align__(128) unsigned char smem[];
  T* s_q = reinterpret_cast<T*>(smem);
  T* s_k = reinterpret_cast<T*>(smem + Cfg::kQBytes);
  T* s_v = s_k + kStages * kBlockN * D;
  float* s_o = reinterpret_cast<float*>(smem);  // epilogue alias of Q and the KV ring
  int32_t* s_tok_pos = reinterpret_cast<int32_t*>(smem + Cfg::kRegionBytes);
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
  for (int c = tid; c < kRows * kChunks; c += kThreads) {
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
  CpAsyncCommit();
  for (int r = tid; r < kRows; r += kThreads) {
    s_row_qpos[r] = r < item.num_rows ? p.q_pos[item.q_token_begin + r / group] : -1;
  }

  // K/V gather. In round r this thread copies chunks of key
  // r * kKeysPerRound + gather_key of each tile. Its page-table entries are
  // loaded one loop iteration before the tile is issued (in registers), so
  // the loads overlap a tile of compute.
  constexpr int kRounds = Cfg::kGatherRounds;
  const int gather_key = tid / Cfg::kThreadsPerKey;
  const int gather_lane = tid % Cfg::kThreadsPerKey;
  using KeyEntry = MsaKeyEntry;
  struct TileEntries {
    KeyEntry key[kRounds];
  };
  auto load_entries = [&](int tile) {
    TileEntries entries;
#pragma unroll
    for (int round = 0; round < kRounds; ++round) {
      entries.key[round] = LookupKey(
          p, item, item.kv_begin + tile * kBlockN + round * Cfg::kKeysPerRound + gather_key);
    }
    return entries;
  };
  // Copies tile `tile` into ring slot `slot` and records its key positions
  // and whether it needs the causal mask.
  auto issue_tile = [&](const TileEntries& entries, int tile, int slot) {
    T* dst_k = s_k + slot * kBlockN * D;
    T* dst_v = s_v + slot * kBlockN * D;
    const int last = min(kBlockN, item.kv_end - (item.kv_begin + tile * kBlockN)) - 1;
#pragma unroll
    for (int round = 0; round < kRounds; ++round) {
      const KeyEntry& e = entries.key[round];
      const int key = round * Cfg::kKeysPerRound + gather_key;
      const bool valid = e.in_page >= 0;
      int64_t off = 0;
      if (valid) {
        off = static_cast<int64_t>(e.page_id) * p.page_stride + e.in_page * p.token_stride +
              static_cast<int64_t>(item.kv_head) * D;
      }
      const T* src_k = kv + off;
      const T* src_v = src_k + p.kv_half_stride;
#pragma unroll
      for (int i = 0; i < Cfg::kChunksPerThread; ++i) {
        const int ch = gather_lane + i * Cfg::kThreadsPerKey;
        const int so = Swizzle<D>(key, ch);
        CpAsync16(SmemAddr(dst_k + so), valid ? src_k + ch * 8 : kv, valid);
        CpAsync16(SmemAddr(dst_v + so), valid ? src_v + ch * 8 : kv, valid);
      }
      if (gather_lane == 0) {
        const int32_t pos = valid ? e.page_pos + e.in_page : INT32_MAX;
        s_tok_pos[slot * kBlockN + key] = pos;
        if (key == last) s_flag[slot] = (last < kBlockN - 1 || pos > item.q_pos_min) ? 1 : 0;
      }
    }
  };

  // Prologue: tiles 0 .. kStages-2 in flight, the next entries in registers.
  const int num_tiles = (item.kv_end - item.kv_begin + kBlockN - 1) / kBlockN;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < num_tiles) issue_tile(load_entries(s), s, s);
    CpAsyncCommit();
  }
  TileEntries next_entries{};
  if (kStages - 1 < num_tiles) next_entries = load_entries(kStages - 1);

  const int g = lane >> 2;
  const int t4 = lane & 3;
  constexpr int kMT = Cfg::kMT;
  const int row_base = wm * 16 * kMT;
  const int key_base = wn * Cfg::kWarpKeys;

  // Q fragments in registers (prefill, D <= 128): loaded once, after the Q
  // group (committed first) has landed.
  constexpr int kQFrags = Cfg::kQInRegs ? D / 16 : 1;
  uint32_t q_frag[kQFrags][4];
  if constexpr (Cfg::kQInRegs) {
    CpAsyncWait<kStages - 1>();
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const int r = row_base + (lane & 15);
      Ldmatrix4(q_frag[kk], SmemAddr(s_q + Swizzle<D>(r, kk * 2 + (lane >> 4))));
    }
  }

  float o_acc[kMT][D / 8][4];
  float row_max[kMT][2];  // scaled (base 2)
  float row_sum[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      o_acc[mt][i][0] = o_acc[mt][i][1] = o_acc[mt][i][2] = o_acc[mt][i][3] = 0.0f;
    }
    row_max[mt][0] = row_max[mt][1] = ASYMCACHE_MSA_NEG_INF;
    row_sum[mt][0] = row_sum[mt][1] = 0.0f;
  }
  const float scale = p.scale_log2;

  for (int tile = 0; tile < num_tiles; ++tile) {
    // Wait for tile `tile` (this thread's copies); the barrier makes every
    // thread's copies visible. Tile `ahead` goes into the slot of tile - 1.
    const int ahead = tile + kStages - 1;
    if constexpr (Cfg::kIssueEarly) {
      // The slot of tile - 1 was freed by the barrier closing the last
      // iteration: issue first, so kStages - 1 tiles are in flight while
      // this thread waits for tile `tile`.
      if (ahead < num_tiles) issue_tile(next_entries, ahead, ahead % kStages);
      CpAsyncCommit();
      if (ahead + 1 < num_tiles) next_entries = load_entries(ahead + 1);
      CpAsyncWait<kStages - 1>();
      __syncthreads();
    } else {
      // Wait first; the barrier also frees the slot of tile - 1.
      CpAsyncWait<kStages - 2>();
      __syncthreads();
      if (ahead < num_tiles) issue_tile(next_entries, ahead, ahead % kStages);
      CpAsyncCommit();
      if (ahead + 1 < num_tiles) next_entries = load_entries(ahead + 1);
    }

    // Warps whose rows are all past the item's rows only help gather.
    if (row_base < item.num_rows) {
      const int slot = tile % kStages;
      const T* k_s = s_k + slot * kBlockN * D;
      const T* v_s = s_v + slot * kBlockN * D;

      // S = Q K^T (raw scores) for this warp's rows x kWarpKeys keys; each K
      // fragment feeds kMT m16 tiles.
      constexpr int kNb = Cfg::kWarpKeys / 8;
      float s_acc[kMT][kNb][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int i = 0; i < kNb; ++i) {
          s_acc[mt][i][0] = s_acc[mt][i][1] = s_acc[mt][i][2] = s_acc[mt][i][3] = 0.0f;
        }
      }
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t a[kMT][4];
        if constexpr (Cfg::kQInRegs) {
          a[0][0] = q_frag[kk][0];
          a[0][1] = q_frag[kk][1];
          a[0][2] = q_frag[kk][2];
          a[0][3] = q_frag[kk][3];
        } else {
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            const int r = row_base + mt * 16 + (lane & 15);
            Ldmatrix4(a[mt], SmemAddr(s_q + Swizzle<D>(r, kk * 2 + (lane >> 4))));
          }
        }
#pragma unroll
        for (int nb = 0; nb < kNb; nb += 2) {
          uint32_t b[4];
          const int r = key_base + nb * 8 + (lane & 7) + ((lane >> 4) << 3);
          Ldmatrix4(b, SmemAddr(k_s + Swizzle<D>(r, kk * 2 + ((lane >> 3) & 1))));
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            Ops::Mma(s_acc[mt][nb], a[mt], b[0], b[1]);
            Ops::Mma(s_acc[mt][nb + 1], a[mt], b[2], b[3]);
          }
        }
      }

      // Mask, online softmax (rows g and g + 8 of each m16 tile). The scale
      // (> 0) is folded into the exponent: p = 2^(s * scale - max * scale).
      const bool need_mask = s_flag[slot] != 0;
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        if (need_mask) {
          const int qp0 = s_row_qpos[row_base + mt * 16 + g];
          const int qp1 = s_row_qpos[row_base + mt * 16 + g + 8];
#pragma unroll
          for (int nb = 0; nb < kNb; ++nb) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int kp = s_tok_pos[slot * kBlockN + key_base + nb * 8 + 2 * t4 + e];
              if (kp > qp0) s_acc[mt][nb][e] = ASYMCACHE_MSA_NEG_INF;
              if (kp > qp1) s_acc[mt][nb][2 + e] = ASYMCACHE_MSA_NEG_INF;
            }
          }
        }
        float tile_max0 = ASYMCACHE_MSA_NEG_INF;
        float tile_max1 = ASYMCACHE_MSA_NEG_INF;
#pragma unroll
        for (int nb = 0; nb < kNb; ++nb) {
          tile_max0 = fmaxf(tile_max0, fmaxf(s_acc[mt][nb][0], s_acc[mt][nb][1]));
          tile_max1 = fmaxf(tile_max1, fmaxf(s_acc[mt][nb][2], s_acc[mt][nb][3]));
        }
        tile_max0 = fmaxf(tile_max0, __shfl_xor_sync(0xffffffffu, tile_max0, 1));
        tile_max0 = fmaxf(tile_max0, __shfl_xor_sync(0xffffffffu, tile_max0, 2));
        tile_max1 = fmaxf(tile_max1, __shfl_xor_sync(0xffffffffu, tile_max1, 1));
        tile_max1 = fmaxf(tile_max1, __shfl_xor_sync(0xffffffffu, tile_max1, 2));
        const float new_max0 = fmaxf(row_max[mt][0], tile_max0 * scale);
        const float new_max1 = fmaxf(row_max[mt][1], tile_max1 * scale);
        const float base0 = new_max0 == ASYMCACHE_MSA_NEG_INF ? 0.0f : new_max0;
        const float base1 = new_max1 == ASYMCACHE_MSA_NEG_INF ? 0.0f : new_max1;
        const float alpha0 = FastExp2(row_max[mt][0] - base0);
        const float alpha1 = FastExp2(row_max[mt][1] - base1);
        row_max[mt][0] = new_max0;
        row_max[mt][1] = new_max1;
        row_sum[mt][0] *= alpha0;
        row_sum[mt][1] *= alpha1;
#pragma unroll
        for (int nb = 0; nb < kNb; ++nb) {
          s_acc[mt][nb][0] = FastExp2(fmaf(s_acc[mt][nb][0], scale, -base0));
          s_acc[mt][nb][1] = FastExp2(fmaf(s_acc[mt][nb][1], scale, -base0));
          s_acc[mt][nb][2] = FastExp2(fmaf(s_acc[mt][nb][2], scale, -base1));
          s_acc[mt][nb][3] = FastExp2(fmaf(s_acc[mt][nb][3], scale, -base1));
          row_sum[mt][0] += s_acc[mt][nb][0] + s_acc[mt][nb][1];
          row_sum[mt][1] += s_acc[mt][nb][2] + s_acc[mt][nb][3];
        }
#pragma unroll
        for (int nd = 0; nd < D / 8; ++nd) {
          o_acc[mt][nd][0] *= alpha0;
          o_acc[mt][nd][1] *= alpha0;
          o_acc[mt][nd][2] *= alpha1;
          o_acc[mt][nd][3] *= alpha1;
        }
      }

      // O += P V; each V fragment feeds kMT m16 tiles.
#pragma unroll
      for (int kt = 0; kt < Cfg::kWarpKeys / 16; ++kt) {
        uint32_t a[kMT][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          a[mt][0] = Ops::Pack(s_acc[mt][2 * kt][0], s_acc[mt][2 * kt][1]);
          a[mt][1] = Ops::Pack(s_acc[mt][2 * kt][2], s_acc[mt][2 * kt][3]);
          a[mt][2] = Ops::Pack(s_acc[mt][2 * kt + 1][0], s_acc[mt][2 * kt + 1][1]);
          a[mt][3] = Ops::Pack(s_acc[mt][2 * kt + 1][2], s_acc[mt][2 * kt + 1][3]);
        }
        const int r = key_base + kt * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
#pragma unroll
        for (int nd = 0; nd < D / 8; nd += 2) {
          uint32_t b[4];
          Ldmatrix4Trans(b, SmemAddr(v_s + Swizzle<D>(r, nd + (lane >> 4))));
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            Ops::Mma(o_acc[mt][nd], a[mt], b[0], b[1]);
            Ops::Mma(o_acc[mt][nd + 1], a[mt], b[2], b[3]);
          }
        }
      }
    }
    if constexpr (Cfg::kIssueEarly) __syncthreads();  // frees this tile's slot
  }
  CpAsyncWait<0>();
  __syncthreads();

  // Epilogue: every warp's (max, sum, O) to shared memory, then combine.
  constexpr int kOStride = Cfg::kOStride;
  float* s_ow = s_o + wn * kRows * kOStride;
  float* s_m = s_o + Cfg::kWarpsN * kRows * kOStride;
  float* s_l = s_m + Cfg::kWarpsN * kRows;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      row_sum[mt][h] += __shfl_xor_sync(0xffffffffu, row_sum[mt][h], 1);
      row_sum[mt][h] += __shfl_xor_sync(0xffffffffu, row_sum[mt][h], 2);
    }
    const int r0 = row_base + mt * 16 + g;
#pragma unroll
    for (int nd = 0; nd < D / 8; ++nd) {
      const int col = nd * 8 + 2 * t4;
      *reinterpret_cast<float2*>(&s_ow[r0 * kOStride + col]) =
          make_float2(o_acc[mt][nd][0], o_acc[mt][nd][1]);
      *reinterpret_cast<float2*>(&s_ow[(r0 + 8) * kOStride + col]) =
          make_float2(o_acc[mt][nd][2], o_acc[mt][nd][3]);
    }
    if (t4 == 0) {
      s_m[wn * kRows + r0] = row_max[mt][0];
      s_l[wn * kRows + r0] = row_sum[mt][0];
      s_m[wn * kRows + r0 + 8] = row_max[mt][1];
      s_l[wn * kRows + r0 + 8] = row_sum[mt][1];
    }
  }
  __syncthreads();

  const bool partial = item.partial_row >= 0;
  T* out = static_cast<T*>(p.out);
  for (int c = tid; c < item.num_rows * kChunks; c += kThreads) {
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

constexpr int kMsaDecodeThreads = 128;

// ---- decode kernel ----------------------------------------------------------
//
// Decode tiles (16 rows) keep the first kernel's gather: 64 threads resolve
// the tile's keys into a shared (offset, position) table, then all 128
// threads copy whole 256-byte rows; the next tile is issued before waiting
// (2 tiles in flight). It reaches ~3.0 TB/s; the prefill kernel's per-thread
// gather ran decode 5-25% slower (docs/msa_kernel.md).

template <int kHeadDim, bool kDecode>
struct MsaDecodeTileConfig {
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
__global__ void __launch_bounds__(kMsaDecodeThreads)
    MsaDecodeKernel(const __grid_constant__ MsaKernelParams p, int32_t item_base) {
  using Cfg = MsaDecodeTileConfig<kHeadDim, kDecode>;
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
  // 4 slots: the kStages mask flags, then 2 unused (s_row_qpos stays aligned).
  int32_t* s_flag = s_tok_pos + kStages * kBlockN;
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
  for (int c = tid; c < kRows * kChunks; c += kMsaDecodeThreads) {
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
  for (int r = tid; r < kRows; r += kMsaDecodeThreads) {
    s_row_qpos[r] = r < item.num_rows ? p.q_pos[item.q_token_begin + r / group] : -1;
  }

  // The page table of a KV tile [t0, t0 + kBlockN) is loaded by threads
  // tid < kBlockN one tile before it is written to shared memory, so the loads
  // overlap a whole tile of copies and compute. Two walks, by the sequence's
  // pages (the item's uniform_pages, the same for the whole CTA):
  //  - uniform (every page but the last full): key t0 + tid is row
  //    t % page_size of page t / page_size; the thread loads that page's id
  //    and position and writes its key's row of the table.
  //  - partial pages anywhere (segments, each ending in a partial page): the
  //    tile's keys lie on at most kBlockN consecutive pages from the one
  //    holding t0 (`first`), since every page holds >= 1 key, and key t0 + j
  //    lies on page first + (the number of pages after `first` that start in
  //    (t0, t0 + j]). Each of the two table warps loads all kBlockN candidate
  //    pages (lane l: pages first + l and first + 32 + l; key offset, id,
  //    position: independent loads, one memory round trip, as the uniform
  //    walk), ORs a bit per page start inside the tile into a 64-bit mask
  //    (warp reduction), and thread j takes its page's index as a popcount
  //    of that mask and the page's fields by warp shuffle: no shared memory,
  //    no barrier, no per-key loop. The next tile's first page is `first`
  //    plus the pages starting in (t0, t0 + kBlockN], known to both warps in
  //    registers. Tile 0's first page is the plan's item.kv_begin_page.
  //    History (docs/msa_kernel.md, "Segmented decode"): a binary search of
  //    the key offsets per key (log2(pages) dependent loads a tile) made a
  //    segmented 4k decode 18% slower than a contiguous one on an H100; its
  //    replacement, each page's thread writing the rows of its keys (up to
  //    page_size serial writes) with the next page passed through shared
  //    memory, fixed the bandwidth-bound launches but left small one-wave
  //    launches 18-20% slower.
  static_assert(kBlockN == 64, "the partial-page walk covers 64 keys in two warps");
  struct TileEntry {
    int32_t page_id[2];   // uniform: [0] only
    int32_t page_pos[2];
    int32_t start[2];     // uniform: the key's row in its page, -1 past the end;
                          // else the page's first key, INT32_MAX past the last page
    int32_t first;        // partial pages: the tile's first page
    int32_t start_after;  // partial pages, lane 0: page first + 64's first key (INT32_MAX: none)
  };
  const int kv_end = item.kv_end;
  auto load_entry = [&](int tile, int first_page) {
    TileEntry e{{0, 0}, {0, 0}, {-1, INT32_MAX}, first_page, INT32_MAX};
    if (tid >= kBlockN) return e;
    const int t0 = item.kv_begin + tile * kBlockN;
    if (item.uniform_pages) {
      const int t = t0 + tid;
      if (t < kv_end) {
        const int page = t / p.page_size;
        const int gp = item.page_begin + page;
        e.start[0] = t - page * p.page_size;
        e.page_id[0] = p.page_ids[gp];
        e.page_pos[0] = p.page_pos[gp];
      }
    } else {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        e.start[h] = INT32_MAX;
        const int page = first_page + h * 32 + lane;
        if (page < item.num_pages) {
          const int gp = item.page_begin + page;
          e.start[h] = p.page_token_start[gp];
          e.page_id[h] = p.page_ids[gp];
          e.page_pos[h] = p.page_pos[gp];
        }
      }
      // 64 one-key pages: the next tile may start on page first + 64.
      if (lane == 0 && first_page + kBlockN < item.num_pages) {
        e.start_after = p.page_token_start[item.page_begin + first_page + kBlockN];
      }
    }
    return e;
  };
  // Table row `row` of `slot` (tile t0 + row): key in_page of the page
  // (page_id, page_pos), or past the item's end (in_page < 0). The tile's
  // last key sets its mask flag: mask when the tile ends early or that key's
  // position exceeds the item's smallest query position.
  auto write_row = [&](int slot, int t0, int row, int32_t page_id, int32_t page_pos,
                       int in_page) {
    int64_t off = -1;
    int32_t pos = INT32_MAX;
    if (in_page >= 0) {
      off = static_cast<int64_t>(page_id) * p.page_stride + in_page * p.token_stride +
            static_cast<int64_t>(item.kv_head) * D;
      pos = page_pos + in_page;
    }
    s_tok_off[slot * kBlockN + row] = off;
    s_tok_pos[slot * kBlockN + row] = pos;
    const int last = min(kBlockN, kv_end - t0) - 1;
    if (row == last) s_flag[slot] = (last < kBlockN - 1 || pos > item.q_pos_min) ? 1 : 0;
  };
  // Writes the tile's table rows (threads tid < kBlockN, whole warps);
  // returns the next tile's first page (partial pages; 0 for the uniform walk).
  auto write_entry = [&](const TileEntry& e, int tile, int slot) -> int {
    if (tid >= kBlockN) return 0;
    const int t0 = item.kv_begin + tile * kBlockN;
    if (item.uniform_pages) {
      write_row(slot, t0, tid, e.page_id[0], e.page_pos[0], e.start[0]);
      return 0;
    }
    // Bit r of lo (r - 32 of hi): a page after `first` starts at key t0 + r,
    // r in [1, 64); at_end: one starts at t0 + 64 (one of pages first + 1 ..
    // first + 64). `first` starts at or before t0 and every later page after
    // it (INT32_MAX past the last).
    uint32_t lo_bits = 0;
    uint32_t hi_bits = 0;
    bool at_end = static_cast<int64_t>(e.start_after) - t0 == kBlockN;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t rel = static_cast<int64_t>(e.start[h]) - t0;
      if (rel >= 1 && rel < 32) lo_bits |= 1u << rel;
      if (rel >= 32 && rel < 64) hi_bits |= 1u << (rel - 32);
      at_end |= rel == kBlockN;
    }
    const uint32_t lo = WarpOr(lo_bits);
    const uint32_t hi = WarpOr(hi_bits);
    at_end = __any_sync(0xffffffffu, at_end);
    const int j = tid;  // this thread's key: t0 + j
    const int idx = __popc(lo & (j >= 31 ? 0xffffffffu : (2u << j) - 1u)) +
                    (j >= 32 ? __popc(hi & (j >= 63 ? 0xffffffffu : (2u << (j - 32)) - 1u)) : 0);
    const int src = idx & 31;
    const int32_t id0 = __shfl_sync(0xffffffffu, e.page_id[0], src);
    const int32_t id1 = __shfl_sync(0xffffffffu, e.page_id[1], src);
    const int32_t pos0 = __shfl_sync(0xffffffffu, e.page_pos[0], src);
    const int32_t pos1 = __shfl_sync(0xffffffffu, e.page_pos[1], src);
    const int32_t start0 = __shfl_sync(0xffffffffu, e.start[0], src);
    const int32_t start1 = __shfl_sync(0xffffffffu, e.start[1], src);
    const bool upper = idx >= 32;
    const int t = t0 + j;
    write_row(slot, t0, j, upper ? id1 : id0, upper ? pos1 : pos0,
              t < kv_end ? t - (upper ? start1 : start0) : -1);
    return e.first + __popc(lo) + __popc(hi) + (at_end ? 1 : 0);
  };
  auto issue_tile = [&](int slot) {
    for (int c = tid; c < kBlockN * kChunks; c += kMsaDecodeThreads) {
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
  // Per tile: write its table (loaded a tile earlier), barrier, issue its
  // copies, then load the next tile's table (the loads fly during this
  // tile's copies and compute).
  TileEntry next_entry{{0, 0}, {0, 0}, {-1, INT32_MAX}, 0, INT32_MAX};
  int next_first = 0;  // partial pages: the first page of the tile after the last written
  if (num_tiles > 0) next_first = write_entry(load_entry(0, item.kv_begin_page), 0, 0);
  __syncthreads();
  if (num_tiles > 0) issue_tile(0);
  CpAsyncCommit();
  if (num_tiles > 1) next_entry = load_entry(1, next_first);

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
    if (ahead < num_tiles) next_first = write_entry(next_entry, ahead, ahead % kStages);
    __syncthreads();
    if (ahead < num_tiles) issue_tile(ahead % kStages);
    CpAsyncCommit();
    if (ahead + 1 < num_tiles) next_entry = load_entry(ahead + 1, next_first);
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
  for (int c = tid; c < item.num_rows * kChunks; c += kMsaDecodeThreads) {
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
  if constexpr (kDecode) {
    using Cfg = MsaDecodeTileConfig<kHeadDim, true>;
    constexpr int kSmem = Cfg::kSmemBytes;
    static_assert(Cfg::kRows == kMsaDecodeTileRows, "planner/kernel decode rows");
    auto kernel = MsaDecodeKernel<T, kHeadDim, true>;
    ASYMCACHE_CUDA_TRY(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
    kernel<<<num_items, kMsaDecodeThreads, kSmem, stream>>>(params, item_base);
  } else {
    using Cfg = MsaTileConfig<kHeadDim, false>;
    constexpr int kSmem = Cfg::kSmemBytes;
    static_assert(Cfg::kRows == kMsaPrefillTileRows, "planner/kernel prefill rows");
    auto kernel = MsaAttentionKernel<T, kHeadDim, false>;
    ASYMCACHE_CUDA_TRY(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
    kernel<<<num_items, Cfg::kThreads, kSmem, stream>>>(params, item_base);
  }
  return cudaGetLastError();
}

template <typename T, int kHeadDim>
cudaError_t LaunchMsaAttention(const MsaKernelParams& params, int32_t num_prefill,
                               int32_t num_decode, bool run_prefill, cudaStream_t stream) {
  if (run_prefill) {
    ASYMCACHE_CUDA_TRY(
        (LaunchMsaAttentionTiles<T, kHeadDim, false>(params, 0, num_prefill, stream)));
  }
  ASYMCACHE_CUDA_TRY(
      (LaunchMsaAttentionTiles<T, kHeadDim, true>(params, num_prefill, num_decode, stream)));
  return cudaSuccess;
}

}  // namespace asymcache::msa::cuda

#endif  // ASYMCACHE_KERNELS_MSA_KERNEL_CUH_
