#include "cachecore/step_planner.h"

#include <limits>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/str_cat.h"

namespace asymcache {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

// ---------------------------------------------------------------- StepPlan

absl::string_view SegmentKindName(Segment::Kind kind) {
  switch (kind) {
    case Segment::Kind::kResident: return "resident";
    case Segment::Kind::kHole: return "hole";
    case Segment::Kind::kTail: return "tail";
  }
  return "unknown";
}

absl::Status ValidateStepPlan(const StepPlan& plan) {
  auto fail = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("StepPlan: ", parts...));
  };
  const int64_t n = plan.context_tokens;
  const int64_t b = plan.block_tokens;
  if (n <= 0 || b <= 0) return fail("context_tokens=", n, " block_tokens=", b);
  const int64_t pages = CeilDiv(n, b);
  if (static_cast<int64_t>(plan.page_ids.size()) != pages ||
      plan.page_positions.size() != plan.page_ids.size() ||
      plan.page_lengths.size() != plan.page_ids.size() ||
      plan.hashes.size() != plan.page_ids.size() ||
      plan.page_resident.size() != plan.page_ids.size()) {
    return fail("page arrays must all have ", pages, " entries");
  }
  // Segments: cover [0, n) exactly once, in order, merged, page aligned.
  int64_t cursor = 0;
  for (size_t i = 0; i < plan.segments.size(); ++i) {
    const Segment& s = plan.segments[i];
    if (s.begin != cursor || s.end <= s.begin) {
      return fail("segment ", i, " [", s.begin, ",", s.end, ") does not continue at ", cursor);
    }
    if (s.begin % b != 0 || (s.end % b != 0 && s.end != n)) {
      return fail("segment ", i, " is not page aligned");
    }
    if (i > 0 && plan.segments[i - 1].kind == s.kind) return fail("segments ", i - 1, ",", i, " not merged");
    if (s.kind == Segment::Kind::kTail && i + 1 != plan.segments.size()) {
      return fail("tail segment ", i, " is not last");
    }
    if (s.kind == Segment::Kind::kHole &&
        (i + 1 == plan.segments.size() || plan.segments[i + 1].kind != Segment::Kind::kResident)) {
      return fail("hole segment ", i, " is not followed by a resident segment");
    }
    cursor = s.end;
  }
  if (cursor != n) return fail("segments end at ", cursor, ", context has ", n, " tokens");
  // Pages agree with segments; counters and queries follow.
  int64_t hit = 0, rebuild = 0, fresh = 0, missing = 0;
  size_t seg = 0;
  std::vector<int32_t> expected_queries;
  for (int64_t k = 0; k < pages; ++k) {
    const int64_t pos = k * b;
    const int64_t len = std::min(b, n - pos);
    if (plan.page_positions[k] != pos || plan.page_lengths[k] != len) {
      return fail("page ", k, " has position ", plan.page_positions[k], " length ",
                  plan.page_lengths[k], ", expected ", pos, " ", len);
    }
    if (plan.page_ids[k] < 0) return fail("page ", k, " has no block");
    while (plan.segments[seg].end <= pos) ++seg;
    const Segment::Kind kind = plan.segments[seg].kind;
    if ((kind == Segment::Kind::kResident) != (plan.page_resident[k] != 0)) {
      return fail("page ", k, " residency disagrees with segment ", seg);
    }
    if (kind == Segment::Kind::kResident) {
      hit += len;
      continue;
    }
    (kind == Segment::Kind::kHole ? rebuild : fresh) += len;
    if (missing >= static_cast<int64_t>(plan.allocated.size()) ||
        plan.allocated[missing] != plan.page_ids[k] || plan.allocated_pages.size() != plan.allocated.size() ||
        plan.allocated_pages[missing] != k) {
      return fail("allocated block of page ", k, " missing or out of order");
    }
    ++missing;
    for (int64_t p = pos; p < pos + len; ++p) expected_queries.push_back(static_cast<int32_t>(p));
  }
  if (missing != static_cast<int64_t>(plan.allocated.size())) return fail("extra allocated blocks");
  if (expected_queries != plan.query_positions) return fail("query positions are not holes + tail");
  if (hit != plan.hit_tokens || rebuild != plan.rebuild_tokens || fresh != plan.new_tokens) {
    return fail("token counters hit=", plan.hit_tokens, " rebuild=", plan.rebuild_tokens,
                " new=", plan.new_tokens, ", expected ", hit, " ", rebuild, " ", fresh);
  }
  return absl::OkStatus();
}

absl::Status BatchCsr::Append(const StepPlan& plan) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  if (static_cast<int64_t>(q_pos.size()) + static_cast<int64_t>(plan.query_positions.size()) > kMax ||
      static_cast<int64_t>(kv_page_ids.size()) + static_cast<int64_t>(plan.page_ids.size()) > kMax) {
    return absl::InvalidArgumentError("BatchCsr: batch exceeds int32 totals");
  }
  q_pos.insert(q_pos.end(), plan.query_positions.begin(), plan.query_positions.end());
  q_indptr.push_back(static_cast<int32_t>(q_pos.size()));
  kv_page_ids.insert(kv_page_ids.end(), plan.page_ids.begin(), plan.page_ids.end());
  kv_page_pos.insert(kv_page_pos.end(), plan.page_positions.begin(), plan.page_positions.end());
  kv_page_len.insert(kv_page_len.end(), plan.page_lengths.begin(), plan.page_lengths.end());
  kv_indptr.push_back(static_cast<int32_t>(kv_page_ids.size()));
  return absl::OkStatus();
}

void BatchCsr::Clear() {
  q_indptr.assign(1, 0);
  q_pos.clear();
  kv_indptr.assign(1, 0);
  kv_page_ids.clear();
  kv_page_pos.clear();
  kv_page_len.clear();
}

// ---------------------------------------------------------------- planning

StepPlan AssemblePlan(SequenceId sequence, int64_t context_tokens, int block_tokens,
                      absl::Span<const BlockHash> hashes, absl::Span<const BlockId> resident_ids,
                      absl::Span<const BlockId> allocated) {
  const int64_t b = block_tokens;
  const int64_t pages = CeilDiv(context_tokens, b);
  ABSL_RAW_CHECK(static_cast<int64_t>(hashes.size()) == pages &&
                     static_cast<int64_t>(resident_ids.size()) == pages,
                 "AssemblePlan: page count mismatch");
  StepPlan plan;
  plan.sequence = sequence;
  plan.context_tokens = context_tokens;
  plan.block_tokens = block_tokens;
  plan.page_ids.resize(pages);
  plan.page_positions.resize(pages);
  plan.page_lengths.resize(pages);
  plan.page_resident.resize(pages);
  plan.hashes.assign(hashes.begin(), hashes.end());
  plan.allocated.assign(allocated.begin(), allocated.end());
  plan.allocated_pages.reserve(allocated.size());

  int64_t last_resident = -1;
  for (int64_t k = pages - 1; k >= 0; --k) {
    if (resident_ids[k] != kNoBlock) {
      last_resident = k;
      break;
    }
  }
  size_t next_alloc = 0;
  for (int64_t k = 0; k < pages; ++k) {
    const int64_t pos = k * b;
    const int64_t len = std::min(b, context_tokens - pos);
    plan.page_positions[k] = static_cast<int32_t>(pos);
    plan.page_lengths[k] = static_cast<int32_t>(len);
    Segment::Kind kind;
    if (resident_ids[k] != kNoBlock) {
      kind = Segment::Kind::kResident;
      plan.page_ids[k] = resident_ids[k];
      plan.page_resident[k] = 1;
      plan.hit_tokens += len;
    } else {
      ABSL_RAW_CHECK(next_alloc < allocated.size(), "AssemblePlan: too few allocated blocks");
      kind = k < last_resident ? Segment::Kind::kHole : Segment::Kind::kTail;
      plan.page_ids[k] = allocated[next_alloc++];
      plan.allocated_pages.push_back(static_cast<int32_t>(k));
      (kind == Segment::Kind::kHole ? plan.rebuild_tokens : plan.new_tokens) += len;
      for (int64_t p = pos; p < pos + len; ++p) plan.query_positions.push_back(static_cast<int32_t>(p));
    }
    if (!plan.segments.empty() && plan.segments.back().kind == kind) {
      plan.segments.back().end = pos + len;
    } else {
      plan.segments.push_back(Segment{pos, pos + len, kind});
    }
  }
  ABSL_RAW_CHECK(next_alloc == allocated.size(), "AssemblePlan: too many allocated blocks");
  return plan;
}

StepPlanner::StepPlanner(BlockPool* pool, PrefixIndex* index, int block_tokens)
    : pool_(pool), index_(index), block_tokens_(block_tokens) {
  ABSL_RAW_CHECK(pool_ != nullptr && index_ != nullptr && block_tokens_ > 0,
                 "StepPlanner: bad arguments");
}

absl::StatusOr<PlannedStep> StepPlanner::Plan(const PlanInput& input) const {
  const int64_t n = input.context_tokens;
  if (n <= 0) return absl::InvalidArgumentError(absl::StrCat("Plan: context_tokens must be positive, got ", n));
  if (n > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("Plan: context of ", n, " tokens exceeds int32 positions"));
  }
  const int64_t pages = CeilDiv(n, block_tokens_);
  if (static_cast<int64_t>(input.hashes.size()) != pages) {
    return absl::InvalidArgumentError(absl::StrCat("Plan: ", input.hashes.size(), " hashes for ", n,
                                                   " tokens in blocks of ", block_tokens_,
                                                   " (expected ", pages, ")"));
  }
  const SequenceId seq = input.sequence;
  const absl::Span<const BlockHash> hashes = input.hashes;

  // 1. Candidates: the hint where it has an id, the index for the rest.
  std::vector<BlockId> candidates(static_cast<size_t>(pages), kNoBlock);
  std::vector<BlockHash> lookup_hashes;
  std::vector<int64_t> lookup_pages;
  for (int64_t k = 0; k < pages; ++k) {
    if (k < static_cast<int64_t>(input.residency_hint.size()) && input.residency_hint[k] != kNoBlock) {
      candidates[k] = input.residency_hint[k];
    } else {
      lookup_hashes.push_back(hashes[k]);
      lookup_pages.push_back(k);
    }
  }
  std::vector<PrefixIndex::Entry> found;
  if (!lookup_hashes.empty()) {
    index_->LookupMany(lookup_hashes, &found);
    for (size_t i = 0; i < found.size(); ++i) candidates[lookup_pages[i]] = found[i].id;
  }

  if (input.contiguous_prefix_only) {
    // Nothing after the first page without a candidate can count.
    bool gap = false;
    for (BlockId& id : candidates) {
      gap |= id == kNoBlock;
      if (gap) id = kNoBlock;
    }
  }

  // 2. Pin them (confirmed by hash in the pool) before any allocation.
  BlockPool::PinSet pins;
  std::vector<bool> pinned;
  pool_->PinIndexedMany(candidates, hashes, seq, &pins, &pinned);
  std::vector<BlockId> resident(static_cast<size_t>(pages), kNoBlock);
  std::vector<BlockId> retry_ids;
  std::vector<BlockHash> retry_hashes;
  std::vector<int64_t> retry_pages;
  for (int64_t k = 0; k < pages; ++k) {
    if (pinned[k]) {
      resident[k] = candidates[k];
    } else if (k < static_cast<int64_t>(input.residency_hint.size()) &&
               input.residency_hint[k] != kNoBlock) {
      // Stale hint: ask the index.
      retry_hashes.push_back(hashes[k]);
      retry_pages.push_back(k);
    }
  }
  if (!retry_hashes.empty()) {
    index_->LookupMany(retry_hashes, &found);
    retry_ids.reserve(found.size());
    for (const PrefixIndex::Entry& e : found) retry_ids.push_back(e.id);
    BlockPool::PinSet more;
    pool_->PinIndexedMany(retry_ids, retry_hashes, seq, &more, &pinned);
    for (size_t i = 0; i < retry_pages.size(); ++i) {
      if (pinned[i]) resident[retry_pages[i]] = retry_ids[i];
    }
    pins.Absorb(std::move(more));
  }

  // 3. Contiguous-prefix-only: drop everything after the first missing page.
  if (input.contiguous_prefix_only) {
    int64_t first_miss = 0;
    while (first_miss < pages && resident[first_miss] != kNoBlock) ++first_miss;
    bool beyond = false;
    for (int64_t k = first_miss; k < pages; ++k) beyond |= resident[k] != kNoBlock;
    if (beyond) {
      // Re-pin the kept prefix, then drop every first pin (no unpinned window).
      BlockPool::PinSet kept;
      pool_->PinIndexedMany(absl::MakeConstSpan(resident).first(first_miss),
                            hashes.first(first_miss), std::nullopt, &kept, &pinned);
      for (int64_t k = 0; k < first_miss; ++k) {
        ABSL_RAW_CHECK(pinned[k], "Plan: a pinned block could not be pinned again");
      }
      for (int64_t k = first_miss; k < pages; ++k) resident[k] = kNoBlock;
      pins = std::move(kept);
    }
  }

  // 4. Allocate holes + tail (the resident pages are pinned, hence safe).
  int64_t missing = 0;
  for (BlockId id : resident) missing += id == kNoBlock;
  PlannedStep step;
  absl::StatusOr<std::vector<BlockId>> allocated = pool_->Allocate(missing, seq, &step.evicted);
  if (!allocated.ok()) {
    return absl::Status(allocated.status().code(),
                        absl::StrCat("planning ", pages, " pages (", pages - missing,
                                     " resident): ", allocated.status().message()));
  }
  for (const EvictedBlock& e : step.evicted) index_->EraseIf(e.hash, e.id);

  step.plan = AssemblePlan(seq, n, block_tokens_, hashes, resident, *allocated);
  step.resident_pins = std::move(pins);
  return step;
}

}  // namespace asymcache
