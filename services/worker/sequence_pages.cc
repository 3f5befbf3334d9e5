#include "services/worker/sequence_pages.h"

#include <algorithm>

#include "absl/base/internal/raw_logging.h"

namespace asymcache::worker {

SequencePages::SequencePages(const StepPlan& plan)
    : context_tokens_(plan.context_tokens),
      block_tokens_(plan.block_tokens),
      page_blocks_(plan.page_ids.begin(), plan.page_ids.end()),
      page_positions_(plan.page_positions),
      page_lengths_(plan.page_lengths),
      page_resident_(plan.page_resident) {
  rows_valid_.resize(page_blocks_.size());
  for (size_t k = 0; k < page_blocks_.size(); ++k) {
    rows_valid_[k] = page_resident_[k] ? page_lengths_[k] : 0;
  }
  for (int32_t q : plan.query_positions) {
    if (!pending_.empty() && pending_.back().second == q) {
      ++pending_.back().second;
    } else {
      pending_.push_back({q, q + 1});
    }
  }
}

int64_t SequencePages::pending_tokens() const {
  int64_t n = 0;
  for (const auto& [b, e] : pending_) n += e - b;
  return n;
}

std::vector<SequencePages::RowCopy> SequencePages::TakeCopiesFrom(const SequencePages& previous) {
  std::vector<RowCopy> copies;
  const size_t shared = std::min(page_blocks_.size(), previous.page_blocks_.size());
  for (size_t k = 0; k < shared; ++k) {
    if (page_resident_[k] || rows_valid_[k] > 0) continue;
    if (previous.page_positions_[k] != page_positions_[k]) continue;
    const int32_t rows = std::min(previous.rows_valid_[k], page_lengths_[k]);
    if (rows <= 0 || previous.page_blocks_[k] == page_blocks_[k]) continue;
    copies.push_back({previous.page_blocks_[k], page_blocks_[k], rows, page_positions_[k]});
    MarkComputed(page_positions_[k], page_positions_[k] + rows);
  }
  return copies;
}

void SequencePages::MarkComputed(int64_t begin, int64_t end) {
  if (begin >= end) return;
  std::vector<std::pair<int64_t, int64_t>> next;
  next.reserve(pending_.size() + 1);
  for (const auto& [b, e] : pending_) {
    if (e <= begin || b >= end) {
      next.push_back({b, e});
      continue;
    }
    if (b < begin) next.push_back({b, begin});
    if (e > end) next.push_back({end, e});
  }
  pending_ = std::move(next);
  // Rows of each touched page: computing is in position order, so the valid
  // rows of a page grow as a prefix.
  for (int64_t k = begin / block_tokens_; k * block_tokens_ < end && k < static_cast<int64_t>(page_blocks_.size()); ++k) {
    const int64_t page_end = std::min<int64_t>(end - page_positions_[k], page_lengths_[k]);
    rows_valid_[k] = std::max<int32_t>(rows_valid_[k], static_cast<int32_t>(page_end));
  }
}

bool SequencePages::CanExtendInPlace() const {
  return last_page_private_ && !page_blocks_.empty() && pending_.empty() &&
         page_lengths_.back() < block_tokens_ &&
         rows_valid_.back() == page_lengths_.back();
}

void SequencePages::ExtendInPlace() {
  ABSL_RAW_CHECK(CanExtendInPlace(), "ExtendInPlace: the last page is not a private partial page");
  const int64_t position = context_tokens_;
  ++context_tokens_;
  ++page_lengths_.back();
  pending_.push_back({position, position + 1});
}

bool SequencePages::PrivatePageIsFull() const {
  return last_page_private_ && !page_blocks_.empty() && pending_.empty() &&
         page_lengths_.back() == block_tokens_ && rows_valid_.back() == block_tokens_;
}

void SequencePages::StartPrivatePage(int32_t block) {
  ABSL_RAW_CHECK(PrivatePageIsFull(), "StartPrivatePage: the private last page is not full");
  page_resident_.back() = 1;  // sealed: read only
  const int64_t position = context_tokens_;
  page_blocks_.push_back(block);
  page_positions_.push_back(static_cast<int32_t>(position));
  page_lengths_.push_back(1);
  page_resident_.push_back(0);
  rows_valid_.push_back(0);
  ++context_tokens_;
  pending_.push_back({position, position + 1});
}

std::pair<int32_t, int32_t> SequencePages::Slot(int64_t position) const {
  const int64_t k = position / block_tokens_;
  return {page_blocks_[k], static_cast<int32_t>(position - page_positions_[k])};
}

void SequencePages::AppendVisiblePages(int64_t max_position,
                                       msa::BatchTablesStorage* tables) const {
  for (size_t k = 0; k < page_blocks_.size(); ++k) {
    if (page_positions_[k] > max_position) break;
    const int64_t visible = std::min<int64_t>(page_lengths_[k], max_position - page_positions_[k] + 1);
    tables->kv_page_ids.push_back(page_blocks_[k]);
    tables->kv_page_pos.push_back(page_positions_[k]);
    tables->kv_page_len.push_back(static_cast<int32_t>(visible));
  }
  tables->kv_indptr.push_back(static_cast<int32_t>(tables->kv_page_ids.size()));
}

}  // namespace asymcache::worker
