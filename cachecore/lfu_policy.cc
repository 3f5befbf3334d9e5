#include "cachecore/lfu_policy.h"

namespace asymcache {

void LfuPolicy::OnIndexed(const IndexedBlockInfo& info, absl::Time /*now*/) {
  if (info.id < 0) return;
  if (IsTracked(info.id)) OnRemoved(info.id);
  if (static_cast<size_t>(info.id) >= states_.size()) states_.resize(info.id + 1);
  states_[info.id] = State{.tracked = true, .evictable = false, .accesses = 0,
                           .touched = next_stamp_++};
  ++tracked_;
}

void LfuPolicy::SetEvictable(BlockId id, bool evictable, absl::Time /*now*/) {
  if (!IsTracked(id) || states_[id].evictable == evictable) return;
  State& s = states_[id];
  s.evictable = evictable;
  if (evictable) {
    s.touched = next_stamp_++;
    order_.insert(KeyOf(id));
  } else {
    order_.erase(KeyOf(id));
  }
}

void LfuPolicy::OnAccess(BlockId id, SequenceId /*seq*/, absl::Time /*now*/) {
  if (!IsTracked(id)) return;
  State& s = states_[id];
  if (s.evictable) order_.erase(KeyOf(id));
  ++s.accesses;
  s.touched = next_stamp_++;
  if (s.evictable) order_.insert(KeyOf(id));
}

std::optional<BlockId> LfuPolicy::PopVictim(absl::Time /*now*/) {
  if (order_.empty()) return std::nullopt;
  // The victim is order_'s first key: erase it through the iterator rather
  // than searching the tree again (OnRemoved), then drop its state.
  const BlockId victim = std::get<2>(*order_.begin());
  order_.erase(order_.begin());
  states_[victim] = State{};
  --tracked_;
  return victim;
}

void LfuPolicy::OnRemoved(BlockId id) {
  if (!IsTracked(id)) return;
  if (states_[id].evictable) order_.erase(KeyOf(id));
  states_[id] = State{};
  --tracked_;
}

}  // namespace asymcache
