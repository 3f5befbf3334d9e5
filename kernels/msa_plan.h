// MSA CUDA planner: turns a batch (kernels/msa.h BatchTables) into the work
// list the CUDA kernels run, on the CPU, into a caller-provided workspace.
//
// What (FlashInfer plan/run, MSA_NOTES.md §3): one work item per
// (sequence, kv head, query tile of packed GQA rows row = token * G + g, KV
// chunk). A sequence whose packed rows (q_len * G) fit in 16 uses the decode
// tile (16 rows); others use 128-row prefill tiles, cut as
// options.prefill_tiling says (by default the partial tile is the sequence's
// lowest-position one: least modeled work). Each item stores kv_end =
// the number of the sequence's keys with position <= the tile's largest query
// position, so later pages are never read. When the batch has too few items to
// fill the GPU (fewer than num_sms * target_ctas_per_sm CTA slots; a prefill
// item is an 8-warp CTA and counts as two slots, a decode item as one), the KV
// range of each item is split into chunks (a binary search picks the smallest
// 128-aligned chunk that keeps the slots <= the target). A prefill class that
// already fills the target is cut only to balance the waves of its launch
// (one 8-warp CTA per SM): a list-scheduling model of the launch picks the
// chunk, and it must predict >= 8% less time than no cut (160 equal items on
// 132 SMs: two waves for 1.2 of work). Split items write fp32 partial states
// into the device workspace and a merge pass combines them per row. Prefill
// and decode items run in separate launches, so each class is split against
// the target on its own (a decode batch beside a prefill chunk is split as
// it would be alone).
//
// Workspace: the plan writes, into host_ws, a block that is copied byte for
// byte to the start of device_ws (UploadMsaPlan in msa_cuda.h): work items,
// merge groups, q_pos and the page tables (ids, positions, token offsets).
// Behind that block device_ws holds the fp32 partial states. Offsets in MsaPlan
// are byte offsets from the workspace start, identical on host and device.
// The plan is reused for every layer of a step (same batch, same shape).
//
// Ownership: PlanMsa borrows the batch and host_ws for the call only; the
// returned MsaPlan is a POD value (no pointers). Thread-safety: PlanMsa is
// reentrant; concurrent calls need distinct host workspaces.
//
// Compiled on every machine (no CUDA header), so plans are testable on CPUs.
#ifndef ASYMCACHE_KERNELS_MSA_PLAN_H_
#define ASYMCACHE_KERNELS_MSA_PLAN_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/msa.h"
#include "kernels/msa_waves.h"

namespace asymcache::msa {

// Which kernel runs the prefill (128-row) tiles; decode tiles always run the
// 16-row kernel. docs/msa_kernel.md ("version 3: wgmma") has the numbers.
enum class MsaPrefillKernel : int32_t {
  // The default for the shape and device: where the wgmma kernel is
  // available (head dim 128 on a cc 9.0 device with sm_90a code),
  // kWgmmaOverlap when the plan's largest prefill tile has more than 64 rows
  // and kWgmma otherwise (measured on an H100: the overlapped loop is 2-6%
  // faster on such tiles and 6-20% slower on 64-row ones); else kMma
  // (ResolvedPrefillKernel in msa_cuda.cu, docs/msa_kernel.md).
  kAuto = 0,
  // mma.sync m16n8k16 kernel (v2): every head dim, every device.
  kMma = 1,
  // Hopper kernel (wgmma, sm_90a): head dim 128 only, on a compute
  // capability 9.0 device when the binary carries sm_90a code
  // (MsaWgmmaAvailable in msa_cuda.h); elsewhere the plan runs kMma.
  kWgmma = 2,
  // The wgmma kernel with FA3-style intra-warpgroup overlap (the softmax of
  // key tile i runs while tile i-1's P V GEMM does; MsaWgmmaPrefillOverlapKernel).
  // Both warpgroups always compute, so 64-row tiles waste half the tensor
  // work. Same availability and fallback as kWgmma (docs/msa_kernel.md,
  // "version 3: wgmma").
  kWgmmaOverlap = 3,
};

// How a prefill-class sequence's packed query rows are cut into 128-row
// tiles (docs/msa_kernel.md, "Tile forming"). Tiles hold consecutive query
// tokens of one sequence either way (the kernels index a tile by its first
// token and row count), cut on token boundaries, ceil(rows / 128) per
// sequence.
enum class MsaPrefillTiling : int32_t {
  // Full tiles from the sequence's first row; the last (highest-position)
  // tile is the partial one. The only rule until 2026-11-27.
  kFromFirstRow = 0,
  // Full tiles from the sequence's last row back; the first (lowest-position)
  // tile is the partial one. Least modeled work (MsaTileModeledWork summed
  // over the tiles) of every way to group the rows into 128-row tiles,
  // contiguous or not, and never more than kFromFirstRow: see msa_plan.cc.
  kLeastWork = 1,
};

struct MsaPlanOptions {
  // Streaming multiprocessors of the target GPU (H100 SXM: 132). Use
  // QueryGpu().sm_count when a device is present.
  int32_t num_sms = 132;
  // Split-KV target, in 4-warp CTA slots per SM (a decode item takes one, a
  // 128-row prefill item two): a batch needing fewer than
  // num_sms * target_ctas_per_sm slots is split until it needs about that
  // many. Must be >= 1.
  int32_t target_ctas_per_sm = 2;
  // Split KV ranges when the batch is too small to fill the GPU.
  bool allow_split_kv = true;
  // Smallest chunk of a split, in KV tokens (a multiple of 128, >= 128).
  int32_t min_kv_chunk_tokens = 256;
  // > 0: split every item at this many KV tokens (multiple of 64; tests and
  // benchmarks). Overrides the automatic choice and allow_split_kv.
  int32_t forced_kv_chunk_tokens = 0;
  // Prefill tile kernel (copied into MsaPlan; read by RunMsaCuda). Both
  // kernels use 128-row tiles and one 8-warp CTA per SM, so the plan is the
  // same for either.
  MsaPrefillKernel prefill_kernel = MsaPrefillKernel::kAuto;
  // Tile forming of prefill-class sequences (decode-class sequences have one
  // 16-row tile). Default kLeastWork: it never increases the modeled work
  // (tests/kernels/msa_plan_test.cc compares both on random batches).
  MsaPrefillTiling prefill_tiling = MsaPrefillTiling::kLeastWork;
  // A prefill class needing fewer than the target slots is split by the
  // slot search (at most one wave of pieces: the launch lasts as long as the
  // largest chunk). true: also try smaller chunks under the wave-balancing
  // model (list scheduling, at most num_sms * target_ctas_per_sm extra
  // pieces) and take one that predicts >= 8% less time. Default true: on an
  // H100 (mma.sync kernel) a 16-token rebuild at 8k went 26.8 -> 24.8 us
  // alone, and packed beside its sequence's other segments it added 8.4 us
  // instead of 31.9 (docs/msa_kernel.md, "Tile forming"); planning such a
  // batch takes ~70 us of host time instead of ~13.
  bool balance_small_prefill = true;

  absl::Status Validate() const;  // INVALID_ARGUMENT naming the field
};

// The tile sizes, MsaTileModeledWork and the split-KV choice: msa_waves.h.

// One CTA's work (device layout; 48 bytes).
struct MsaWorkItem {
  int32_t q_token_begin;  // global index (into q/out) of the tile's first query token
  int32_t num_rows;       // packed rows in the tile (<= tile rows)
  int32_t kv_head;
  int32_t page_begin;     // global index (page tables) of the sequence's first page
  int32_t num_pages;      // pages of the sequence
  int32_t kv_begin;       // logical key range [kv_begin, kv_end) (keys of the sequence,
  int32_t kv_end;         //   concatenated page by page in position order)
  int32_t q_pos_min;      // smallest query position of the tile
  int32_t partial_row;    // -1: write out/lse directly; else first row in the partial buffers
  int32_t uniform_pages;  // 1: every page of the sequence but the last is full (key -> page is a division)
  // The page holding key kv_begin, counted from page_begin (0 when
  // kv_begin == 0; unused when kv_end <= kv_begin). The decode kernel walks a
  // sequence of partial pages from it without searching the key offsets.
  int32_t kv_begin_page;
  int32_t reserved1;
};
static_assert(sizeof(MsaWorkItem) == 48, "MsaWorkItem is a device layout");

// One split (sequence, kv head, query tile) whose chunks are merged (20 bytes).
struct MsaMergeGroup {
  int32_t q_token_begin;
  int32_t num_rows;
  int32_t kv_head;
  int32_t partial_row;  // chunk c, row r is partial row partial_row + c * num_rows + r
  int32_t num_chunks;
};
static_assert(sizeof(MsaMergeGroup) == 20, "MsaMergeGroup is a device layout");

// Workspace sizes for a batch bound (MsaWorkspaceSizesFor).
struct MsaWorkspaceSizes {
  size_t host_bytes = 0;    // plain or pinned host memory for PlanMsa
  size_t device_bytes = 0;  // device memory for UploadMsaPlan / RunMsaCuda
};

// A plan: counts and byte offsets into the workspaces. POD, copyable.
struct MsaPlan {
  // The shape and batch the plan was built for. RunMsaCuda checks only the
  // shape fields (num_q_heads, num_kv_heads, head_dim, page_size, dtype)
  // against its shape argument; the batch fields are not checked against any
  // table (the plan's uploaded workspace carries the batch).
  int32_t num_q_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t page_size = 0;
  DType dtype = DType::kBFloat16;
  int32_t batch_size = 0;
  int32_t total_q = 0;
  int32_t total_pages = 0;
  int64_t num_pool_pages = 0;

  // Work: items [0, num_prefill_items) use 128-row tiles, the next
  // num_decode_items use 16-row tiles.
  int32_t num_prefill_items = 0;
  int32_t num_decode_items = 0;
  // Rows of the largest prefill tile (0 without prefill items): kAuto's
  // choice between the two wgmma main loops (ResolvedPrefillKernel).
  int32_t max_prefill_tile_rows = 0;
  int32_t num_merge_groups = 0;
  int32_t num_partial_rows = 0;
  int32_t prefill_kv_chunk_tokens = 0;  // 0: prefill items unsplit; else their chunk size
  int32_t decode_kv_chunk_tokens = 0;   // 0: decode items unsplit; else their chunk size
  int32_t kv_chunk_tokens = 0;  // the larger of the two: 0 when nothing is split
  MsaPrefillKernel prefill_kernel = MsaPrefillKernel::kAuto;  // MsaPlanOptions::prefill_kernel

  // Byte offsets from the workspace start (same on host and device).
  size_t items_offset = 0;
  size_t merge_groups_offset = 0;
  size_t q_pos_offset = 0;
  size_t page_ids_offset = 0;
  size_t page_pos_offset = 0;
  size_t page_token_start_offset = 0;  // per page: keys of the sequence before it
  size_t upload_bytes = 0;             // [0, upload_bytes) is copied host -> device
  size_t partial_out_offset = 0;       // device only: float [num_partial_rows][head_dim]
  size_t partial_lse_offset = 0;       // device only: float [num_partial_rows]
  size_t device_bytes_used = 0;

  int32_t num_items() const { return num_prefill_items + num_decode_items; }
};

// Workspace sizes that hold any plan of a batch with at most max_batch
// sequences, max_total_q query tokens and max_total_pages pages, under
// `options` (a forced chunk size needs room for every chunk: the bound grows
// with max_total_pages * page_size / forced_kv_chunk_tokens).
MsaWorkspaceSizes MsaWorkspaceSizesFor(const AttentionShape& shape, int32_t max_batch,
                                       int32_t max_total_q, int32_t max_total_pages,
                                       const MsaPlanOptions& options);

// Plans one step. Validates shape (head_dim in {64,128,256}, group size in
// {1,2,4,8}, 16-bit dtype), options and the batch (ValidateBatch):
// INVALID_ARGUMENT. RESOURCE_EXHAUSTED when host_ws (or, implied, the device
// workspace sized by the same bound) is too small. host_ws must be 16-byte
// aligned. Writes only into host_ws.
absl::StatusOr<MsaPlan> PlanMsa(const AttentionShape& shape, const BatchTables& batch,
                                int64_t num_pool_pages, const MsaPlanOptions& options,
                                void* host_ws, size_t host_bytes);

}  // namespace asymcache::msa

#endif  // ASYMCACHE_KERNELS_MSA_PLAN_H_
