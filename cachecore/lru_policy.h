// LruPolicy ("lru"): evicts the least recently touched evictable block.
//
// Contract: implements EvictionPolicy (see eviction_policy.h: not thread-safe,
// the owner serializes calls). A block is "touched" when it is indexed,
// accessed (OnAccess) or released (SetEvictable(id, true)): a block held by a
// step is in use until the step lets go of it, which is also vLLM's free-queue
// order. Order is the order of those calls (the owner calls with
// non-decreasing `now`). Every operation is O(1): an intrusive doubly linked
// list over a vector indexed by BlockId. Calls naming an id that is not
// tracked are ignored.
#ifndef ASYMCACHE_CACHECORE_LRU_POLICY_H_
#define ASYMCACHE_CACHECORE_LRU_POLICY_H_

#include <cstddef>
#include <optional>
#include <vector>

#include "cachecore/eviction_policy.h"

namespace asymcache {

class LruPolicy final : public EvictionPolicy {
 public:
  LruPolicy() = default;

  absl::string_view name() const override { return "lru"; }
  void OnIndexed(const IndexedBlockInfo& info, absl::Time now) override;
  void SetEvictable(BlockId id, bool evictable, absl::Time now) override;
  void OnAccess(BlockId id, SequenceId seq, absl::Time now) override;
  std::optional<BlockId> PopVictim(absl::Time now) override;
  void OnRemoved(BlockId id) override;
  size_t evictable_count() const override { return evictable_; }
  size_t tracked_count() const override { return tracked_; }

 private:
  struct Node {
    BlockId prev = kNoBlock;
    BlockId next = kNoBlock;
    bool tracked = false;
    bool evictable = false;
  };

  bool IsTracked(BlockId id) const {
    return id >= 0 && static_cast<size_t>(id) < nodes_.size() && nodes_[id].tracked;
  }
  void Unlink(BlockId id);
  void PushBack(BlockId id);  // most recently used end

  std::vector<Node> nodes_;
  BlockId head_ = kNoBlock;  // least recently used evictable block
  BlockId tail_ = kNoBlock;
  size_t evictable_ = 0;
  size_t tracked_ = 0;
};

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_LRU_POLICY_H_
