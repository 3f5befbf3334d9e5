// BlockLocationIndex: which cache daemon holds which block hash, in which of
// its pool blocks, at which position — the cluster-wide view a coordinator
// (and the simulator's cluster mode) builds from the daemons' KV event
// streams (DESIGN.md §3.6, §4).
//
// Members are small integers (`MemberSlot`, in [0, max_members)) assigned by
// the caller: the coordinator's registry gives each registered daemon a slot
// and reuses it after RemoveMember; the simulator uses the engine index.
//
// Event semantics (cache_daemon.proto KvEvent):
//   * AddStored records (member, block, position) for the hash; a member holds
//     at most one copy per hash in the index, so a newer STORED of the same
//     hash on the same member replaces the older entry (the daemon indexes
//     one copy per hash).
//   * ApplyRemoved drops the member's entry only when its block id is the one
//     recorded: an index change and its event are not one atomic step, so a
//     REMOVED of an evicted copy can arrive after the STORED of a newer copy.
//     A stale REMOVED is ignored and counted.
//   * RemoveMember drops everything of a member (it left routing, restarted,
//     or sent a snapshot that replaces its view).
//
// Bounded memory: at most `max_entries` (hash, member) entries. A STORED that
// would exceed the bound is dropped and counted (`dropped_stored`): the index
// then under-reports hits, which costs routing precision, never correctness
// (the daemon's own index decides what a request reuses).
//
// Concurrency: thread-safe. The map is split into `shards` shards by hash,
// each with its own mutex; lookups take each shard lock once per request
// (hashes are grouped by shard), event application takes one shard lock per
// event. Counters are atomics.
#ifndef ASYMCACHE_CACHECORE_BLOCK_LOCATION_INDEX_H_
#define ASYMCACHE_CACHECORE_BLOCK_LOCATION_INDEX_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "cachecore/types.h"

namespace asymcache {

using MemberSlot = uint32_t;

struct BlockLocationIndexOptions {
  // Lock shards (a power of two). 64: contention stays negligible with tens
  // of event streams and route threads on a few cores. In [1, 4096].
  int shards = 64;
  // Member slots in [0, max_members). 4096: far above any cluster we route
  // for (64 daemons is the design point). In [1, 1 << 20].
  int max_members = 4096;
  // Bound on (hash, member) entries. 16 Mi entries (~40 bytes each with the
  // map's overhead, ~700 MiB): 64 daemons × 256k blocks each, i.e. 64 H100
  // pools of llama-3-8b blocks (128 KiB per 16-token block → 32 GiB each).
  // >= 1.
  int64_t max_entries = int64_t{16} << 20;

  absl::Status Validate() const;  // INVALID_ARGUMENT naming the field
};

// One holder of a hash.
struct BlockLocation {
  MemberSlot member = 0;
  BlockId block = kNoBlock;   // the block id in that member's pool
  int64_t position = 0;       // absolute position of the block's first token
};

// Holders of one hash (usually one; more when blocks were fetched or when
// tenants sharing a salt ran on several daemons).
using BlockHolders = absl::InlinedVector<BlockLocation, 2>;

class BlockLocationIndex {
 public:
  // Options must be valid (Create checks; the constructor asserts).
  static absl::StatusOr<std::unique_ptr<BlockLocationIndex>> Create(
      BlockLocationIndexOptions options = {});
  explicit BlockLocationIndex(BlockLocationIndexOptions options);

  BlockLocationIndex(const BlockLocationIndex&) = delete;
  BlockLocationIndex& operator=(const BlockLocationIndex&) = delete;

  // Records that `member` holds `hash` in `block` at `position`. Returns false
  // (and changes nothing) when the entry is new and the index is full.
  // Precondition: member < max_members.
  bool AddStored(MemberSlot member, const BlockHash& hash, BlockId block, int64_t position);
  // Drops member's entry for hash if it records `block`. Returns whether an
  // entry was dropped (false: unknown, or stale — another block recorded).
  bool ApplyRemoved(MemberSlot member, const BlockHash& hash, BlockId block);
  // Drops every entry of `member`. Returns how many. O(index size).
  int64_t RemoveMember(MemberSlot member);

  // Holders of each hash, in `hashes` order (empty for unknown hashes).
  // `out` is resized to hashes.size().
  void Lookup(absl::Span<const BlockHash> hashes, std::vector<BlockHolders>* out) const;

  // Entries ((hash, member) pairs) in the index.
  int64_t size() const { return entries_.load(std::memory_order_relaxed); }
  // Entries of one member. Precondition: member < max_members.
  int64_t MemberEntries(MemberSlot member) const;
  // STORED events dropped because the index was full.
  int64_t dropped_stored() const { return dropped_stored_.load(std::memory_order_relaxed); }
  // REMOVED events ignored because they named another block than recorded.
  int64_t stale_removed() const { return stale_removed_.load(std::memory_order_relaxed); }
  const BlockLocationIndexOptions& options() const { return options_; }

 private:
  struct Shard {
    mutable absl::Mutex mu;
    absl::flat_hash_map<BlockHash, BlockHolders> map ABSL_GUARDED_BY(mu);
  };
  Shard& ShardOf(const BlockHash& hash) const;

  // Immutable after construction.
  const BlockLocationIndexOptions options_;
  const uint64_t shard_mask_;
  std::unique_ptr<Shard[]> shards_;
  std::unique_ptr<std::atomic<int64_t>[]> member_entries_;  // max_members counters

  std::atomic<int64_t> entries_{0};
  std::atomic<int64_t> dropped_stored_{0};
  std::atomic<int64_t> stale_removed_{0};
};

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_BLOCK_LOCATION_INDEX_H_
