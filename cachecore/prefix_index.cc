#include "cachecore/prefix_index.h"

#include "absl/strings/str_cat.h"

namespace asymcache {

absl::Status PrefixIndex::Insert(const BlockHash& hash, const Entry& entry) {
  Shard& shard = shards_[ShardOf(hash)];
  absl::MutexLock lock(&shard.mu);
  auto [it, inserted] = shard.map.try_emplace(hash, entry);
  if (inserted || it->second.id == entry.id) {
    it->second = entry;
    return absl::OkStatus();
  }
  return absl::AlreadyExistsError(absl::StrCat("PrefixIndex: hash ", hash.ToHex(),
                                               " already maps to block ", it->second.id,
                                               " (inserting block ", entry.id, ")"));
}

bool PrefixIndex::Replace(const BlockHash& hash, BlockId expected_id, const Entry& entry) {
  Shard& shard = shards_[ShardOf(hash)];
  absl::MutexLock lock(&shard.mu);
  auto it = shard.map.find(hash);
  if (it == shard.map.end() || it->second.id != expected_id) return false;
  it->second = entry;
  return true;
}

std::optional<PrefixIndex::Entry> PrefixIndex::Lookup(const BlockHash& hash) const {
  const Shard& shard = shards_[ShardOf(hash)];
  absl::MutexLock lock(&shard.mu);
  auto it = shard.map.find(hash);
  if (it == shard.map.end()) return std::nullopt;
  return it->second;
}

void PrefixIndex::LookupMany(absl::Span<const BlockHash> hashes, std::vector<Entry>* out) const {
  out->assign(hashes.size(), Entry{});
  if (hashes.size() <= 4) {
    for (size_t i = 0; i < hashes.size(); ++i) {
      if (std::optional<Entry> e = Lookup(hashes[i])) (*out)[i] = *e;
    }
    return;
  }
  // Group by shard (counting sort of indices), then take each shard lock once.
  std::array<uint32_t, kNumShards + 1> start{};
  for (const BlockHash& h : hashes) ++start[ShardOf(h) + 1];
  for (int s = 0; s < kNumShards; ++s) start[s + 1] += start[s];
  std::vector<uint32_t> order(hashes.size());
  std::array<uint32_t, kNumShards> fill;
  for (int s = 0; s < kNumShards; ++s) fill[s] = start[s];
  for (size_t i = 0; i < hashes.size(); ++i) order[fill[ShardOf(hashes[i])]++] = static_cast<uint32_t>(i);
  for (int s = 0; s < kNumShards; ++s) {
    if (start[s] == start[s + 1]) continue;
    const Shard& shard = shards_[s];
    absl::MutexLock lock(&shard.mu);
    for (uint32_t k = start[s]; k < start[s + 1]; ++k) {
      const uint32_t i = order[k];
      auto it = shard.map.find(hashes[i]);
      if (it != shard.map.end()) (*out)[i] = it->second;
    }
  }
}

bool PrefixIndex::EraseIf(const BlockHash& hash, BlockId id) {
  Shard& shard = shards_[ShardOf(hash)];
  absl::MutexLock lock(&shard.mu);
  auto it = shard.map.find(hash);
  if (it == shard.map.end() || it->second.id != id) return false;
  shard.map.erase(it);
  return true;
}

size_t PrefixIndex::size() const {
  size_t total = 0;
  for (const Shard& shard : shards_) {
    absl::MutexLock lock(&shard.mu);
    total += shard.map.size();
  }
  return total;
}

std::vector<std::pair<BlockHash, PrefixIndex::Entry>> PrefixIndex::Snapshot() const {
  std::vector<std::pair<BlockHash, Entry>> out;
  for (const Shard& shard : shards_) {
    absl::MutexLock lock(&shard.mu);
    for (const auto& [hash, entry] : shard.map) out.emplace_back(hash, entry);
  }
  return out;
}

}  // namespace asymcache
