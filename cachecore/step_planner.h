// StepPlanner: turns a context's chain hashes into a StepPlan (DESIGN.md §3.3).
//
// Plan(): looks every page up (first in the caller's residency hint — the page
// ids of the session's previous plan — confirmed against the pool by hash, then
// in the PrefixIndex), PINS the resident pages, and only then allocates blocks
// for the holes and the tail, so allocation can never evict the request's own
// resident blocks. Blocks evicted by the allocation are erased from the index
// before Plan returns and are reported in PlannedStep::evicted. On failure
// (RESOURCE_EXHAUSTED) nothing is left behind: pins are released, nothing was
// allocated.
//
// Partial last page: resident only if its exact hash (which includes its
// token count) is indexed. A follow-up turn that extends a partial page sees a
// different hash for it and recomputes it (it becomes part of the tail).
// Contiguous-prefix-only mode (lru-tail): everything after the first missing
// page is treated as missing (tail) and is neither pinned nor reused.
//
// Thread-safety: thread-safe (no state of its own beyond pointers to the
// thread-safe pool and index, which must outlive it).
#ifndef ASYMCACHE_CACHECORE_STEP_PLANNER_H_
#define ASYMCACHE_CACHECORE_STEP_PLANNER_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cachecore/block_pool.h"
#include "cachecore/prefix_index.h"
#include "cachecore/step_plan.h"
#include "cachecore/types.h"

namespace asymcache {

struct PlanInput {
  SequenceId sequence = 0;
  int64_t context_tokens = 0;            // > 0
  absl::Span<const BlockHash> hashes;    // ceil(context_tokens / block_tokens) chain hashes
  // Optional: block id per page from an earlier plan of this session (may be
  // shorter than hashes; kNoBlock = unknown). Only a speed hint: every entry is
  // confirmed by hash in the pool, misses fall back to the index.
  absl::Span<const BlockId> residency_hint;
  bool contiguous_prefix_only = false;
};

struct PlannedStep {
  StepPlan plan;
  BlockPool::PinSet resident_pins;    // one pin per resident page
  std::vector<EvictedBlock> evicted;  // already erased from the index
};

class StepPlanner {
 public:
  // Precondition: pool and index non-null and outlive the planner; block_tokens > 0.
  StepPlanner(BlockPool* pool, PrefixIndex* index, int block_tokens);

  // INVALID_ARGUMENT for context_tokens <= 0, more than INT32_MAX tokens or a
  // hash count that does not match; RESOURCE_EXHAUSTED when the pool cannot
  // supply the missing pages.
  absl::StatusOr<PlannedStep> Plan(const PlanInput& input) const;

  int block_tokens() const { return block_tokens_; }

 private:
  BlockPool* const pool_;
  PrefixIndex* const index_;
  const int block_tokens_;
};

// The layout part of planning, as a pure function: given per-page residency
// (resident_ids[k] != kNoBlock = resident) and the blocks allocated for the
// missing pages (position order), fills segments, pages, query positions and
// counters. Precondition: sizes consistent (hashes.size() == resident_ids.size()
// == number of pages; allocated.size() == missing pages).
StepPlan AssemblePlan(SequenceId sequence, int64_t context_tokens, int block_tokens,
                      absl::Span<const BlockHash> hashes, absl::Span<const BlockId> resident_ids,
                      absl::Span<const BlockId> allocated);

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_STEP_PLANNER_H_
