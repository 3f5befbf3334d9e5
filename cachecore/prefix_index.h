// PrefixIndex: chained block hash -> resident block and its absolute position.
//
// What it is: the lookup table of a KvCache. An entry says "the block whose
// chain hash is h lives in BlockPool slot id and starts at token position p".
// The index does not know block states: an entry may briefly be stale (its
// block was evicted and the evictor has not erased it yet), so callers confirm
// a hit with BlockPool::PinIfIndexed(id, hash) before using it.
//
// Thread-safety: thread-safe; 64 shards, each an absl::Mutex over a
// flat_hash_map, chosen by the low bits of the hash (uniform). Batch lookups
// take each shard lock once.
#ifndef ASYMCACHE_CACHECORE_PREFIX_INDEX_H_
#define ASYMCACHE_CACHECORE_PREFIX_INDEX_H_

#include <array>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "cachecore/types.h"

namespace asymcache {

class PrefixIndex {
 public:
  struct Entry {
    BlockId id = kNoBlock;  // kNoBlock in LookupMany output = miss
    int64_t position = 0;
    friend bool operator==(const Entry& a, const Entry& b) {
      return a.id == b.id && a.position == b.position;
    }
  };

  static constexpr int kNumShards = 64;

  PrefixIndex() = default;
  PrefixIndex(const PrefixIndex&) = delete;
  PrefixIndex& operator=(const PrefixIndex&) = delete;

  // Inserts hash -> entry. OK when inserted or when the same id is already
  // there (idempotent); ALREADY_EXISTS (naming the existing id) when the hash
  // maps to a different block — the caller decides (keep the existing one, or
  // Replace a stale one).
  absl::Status Insert(const BlockHash& hash, const Entry& entry);
  // Replaces the entry of `hash` iff it currently maps to `expected_id`.
  // Returns whether it replaced.
  bool Replace(const BlockHash& hash, BlockId expected_id, const Entry& entry);

  std::optional<Entry> Lookup(const BlockHash& hash) const;
  // out->size() becomes hashes.size(); (*out)[i].id == kNoBlock for a miss.
  void LookupMany(absl::Span<const BlockHash> hashes, std::vector<Entry>* out) const;

  // Erases `hash` only if it maps to `id` (never removes a newer block that
  // re-used the hash). Returns whether it erased.
  bool EraseIf(const BlockHash& hash, BlockId id);

  size_t size() const;
  // Copy of every entry (tests, diagnostics). Not atomic across shards.
  std::vector<std::pair<BlockHash, Entry>> Snapshot() const;

 private:
  struct Shard {
    mutable absl::Mutex mu;
    absl::flat_hash_map<BlockHash, Entry> map ABSL_GUARDED_BY(mu);
  };
  static int ShardOf(const BlockHash& hash) {
    return static_cast<int>(hash.lo & (kNumShards - 1));
  }

  std::array<Shard, kNumShards> shards_;
};

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_PREFIX_INDEX_H_
