// SequencePages: one sequence's view of the pages its current lease planned
// (cachecore/step_plan.h) while the worker computes them: which query
// positions are still pending, which rows of each page hold K/V, where a
// position's K/V goes, and which pages a step's queries may see.
//
// Decode without a plan per token: after CommitStep(keep_partial_last_page)
// the partial last page is the lease's private block; ExtendInPlace() appends
// one position to it (no RPC) until it is full. Then the daemon's ExtendLease
// seals that page and hands out the next page's block: StartPrivatePage()
// (no plan). Where that is not possible, the next plan (the longer context)
// allocates a fresh block for that page; CopiesFrom(previous) finds the rows
// the previous lease already holds for such pages (same positions, same
// tokens: the same K/V) so they are copied, not recomputed.
//
// Contract: a plain value type, not thread-safe (the engine's step thread
// owns it). Positions are absolute token positions.
#ifndef ASYMCACHE_SERVICES_WORKER_SEQUENCE_PAGES_H_
#define ASYMCACHE_SERVICES_WORKER_SEQUENCE_PAGES_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "cachecore/step_plan.h"
#include "kernels/msa.h"

namespace asymcache::worker {

class SequencePages {
 public:
  SequencePages() = default;
  // The plan's pages; pending = its query positions (holes + tail) as runs.
  // Precondition: ValidateStepPlan(plan) would pass (page_ids, positions,
  // lengths, resident flags, query positions consistent).
  explicit SequencePages(const StepPlan& plan);

  struct RowCopy {
    int32_t src_block = 0;
    int32_t dst_block = 0;
    int32_t rows = 0;           // rows [0, rows) of the page
    int64_t first_position = 0; // position of row 0
  };
  // For every page this plan allocated whose rows `previous` (the prior
  // lease's pages, same sequence, a prefix of this context) already holds:
  // the copy to make. Marks the copied positions computed here.
  std::vector<RowCopy> TakeCopiesFrom(const SequencePages& previous);

  int64_t context_tokens() const { return context_tokens_; }
  int32_t block_tokens() const { return block_tokens_; }
  const std::vector<std::pair<int64_t, int64_t>>& pending() const { return pending_; }
  int64_t pending_tokens() const;
  bool done() const { return pending_.empty(); }

  // Positions [begin, end) were computed (their K/V is in their pages).
  // Precondition: [begin, end) is pending.
  void MarkComputed(int64_t begin, int64_t end);

  // The last page is this lease's private block (allocated by it and kept
  // private at commit). Set by the engine after CommitStep.
  void set_last_page_private(bool value) { last_page_private_ = value; }
  // The last page is partial and was allocated by this plan (not resident):
  // the page CommitStep(keep_partial_last_page) keeps private.
  bool LastPageIsOwnPartial() const {
    return !page_blocks_.empty() && page_lengths_.back() < block_tokens_ &&
           !page_resident_.back();
  }
  // The next position fits the private last page.
  bool CanExtendInPlace() const;
  // context_tokens + 1, written into the private last page; pending += it.
  // Precondition: CanExtendInPlace().
  void ExtendInPlace();
  // The private last page is full and every row is written (nothing
  // pending): the next position needs a new page (ExtendLease).
  bool PrivatePageIsFull() const;
  // ExtendLease sealed the full private page (read only from now) and gave
  // `block` for the next page, which starts at context_tokens: it becomes the
  // private last page and holds context_tokens + 1 (pending += it).
  // Precondition: PrivatePageIsFull().
  void StartPrivatePage(int32_t block);

  // Block and row that receive position `position`'s K/V.
  std::pair<int32_t, int32_t> Slot(int64_t position) const;
  // Appends the pages queries up to `max_position` may see (position order;
  // the last one cut at max_position) to the kv arrays of `tables` and closes
  // the sequence's kv range (kv_indptr).
  void AppendVisiblePages(int64_t max_position, msa::BatchTablesStorage* tables) const;

  // Blocks of the pages (position order).
  const std::vector<int32_t>& page_blocks() const { return page_blocks_; }

 private:
  int64_t context_tokens_ = 0;
  int32_t block_tokens_ = 16;
  std::vector<int32_t> page_blocks_;
  std::vector<int32_t> page_positions_;
  std::vector<int32_t> page_lengths_;
  std::vector<uint8_t> page_resident_;
  std::vector<int32_t> rows_valid_;  // rows holding K/V (resident: the page length)
  std::vector<std::pair<int64_t, int64_t>> pending_;
  bool last_page_private_ = false;
};

}  // namespace asymcache::worker

#endif  // ASYMCACHE_SERVICES_WORKER_SEQUENCE_PAGES_H_
