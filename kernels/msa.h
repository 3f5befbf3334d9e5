// Multi-Segment Attention (MSA): shared types of the CPU and CUDA backends.
//
// What it computes (DESIGN.md §1, §3.3): for each sequence of a batch, the
// queries are tokens at absolute positions (any set of runs: rebuilt holes and
// new tokens, strictly increasing), the keys/values are pages of a paged KV pool
// listed in position order, each with its absolute start position and its valid
// length (holes between pages allowed). Query token at position qp attends to
// every key at position kp <= qp (causal by absolute position). GQA: query head
// h reads kv head h / (Hq / Hkv). Scores are scaled by sm_scale, softmax in
// fp32, output in the input dtype; optional LSE output (base 2, of the scaled
// scores: lse = log2(sum_j 2^(s_j * log2(e)))), so partial states from disjoint
// key sets merge exactly (FlashInfer's convention).
//
// A query with no visible key (possible only when the caller passes such a
// structure) gets output 0 and lse = -inf.
//
// Layouts (row-major, element type = shape.dtype):
//   q, out   [total_q][Hq][D]
//   kv pool  [num_pages][2][page_size][Hkv][D]   (K block then V block per page)
//   lse      [total_q][Hq] float
//
// Contract: BatchTables is CSR (STYLE.md §13): the same arrays the planner
// emits. ValidateBatch() checks every invariant; both backends call it (or
// trust a plan built from a validated batch). Types here are plain values;
// thread-safe as values.
#ifndef ASYMCACHE_KERNELS_MSA_H_
#define ASYMCACHE_KERNELS_MSA_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace asymcache::msa {

enum class DType : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };
int DTypeBytes(DType dtype);

struct AttentionShape {
  int32_t num_q_heads = 32;   // Hq
  int32_t num_kv_heads = 8;   // Hkv; Hq / Hkv in {1, 2, 4, 8}
  int32_t head_dim = 128;     // D in {64, 128, 256}
  int32_t page_size = 16;     // tokens per page (any positive value; 16 is the tuned one)
  DType dtype = DType::kBFloat16;
  float sm_scale = 0.0f;      // 0 means 1/sqrt(head_dim)

  absl::Status Validate() const;  // INVALID_ARGUMENT naming the field
  float EffectiveScale() const;
  int32_t group_size() const { return num_q_heads / num_kv_heads; }
  // Elements of one page: 2 * page_size * Hkv * D.
  int64_t PageElements() const;
};

// Host view of a batch in CSR form. All spans must outlive the call using them.
struct BatchTables {
  absl::Span<const int32_t> q_indptr;     // [B+1] query token ranges per sequence
  absl::Span<const int32_t> q_pos;        // [total_q] absolute positions, strictly increasing per sequence
  absl::Span<const int32_t> kv_indptr;    // [B+1] page ranges per sequence
  absl::Span<const int32_t> kv_page_ids;  // [total_pages] page ids in the pool, position order per sequence
  absl::Span<const int32_t> kv_page_pos;  // [total_pages] absolute position of the page's first token
  absl::Span<const int32_t> kv_page_len;  // [total_pages] valid tokens in the page, 1..page_size

  int32_t batch_size() const { return q_indptr.empty() ? 0 : static_cast<int32_t>(q_indptr.size()) - 1; }
  int32_t total_q() const { return q_indptr.empty() ? 0 : q_indptr.back(); }
  int32_t total_pages() const { return kv_indptr.empty() ? 0 : kv_indptr.back(); }
};

// Owning storage for BatchTables (tests, benchmarks, planners build into it).
struct BatchTablesStorage {
  std::vector<int32_t> q_indptr{0};
  std::vector<int32_t> q_pos;
  std::vector<int32_t> kv_indptr{0};
  std::vector<int32_t> kv_page_ids;
  std::vector<int32_t> kv_page_pos;
  std::vector<int32_t> kv_page_len;
  BatchTables view() const {
    return BatchTables{q_indptr, q_pos, kv_indptr, kv_page_ids, kv_page_pos, kv_page_len};
  }
};

// Checks every CSR invariant: indptr monotone and consistent with array sizes,
// q_pos strictly increasing per sequence and >= 0, pages strictly increasing in
// position and non-overlapping, 1 <= page_len <= page_size, page ids in
// [0, num_pages). INVALID_ARGUMENT naming the sequence and index on failure.
absl::Status ValidateBatch(const AttentionShape& shape, const BatchTables& batch,
                           int64_t num_pages);

}  // namespace asymcache::msa

#endif  // ASYMCACHE_KERNELS_MSA_H_
