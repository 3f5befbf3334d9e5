// MSA CPU backend: Multi-Segment Attention, KV append and partial-state merge
// on the host, threaded.
//
// What: the CPU implementation of the MSA interface of kernels/msa.h (see it
// for the math, the layouts and the batch tables). It is the CPU backend the
// product runs on machines without a GPU (fp32) and, with bf16/fp16 storage,
// the reference the GPU tests compare against. Math is fp32 (online softmax in
// base 2 with log2(e) folded into the query scale); inputs and outputs are in
// shape.dtype.
//
// Work decomposition: one work item per (sequence, kv head, query tile); a tile
// holds the consecutive query tokens of one sequence whose rows (token x group
// head) fit kQueryRowsPerTile. An item reads each of its kv head's pages once for
// all query heads of the group, in position order, and stops at the first key
// whose position exceeds the tile's largest query position (causal skip).
// Items are independent, so the result does not depend on the thread count
// (bitwise).
//
// Ownership: every pointer is borrowed for the call only; nothing is retained.
// Thread-safety: the functions are reentrant; concurrent calls must not write
// overlapping outputs. Each call spawns its own worker threads and joins them
// before returning.
//
// Errors: INVALID_ARGUMENT for a bad shape, a batch that fails ValidateBatch,
// bad options, or a null pointer that the call needs. On error no output byte
// is written.
#ifndef ASYMCACHE_KERNELS_MSA_CPU_H_
#define ASYMCACHE_KERNELS_MSA_CPU_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/msa.h"

namespace asymcache::msa {

struct CpuRunOptions {
  // Worker threads (the calling thread counts as one). 0 = hardware
  // concurrency. Never more than the number of work items are used.
  int num_threads = 0;

  absl::Status Validate() const;  // INVALID_ARGUMENT if num_threads < 0
};

// Query rows (tokens x group heads) per work item; a tile holds
// max(1, kQueryRowsPerTile / group_size) query tokens.
inline constexpr int32_t kQueryRowsPerTile = 64;

// Runs MSA for a batch.
//   q        [total_q][Hq][D]                          shape.dtype
//   kv_pool  [num_pages][2][page_size][Hkv][D]         shape.dtype
//   out      [total_q][Hq][D]                          shape.dtype (written fully)
//   lse      [total_q][Hq] float, base 2, nullable (written fully when given)
// q, kv_pool and out may be null only where the batch has no queries (kv_pool:
// no pages). out and lse must not overlap q or kv_pool. A query with no
// visible key gets 0 and lse = -inf.
absl::Status RunMsaCpu(const AttentionShape& shape, const BatchTables& batch, const void* q,
                       const void* kv_pool, int64_t num_pages, void* out, float* lse,
                       const CpuRunOptions& options = {});

// Writes the K/V rows of num_tokens = slot_page_ids.size() tokens into the
// pool: token t goes to page slot_page_ids[t], row slot_offsets[t]
// (0 <= offset < page_size). k, v: [num_tokens][Hkv][D] in shape.dtype. All
// slots are validated before anything is written; when two tokens name the
// same slot, the later one wins.
absl::Status AppendKvCpu(const AttentionShape& shape, absl::Span<const int32_t> slot_page_ids,
                         absl::Span<const int32_t> slot_offsets, const void* k, const void* v,
                         void* kv_pool, int64_t num_pages);

// One partial attention state over a key set: values [num_rows][head_dim] in
// the merge's dtype and its base-2 LSE [num_rows] (as RunMsaCpu writes them,
// with rows = total_q * Hq).
struct PartialState {
  const void* values = nullptr;
  const float* lse = nullptr;
};

// Merges partial states of pairwise disjoint key sets row by row (FlashInfer's
// operator, base 2): m = max_i lse_i, w_i = 2^(lse_i - m),
// out = sum_i w_i v_i / sum_i w_i, lse = m + log2(sum_i w_i). States with
// lse = -inf (empty) contribute nothing; if every state of a row is empty (or
// there are none) the row becomes 0 / -inf, never NaN. Math in fp32.
// out_values [num_rows][head_dim] in dtype; out_lse nullable. out_values may
// alias one state's values (and out_lse its lse) exactly; no other overlap.
absl::Status MergeStatesCpu(DType dtype, int64_t num_rows, int32_t head_dim,
                            absl::Span<const PartialState> states, void* out_values,
                            float* out_lse);

}  // namespace asymcache::msa

#endif  // ASYMCACHE_KERNELS_MSA_CPU_H_
