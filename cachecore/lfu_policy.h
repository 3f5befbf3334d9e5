// LfuPolicy ("lfu"): evicts the evictable block with the fewest accesses; ties
// go to the least recently touched one.
//
// Contract: implements EvictionPolicy (not thread-safe; the owner serializes
// calls). The frequency is the number of OnAccess calls since the block was
// indexed (every access counts, whichever sequence made it: this is the
// per-step frequency that DESIGN.md §3.2 warns about, kept as a baseline).
// Recency for ties is the call order of index/access/release, as in LruPolicy.
// O(log n) per operation (a B-tree ordered by (count, recency)). Calls naming
// an id that is not tracked are ignored.
#ifndef ASYMCACHE_CACHECORE_LFU_POLICY_H_
#define ASYMCACHE_CACHECORE_LFU_POLICY_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "absl/container/btree_set.h"
#include "cachecore/eviction_policy.h"

namespace asymcache {

class LfuPolicy final : public EvictionPolicy {
 public:
  LfuPolicy() = default;

  absl::string_view name() const override { return "lfu"; }
  void OnIndexed(const IndexedBlockInfo& info, absl::Time now) override;
  void SetEvictable(BlockId id, bool evictable, absl::Time now) override;
  void OnAccess(BlockId id, SequenceId seq, absl::Time now) override;
  std::optional<BlockId> PopVictim(absl::Time now) override;
  void OnRemoved(BlockId id) override;
  size_t evictable_count() const override { return order_.size(); }
  size_t tracked_count() const override { return tracked_; }

 private:
  struct State {
    bool tracked = false;
    bool evictable = false;
    uint64_t accesses = 0;
    uint64_t touched = 0;  // recency stamp (call order)
  };
  // (accesses, touched, id): begin() is the victim.
  using Key = std::tuple<uint64_t, uint64_t, BlockId>;

  bool IsTracked(BlockId id) const {
    return id >= 0 && static_cast<size_t>(id) < states_.size() && states_[id].tracked;
  }
  Key KeyOf(BlockId id) const { return {states_[id].accesses, states_[id].touched, id}; }

  std::vector<State> states_;
  absl::btree_set<Key> order_;  // evictable blocks only
  uint64_t next_stamp_ = 1;
  size_t tracked_ = 0;
};

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_LFU_POLICY_H_
