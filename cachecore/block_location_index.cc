#include "cachecore/block_location_index.h"

#include <algorithm>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/str_cat.h"
#include "cachecore/mix64.h"

namespace asymcache {

absl::Status BlockLocationIndexOptions::Validate() const {
  if (shards < 1 || shards > 4096 || (shards & (shards - 1)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("shards must be a power of two in [1, 4096], got ", shards));
  }
  if (max_members < 1 || max_members > (1 << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_members must be in [1, 1048576], got ", max_members));
  }
  if (max_entries < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_entries must be >= 1, got ", max_entries));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<BlockLocationIndex>> BlockLocationIndex::Create(
    BlockLocationIndexOptions options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  return std::make_unique<BlockLocationIndex>(std::move(options));
}

BlockLocationIndex::BlockLocationIndex(BlockLocationIndexOptions options)
    : options_(std::move(options)),
      shard_mask_(static_cast<uint64_t>(options_.shards) - 1),
      shards_(new Shard[options_.shards]),
      member_entries_(new std::atomic<int64_t>[options_.max_members]) {
  ABSL_RAW_CHECK(options_.Validate().ok(), "invalid BlockLocationIndexOptions");
  for (int i = 0; i < options_.max_members; ++i) member_entries_[i].store(0);
}

BlockLocationIndex::Shard& BlockLocationIndex::ShardOf(const BlockHash& hash) const {
  // The hash is already uniform; mixing both halves guards against callers
  // that index synthetic hashes with a constant half.
  return shards_[Mix64(hash.lo ^ (hash.hi * 0x9e3779b97f4a7c15ULL)) & shard_mask_];
}

bool BlockLocationIndex::AddStored(MemberSlot member, const BlockHash& hash, BlockId block,
                                   int64_t position) {
  ABSL_RAW_CHECK(member < static_cast<MemberSlot>(options_.max_members), "member slot out of range");
  Shard& shard = ShardOf(hash);
  absl::MutexLock lock(&shard.mu);
  auto it = shard.map.find(hash);
  if (it != shard.map.end()) {
    for (BlockLocation& holder : it->second) {
      if (holder.member == member) {  // a newer copy on the same member
        holder.block = block;
        holder.position = position;
        return true;
      }
    }
  }
  // A new (hash, member) entry: reserve it against the bound first.
  if (entries_.fetch_add(1, std::memory_order_relaxed) >= options_.max_entries) {
    entries_.fetch_sub(1, std::memory_order_relaxed);
    dropped_stored_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  member_entries_[member].fetch_add(1, std::memory_order_relaxed);
  BlockLocation location{member, block, position};
  if (it != shard.map.end()) {
    it->second.push_back(location);
  } else {
    shard.map.emplace(hash, BlockHolders{location});
  }
  return true;
}

bool BlockLocationIndex::ApplyRemoved(MemberSlot member, const BlockHash& hash, BlockId block) {
  ABSL_RAW_CHECK(member < static_cast<MemberSlot>(options_.max_members), "member slot out of range");
  Shard& shard = ShardOf(hash);
  absl::MutexLock lock(&shard.mu);
  auto it = shard.map.find(hash);
  if (it == shard.map.end()) return false;
  BlockHolders& holders = it->second;
  for (size_t i = 0; i < holders.size(); ++i) {
    if (holders[i].member != member) continue;
    if (holders[i].block != block) {
      stale_removed_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    holders.erase(holders.begin() + static_cast<ptrdiff_t>(i));
    if (holders.empty()) shard.map.erase(it);
    entries_.fetch_sub(1, std::memory_order_relaxed);
    member_entries_[member].fetch_sub(1, std::memory_order_relaxed);
    return true;
  }
  return false;
}

int64_t BlockLocationIndex::RemoveMember(MemberSlot member) {
  ABSL_RAW_CHECK(member < static_cast<MemberSlot>(options_.max_members), "member slot out of range");
  int64_t removed = 0;
  for (int s = 0; s < options_.shards; ++s) {
    Shard& shard = shards_[s];
    absl::MutexLock lock(&shard.mu);
    for (auto it = shard.map.begin(); it != shard.map.end();) {
      BlockHolders& holders = it->second;
      auto end = std::remove_if(holders.begin(), holders.end(),
                                [member](const BlockLocation& l) { return l.member == member; });
      removed += holders.end() - end;
      holders.erase(end, holders.end());
      if (holders.empty()) {
        shard.map.erase(it++);
      } else {
        ++it;
      }
    }
  }
  entries_.fetch_sub(removed, std::memory_order_relaxed);
  member_entries_[member].fetch_sub(removed, std::memory_order_relaxed);
  return removed;
}

void BlockLocationIndex::Lookup(absl::Span<const BlockHash> hashes,
                                std::vector<BlockHolders>* out) const {
  out->assign(hashes.size(), BlockHolders());
  if (hashes.empty()) return;
  if (options_.shards == 1 || hashes.size() == 1) {
    for (size_t i = 0; i < hashes.size(); ++i) {
      Shard& shard = ShardOf(hashes[i]);
      absl::MutexLock lock(&shard.mu);
      auto it = shard.map.find(hashes[i]);
      if (it != shard.map.end()) (*out)[i] = it->second;
    }
    return;
  }
  // Group the request's hashes by shard so each shard lock is taken once.
  std::vector<std::pair<uint32_t, uint32_t>> order;  // (shard, index)
  order.reserve(hashes.size());
  for (size_t i = 0; i < hashes.size(); ++i) {
    const uint32_t shard = static_cast<uint32_t>(&ShardOf(hashes[i]) - shards_.get());
    order.emplace_back(shard, static_cast<uint32_t>(i));
  }
  std::sort(order.begin(), order.end());
  size_t i = 0;
  while (i < order.size()) {
    Shard& shard = shards_[order[i].first];
    absl::MutexLock lock(&shard.mu);
    const uint32_t current = order[i].first;
    for (; i < order.size() && order[i].first == current; ++i) {
      auto it = shard.map.find(hashes[order[i].second]);
      if (it != shard.map.end()) (*out)[order[i].second] = it->second;
    }
  }
}

int64_t BlockLocationIndex::MemberEntries(MemberSlot member) const {
  ABSL_RAW_CHECK(member < static_cast<MemberSlot>(options_.max_members), "member slot out of range");
  return member_entries_[member].load(std::memory_order_relaxed);
}

}  // namespace asymcache
