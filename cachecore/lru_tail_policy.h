// LruTailPolicy ("lru-tail"): vLLM automatic prefix caching semantics.
//
// Contract: implements EvictionPolicy (not thread-safe; the owner serializes
// calls). Evicts the evictable block touched longest ago (touched = indexed,
// accessed or released, compared by the `now` of that call); among blocks
// touched at the same instant (a sequence's blocks used by one step and
// released together) the one at the highest position goes first, so a
// context loses its tail before its prefix. contiguous_prefix_only() is true:
// the planner counts hits only over the contiguous resident prefix, so a
// context with a hole at position p has no use for blocks after p.
// O(log n) per operation (a B-tree ordered by (touch time, -position)). Calls
// naming an id that is not tracked are ignored.
#ifndef ASYMCACHE_CACHECORE_LRU_TAIL_POLICY_H_
#define ASYMCACHE_CACHECORE_LRU_TAIL_POLICY_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "absl/container/btree_set.h"
#include "cachecore/eviction_policy.h"

namespace asymcache {

class LruTailPolicy final : public EvictionPolicy {
 public:
  LruTailPolicy() = default;

  absl::string_view name() const override { return "lru-tail"; }
  bool contiguous_prefix_only() const override { return true; }
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
    int64_t position = 0;
    int64_t touched_ns = 0;  // `now` of the last touch, ns since the Unix epoch
  };
  // (touch time, -position, id): begin() is the victim.
  using Key = std::tuple<int64_t, int64_t, BlockId>;

  bool IsTracked(BlockId id) const {
    return id >= 0 && static_cast<size_t>(id) < states_.size() && states_[id].tracked;
  }
  Key KeyOf(BlockId id) const {
    return {states_[id].touched_ns, -states_[id].position, id};
  }
  void Touch(BlockId id, absl::Time now);

  std::vector<State> states_;
  absl::btree_set<Key> order_;  // evictable blocks only
  size_t tracked_ = 0;
};

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_LRU_TAIL_POLICY_H_
