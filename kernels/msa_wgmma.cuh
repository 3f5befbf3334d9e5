// MSA Hopper prefill kernel (wgmma, sm_90a): device code and launchers.
// Included only by msa_wgmma_<dtype>.cu, which are compiled for sm_90a alone
// (kernels/CMakeLists.txt); every device body is guarded by
// __CUDA_ARCH_FEAT_SM90_ALL, so another target compiles to empty kernels that
// the host side never launches (ProbeMsaWgmmaPrefill, MsaWgmmaAvailable).
//
// Tiles and outputs are those of the mma.sync prefill kernel (msa_kernel.cuh,
// docs/msa_kernel.md): one CTA per MsaWorkItem, 128 packed rows
// (row = token * G + g), head dim 128, keys in 64-key tiles gathered page by
// page with 16-byte cp.async from the page table (4 threads per key, the page
// entries loaded one tile ahead), causal mask by absolute position, fp32
// online softmax in base 2, split items write normalised fp32 partials + LSE.
//
// What differs: CTA = 2 warpgroups (256 threads), warpgroup w owns rows
// [64w, 64w + 64). S = Q K^T is 8 x wgmma.m64n64k16 with Q and K from shared
// memory (both K-major); O += P V is 4 x wgmma.m64n128k16 with P from
// registers (the S accumulator fragment repacked to 16-bit: same layout as
// the A fragment) and V from shared memory read N-major (transpose bit): V
// rows are stored exactly as K rows. Shared tiles use the 128-byte swizzle
// of the wgmma descriptors: a tile of R rows x 128 columns is two 64-column
// halves, each R rows of 128 bytes, 16-byte chunk c of row r at chunk
// c ^ (r % 8); the buffer is 1024-byte aligned. The KV ring has 3 slots;
// tile i + 1 is issued at the top of iteration i (into the slot freed at the
// barrier of iteration i - 1), so the PV wgmma of tile i - 1 still runs while
// the threads issue those copies. One barrier per tile; cp.async writes are
// made visible to the tensor cores with fence.proxy.async before it.
// MsaWgmmaPrefillOverlapKernel (further down, MsaPrefillKernel::kWgmmaOverlap)
// is an FA3-style variant whose softmax overlaps the PV wgmma; kAuto runs it
// for launches whose largest prefill tile has more than 64 rows (measured on
// an H100: docs/msa_kernel.md, "version 3: wgmma").
#ifndef ASYMCACHE_KERNELS_MSA_WGMMA_CUH_
#define ASYMCACHE_KERNELS_MSA_WGMMA_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/msa_kernel.cuh"

namespace asymcache::msa::cuda {

// ---- wgmma PTX ----------------------------------------------------------------

template <typename T>
struct WgmmaOps;

template <>
struct WgmmaOps<__nv_bfloat16> {
  // d[32] (+)= A[64 x 16] * B[16 x 64]: A and B K-major in shared memory.
  static __device__ __forceinline__ void SS64(float (&d)[32], uint64_t desc_a, uint64_t desc_b,
                                              int scale_d) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, "
        "%8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, "
        "%24, %25, %26, %27, %28, %29, %30, %31"
        "}, %32, %33, p, 1, 1, 0, 0;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]),
          "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
          "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),
          "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
          "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  }
  // d[64] (+)= A[64 x 16] (registers) * B[16 x 128]: B MN-major (transposed).
  static __device__ __forceinline__ void RS128(float (&d)[64], const uint32_t (&a)[4],
                                               uint64_t desc_b, int scale_d) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, "
        "%8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, "
        "%24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, "
        "%40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, "
        "%56, %57, %58, %59, %60, %61, %62, %63"
        "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]),
          "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
          "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),
          "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
          "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
          "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]),
          "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]),
          "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),
          "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
  }
};

template <>
struct WgmmaOps<__half> {
  // d[32] (+)= A[64 x 16] * B[16 x 64]: A and B K-major in shared memory.
  static __device__ __forceinline__ void SS64(float (&d)[32], uint64_t desc_a, uint64_t desc_b,
                                              int scale_d) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, "
        "%8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, "
        "%24, %25, %26, %27, %28, %29, %30, %31"
        "}, %32, %33, p, 1, 1, 0, 0;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]),
          "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
          "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),
          "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
          "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  }
  // d[64] (+)= A[64 x 16] (registers) * B[16 x 128]: B MN-major (transposed).
  static __device__ __forceinline__ void RS128(float (&d)[64], const uint32_t (&a)[4],
                                               uint64_t desc_b, int scale_d) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, "
        "%8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, "
        "%24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, "
        "%40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, "
        "%56, %57, %58, %59, %60, %61, %62, %63"
        "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]),
          "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
          "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),
          "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
          "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
          "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]),
          "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]),
          "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),
          "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
  }
};

__device__ __forceinline__ void WgmmaFence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void WgmmaCommit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// Pins accumulator registers at this point of the program: the compiler may
// not move their reads or writes across it (wgmma writes them asynchronously).
template <int N>
__device__ __forceinline__ void FenceOperands(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
// Orders this thread's generic-proxy shared-memory writes (cp.async landed)
// before later async-proxy reads (wgmma operands).
__device__ __forceinline__ void FenceProxyAsyncShared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Shared-memory matrix descriptor, 128-byte swizzle (layout type 1): start
// address, leading and stride byte offsets (16-byte units), base offset 0
// (every swizzle atom is 1024-byte aligned).
__device__ __forceinline__ uint64_t SmemDescSw128(uint32_t smem_addr, uint32_t lbo_bytes,
                                                  uint32_t sbo_bytes) {
  uint64_t desc = (smem_addr & 0x3FFFFu) >> 4;
  desc |= static_cast<uint64_t>((lbo_bytes >> 4) & 0x3FFFu) << 16;
  desc |= static_cast<uint64_t>((sbo_bytes >> 4) & 0x3FFFu) << 32;
  desc |= uint64_t{1} << 62;
  return desc;
}

// ---- tile layout ------------------------------------------------------------------

struct MsaWgmmaConfig {
  static constexpr int kHeadDim = 128;
  static constexpr int kWarpGroups = 2;
  static constexpr int kThreads = 128 * kWarpGroups;
  static constexpr int kRows = 64 * kWarpGroups;
  static constexpr int kBlockN = 64;  // keys per tile (S is m64n64 per warpgroup)
  static constexpr int kStages = 3;
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per row
  // Gather: kThreadsPerKey threads per key, chunks lane + kThreadsPerKey * i.
  static constexpr int kThreadsPerKey = kThreads / kBlockN;
  static constexpr int kChunksPerThread = kChunks / kThreadsPerKey;
  static constexpr int kQBytes = kRows * kHeadDim * 2;
  static constexpr int kTileBytes = kBlockN * kHeadDim * 2;  // one K (or V) tile
  static constexpr int kKvBytes = 2 * kStages * kTileBytes;
  static constexpr int kTableBytes = kStages * kBlockN * 4 + 16 + kRows * 4;
  // + 1024: the dynamic buffer is aligned up to 1024 bytes in the kernel.
  static constexpr int kSmemBytes = 1024 + kQBytes + kKvBytes + kTableBytes;
  // Descriptor byte offsets. K-major operands (Q, K): 8-row groups 1024 bytes
  // apart (SBO); the leading offset is unused with this swizzle (1 unit).
  // V read N-major: the two 64-column halves kBlockN * 128 bytes apart (LBO),
  // 8-key groups 1024 bytes apart (SBO).
  static constexpr uint32_t kKMajorLbo = 16;
  static constexpr uint32_t kKMajorSbo = 1024;
  static constexpr uint32_t kVLbo = kBlockN * 128;
  static constexpr uint32_t kVSbo = 1024;
  static_assert(kThreads % kBlockN == 0 && kChunks % kThreadsPerKey == 0, "gather layout");
  static_assert(kRows == kMsaPrefillTileRows, "planner/kernel prefill rows");
};

// Byte offset of 16-byte chunk `chunk` (0..15) of row `row` in a swizzled
// tile of kTileRows rows x 128 columns (see the file comment).
template <int kTileRows>
__device__ __forceinline__ uint32_t Sw128Offset(int row, int chunk) {
  return static_cast<uint32_t>((chunk >> 3) * (kTileRows * 128) + row * 128 +
                               (((chunk & 7) ^ (row & 7)) << 4));
}

// S (64 x 64, this warpgroup's rows) = Q K^T over head dim 128. q_rows: the
// shared address of Q row 0 of this warpgroup within a kQTileRows-row Q tile;
// k_tile: the K tile (kBlockN rows). Waits for completion.
template <typename T, int kQTileRows>
__device__ __forceinline__ void WgmmaQK(float (&s)[32], uint32_t q_rows, uint32_t k_tile) {
  using Cfg = MsaWgmmaConfig;
  WgmmaFence();
#pragma unroll
  for (int ks = 0; ks < Cfg::kHeadDim / 16; ++ks) {
    const uint32_t k_off = (ks & 3) * 32;  // 16 columns = 32 bytes into the 128-byte row
    const uint64_t desc_a = SmemDescSw128(q_rows + (ks >> 2) * (kQTileRows * 128) + k_off,
                                          Cfg::kKMajorLbo, Cfg::kKMajorSbo);
    const uint64_t desc_b = SmemDescSw128(k_tile + (ks >> 2) * (Cfg::kBlockN * 128) + k_off,
                                          Cfg::kKMajorLbo, Cfg::kKMajorSbo);
    WgmmaOps<T>::SS64(s, desc_a, desc_b, ks > 0 ? 1 : 0);
  }
  WgmmaCommit();
  WgmmaWait<0>();
  FenceOperands(s);
}

// O += P V for this warpgroup: P = the 16-bit repack of s (accumulator
// fragment = A fragment layout), V tile at v_tile. Issues and commits; the
// caller waits (WgmmaWait<0>) before reading o or reusing the V slot.
template <typename T>
__device__ __forceinline__ void WgmmaPV(float (&o)[64], const float (&s)[32], uint32_t v_tile,
                                        uint32_t v_lbo, uint32_t v_sbo) {
  using Cfg = MsaWgmmaConfig;
  using Ops = ElementOps<T>;
  uint32_t a[Cfg::kBlockN / 16][4];
#pragma unroll
  for (int kt = 0; kt < Cfg::kBlockN / 16; ++kt) {
    a[kt][0] = Ops::Pack(s[8 * kt + 0], s[8 * kt + 1]);
    a[kt][1] = Ops::Pack(s[8 * kt + 2], s[8 * kt + 3]);
    a[kt][2] = Ops::Pack(s[8 * kt + 4], s[8 * kt + 5]);
    a[kt][3] = Ops::Pack(s[8 * kt + 6], s[8 * kt + 7]);
  }
  FenceOperands(o);
  WgmmaFence();
#pragma unroll
  for (int kt = 0; kt < Cfg::kBlockN / 16; ++kt) {
    // 16 keys = two 8-key groups of 128-byte rows.
    const uint64_t desc_b = SmemDescSw128(v_tile + kt * 16 * 128, v_lbo, v_sbo);
    WgmmaOps<T>::RS128(o, a[kt], desc_b, 1);
  }
  WgmmaCommit();
  FenceOperands(o);
}

// ---- prefill kernel ---------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(MsaWgmmaConfig::kThreads, 1)
    MsaWgmmaPrefillKernel(const __grid_constant__ MsaKernelParams p, int32_t item_base) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cfg = MsaWgmmaConfig;
  using Ops = ElementOps<T>;
  constexpr int D = Cfg::kHeadDim;
  constexpr int kThreads = Cfg::kThreads;
  constexpr int kBlockN = Cfg::kBlockN;
  constexpr int kStages = Cfg::kStages;
  constexpr int kChunks = Cfg::kChunks;
  constexpr int kRows = Cfg::kRows;

  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw_addr = SmemAddr(smem_raw);
  const uint32_t pad = (1024u - (raw_addr & 1023u)) & 1023u;
  unsigned char* smem = smem_raw + pad;
  const uint32_t s_q = raw_addr + pad;
  const uint32_t s_k = s_q + Cfg::kQBytes;
  const uint32_t s_v = s_k + kStages * Cfg::kTileBytes;
  int32_t* s_tok_pos = reinterpret_cast<int32_t*>(smem + Cfg::kQBytes + Cfg::kKvBytes);
  int32_t* s_flag = s_tok_pos + kStages * kBlockN;  // 4 slots reserved
  int32_t* s_row_qpos = s_flag + 4;

  const MsaWorkItem item = p.items[item_base + blockIdx.x];
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int wg = warp >> 2;  // warpgroup: rows [64 wg, 64 wg + 64)
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
    CpAsync16(s_q + Sw128Offset<kRows>(r, ch), src, valid);
  }
  CpAsyncCommit();
  for (int r = tid; r < kRows; r += kThreads) {
    s_row_qpos[r] = r < item.num_rows ? p.q_pos[item.q_token_begin + r / group] : -1;
  }

  // K/V gather: this thread copies chunks gather_lane + kThreadsPerKey * i of
  // key gather_key of every tile; its page-table entry is loaded one tile
  // before the copy is issued.
  const int gather_key = tid / Cfg::kThreadsPerKey;
  const int gather_lane = tid % Cfg::kThreadsPerKey;
  using KeyEntry = MsaKeyEntry;
  auto load_entry = [&](int tile) {
    return LookupKey(p, item, item.kv_begin + tile * kBlockN + gather_key);
  };
  // Copies tile `tile` into ring slot `slot` (zero rows past the end) and
  // records its key positions and whether it needs the causal mask.
  auto issue_tile = [&](const KeyEntry& e, int tile, int slot) {
    const uint32_t dst_k = s_k + slot * Cfg::kTileBytes;
    const uint32_t dst_v = s_v + slot * Cfg::kTileBytes;
    const int last = min(kBlockN, item.kv_end - (item.kv_begin + tile * kBlockN)) - 1;
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
      const uint32_t so = Sw128Offset<kBlockN>(gather_key, ch);
      CpAsync16(dst_k + so, valid ? src_k + ch * 8 : kv, valid);
      CpAsync16(dst_v + so, valid ? src_v + ch * 8 : kv, valid);
    }
    if (gather_lane == 0) {
      const int32_t pos = valid ? e.page_pos + e.in_page : INT32_MAX;
      s_tok_pos[slot * kBlockN + gather_key] = pos;
      if (gather_key == last) {
        s_flag[slot] = (last < kBlockN - 1 || pos > item.q_pos_min) ? 1 : 0;
      }
    }
  };

  const int num_tiles = (item.kv_end - item.kv_begin + kBlockN - 1) / kBlockN;
  if (num_tiles > 0) issue_tile(load_entry(0), 0, 0);
  CpAsyncCommit();
  KeyEntry next_entry{0, 0, -1};
  if (num_tiles > 1) next_entry = load_entry(1);

  // Accumulator fragment of this thread: rows r0 = 64 wg + 16 (warp % 4) + g
  // and r0 + 8; element 4 j + e is column 8 j + 2 t4 + (e & 1) of row
  // r0 + 8 (e >> 1).
  const int g = lane >> 2;
  const int t4 = lane & 3;
  const int r0 = wg * 64 + (warp & 3) * 16 + g;
  const bool active = wg * 64 < item.num_rows;  // uniform per warpgroup
  const uint32_t q_rows = s_q + wg * 64 * 128;
  float o[64];
  float s[32];
#pragma unroll
  for (int i = 0; i < 64; ++i) o[i] = 0.0f;
#pragma unroll
  for (int i = 0; i < 32; ++i) s[i] = 0.0f;
  float row_max[2] = {ASYMCACHE_MSA_NEG_INF, ASYMCACHE_MSA_NEG_INF};  // scaled (base 2)
  float row_sum[2] = {0.0f, 0.0f};
  const float scale = p.scale_log2;

  for (int tile = 0; tile < num_tiles; ++tile) {
    // Tile + 1 goes into the slot of tile - 2 (freed at the last barrier).
    if (tile + 1 < num_tiles) issue_tile(next_entry, tile + 1, (tile + 1) % kStages);
    CpAsyncCommit();
    if (tile + 2 < num_tiles) next_entry = load_entry(tile + 2);
    // PV of tile - 1 done (o is read below; its V slot is reused next
    // iteration), tile `tile` landed (this thread's copies), visible to the
    // async proxy, then to every thread.
    WgmmaWait<0>();
    FenceOperands(o);
    CpAsyncWait<1>();
    FenceProxyAsyncShared();
    __syncthreads();

    if (active) {
      const int slot = tile % kStages;
      WgmmaQK<T, kRows>(s, q_rows, s_k + slot * Cfg::kTileBytes);

      // Mask, online softmax (rows r0 and r0 + 8); the scale is folded into
      // the exponent as in the mma.sync kernel.
      if (s_flag[slot] != 0) {
        const int qp0 = s_row_qpos[r0];
        const int qp1 = s_row_qpos[r0 + 8];
#pragma unroll
        for (int j = 0; j < kBlockN / 8; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int kp = s_tok_pos[slot * kBlockN + j * 8 + 2 * t4 + e];
            if (kp > qp0) s[4 * j + e] = ASYMCACHE_MSA_NEG_INF;
            if (kp > qp1) s[4 * j + 2 + e] = ASYMCACHE_MSA_NEG_INF;
          }
        }
      }
      float tile_max0 = ASYMCACHE_MSA_NEG_INF;
      float tile_max1 = ASYMCACHE_MSA_NEG_INF;
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) {
        tile_max0 = fmaxf(tile_max0, fmaxf(s[4 * j], s[4 * j + 1]));
        tile_max1 = fmaxf(tile_max1, fmaxf(s[4 * j + 2], s[4 * j + 3]));
      }
      tile_max0 = fmaxf(tile_max0, __shfl_xor_sync(0xffffffffu, tile_max0, 1));
      tile_max0 = fmaxf(tile_max0, __shfl_xor_sync(0xffffffffu, tile_max0, 2));
      tile_max1 = fmaxf(tile_max1, __shfl_xor_sync(0xffffffffu, tile_max1, 1));
      tile_max1 = fmaxf(tile_max1, __shfl_xor_sync(0xffffffffu, tile_max1, 2));
      const float new_max0 = fmaxf(row_max[0], tile_max0 * scale);
      const float new_max1 = fmaxf(row_max[1], tile_max1 * scale);
      const float base0 = new_max0 == ASYMCACHE_MSA_NEG_INF ? 0.0f : new_max0;
      const float base1 = new_max1 == ASYMCACHE_MSA_NEG_INF ? 0.0f : new_max1;
      const float alpha0 = FastExp2(row_max[0] - base0);
      const float alpha1 = FastExp2(row_max[1] - base1);
      row_max[0] = new_max0;
      row_max[1] = new_max1;
      row_sum[0] *= alpha0;
      row_sum[1] *= alpha1;
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) {
        s[4 * j + 0] = FastExp2(fmaf(s[4 * j + 0], scale, -base0));
        s[4 * j + 1] = FastExp2(fmaf(s[4 * j + 1], scale, -base0));
        s[4 * j + 2] = FastExp2(fmaf(s[4 * j + 2], scale, -base1));
        s[4 * j + 3] = FastExp2(fmaf(s[4 * j + 3], scale, -base1));
        row_sum[0] += s[4 * j + 0] + s[4 * j + 1];
        row_sum[1] += s[4 * j + 2] + s[4 * j + 3];
      }
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        o[4 * j + 0] *= alpha0;
        o[4 * j + 1] *= alpha0;
        o[4 * j + 2] *= alpha1;
        o[4 * j + 3] *= alpha1;
      }
      WgmmaPV<T>(o, s, s_v + slot * Cfg::kTileBytes, Cfg::kVLbo, Cfg::kVSbo);
    }
  }
  WgmmaWait<0>();
  FenceOperands(o);
  CpAsyncWait<0>();
  if (!active) return;

  // Epilogue straight from the fragment: normalise, write out (+ LSE) or the
  // fp32 partial state; rows past the item are never written.
  const bool partial = item.partial_row >= 0;
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float sum = row_sum[h];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int r = r0 + 8 * h;
    if (r >= item.num_rows) continue;
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    const float lse_value = sum > 0.0f ? row_max[h] + __log2f(sum) : ASYMCACHE_MSA_NEG_INF;
    if (partial) {
      float* dst = p.partial_out + static_cast<int64_t>(item.partial_row + r) * D + 2 * t4;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        *reinterpret_cast<float2*>(dst + 8 * j) =
            make_float2(o[4 * j + 2 * h] * inv, o[4 * j + 2 * h + 1] * inv);
      }
      if (t4 == 0) p.partial_lse[item.partial_row + r] = lse_value;
    } else {
      const int64_t token = item.q_token_begin + r / group;
      const int head = item.kv_head * group + r % group;
      const int64_t row = token * p.num_q_heads + head;
      T* dst = out + row * D + 2 * t4;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        *reinterpret_cast<uint32_t*>(dst + 8 * j) =
            Ops::Pack(o[4 * j + 2 * h] * inv, o[4 * j + 2 * h + 1] * inv);
      }
      if (t4 == 0 && p.lse != nullptr) p.lse[row] = lse_value;
    }
  }
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

// ---- one-tile test kernel ------------------------------------------------------------

// LaunchMsaWgmmaTileTest (msa_launch.cuh): the prefill kernel's layouts,
// descriptors and GEMM helpers on fixed inputs.
template <typename T>
__global__ void __launch_bounds__(MsaWgmmaConfig::kThreads, 1)
    MsaWgmmaTileTestKernel(const T* a, const T* b, const T* v, float* s_out, float* o_out,
                           int variant) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cfg = MsaWgmmaConfig;
  constexpr int kRows = Cfg::kRows;
  constexpr int kBlockN = Cfg::kBlockN;
  constexpr int kChunks = Cfg::kChunks;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw_addr = SmemAddr(smem_raw);
  const uint32_t s_q = raw_addr + ((1024u - (raw_addr & 1023u)) & 1023u);
  const uint32_t s_k = s_q + Cfg::kQBytes;
  const uint32_t s_v = s_k + Cfg::kTileBytes;
  const int tid = threadIdx.x;
  for (int c = tid; c < kRows * kChunks; c += Cfg::kThreads) {
    CpAsync16(s_q + Sw128Offset<kRows>(c / kChunks, c % kChunks), a + c * 8, true);
  }
  for (int c = tid; c < kBlockN * kChunks; c += Cfg::kThreads) {
    CpAsync16(s_k + Sw128Offset<kBlockN>(c / kChunks, c % kChunks), b + c * 8, true);
    CpAsync16(s_v + Sw128Offset<kBlockN>(c / kChunks, c % kChunks), v + c * 8, true);
  }
  CpAsyncCommit();
  CpAsyncWait<0>();
  FenceProxyAsyncShared();
  __syncthreads();

  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int wg = warp >> 2;
  const int g = lane >> 2;
  const int t4 = lane & 3;
  const int r0 = wg * 64 + (warp & 3) * 16 + g;
  float s[32];
  float o[64];
#pragma unroll
  for (int i = 0; i < 32; ++i) s[i] = 0.0f;
#pragma unroll
  for (int i = 0; i < 64; ++i) o[i] = 0.0f;
  WgmmaQK<T, kRows>(s, s_q + wg * 64 * 128, s_k);
  const uint32_t lbo = variant == 1 ? Cfg::kVSbo : Cfg::kVLbo;
  const uint32_t sbo = variant == 1 ? Cfg::kVLbo : Cfg::kVSbo;
  WgmmaPV<T>(o, s, s_v, lbo, sbo);
  WgmmaWait<0>();
  FenceOperands(o);
#pragma unroll
  for (int j = 0; j < kBlockN / 8; ++j) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      s_out[(r0 + 8 * h) * kBlockN + 8 * j + 2 * t4] = s[4 * j + 2 * h];
      s_out[(r0 + 8 * h) * kBlockN + 8 * j + 2 * t4 + 1] = s[4 * j + 2 * h + 1];
    }
  }
#pragma unroll
  for (int j = 0; j < Cfg::kHeadDim / 8; ++j) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      o_out[(r0 + 8 * h) * Cfg::kHeadDim + 8 * j + 2 * t4] = o[4 * j + 2 * h];
      o_out[(r0 + 8 * h) * Cfg::kHeadDim + 8 * j + 2 * t4 + 1] = o[4 * j + 2 * h + 1];
    }
  }
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

// ---- overlapped variant (MsaPrefillKernel::kWgmmaOverlap) -----------------------
//
// FA3-style intra-warpgroup overlap: the softmax of tile i runs while the PV
// wgmma of tile i - 1 is in flight (nvcc 13.0, sm_90a: 152 registers, no
// spills, no wgmma serialisation). Both warpgroups always compute, so tiles
// of <= 64 rows waste half the tensor work; kAuto therefore runs it only for
// launches whose largest prefill tile has more than 64 rows. Measured and
// tested on an H100 (docs/msa_kernel.md, "version 3: wgmma").

template <int N, int M>
__device__ __forceinline__ void FenceOperands(uint32_t (&r)[N][M]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
#pragma unroll
    for (int j = 0; j < M; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
  }
}
// Issues S (64 x 64, this warpgroup's rows) = Q K^T over head dim 128 (8
// wgmma, not committed). q_rows: the shared address of this warpgroup's Q
// row 0 within a kQTileRows-row Q tile; k_tile: the K tile (kBlockN rows).
// The caller fences (WgmmaFence) before and commits/waits after.
template <typename T, int kQTileRows>
__device__ __forceinline__ void WgmmaQKIssue(float (&s)[32], uint32_t q_rows, uint32_t k_tile) {
  using Cfg = MsaWgmmaConfig;
#pragma unroll
  for (int ks = 0; ks < Cfg::kHeadDim / 16; ++ks) {
    const uint32_t k_off = (ks & 3) * 32;  // 16 columns = 32 bytes into the 128-byte row
    const uint64_t desc_a = SmemDescSw128(q_rows + (ks >> 2) * (kQTileRows * 128) + k_off,
                                          Cfg::kKMajorLbo, Cfg::kKMajorSbo);
    const uint64_t desc_b = SmemDescSw128(k_tile + (ks >> 2) * (Cfg::kBlockN * 128) + k_off,
                                          Cfg::kKMajorLbo, Cfg::kKMajorSbo);
    WgmmaOps<T>::SS64(s, desc_a, desc_b, ks > 0 ? 1 : 0);
  }
}

// P as 16-bit A fragments: the m64 accumulator fragment of S has the A
// fragment's layout, so key block kt is s[8 kt .. 8 kt + 7] packed in pairs.
template <typename T>
__device__ __forceinline__ void PackP(const float (&s)[32], uint32_t (&pf)[MsaWgmmaConfig::kBlockN / 16][4]) {
  using Ops = ElementOps<T>;
#pragma unroll
  for (int kt = 0; kt < MsaWgmmaConfig::kBlockN / 16; ++kt) {
    pf[kt][0] = Ops::Pack(s[8 * kt + 0], s[8 * kt + 1]);
    pf[kt][1] = Ops::Pack(s[8 * kt + 2], s[8 * kt + 3]);
    pf[kt][2] = Ops::Pack(s[8 * kt + 4], s[8 * kt + 5]);
    pf[kt][3] = Ops::Pack(s[8 * kt + 6], s[8 * kt + 7]);
  }
}

// Issues O += P V for this warpgroup (4 wgmma over 16-key steps, not
// committed); V tile at v_tile read N-major. The caller fences before and
// commits/waits after.
template <typename T>
__device__ __forceinline__ void WgmmaPVIssue(float (&o)[64],
                                             const uint32_t (&pf)[MsaWgmmaConfig::kBlockN / 16][4],
                                             uint32_t v_tile, uint32_t v_lbo, uint32_t v_sbo) {
#pragma unroll
  for (int kt = 0; kt < MsaWgmmaConfig::kBlockN / 16; ++kt) {
    // 16 keys = two 8-key groups of 128-byte rows.
    const uint64_t desc_b = SmemDescSw128(v_tile + kt * 16 * 128, v_lbo, v_sbo);
    WgmmaOps<T>::RS128(o, pf[kt], desc_b, 1);
  }
}

template <typename T>
__global__ void __launch_bounds__(MsaWgmmaConfig::kThreads, 1)
    MsaWgmmaPrefillOverlapKernel(const __grid_constant__ MsaKernelParams p, int32_t item_base) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cfg = MsaWgmmaConfig;
  using Ops = ElementOps<T>;
  constexpr int D = Cfg::kHeadDim;
  constexpr int kThreads = Cfg::kThreads;
  constexpr int kBlockN = Cfg::kBlockN;
  constexpr int kStages = Cfg::kStages;
  constexpr int kChunks = Cfg::kChunks;
  constexpr int kRows = Cfg::kRows;

  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw_addr = SmemAddr(smem_raw);
  const uint32_t pad = (1024u - (raw_addr & 1023u)) & 1023u;
  unsigned char* smem = smem_raw + pad;
  const uint32_t s_q = raw_addr + pad;
  const uint32_t s_k = s_q + Cfg::kQBytes;
  const uint32_t s_v = s_k + kStages * Cfg::kTileBytes;
  int32_t* s_tok_pos = reinterpret_cast<int32_t*>(smem + Cfg::kQBytes + Cfg::kKvBytes);
  int32_t* s_flag = s_tok_pos + kStages * kBlockN;  // 4 slots reserved
  int32_t* s_row_qpos = s_flag + 4;

  const MsaWorkItem item = p.items[item_base + blockIdx.x];
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int wg = warp >> 2;  // warpgroup: rows [64 wg, 64 wg + 64)
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
    CpAsync16(s_q + Sw128Offset<kRows>(r, ch), src, valid);
  }
  CpAsyncCommit();
  for (int r = tid; r < kRows; r += kThreads) {
    s_row_qpos[r] = r < item.num_rows ? p.q_pos[item.q_token_begin + r / group] : -1;
  }

  // K/V gather: this thread copies chunks gather_lane + kThreadsPerKey * i of
  // key gather_key of every tile; its page-table entry is loaded one tile
  // before the copy is issued.
  const int gather_key = tid / Cfg::kThreadsPerKey;
  const int gather_lane = tid % Cfg::kThreadsPerKey;
  using KeyEntry = MsaKeyEntry;
  auto load_entry = [&](int tile) {
    return LookupKey(p, item, item.kv_begin + tile * kBlockN + gather_key);
  };
  // Copies tile `tile` into ring slot `slot` (zero rows past the end) and
  // records its key positions and whether it needs the causal mask.
  auto issue_tile = [&](const KeyEntry& e, int tile, int slot) {
    const uint32_t dst_k = s_k + slot * Cfg::kTileBytes;
    const uint32_t dst_v = s_v + slot * Cfg::kTileBytes;
    const int last = min(kBlockN, item.kv_end - (item.kv_begin + tile * kBlockN)) - 1;
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
      const uint32_t so = Sw128Offset<kBlockN>(gather_key, ch);
      CpAsync16(dst_k + so, valid ? src_k + ch * 8 : kv, valid);
      CpAsync16(dst_v + so, valid ? src_v + ch * 8 : kv, valid);
    }
    if (gather_lane == 0) {
      const int32_t pos = valid ? e.page_pos + e.in_page : INT32_MAX;
      s_tok_pos[slot * kBlockN + gather_key] = pos;
      if (gather_key == last) {
        s_flag[slot] = (last < kBlockN - 1 || pos > item.q_pos_min) ? 1 : 0;
      }
    }
  };

  const int num_tiles = (item.kv_end - item.kv_begin + kBlockN - 1) / kBlockN;
  if (num_tiles > 0) issue_tile(load_entry(0), 0, 0);
  CpAsyncCommit();
  KeyEntry next_entry{0, 0, -1};
  if (num_tiles > 1) next_entry = load_entry(1);

  // Accumulator fragment of this thread: rows r0 = 64 wg + 16 (warp % 4) + g
  // and r0 + 8; element 4 j + e is column 8 j + 2 t4 + (e & 1) of row
  // r0 + 8 (e >> 1).
  const int g = lane >> 2;
  const int t4 = lane & 3;
  const int r0 = wg * 64 + (warp & 3) * 16 + g;
  const uint32_t q_rows = s_q + wg * 64 * 128;
  float o[64];
  float s[32];
#pragma unroll
  for (int i = 0; i < 64; ++i) o[i] = 0.0f;
#pragma unroll
  for (int i = 0; i < 32; ++i) s[i] = 0.0f;
  float row_max[2] = {ASYMCACHE_MSA_NEG_INF, ASYMCACHE_MSA_NEG_INF};  // scaled (base 2)
  float row_sum[2] = {0.0f, 0.0f};
  const float scale = p.scale_log2;

  // Mask and online softmax of tile `slot`'s scores in s (rows r0, r0 + 8):
  // s becomes the unnormalised probabilities, the row state moves to the new
  // maximum; returns the factors the old O rows must be scaled by. The scale
  // is folded into the exponent as in the mma.sync kernel.
  auto softmax_tile = [&](int slot, float& alpha0, float& alpha1, float (&pr)[32]) {
    // pr = s, masked; s (the QK^T accumulators) is only read here, so no
    // ordinary instruction writes a wgmma accumulator while the PV wgmma is
    // in flight (ptxas would serialise every wgmma, C7515).
#pragma unroll
    for (int i = 0; i < 32; ++i) pr[i] = s[i];
    if (s_flag[slot] != 0) {
      const int qp0 = s_row_qpos[r0];
      const int qp1 = s_row_qpos[r0 + 8];
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int kp = s_tok_pos[slot * kBlockN + j * 8 + 2 * t4 + e];
          if (kp > qp0) pr[4 * j + e] = ASYMCACHE_MSA_NEG_INF;
          if (kp > qp1) pr[4 * j + 2 + e] = ASYMCACHE_MSA_NEG_INF;
        }
      }
    }
    float tile_max0 = ASYMCACHE_MSA_NEG_INF;
    float tile_max1 = ASYMCACHE_MSA_NEG_INF;
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j) {
      tile_max0 = fmaxf(tile_max0, fmaxf(pr[4 * j], pr[4 * j + 1]));
      tile_max1 = fmaxf(tile_max1, fmaxf(pr[4 * j + 2], pr[4 * j + 3]));
    }
    tile_max0 = fmaxf(tile_max0, __shfl_xor_sync(0xffffffffu, tile_max0, 1));
    tile_max0 = fmaxf(tile_max0, __shfl_xor_sync(0xffffffffu, tile_max0, 2));
    tile_max1 = fmaxf(tile_max1, __shfl_xor_sync(0xffffffffu, tile_max1, 1));
    tile_max1 = fmaxf(tile_max1, __shfl_xor_sync(0xffffffffu, tile_max1, 2));
    const float new_max0 = fmaxf(row_max[0], tile_max0 * scale);
    const float new_max1 = fmaxf(row_max[1], tile_max1 * scale);
    const float base0 = new_max0 == ASYMCACHE_MSA_NEG_INF ? 0.0f : new_max0;
    const float base1 = new_max1 == ASYMCACHE_MSA_NEG_INF ? 0.0f : new_max1;
    alpha0 = FastExp2(row_max[0] - base0);
    alpha1 = FastExp2(row_max[1] - base1);
    row_max[0] = new_max0;
    row_max[1] = new_max1;
    row_sum[0] *= alpha0;
    row_sum[1] *= alpha1;
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j) {
      pr[4 * j + 0] = FastExp2(fmaf(pr[4 * j + 0], scale, -base0));
      pr[4 * j + 1] = FastExp2(fmaf(pr[4 * j + 1], scale, -base0));
      pr[4 * j + 2] = FastExp2(fmaf(pr[4 * j + 2], scale, -base1));
      pr[4 * j + 3] = FastExp2(fmaf(pr[4 * j + 3], scale, -base1));
      row_sum[0] += pr[4 * j + 0] + pr[4 * j + 1];
      row_sum[1] += pr[4 * j + 2] + pr[4 * j + 3];
    }
  };
  auto rescale_o = [&](float alpha0, float alpha1) {
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      o[4 * j + 0] *= alpha0;
      o[4 * j + 1] *= alpha0;
      o[4 * j + 2] *= alpha1;
      o[4 * j + 3] *= alpha1;
    }
  };

  // Overlapped (FA3's intra-warpgroup pipelining): iteration i issues
  // S_i = Q K_i^T and O += P_{i-1} V_{i-1} together, waits for S_i only,
  // runs the softmax of tile i while the PV GEMM runs, then waits for it
  // and rescales O. Tiles i - 1 (V), i (K) and i + 1 (in flight) fill the
  // 3 ring slots. Both warpgroups always compute (a warpgroup whose rows
  // are all past the item runs on zero Q rows and writes nothing): any
  // branch around the wgmma waits makes ptxas serialise every wgmma of the
  // kernel (C7515, nvcc 13.0), which costs more than the idle rows.
  uint32_t pf[kBlockN / 16][4];
  // Tile `tile` (issued an iteration ago) landed, visible to the async
  // proxy and to every thread; every warpgroup finished tile - 2 (its PV
  // was waited for last iteration), so its slot takes tile + 1.
  auto next_tile = [&](int tile) {
    CpAsyncWait<0>();
    FenceProxyAsyncShared();
    __syncthreads();
    if (tile + 1 < num_tiles) issue_tile(next_entry, tile + 1, (tile + 1) % kStages);
    CpAsyncCommit();
    if (tile + 2 < num_tiles) next_entry = load_entry(tile + 2);
  };
  // Tile 0 on its own (no PV yet): no branch around the wgmma waits in
  // the loop, which would make ptxas serialise every wgmma (C7520).
  if (num_tiles > 0) {
    next_tile(0);
    {
      WgmmaFence();
      WgmmaQKIssue<T, kRows>(s, q_rows, s_k);
      WgmmaCommit();
      WgmmaWait<0>();
      FenceOperands(s);
      float alpha0, alpha1;
      float pr[32];
      softmax_tile(0, alpha0, alpha1, pr);  // o is still 0: nothing to rescale
      PackP<T>(pr, pf);
    }
  }
  {
    for (int tile = 1; tile < num_tiles; ++tile) {
      next_tile(tile);
      const int slot = tile % kStages;
      FenceOperands(o);
      FenceOperands(pf);
      WgmmaFence();
      WgmmaQKIssue<T, kRows>(s, q_rows, s_k + slot * Cfg::kTileBytes);
      WgmmaCommit();
      WgmmaPVIssue<T>(o, pf, s_v + ((tile - 1) % kStages) * Cfg::kTileBytes, Cfg::kVLbo,
                      Cfg::kVSbo);
      WgmmaCommit();
      WgmmaWait<1>();
      float alpha0, alpha1;
      float pr[32];
      softmax_tile(slot, alpha0, alpha1, pr);
      WgmmaWait<0>();
      FenceOperands(o);
      FenceOperands(pf);
      rescale_o(alpha0, alpha1);
      PackP<T>(pr, pf);
    }
  }
  if (num_tiles > 0) {
    FenceOperands(o);
    WgmmaFence();
    WgmmaPVIssue<T>(o, pf, s_v + ((num_tiles - 1) % kStages) * Cfg::kTileBytes, Cfg::kVLbo,
                    Cfg::kVSbo);
    WgmmaCommit();
  }
  WgmmaWait<0>();
  FenceOperands(o);
  CpAsyncWait<0>();

  // Epilogue straight from the fragment: normalise, write out (+ LSE) or the
  // fp32 partial state; rows past the item are never written.
  const bool partial = item.partial_row >= 0;
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float sum = row_sum[h];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int r = r0 + 8 * h;
    if (r >= item.num_rows) continue;
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    const float lse_value = sum > 0.0f ? row_max[h] + __log2f(sum) : ASYMCACHE_MSA_NEG_INF;
    if (partial) {
      float* dst = p.partial_out + static_cast<int64_t>(item.partial_row + r) * D + 2 * t4;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        *reinterpret_cast<float2*>(dst + 8 * j) =
            make_float2(o[4 * j + 2 * h] * inv, o[4 * j + 2 * h + 1] * inv);
      }
      if (t4 == 0) p.partial_lse[item.partial_row + r] = lse_value;
    } else {
      const int64_t token = item.q_token_begin + r / group;
      const int head = item.kv_head * group + r % group;
      const int64_t row = token * p.num_q_heads + head;
      T* dst = out + row * D + 2 * t4;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        *reinterpret_cast<uint32_t*>(dst + 8 * j) =
            Ops::Pack(o[4 * j + 2 * h] * inv, o[4 * j + 2 * h + 1] * inv);
      }
      if (t4 == 0 && p.lse != nullptr) p.lse[row] = lse_value;
    }
  }
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

// ---- launchers ------------------------------------------------------------------------

template <typename T>
cudaError_t LaunchMsaWgmmaPrefill(const MsaKernelParams& params, int32_t num_prefill,
                                  bool overlap, cudaStream_t stream) {
  if (num_prefill <= 0) return cudaSuccess;
  constexpr int kSmem = MsaWgmmaConfig::kSmemBytes;
  auto kernel = overlap ? MsaWgmmaPrefillOverlapKernel<T> : MsaWgmmaPrefillKernel<T>;
  ASYMCACHE_CUDA_TRY(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  kernel<<<num_prefill, MsaWgmmaConfig::kThreads, kSmem, stream>>>(params, 0);
  return cudaGetLastError();
}

template <typename T>
cudaError_t ProbeMsaWgmmaPrefill() {
  cudaFuncAttributes attributes{};
  if (const cudaError_t e = cudaFuncGetAttributes(&attributes, MsaWgmmaPrefillKernel<T>);
      e != cudaSuccess) {
    return e;
  }
  return cudaFuncGetAttributes(&attributes, MsaWgmmaPrefillOverlapKernel<T>);
}

template <typename T>
cudaError_t LaunchMsaWgmmaTileTest(const void* a, const void* b, const void* v, float* s_out,
                                   float* o_out, int variant, cudaStream_t stream) {
  constexpr int kSmem = MsaWgmmaConfig::kSmemBytes;
  auto kernel = MsaWgmmaTileTestKernel<T>;
  ASYMCACHE_CUDA_TRY(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  kernel<<<1, MsaWgmmaConfig::kThreads, kSmem, stream>>>(
      static_cast<const T*>(a), static_cast<const T*>(b), static_cast<const T*>(v), s_out, o_out,
      variant);
  return cudaGetLastError();
}

}  // namespace asymcache::msa::cuda

#endif  // ASYMCACHE_KERNELS_MSA_WGMMA_CUH_
