#include "cachecore/asym_policy.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace asymcache {
namespace {

double Seconds(absl::Time t) { return absl::ToDoubleSeconds(t - absl::UnixEpoch()); }

// Times of the hot paths are integer Unix nanoseconds: exact differences, no
// absl::Duration division per value.
int64_t Nanos(absl::Time t) { return absl::ToUnixNanos(t); }

// ln(e^x + e^y) without overflow.
double LogAddExp(double x, double y) {
  const double hi = std::max(x, y);
  const double lo = std::min(x, y);
  return hi + std::log1p(std::exp(lo - hi));
}

// 4-ary min-heap helpers for the per-sequence cost heaps: half the depth of a
// binary heap, and a node's children share a cache line or two.
constexpr size_t kArity = 4;

template <typename T, typename Less>
void DarySiftUp(std::vector<T>& h, size_t i, Less less) {
  const T e = h[i];
  while (i > 0) {
    const size_t parent = (i - 1) / kArity;
    if (!less(e, h[parent])) break;
    h[i] = h[parent];
    i = parent;
  }
  h[i] = e;
}

template <typename T, typename Less>
void DarySiftDown(std::vector<T>& h, size_t i, size_t n, Less less) {
  const T e = h[i];
  while (true) {
    const size_t first = i * kArity + 1;
    if (first >= n) break;
    const size_t end = std::min(first + kArity, n);
    size_t best = first;
    for (size_t c = first + 1; c < end; ++c) {
      if (less(h[c], h[best])) best = c;
    }
    if (!less(h[best], e)) break;
    h[i] = h[best];
    i = best;
  }
  h[i] = e;
}

template <typename T, typename Less>
void DaryMakeHeap(std::vector<T>& h, Less less) {
  if (h.size() < 2) return;
  for (size_t i = (h.size() - 2) / kArity + 1; i-- > 0;) DarySiftDown(h, i, h.size(), less);
}

template <typename T, typename Less>
void DaryPop(std::vector<T>& h, Less less) {
  h.front() = h.back();
  h.pop_back();
  if (!h.empty()) DarySiftDown(h, 0, h.size(), less);
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

void AsymPolicy::KeyHeap::Set(const Entry& entry) {
  const int32_t ref = entry.ref;
  const double key = entry.key;
  if (static_cast<size_t>(ref) >= pos_.size()) pos_.resize(ref + 1, -1);
  const int32_t at = pos_[ref];
  if (at < 0) {
    heap_.push_back(entry);
    SiftUp(heap_.size() - 1);
    return;
  }
  const double old = heap_[at].key;
  heap_[at] = entry;
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
  // A rebuild is prefill work: it rides in a step that carries a prefill
  // chunk, never in the decode-only step the last hint may describe.
  const int64_t load = std::max<int64_t>(step_tokens, kMinRebuildStepTokens);
  if (!mode_.follow_load || load == load_tokens_) return;
  load_tokens_ = load;
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

double AsymPolicy::IdleSeconds(int64_t last_ns, int64_t now_ns) {
  static const int64_t kMinIdleNs = absl::ToInt64Nanoseconds(kMinIdle);
  if (last_ns > now_ns - kMinIdleNs) return kMinIdleNs * 1e-9;
  return static_cast<double>(static_cast<uint64_t>(now_ns) - static_cast<uint64_t>(last_ns)) * 1e-9;
}

double AsymPolicy::SharedRate(BlockId id, absl::Time now) const {
  const BlockCold& c = cold_[id];
  const double count = std::exp(c.log_count_key - Seconds(now) * decay_per_s_);
  const double age = IdleSeconds(c.first_use_ns, Nanos(now));
  const double window = -std::expm1(-age * decay_per_s_) / decay_per_s_;
  // New readers (distinct sequences per second) plus the readers it already
  // has coming back (Pensieve's 1/idle over the last access by any of them).
  return count / window + 1.0 / IdleSeconds(c.last_access_ns, Nanos(now));
}

double AsymPolicy::Value(BlockId id, absl::Time now) const {
  const Block& b = blocks_[id];
  const double rate =
      b.shared ? SharedRate(id, now)
               : 1.0 / IdleSeconds(sequences_[b.seq_slot].last_access_ns, Nanos(now));
  return rate * (b.static_cost + LinearCost(b.tokens));
}

double AsymPolicy::SequenceValue(const Sequence& s, int64_t now_ns) const {
  return (s.cheapest.cost + LinearCost(s.cheapest_tokens)) / IdleSeconds(s.last_access_ns, now_ns);
}

std::optional<double> AsymPolicy::ValueOf(BlockId id, absl::Time now) const {
  if (!IsTracked(id)) return std::nullopt;
  return Value(id, now);
}

void AsymPolicy::CountEvictable(int delta) { evictable_ += delta; }

// ---------------------------------------------------------------------------
// Sequences and their cost heaps

int32_t AsymPolicy::FindSlot(SequenceId seq) const {
  auto it = slot_of_.find(seq);
  return it == slot_of_.end() ? -1 : it->second;
}

int32_t AsymPolicy::SlotFor(SequenceId seq) {
  auto [it, inserted] = slot_of_.try_emplace(seq, -1);
  if (!inserted) return it->second;
  int32_t slot;
  if (free_slots_.empty()) {
    slot = static_cast<int32_t>(sequences_.size());
    sequences_.emplace_back();
  } else {
    slot = free_slots_.back();
    free_slots_.pop_back();
  }
  it->second = slot;
  Sequence& s = sequences_[slot];
  s.id = seq;
  s.in_use = true;
  return slot;
}

void AsymPolicy::MarkDirty(int32_t slot) {
  // Before the first refresh there are no keys: the refresh computes them all.
  if (!keys_valid_) return;
  Sequence& s = sequences_[slot];
  if (s.dirty) return;
  s.dirty = true;
  dirty_.push_back(slot);
}

void AsymPolicy::TouchSlot(int32_t slot, int64_t now_ns) {
  Sequence& s = sequences_[slot];
  if (now_ns <= s.last_access_ns) return;
  s.last_access_ns = now_ns;
  MarkDirty(slot);
}

void AsymPolicy::MaybeErase(int32_t slot) {
  Sequence& s = sequences_[slot];
  if (!s.in_use || s.private_blocks > 0) return;
  // No private block names it: nothing is evictable under it, no entry is live.
  sequence_heap_.Remove(slot);
  slot_of_.erase(s.id);
  s = Sequence{};  // releases the heap's memory; dirty_ may still name the slot
  free_slots_.push_back(slot);
}

void AsymPolicy::Kill(Block& b) {
  if (b.has_entry) {
    b.has_entry = false;
    --sequences_[b.seq_slot].live_entries;
  }
  ++b.stamp;
}

void AsymPolicy::Compact(Sequence& s) {
  size_t kept = 0;
  for (const CostEntry& e : s.heap) {
    if (blocks_[e.id].stamp == e.stamp) s.heap[kept++] = e;
  }
  s.heap.resize(kept);
  s.heap_size = kept;
  DaryMakeHeap(s.heap, [](const CostEntry& a, const CostEntry& b) { return CostLess(a, b); });
}

void AsymPolicy::Normalize(Sequence& s) {
  auto less = [](const CostEntry& a, const CostEntry& b) { return CostLess(a, b); };
  const size_t pending = s.heap.size() - s.heap_size;
  if (pending * 4 > s.heap_size) {
    Compact(s);
  } else {
    for (; s.heap_size < s.heap.size(); ++s.heap_size) DarySiftUp(s.heap, s.heap_size, less);
  }
  while (!s.heap.empty()) {
    const CostEntry& top = s.heap.front();
    Block& b = blocks_[top.id];
    if (b.stamp == top.stamp) {
      if (b.evictable) break;
      // Pinned: drop the entry; it is pushed again when the block is released.
      b.has_entry = false;
      --s.live_entries;
    }
    DaryPop(s.heap, less);
  }
  s.heap_size = s.heap.size();
  s.cheapest = s.heap.empty() ? CostEntry{0, kNoBlock, 0} : s.heap.front();
  s.cheapest_tokens = s.heap.empty() ? 0 : blocks_[s.cheapest.id].tokens;
}

void AsymPolicy::ProcessDirty() {
  const int64_t horizon_ns = Nanos(horizon_);
  for (const int32_t slot : dirty_) {
    Sequence& s = sequences_[slot];
    if (!s.dirty) continue;  // freed (and maybe reused) since it was queued
    s.dirty = false;
    if (s.evictable == 0) {
      s.cheapest = CostEntry{0, kNoBlock, 0};
      sequence_heap_.Remove(slot);
    } else {
      Normalize(s);
      sequence_heap_.Set(KeyHeap::Entry{SequenceValue(s, horizon_ns), slot,
                                        static_cast<int32_t>(s.cheapest_tokens), s.cheapest.cost,
                                        s.last_access_ns});
    }
  }
  dirty_.clear();
}

// ---------------------------------------------------------------------------
// Structure maintenance

void AsymPolicy::RekeyShared(BlockId id) {
  if (!keys_valid_) return;
  const Block& b = blocks_[id];
  if (b.evictable && b.shared) {
    shared_heap_.Set(id, Value(id, horizon_));
  } else {
    shared_heap_.Remove(id);
  }
}

void AsymPolicy::Insert(BlockId id) {
  Block& b = blocks_[id];
  if (b.shared) {
    RekeyShared(id);
    return;
  }
  const int32_t slot = b.seq_slot;
  Sequence& s = sequences_[slot];
  ++s.evictable;
  if (!b.has_entry) {
    s.heap.push_back(CostEntry{b.static_cost, id, b.stamp});
    b.has_entry = true;
    ++s.live_entries;
    if (s.heap.size() > 2 * s.live_entries + 64) Compact(s);
  }
  if (!s.dirty && (s.evictable == 1 || CostLess(CostEntry{b.static_cost, id, 0}, s.cheapest))) {
    MarkDirty(slot);
  }
}

void AsymPolicy::Erase(BlockId id) {
  const Block& b = blocks_[id];
  if (b.shared) {
    shared_heap_.Remove(id);
    return;
  }
  Sequence& s = sequences_[b.seq_slot];
  --s.evictable;
  // The entry stays (dormant while the block is not evictable).
  if (s.cheapest.id == id || s.evictable == 0) MarkDirty(b.seq_slot);
}

void AsymPolicy::RecomputeStatic(BlockId id) {
  Block& b = blocks_[id];
  double sigma = 1;
  int dseg = 0;
  if (mode_.segment_aware) {
    const bool left = b.left;
    const bool right = b.right;
    dseg = (left ? 1 : 0) + (right ? 1 : 0) - 1;
    sigma = (left && right) ? 1 : 0;
  }
  const double static_cost = std::max(
      0.0, cost_->RebuildAttentionCost(b.tokens, b.position, sigma) + dseg * seg_cost_);
  if (static_cost == b.static_cost && dseg == b.dseg) return;
  if (b.evictable) Erase(id);
  Kill(b);
  b.static_cost = static_cost;
  b.dseg = static_cast<int8_t>(dseg);
  if (b.evictable) Insert(id);
}

// ---------------------------------------------------------------------------
// Hash nodes

int32_t AsymPolicy::NodeFor(const BlockHash& hash) {
  auto [it, inserted] = node_of_.try_emplace(hash, -1);
  if (!inserted) {
    const HashNode& node = nodes_[it->second];
    if (node.first_holder == kNoBlock && node.first_child == kNoBlock) --empty_nodes_;
    return it->second;
  }
  int32_t n;
  if (free_nodes_.empty()) {
    n = static_cast<int32_t>(nodes_.size());
    nodes_.emplace_back();
  } else {
    n = free_nodes_.back();
    free_nodes_.pop_back();
  }
  nodes_[n] = HashNode{.live = true};
  it->second = n;
  return n;  // the caller links a block into it at once

}

void AsymPolicy::MaybeFreeNode(int32_t n) {
  if (n < 0) return;
  const HashNode& node = nodes_[n];
  if (!node.live || node.first_holder != kNoBlock || node.first_child != kNoBlock) return;
  ++empty_nodes_;
  if (empty_nodes_ > 1024 && empty_nodes_ * 2 > node_of_.size()) CollectNodes();
}

void AsymPolicy::CollectNodes() {
  absl::erase_if(node_of_, [&](const std::pair<const BlockHash, int32_t>& entry) {
    HashNode& node = nodes_[entry.second];
    if (node.first_holder != kNoBlock || node.first_child != kNoBlock) return false;
    node.live = false;
    free_nodes_.push_back(entry.second);
    return true;
  });
  empty_nodes_ = 0;
}

void AsymPolicy::RecomputeHolders(int32_t n, bool right) {
  if (n < 0) return;
  for (BlockId id = nodes_[n].first_holder; id != kNoBlock; id = blocks_[id].next_holder) {
    blocks_[id].right = right;
    RecomputeStatic(id);
  }
}

void AsymPolicy::RecomputeChildren(int32_t n, bool left) {
  if (n < 0) return;
  for (BlockId id = nodes_[n].first_child; id != kNoBlock; id = blocks_[id].next_sibling) {
    blocks_[id].left = left;
    RecomputeStatic(id);
  }
}

// ---------------------------------------------------------------------------
// Events

void AsymPolicy::OnIndexed(const IndexedBlockInfo& info, absl::Time now) {
  if (info.id < 0) return;
  if (IsTracked(info.id)) Forget(info.id);
  if (static_cast<size_t>(info.id) >= blocks_.size()) {
    blocks_.resize(info.id + 1);
    cold_.resize(info.id + 1);
  }
  const BlockId id = info.id;
  {
    Block& b = blocks_[id];
    const uint32_t stamp = b.stamp;
    b = Block{};
    b.stamp = stamp;
    b.tracked = true;
    b.position = std::max<int64_t>(info.position, 0);
    b.tokens = static_cast<int32_t>(std::clamp<int64_t>(info.tokens, 1, INT32_MAX));
    cold_[id] = BlockCold{.owner = info.owner, .first_use_ns = Nanos(now)};
  }
  ++tracked_;
  const int32_t slot = SlotFor(info.owner);
  blocks_[id].seq_slot = slot;
  ++sequences_[slot].private_blocks;
  TouchSlot(slot, Nanos(now));
  bool first_holder = false;  // the first resident block with this hash
  bool first_child = false;   // the first resident child of its parent hash
  if (mode_.segment_aware) {
    // Two lookups in a map as large as the index: overlap their cache misses.
    if (info.position > 0) node_of_.prefetch(info.parent_hash);
    const int32_t node = NodeFor(info.hash);
    const int32_t parent_node = blocks_[id].position > 0 ? NodeFor(info.parent_hash) : -1;
    Block& b = blocks_[id];
    b.node = node;
    b.parent_node = parent_node;
    HashNode& own = nodes_[node];
    first_holder = own.first_holder == kNoBlock;
    b.next_holder = own.first_holder;
    if (b.next_holder != kNoBlock) blocks_[b.next_holder].prev_holder = id;
    own.first_holder = id;
    if (parent_node >= 0) {
      HashNode& parent = nodes_[parent_node];
      first_child = parent.first_child == kNoBlock;
      b.next_sibling = parent.first_child;
      if (b.next_sibling != kNoBlock) blocks_[b.next_sibling].prev_sibling = id;
      parent.first_child = id;
    }
    b.left = b.position == 0 || nodes_[b.parent_node].first_holder != kNoBlock;
    b.right = nodes_[b.node].first_child != kNoBlock;
  }
  blocks_[id].static_cost = -1;  // force RecomputeStatic to store a value
  RecomputeStatic(id);
  // Neighbours whose left / right resident status just changed.
  if (first_child) RecomputeHolders(blocks_[id].parent_node, /*right=*/true);
  if (first_holder) RecomputeChildren(blocks_[id].node, /*left=*/true);
}

void AsymPolicy::SetEvictableOne(BlockId id, bool evictable) {
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

void AsymPolicy::SetEvictable(BlockId id, bool evictable, absl::Time /*now*/) {
  SetEvictableOne(id, evictable);
}

void AsymPolicy::SetEvictableMany(absl::Span<const BlockId> ids, bool evictable,
                                  absl::Time /*now*/) {
  for (BlockId id : ids) SetEvictableOne(id, evictable);
}

void AsymPolicy::OnAccessOne(BlockId id, SequenceId seq, absl::Time now, int64_t now_ns) {
  int32_t slot = -1;  // seq's slot, when known
  if (IsTracked(id)) {
    Block& b = blocks_[id];
    if (!b.shared && sequences_[b.seq_slot].id == seq) {
      slot = b.seq_slot;  // its own sequence: the common case, no lookup
    } else if (mode_.shared_rates) {
      if (!b.shared) {
        // A second distinct sequence: the block becomes shared.
        if (b.evictable) Erase(id);
        Kill(b);
        const int32_t old = b.seq_slot;
        --sequences_[old].private_blocks;
        b.shared = true;
        b.seq_slot = -1;
        BlockCold& c = cold_[id];
        shared_users_[id] = {c.owner, seq};
        c.log_count_key = LogAddExp(static_cast<double>(c.first_use_ns) * 1e-9 * decay_per_s_,
                                    Seconds(now) * decay_per_s_);
        c.last_access_ns = now_ns;
        if (b.evictable) Insert(id);
        MaybeErase(old);
      } else {
        if (shared_users_[id].insert(seq).second) {
          cold_[id].log_count_key = LogAddExp(cold_[id].log_count_key, Seconds(now) * decay_per_s_);
        }
        cold_[id].last_access_ns = std::max(cold_[id].last_access_ns, now_ns);
        if (b.evictable) RekeyShared(id);
      }
    } else {
      // Pensieve: the block follows the conversation that used it last.
      if (b.evictable) Erase(id);
      Kill(b);
      const int32_t old = b.seq_slot;
      --sequences_[old].private_blocks;
      slot = SlotFor(seq);  // may grow sequences_
      Block& moved = blocks_[id];
      cold_[id].owner = seq;
      moved.seq_slot = slot;
      ++sequences_[slot].private_blocks;
      if (moved.evictable) Insert(id);
      MaybeErase(old);
    }
  }
  if (slot < 0) slot = FindSlot(seq);
  if (slot >= 0) TouchSlot(slot, now_ns);  // owns no block: its idle time matters to nobody
}

void AsymPolicy::OnAccess(BlockId id, SequenceId seq, absl::Time now) {
  OnAccessOne(id, seq, now, Nanos(now));
}

void AsymPolicy::OnAccessMany(absl::Span<const BlockId> ids, SequenceId seq, absl::Time now) {
  const int64_t now_ns = Nanos(now);
  for (BlockId id : ids) OnAccessOne(id, seq, now, now_ns);
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
    ProcessDirty();
    const int64_t horizon_ns = Nanos(horizon_);
    sequence_heap_.Rekey([&](const KeyHeap::Entry& e) { return EntryValue(e, horizon_ns); });
    shared_heap_.Rekey([&](const KeyHeap::Entry& e) { return Value(e.ref, horizon_); });
    return;
  }
  // First refresh: no key exists yet (and nothing was marked dirty).
  const int64_t horizon_ns = Nanos(horizon_);
  std::vector<KeyHeap::Entry> entries;
  for (size_t slot = 0; slot < sequences_.size(); ++slot) {
    Sequence& s = sequences_[slot];
    if (!s.in_use) continue;
    s.dirty = false;
    if (s.evictable == 0) {
      s.cheapest = CostEntry{0, kNoBlock, 0};
      continue;
    }
    Normalize(s);
    entries.push_back(KeyHeap::Entry{SequenceValue(s, horizon_ns), static_cast<int32_t>(slot),
                                     static_cast<int32_t>(s.cheapest_tokens), s.cheapest.cost,
                                     s.last_access_ns});
  }
  dirty_.clear();
  sequence_heap_.Assign(std::move(entries));
  entries.clear();
  if (mode_.shared_rates) {
    for (const auto& [id, users] : shared_users_) {
      const Block& b = blocks_[id];
      if (b.evictable) entries.push_back({Value(id, horizon_), id});
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
  const int64_t now_ns = Nanos(now);
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
      value = Value(id, now);
    } else {
      id = kNoBlock;  // looked up once, for the winner only
      value = EntryValue(seqs[c.index], now_ns);
    }
    if (victim == kNoBlock || value < best) {
      best = value;
      victim = id != kNoBlock ? id : sequences_[seqs[c.index].ref].cheapest.id;
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
  } else {
    bool refreshed = false;
    if (now > horizon_ || load_changed_) {
      const size_t entries = sequence_heap_.entries().size() + shared_heap_.entries().size();
      if (refresh_work_per_victim_ == 0 || entries < kAlwaysRefreshBelow ||
          searches_since_refresh_ * refresh_work_per_victim_ >= static_cast<int64_t>(entries)) {
        RefreshKeys(now);
        refreshed = true;
      }
    }
    if (!refreshed) ProcessDirty();
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
  Kill(b);
  if (b.shared) {
    shared_users_.erase(id);
  } else {
    --sequences_[b.seq_slot].private_blocks;
    MaybeErase(b.seq_slot);
  }
  const int32_t node = b.node;
  const int32_t parent_node = b.parent_node;
  bool last_holder = false;  // no resident block holds its hash any more
  bool last_child = false;   // its parent hash has no resident child any more
  if (node >= 0) {
    if (b.prev_holder != kNoBlock) {
      blocks_[b.prev_holder].next_holder = b.next_holder;
    } else {
      nodes_[node].first_holder = b.next_holder;
    }
    if (b.next_holder != kNoBlock) blocks_[b.next_holder].prev_holder = b.prev_holder;
    last_holder = nodes_[node].first_holder == kNoBlock;
  }
  if (parent_node >= 0) {
    if (b.prev_sibling != kNoBlock) {
      blocks_[b.prev_sibling].next_sibling = b.next_sibling;
    } else {
      nodes_[parent_node].first_child = b.next_sibling;
    }
    if (b.next_sibling != kNoBlock) blocks_[b.next_sibling].prev_sibling = b.prev_sibling;
    last_child = nodes_[parent_node].first_child == kNoBlock;
  }
  const uint32_t stamp = b.stamp;
  b = Block{};
  b.stamp = stamp;
  --tracked_;
  // Neighbours whose left / right resident status just changed.
  if (last_holder) RecomputeChildren(node, /*left=*/false);
  if (last_child) RecomputeHolders(parent_node, /*right=*/false);
  MaybeFreeNode(node);
  if (parent_node != node) MaybeFreeNode(parent_node);
}

}  // namespace asymcache
