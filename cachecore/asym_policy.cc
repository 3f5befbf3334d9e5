#include "cachecore/asym_policy.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace asymcache {
namespace {

double Seconds(absl::Time t) { return absl::ToDoubleSeconds(t - absl::UnixEpoch()); }

// ln(e^x + e^y) without overflow.
double LogAddExp(double x, double y) {
  const double hi = std::max(x, y);
  const double lo = std::min(x, y);
  return hi + std::log1p(std::exp(lo - hi));
}

absl::Duration ClampInterval(absl::Duration d) {
  return std::clamp(d, absl::ZeroDuration(), absl::Hours(1));
}

}  // namespace

absl::Status AsymPolicyOptions::Validate() const {
  if (refresh_interval < absl::ZeroDuration() || refresh_interval == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("AsymPolicyOptions.refresh_interval: must be finite and >= 0, got ",
                     absl::FormatDuration(refresh_interval)));
  }
  if (search_budget < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("AsymPolicyOptions.search_budget: must be >= 0, got ", search_budget));
  }
  if (refresh_work_per_victim < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AsymPolicyOptions.refresh_work_per_victim: must be >= 0, got ", refresh_work_per_victim));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// KeyHeap

void AsymPolicy::KeyHeap::Place(size_t i, Entry e) {
  heap_[i] = e;
  pos_[e.ref] = static_cast<int32_t>(i);
}

void AsymPolicy::KeyHeap::SiftUp(size_t i) {
  const Entry e = heap_[i];
  while (i > 0) {
    const size_t parent = (i - 1) / 2;
    if (!(e.key < heap_[parent].key)) break;
    Place(i, heap_[parent]);
    i = parent;
  }
  Place(i, e);
}

void AsymPolicy::KeyHeap::SiftDown(size_t i) {
  const Entry e = heap_[i];
  const size_t n = heap_.size();
  while (true) {
    size_t child = 2 * i + 1;
    if (child >= n) break;
    if (child + 1 < n && heap_[child + 1].key < heap_[child].key) ++child;
    if (!(heap_[child].key < e.key)) break;
    Place(i, heap_[child]);
    i = child;
  }
  Place(i, e);
}

void AsymPolicy::KeyHeap::Set(int32_t ref, double key) {
  if (static_cast<size_t>(ref) >= pos_.size()) pos_.resize(ref + 1, -1);
  const int32_t at = pos_[ref];
  if (at < 0) {
    heap_.push_back(Entry{key, ref});
    SiftUp(heap_.size() - 1);
    return;
  }
  const double old = heap_[at].key;
  heap_[at].key = key;
  if (key < old) {
    SiftUp(at);
  } else if (key > old) {
    SiftDown(at);
  }
}

void AsymPolicy::KeyHeap::Remove(int32_t ref) {
  if (ref < 0 || static_cast<size_t>(ref) >= pos_.size() || pos_[ref] < 0) return;
  const size_t at = static_cast<size_t>(pos_[ref]);
  pos_[ref] = -1;
  const Entry last = heap_.back();
  heap_.pop_back();
  if (at == heap_.size()) return;
  Place(at, last);
  SiftUp(at);
  SiftDown(static_cast<size_t>(pos_[last.ref]));
}

void AsymPolicy::KeyHeap::Assign(std::vector<Entry> entries) {
  for (const Entry& e : heap_) pos_[e.ref] = -1;
  heap_ = std::move(entries);
  for (size_t i = 0; i < heap_.size(); ++i) {
    if (static_cast<size_t>(heap_[i].ref) >= pos_.size()) pos_.resize(heap_[i].ref + 1, -1);
    pos_[heap_[i].ref] = static_cast<int32_t>(i);
  }
  for (size_t i = heap_.size() / 2; i-- > 0;) SiftDown(i);
}

// ---------------------------------------------------------------------------
// Values

AsymPolicy::AsymPolicy(const CostModel* cost, const EvictionPolicyOptions& options,
                       const AsymPolicyOptions& asym_options)
    : AsymPolicy(cost, options, asym_options, Mode{}) {}

AsymPolicy::AsymPolicy(const CostModel* cost, const EvictionPolicyOptions& options,
                       const AsymPolicyOptions& asym_options, Mode mode)
    : cost_(cost),
      options_(options),
      refresh_interval_(ClampInterval(asym_options.refresh_interval)),
      search_budget_(std::max(0, options.sample_sequences > 0
                                     ? (asym_options.search_budget > 0
                                            ? std::min(asym_options.search_budget,
                                                       options.sample_sequences)
                                            : options.sample_sequences)
                                     : asym_options.search_budget)),
      refresh_work_per_victim_(std::max(0, asym_options.refresh_work_per_victim)),
      mode_(mode),
      decay_per_s_(std::log(2.0) / absl::ToDoubleSeconds(options.shared_rate_half_life)),
      seg_cost_(cost->params().segment_overhead_s * cost->model().num_layers) {
  CacheLinearCosts();
}

absl::string_view AsymPolicy::name() const { return mode_.name; }

void AsymPolicy::SetLoadHint(int64_t step_tokens) {
  if (!mode_.follow_load || std::max<int64_t>(step_tokens, 0) == load_tokens_) return;
  load_tokens_ = std::max<int64_t>(step_tokens, 0);
  CacheLinearCosts();
  load_changed_ = true;  // every value changed: the next refresh re-keys everything
}

double AsymPolicy::LinearCost(int64_t tokens) const {
  if (tokens >= 0 && static_cast<size_t>(tokens) < linear_cost_by_tokens_.size()) {
    return linear_cost_by_tokens_[tokens];
  }
  return cost_->MarginalLinearTime(load_tokens_, tokens);
}

void AsymPolicy::CacheLinearCosts() {
  // Blocks hold at most block_tokens tokens; cache the marginal cost of each size.
  linear_cost_by_tokens_.assign(cost_->model().block_tokens + 1, 0);
  for (size_t t = 0; t < linear_cost_by_tokens_.size(); ++t) {
    linear_cost_by_tokens_[t] = cost_->MarginalLinearTime(load_tokens_, static_cast<int64_t>(t));
  }
}

double AsymPolicy::IdleSeconds(absl::Time last, absl::Time now) const {
  return absl::ToDoubleSeconds(std::max(now - last, kMinIdle));
}

double AsymPolicy::SharedRate(const Block& b, absl::Time now) const {
  const double count = std::exp(b.log_count_key - Seconds(now) * decay_per_s_);
  const double age = IdleSeconds(b.first_use, now);
  const double window = -std::expm1(-age * decay_per_s_) / decay_per_s_;
  return count / window;
}

double AsymPolicy::Value(const Block& b, absl::Time now) const {
  double rate;
  if (b.shared) {
    rate = SharedRate(b, now);
  } else {
    auto it = sequences_.find(b.seq);
    rate = 1.0 / IdleSeconds(it == sequences_.end() ? now : it->second.last_access, now);
  }
  return rate * (b.static_cost + LinearCost(b.tokens));
}

double AsymPolicy::SequenceValue(const Sequence& s, absl::Time now) const {
  return (s.cheapest.first + LinearCost(blocks_[s.cheapest.second].tokens)) /
         IdleSeconds(s.last_access, now);
}

std::optional<double> AsymPolicy::ValueOf(BlockId id, absl::Time now) const {
  if (!IsTracked(id)) return std::nullopt;
  return Value(blocks_[id], now);
}

void AsymPolicy::CountEvictable(int delta) { evictable_ += delta; }

// ---------------------------------------------------------------------------
// Structure maintenance

AsymPolicy::Sequence& AsymPolicy::SequenceFor(SequenceId seq) {
  Sequence& s = sequences_[seq];
  if (s.slot < 0) {
    if (free_slots_.empty()) {
      s.slot = static_cast<int32_t>(sequence_by_slot_.size());
      sequence_by_slot_.push_back(&s);
    } else {
      s.slot = free_slots_.back();
      free_slots_.pop_back();
      sequence_by_slot_[s.slot] = &s;
    }
  }
  return s;
}

void AsymPolicy::Rekey(const Sequence& s) {
  if (!keys_valid_) return;
  if (s.evictable.empty()) {
    sequence_heap_.Remove(s.slot);
  } else {
    sequence_heap_.Set(s.slot, SequenceValue(s, horizon_));
  }
}

void AsymPolicy::RekeyShared(BlockId id) {
  if (!keys_valid_) return;
  const Block& b = blocks_[id];
  if (b.evictable && b.shared) {
    shared_heap_.Set(id, Value(b, horizon_));
  } else {
    shared_heap_.Remove(id);
  }
}

void AsymPolicy::MaybeErase(SequenceId seq) {
  auto it = sequences_.find(seq);
  if (it == sequences_.end() || it->second.private_blocks > 0) return;
  // No private block names it: nothing is evictable under it either.
  if (const int32_t slot = it->second.slot; slot >= 0) {
    sequence_heap_.Remove(slot);
    sequence_by_slot_[slot] = nullptr;
    free_slots_.push_back(slot);
  }
  sequences_.erase(it);
}

void AsymPolicy::TouchSequence(SequenceId seq, absl::Time now) {
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) return;  // owns no block: its idle time matters to nobody
  Sequence& s = it->second;
  if (now <= s.last_access) return;
  s.last_access = now;
  Rekey(s);
}

void AsymPolicy::Insert(BlockId id) {
  const Block& b = blocks_[id];
  if (b.shared) {
    RekeyShared(id);
  } else {
    Sequence& s = SequenceFor(b.seq);
    const bool new_min = s.evictable.empty() || CostKey{b.static_cost, id} < *s.evictable.begin();
    s.evictable.insert({b.static_cost, id});
    if (new_min) {
      s.cheapest = *s.evictable.begin();
      Rekey(s);
    }
  }
}

void AsymPolicy::Erase(BlockId id) {
  const Block& b = blocks_[id];
  if (b.shared) {
    shared_heap_.Remove(id);
  } else {
    auto it = sequences_.find(b.seq);
    if (it == sequences_.end()) return;
    Sequence& s = it->second;
    const bool was_min = !s.evictable.empty() && *s.evictable.begin() == CostKey{b.static_cost, id};
    s.evictable.erase({b.static_cost, id});
    if (was_min) {
      s.cheapest = s.evictable.empty() ? CostKey{0, kNoBlock} : *s.evictable.begin();
      Rekey(s);
    }
  }
}

void AsymPolicy::RecomputeStatic(BlockId id) {
  Block& b = blocks_[id];
  double sigma = 1;
  int dseg = 0;
  if (mode_.segment_aware) {
    const bool left = b.position == 0 || by_hash_.contains(b.parent);
    auto kids = children_.find(b.hash);
    const bool right = kids != children_.end() && !kids->second.empty();
    dseg = (left ? 1 : 0) + (right ? 1 : 0) - 1;
    sigma = (left && right) ? 1 : 0;
  }
  const double static_cost = cost_->RebuildCost(b.tokens, b.position, sigma, 0) -
                             cost_->MarginalLinearTime(0, b.tokens) + dseg * seg_cost_;
  if (static_cost == b.static_cost && dseg == b.dseg) return;
  if (b.evictable) Erase(id);
  b.static_cost = std::max(0.0, static_cost);
  b.dseg = static_cast<int8_t>(dseg);
  if (b.evictable) Insert(id);
}

void AsymPolicy::RefreshNeighbours(const Block& b) {
  if (!mode_.segment_aware) return;
  if (b.position > 0) {
    if (auto it = by_hash_.find(b.parent); it != by_hash_.end()) RecomputeStatic(it->second);
  }
  if (auto it = children_.find(b.hash); it != children_.end()) {
    // Copy: RecomputeStatic never edits children_, but keep the loop obviously safe.
    const absl::InlinedVector<BlockId, 1> kids = it->second;
    for (BlockId child : kids) RecomputeStatic(child);
  }
}

void AsymPolicy::OnIndexed(const IndexedBlockInfo& info, absl::Time now) {
  if (info.id < 0) return;
  if (IsTracked(info.id)) Forget(info.id);
  if (static_cast<size_t>(info.id) >= blocks_.size()) blocks_.resize(info.id + 1);
  Block& b = blocks_[info.id];
  b = Block{};
  b.tracked = true;
  b.hash = info.hash;
  b.parent = info.parent_hash;
  b.position = std::max<int64_t>(info.position, 0);
  b.tokens = std::max<int64_t>(info.tokens, 1);
  b.seq = info.owner;
  b.first_use = now;
  ++tracked_;
  Sequence& s = SequenceFor(info.owner);
  ++s.private_blocks;
  if (now > s.last_access) {
    s.last_access = now;
    Rekey(s);
  }
  if (mode_.segment_aware) {
    by_hash_[info.hash] = info.id;
    if (b.position > 0) children_[info.parent_hash].push_back(info.id);
  }
  b.static_cost = -1;  // force RecomputeStatic to store a value
  RecomputeStatic(info.id);
  RefreshNeighbours(blocks_[info.id]);
}

void AsymPolicy::SetEvictable(BlockId id, bool evictable, absl::Time /*now*/) {
  if (!IsTracked(id) || blocks_[id].evictable == evictable) return;
  if (evictable) {
    blocks_[id].evictable = true;
    Insert(id);
    CountEvictable(+1);
  } else {
    Erase(id);
    blocks_[id].evictable = false;
    CountEvictable(-1);
  }
}

void AsymPolicy::OnAccess(BlockId id, SequenceId seq, absl::Time now) {
  if (IsTracked(id)) {
    Block& b = blocks_[id];
    if (mode_.shared_rates) {
      if (!b.shared && seq != b.seq) {
        // A second distinct sequence: the block becomes shared.
        if (b.evictable) Erase(id);
        const SequenceId old = b.seq;
        --sequences_[old].private_blocks;
        b.shared = true;
        shared_users_[id] = {old, seq};
        b.log_count_key =
            LogAddExp(Seconds(b.first_use) * decay_per_s_, Seconds(now) * decay_per_s_);
        if (b.evictable) Insert(id);
        MaybeErase(old);
      } else if (b.shared && shared_users_[id].insert(seq).second) {
        b.log_count_key = LogAddExp(b.log_count_key, Seconds(now) * decay_per_s_);
        if (b.evictable) RekeyShared(id);
      }
    } else if (seq != b.seq) {
      // Pensieve: the block follows the conversation that used it last.
      if (b.evictable) Erase(id);
      const SequenceId old = b.seq;
      --sequences_[old].private_blocks;
      b.seq = seq;
      Sequence& s = SequenceFor(seq);
      ++s.private_blocks;
      if (now > s.last_access) {
        s.last_access = now;
        Rekey(s);
      }
      if (b.evictable) Insert(id);
      MaybeErase(old);
    }
  }
  TouchSequence(seq, now);
}

// ---------------------------------------------------------------------------
// Victim search

void AsymPolicy::RefreshKeys(absl::Time now) {
  ++stats_.refreshes;
  // Once keys are valid every change keeps the heaps complete.
  const bool heaps_complete = keys_valid_;
  horizon_ = now + refresh_interval_;
  keys_valid_ = true;
  load_changed_ = false;
  searches_since_refresh_ = 0;
  if (heaps_complete) {
    // The heaps hold exactly the candidates: recompute their keys in place.
    sequence_heap_.Rekey(
        [&](int32_t slot) { return SequenceValue(*sequence_by_slot_[slot], horizon_); });
    shared_heap_.Rekey([&](int32_t id) { return Value(blocks_[id], horizon_); });
    return;
  }
  std::vector<KeyHeap::Entry> entries;
  entries.reserve(sequences_.size());
  for (const auto& [seq, s] : sequences_) {
    if (!s.evictable.empty()) entries.push_back({SequenceValue(s, horizon_), s.slot});
  }
  sequence_heap_.Assign(std::move(entries));
  entries.clear();
  if (mode_.shared_rates) {
    for (const auto& [id, users] : shared_users_) {
      const Block& b = blocks_[id];
      if (b.evictable) entries.push_back({Value(b, horizon_), id});
    }
  }
  shared_heap_.Assign(std::move(entries));
}

BlockId AsymPolicy::Search(absl::Time now) {
  ++stats_.searches;
  // Best-first walk of both heaps in key order. Keys are values at horizon_ >=
  // now, hence lower bounds of the current values: once the smallest unseen
  // key is no lower than the best current value found, nothing unseen can win.
  const std::vector<KeyHeap::Entry>& seqs = sequence_heap_.entries();
  const std::vector<KeyHeap::Entry>& shared = shared_heap_.entries();
  auto later = [](const Candidate& a, const Candidate& b) { return a.key > b.key; };
  auto push = [&](bool is_shared, size_t index) {
    const std::vector<KeyHeap::Entry>& heap = is_shared ? shared : seqs;
    if (index >= heap.size()) return;
    frontier_.push_back(Candidate{heap[index].key, is_shared, index});
    std::push_heap(frontier_.begin(), frontier_.end(), later);
  };
  frontier_.clear();
  push(false, 0);
  push(true, 0);
  double best = std::numeric_limits<double>::infinity();
  BlockId victim = kNoBlock;
  int64_t evaluated = 0;
  while (!frontier_.empty()) {
    std::pop_heap(frontier_.begin(), frontier_.end(), later);
    const Candidate c = frontier_.back();
    frontier_.pop_back();
    if (victim != kNoBlock && c.key >= best) break;
    double value;
    BlockId id;
    if (c.shared) {
      id = shared[c.index].ref;
      value = Value(blocks_[id], now);
    } else {
      const Sequence& s = *sequence_by_slot_[seqs[c.index].ref];
      id = s.evictable.begin()->second;
      value = SequenceValue(s, now);
    }
    if (victim == kNoBlock || value < best) {
      best = value;
      victim = id;
    }
    ++evaluated;
    if (search_budget_ > 0 && evaluated >= search_budget_) break;
    push(c.shared, 2 * c.index + 1);
    push(c.shared, 2 * c.index + 2);
  }
  stats_.entries_evaluated += evaluated;
  return victim;
}

std::optional<BlockId> AsymPolicy::PopVictim(absl::Time now) {
  if (evictable_ == 0) return std::nullopt;
  if (!keys_valid_) {
    RefreshKeys(now);
  } else if (now > horizon_ || load_changed_) {
    const size_t entries = sequence_heap_.entries().size() + shared_heap_.entries().size();
    if (refresh_work_per_victim_ == 0 || entries < kAlwaysRefreshBelow ||
        searches_since_refresh_ * refresh_work_per_victim_ >= static_cast<int64_t>(entries)) {
      RefreshKeys(now);
    }
  }
  ++searches_since_refresh_;
  const BlockId victim = Search(now);
  if (victim == kNoBlock) return std::nullopt;  // unreachable while evictable_ > 0
  Forget(victim);
  return victim;
}

void AsymPolicy::OnRemoved(BlockId id) {
  if (IsTracked(id)) Forget(id);
}

void AsymPolicy::Forget(BlockId id) {
  Block& b = blocks_[id];
  if (b.evictable) {
    Erase(id);
    b.evictable = false;
    CountEvictable(-1);
  }
  if (b.shared) {
    shared_users_.erase(id);
  } else if (auto it = sequences_.find(b.seq); it != sequences_.end()) {
    --it->second.private_blocks;
    MaybeErase(b.seq);
  }
  if (mode_.segment_aware) {
    if (auto it = by_hash_.find(b.hash); it != by_hash_.end() && it->second == id) {
      by_hash_.erase(it);
    }
    if (b.position > 0) {
      if (auto it = children_.find(b.parent); it != children_.end()) {
        auto& kids = it->second;
        kids.erase(std::remove(kids.begin(), kids.end(), id), kids.end());
        if (kids.empty()) children_.erase(it);
      }
    }
  }
  const Block removed = b;
  b = Block{};
  --tracked_;
  RefreshNeighbours(removed);
}

}  // namespace asymcache
