// BlockPool: the fixed set of KV blocks of one device and their lifecycle.
//
// What it is: `capacity_blocks` block slots with ids [0, capacity). The pool
// holds each block's lifecycle state, pin count and (once sealed) its identity
// (hash, position, owner). It does not hold KV bytes (the engine owns the KV
// memory; a BlockId is an index into it). It owns the EvictionPolicy and calls
// it under its own mutex (policies are not thread-safe).
//
// Lifecycle (the only allowed transitions; asserted in one place, block_pool.cc
// `CheckTransition`):
//
//            Allocate                Seal (pinned once, by the writer)
//   kFree ─────────────▶ kWriting ─────────────────────────▶ kPinned
//     ▲  ▲                  │                                 │  ▲
//     │  │        Abort     │                  last unpin     │  │ pin
//     │  └──────────────────┘                                 ▼  │
//     │          evict (policy victim, inside Allocate)      kSealed  (evictable)
//     ├───────────────────────────────────────────────────────┤
//     │          Invalidate                                   │
//     │                                                       │
//     │  AllocateForTransfer      SealMany (import done)
//   kFree ─────────────▶ kInTransfer ──────────────────────▶ kPinned
//                            │ Abort (import failed) ─▶ kFree
//
// kSealed and kPinned are the same "sealed/indexed" block with pin count 0
// (evictable: the policy may choose it) or > 0 (not evictable). An export over
// the network is a pin, not a state. A sealed block is, by the KvCache's
// contract, the block the PrefixIndex maps its hash to; the pool itself only
// stores the hash so that PinIfIndexed can reject a stale index hit after the
// id was evicted and reused.
//
// Misuse of the API (wrong state for the call) returns FAILED_PRECONDITION and
// changes nothing; a broken internal invariant (e.g. the policy returning a
// non-evictable victim) aborts the process.
//
// Thread-safety: thread-safe; one absl::Mutex guards all state and the policy.
// Batch calls (PinIndexedMany, SealMany, AbortMany, PinSet release) take the
// lock once. PinHandle/PinSet must not outlive the pool.
#ifndef ASYMCACHE_CACHECORE_BLOCK_POOL_H_
#define ASYMCACHE_CACHECORE_BLOCK_POOL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "cachecore/clock.h"
#include "cachecore/eviction_policy.h"
#include "cachecore/types.h"

namespace asymcache {

enum class BlockState : uint8_t {
  kFree = 0,
  kWriting = 1,     // allocated to a writer, content being computed
  kSealed = 2,      // content final, indexed, pin count 0: evictable
  kPinned = 3,      // content final, indexed, pin count > 0
  kInTransfer = 4,  // allocated for an import over the network
};
absl::string_view BlockStateName(BlockState state);

struct BlockPoolOptions {
  int64_t capacity_blocks = 0;  // number of blocks; required, in [1, 2^31 - 1]
  absl::Status Validate() const;  // INVALID_ARGUMENT naming the field
};

// A block the pool evicted to satisfy an allocation; the caller removes it from
// the PrefixIndex (PrefixIndex::EraseIf(hash, id)) and reports it.
struct EvictedBlock {
  BlockId id = kNoBlock;
  BlockHash hash;
  int64_t position = 0;
};

class BlockPool {
 public:
  // One pin on one sealed block. Move-only; the destructor (or Reset) unpins.
  // Default-constructed = empty.
  class PinHandle {
   public:
    PinHandle() = default;
    PinHandle(PinHandle&& other) noexcept;
    PinHandle& operator=(PinHandle&& other) noexcept;
    PinHandle(const PinHandle&) = delete;
    PinHandle& operator=(const PinHandle&) = delete;
    ~PinHandle() { Reset(); }

    BlockId id() const { return id_; }
    bool valid() const { return pool_ != nullptr; }
    void Reset();

   private:
    friend class BlockPool;
    PinHandle(BlockPool* pool, BlockId id) : pool_(pool), id_(id) {}
    BlockPool* pool_ = nullptr;
    BlockId id_ = kNoBlock;
  };

  // Pins on many sealed blocks, released together under one lock acquisition.
  // Move-only; the destructor (or Reset) unpins all. Default = empty. A block
  // may appear more than once (each entry is one pin).
  class PinSet {
   public:
    PinSet() = default;
    PinSet(PinSet&& other) noexcept;
    PinSet& operator=(PinSet&& other) noexcept;
    PinSet(const PinSet&) = delete;
    PinSet& operator=(const PinSet&) = delete;
    ~PinSet() { Reset(); }

    absl::Span<const BlockId> ids() const { return ids_; }
    size_t size() const { return ids_.size(); }
    bool empty() const { return ids_.empty(); }
    void Reset();
    // Moves every pin of `other` into this set. Both must belong to the same
    // pool (or one must be empty).
    void Absorb(PinSet&& other);

   private:
    friend class BlockPool;
    BlockPool* pool_ = nullptr;
    std::vector<BlockId> ids_;
  };

  // Precondition: options.Validate().ok(), policy and clock non-null; clock
  // outlives the pool. The policy must be fresh (tracking nothing).
  BlockPool(BlockPoolOptions options, std::unique_ptr<EvictionPolicy> policy, Clock* clock);
  ~BlockPool();
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  // All-or-nothing: moves n blocks kFree -> kWriting for `owner`, evicting
  // evictable sealed blocks chosen by the policy when the free list is short.
  // Evicted blocks are appended to *evicted (may be null only when the caller
  // keeps no index, e.g. tests). RESOURCE_EXHAUSTED naming the counts (needed,
  // free, evictable, pinned, writing) and no change when impossible.
  // INVALID_ARGUMENT for n < 0. Ids are returned in allocation order.
  // `owner` is unused for now: reserved for per-owner quotas (issue 9).
  absl::StatusOr<std::vector<BlockId>> Allocate(int64_t n, SequenceId owner,
                                                std::vector<EvictedBlock>* evicted);
  // Same, but the blocks enter kInTransfer (an import over the network).
  absl::StatusOr<std::vector<BlockId>> AllocateForTransfer(int64_t n, SequenceId owner,
                                                           std::vector<EvictedBlock>* evicted);

  // kWriting|kInTransfer -> kPinned: the block's content is final and the
  // caller has indexed (or is indexing) it under info.hash. info.id must be the
  // block. The policy is told OnIndexed + OnAccess(owner). The returned handle
  // is the writer's pin. FAILED_PRECONDITION on a wrong state / bad id.
  absl::StatusOr<PinHandle> Seal(const IndexedBlockInfo& info);
  // Batch Seal: all or nothing (validated first); one pin per block in *pins.
  absl::Status SealMany(absl::Span<const IndexedBlockInfo> infos, PinSet* pins);

  // kWriting|kInTransfer -> kFree. FAILED_PRECONDITION on a wrong state.
  absl::Status Abort(BlockId id);
  absl::Status AbortMany(absl::Span<const BlockId> ids);  // all or nothing

  // Pins block `id` iff it is sealed with hash `hash` (i.e. still the block the
  // index entry meant: guards against id reuse after eviction). nullopt = miss.
  std::optional<PinHandle> PinIfIndexed(BlockId id, const BlockHash& hash);
  // Batch form: for each i, pins ids[i] iff it is sealed with hashes[i]
  // (kNoBlock entries are skipped); writes success to (*pinned)[i] (resized to
  // ids.size()), appends the pins to *pins and, when `accessor` is set, reports
  // OnAccess(id, *accessor) to the policy for every pinned block. One lock
  // acquisition. Returns the number pinned.
  int64_t PinIndexedMany(absl::Span<const BlockId> ids, absl::Span<const BlockHash> hashes,
                         std::optional<SequenceId> accessor, PinSet* pins,
                         std::vector<bool>* pinned);
  // Another pin on an already sealed block (e.g. an agent pin taken from a
  // step's pins). FAILED_PRECONDITION unless sealed.
  absl::StatusOr<PinHandle> PinSealed(BlockId id);

  // kSealed (unpinned) -> kFree, policy OnRemoved. Returns what was dropped so the
  // caller erases it from the index. FAILED_PRECONDITION when pinned or not sealed.
  absl::StatusOr<EvictedBlock> Invalidate(BlockId id);

  void SetLoadHint(int64_t step_tokens);

  struct Stats {
    int64_t capacity = 0;
    int64_t free = 0;
    int64_t writing = 0;
    int64_t sealed_evictable = 0;
    int64_t pinned = 0;
    int64_t in_transfer = 0;
    int64_t evictions = 0;  // total blocks evicted since construction
  };
  Stats GetStats() const;

  int64_t capacity() const { return capacity_; }
  BlockState state(BlockId id) const;
  int pin_count(BlockId id) const;
  // Identity of a sealed block; nullopt otherwise.
  std::optional<IndexedBlockInfo> sealed_info(BlockId id) const;
  // Name and contiguous_prefix_only() of the policy (immutable properties).
  std::string policy_name() const { return policy_name_; }
  bool contiguous_prefix_only() const { return contiguous_prefix_only_; }
  // Runs `fn` on the policy under the pool's lock (tests, diagnostics).
  void WithPolicy(const std::function<void(const EvictionPolicy&)>& fn) const;

 private:
  struct Slot {
    BlockState state = BlockState::kFree;
    int32_t pins = 0;
    IndexedBlockInfo info;  // valid while sealed
  };

  absl::StatusOr<std::vector<BlockId>> AllocateLocked(int64_t n, SequenceId owner,
                                                      BlockState target,
                                                      std::vector<EvictedBlock>* evicted)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Transition(BlockId id, BlockState to) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // FAILED_PRECONDITION if a batch of writing/in-transfer blocks names one twice.
  absl::Status CheckDistinctLocked(size_t n, const std::function<BlockId(size_t)>& id_at)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PinLocked(BlockId id, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops one pin; true when it was the last one (the block is now kSealed and
  // the caller tells the policy it is evictable).
  bool UnpinLocked(BlockId id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Unpin(BlockId id);
  void UnpinMany(absl::Span<const BlockId> ids);
  bool ValidId(BlockId id) const { return id >= 0 && id < capacity_; }

  // Immutable after construction.
  const int64_t capacity_;
  Clock* const clock_;
  const std::string policy_name_;
  const bool contiguous_prefix_only_;

  mutable absl::Mutex mu_;
  std::unique_ptr<EvictionPolicy> policy_ ABSL_GUARDED_BY(mu_);
  std::vector<Slot> slots_ ABSL_GUARDED_BY(mu_);
  std::vector<BlockId> free_list_ ABSL_GUARDED_BY(mu_);  // stack; back() is allocated first
  int64_t writing_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t sealed_evictable_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t pinned_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t in_transfer_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t evictions_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_BLOCK_POOL_H_
