#include "cachecore/lru_policy.h"

namespace asymcache {

void LruPolicy::Unlink(BlockId id) {
  Node& n = nodes_[id];
  if (n.prev != kNoBlock) nodes_[n.prev].next = n.next; else head_ = n.next;
  if (n.next != kNoBlock) nodes_[n.next].prev = n.prev; else tail_ = n.prev;
  n.prev = n.next = kNoBlock;
}

void LruPolicy::PushBack(BlockId id) {
  Node& n = nodes_[id];
  n.prev = tail_;
  n.next = kNoBlock;
  if (tail_ != kNoBlock) nodes_[tail_].next = id; else head_ = id;
  tail_ = id;
}

void LruPolicy::OnIndexed(const IndexedBlockInfo& info, absl::Time /*now*/) {
  if (info.id < 0) return;
  if (IsTracked(info.id)) OnRemoved(info.id);  // re-index: forget the old block
  if (static_cast<size_t>(info.id) >= nodes_.size()) nodes_.resize(info.id + 1);
  nodes_[info.id] = Node{};
  nodes_[info.id].tracked = true;
  ++tracked_;
}

void LruPolicy::SetEvictable(BlockId id, bool evictable, absl::Time /*now*/) {
  if (!IsTracked(id) || nodes_[id].evictable == evictable) return;
  nodes_[id].evictable = evictable;
  if (evictable) {
    PushBack(id);
    ++evictable_;
  } else {
    Unlink(id);
    --evictable_;
  }
}

void LruPolicy::OnAccess(BlockId id, SequenceId /*seq*/, absl::Time /*now*/) {
  if (!IsTracked(id) || !nodes_[id].evictable || tail_ == id) return;
  Unlink(id);
  PushBack(id);
}

std::optional<BlockId> LruPolicy::PopVictim(absl::Time /*now*/) {
  if (head_ == kNoBlock) return std::nullopt;
  const BlockId victim = head_;
  OnRemoved(victim);
  return victim;
}

void LruPolicy::OnRemoved(BlockId id) {
  if (!IsTracked(id)) return;
  if (nodes_[id].evictable) {
    Unlink(id);
    --evictable_;
  }
  nodes_[id] = Node{};
  --tracked_;
}

}  // namespace asymcache
