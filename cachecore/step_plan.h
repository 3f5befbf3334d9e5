// StepPlan: what one request step must compute and read, in the CSR form the
// MSA kernels consume (kernels/msa.h BatchTables; cachecore does not include
// kernels/, it mirrors the layout).
//
// A context of N tokens is cut into pages (blocks) of B tokens, page k covering
// [k*B, min((k+1)*B, N)); only the last page may be partial. Each page is
// either resident (a sealed block whose chain hash is indexed) or missing. The
// segments classify token positions:
//   kResident  pages found in the cache (read only)
//   kHole      missing pages followed, later in the context, by a resident page
//              (rebuilt: lossless, every hole is recomputed)
//   kTail      the missing pages after the last resident page (new tokens, and
//              any cached-but-changed partial block they extend)
// Segments cover [0, N) exactly once, in position order, adjacent segments of
// the same kind merged. query_positions lists every position of every hole and
// the tail, increasing. Every page (resident or freshly allocated) is listed
// in page_ids in position order, so the step's KV view is complete.
//
// Contract: plain values, thread-safe as values.
#ifndef ASYMCACHE_CACHECORE_STEP_PLAN_H_
#define ASYMCACHE_CACHECORE_STEP_PLAN_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "cachecore/types.h"

namespace asymcache {

struct Segment {
  enum class Kind : uint8_t { kResident = 0, kHole = 1, kTail = 2 };
  int64_t begin = 0;  // first token position
  int64_t end = 0;    // one past the last token position
  Kind kind = Kind::kResident;
  int64_t length() const { return end - begin; }
  friend bool operator==(const Segment& a, const Segment& b) {
    return a.begin == b.begin && a.end == b.end && a.kind == b.kind;
  }
};
absl::string_view SegmentKindName(Segment::Kind kind);

struct StepPlan {
  SequenceId sequence = 0;
  int64_t context_tokens = 0;
  int block_tokens = 0;

  std::vector<Segment> segments;

  // Per page (one entry per block of the context, position order):
  std::vector<BlockId> page_ids;         // resident block or freshly allocated block
  std::vector<int32_t> page_positions;   // absolute position of the page's first token (k*B)
  std::vector<int32_t> page_lengths;     // valid tokens, B except a partial last page
  std::vector<BlockHash> hashes;         // chain hash of the page (commit seals/indexes with it)
  std::vector<uint8_t> page_resident;    // 1 = resident (read only), 0 = allocated (written)

  std::vector<int32_t> query_positions;  // holes + tail positions, increasing
  std::vector<BlockId> allocated;        // blocks allocated for holes and tail, position order
  std::vector<int32_t> allocated_pages;  // page index of each allocated block

  int64_t hit_tokens = 0;      // tokens in resident pages
  int64_t rebuild_tokens = 0;  // tokens in holes
  int64_t new_tokens = 0;      // tokens in the tail
};

// Checks every invariant listed above (coverage, ordering, merging, page
// geometry, query positions = holes + tail, allocated = non-resident pages,
// token counters). INVALID_ARGUMENT naming the first violation.
absl::Status ValidateStepPlan(const StepPlan& plan);

// Several plans appended into one batch, the CSR layout of
// kernels/msa.h BatchTablesStorage (same field names and meaning).
struct BatchCsr {
  std::vector<int32_t> q_indptr{0};
  std::vector<int32_t> q_pos;
  std::vector<int32_t> kv_indptr{0};
  std::vector<int32_t> kv_page_ids;
  std::vector<int32_t> kv_page_pos;
  std::vector<int32_t> kv_page_len;

  int32_t batch_size() const { return static_cast<int32_t>(q_indptr.size()) - 1; }
  // Appends one sequence. INVALID_ARGUMENT (and no change) when the totals
  // would overflow int32.
  absl::Status Append(const StepPlan& plan);
  void Clear();
};

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_STEP_PLAN_H_
