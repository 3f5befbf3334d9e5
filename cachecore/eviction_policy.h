// EvictionPolicy: the narrow interface every eviction policy implements.
//
// Contract: a policy tracks the *indexed* blocks of one BlockPool (sealed blocks
// that a prefix lookup can hit) and chooses victims among those currently marked
// evictable. The owner (KvCache) calls it under the owner's lock, so a policy is
// NOT thread-safe by itself and needs no locking. Calls follow the block
// lifecycle:
//   OnIndexed(info)            a block was sealed and entered the index (not evictable yet)
//   SetEvictable(id, true)     no step or pin holds it any more
//   SetEvictable(id, false)    a step or pin holds it again
//   OnAccess(id, seq, now)     a sequence hit it (planning) or wrote it; any state
//   PopVictim(now)             pick an evictable block, forget it, return it
//   OnRemoved(id)              the block left the index by other means (invalidation)
// Batch forms (SetEvictableMany, OnAccessMany) mean the same calls in span
// order; the pool uses them on its batch paths (one virtual call per batch).
// A block id is reused after removal; a policy must forget everything about it
// in PopVictim/OnRemoved. Policies never evict non-evictable blocks: PopVictim
// returns std::nullopt when no evictable block exists.
//
// All policies pass the typed conformance suite in tests/cachecore/eviction_policy_test.cc.
#ifndef ASYMCACHE_CACHECORE_EVICTION_POLICY_H_
#define ASYMCACHE_CACHECORE_EVICTION_POLICY_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "cachecore/cost_model.h"
#include "cachecore/types.h"

namespace asymcache {

// What a policy may know about an indexed block.
struct IndexedBlockInfo {
  BlockId id = kNoBlock;
  BlockHash hash;
  BlockHash parent_hash;        // hash of the previous block in the chain (zero for position 0)
  int64_t position = 0;         // absolute position of the block's first token
  int64_t tokens = 0;           // tokens held (block_tokens, less for a partial last block)
  SequenceId owner = 0;         // sequence that wrote it
};

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;

  // Stable short name: "lru", "lfu", "lru-tail", "front-first", "asym".
  virtual absl::string_view name() const = 0;

  // True when hits count only over the contiguous resident prefix of a
  // context (vLLM semantics: lru-tail). The planner then treats everything
  // after the first miss as uncached.
  virtual bool contiguous_prefix_only() const { return false; }

  virtual void OnIndexed(const IndexedBlockInfo& info, absl::Time now) = 0;
  virtual void SetEvictable(BlockId id, bool evictable, absl::Time now) = 0;
  virtual void OnAccess(BlockId id, SequenceId seq, absl::Time now) = 0;
  virtual std::optional<BlockId> PopVictim(absl::Time now) = 0;
  virtual void OnRemoved(BlockId id) = 0;

  // Same as SetEvictable / OnAccess for each id in order. Policies may
  // override them to amortize per-call work over a batch.
  virtual void SetEvictableMany(absl::Span<const BlockId> ids, bool evictable, absl::Time now) {
    for (BlockId id : ids) SetEvictable(id, evictable, now);
  }
  virtual void OnAccessMany(absl::Span<const BlockId> ids, SequenceId seq, absl::Time now) {
    for (BlockId id : ids) OnAccess(id, seq, now);
  }

  // Hint from the scheduler about the current load: tokens per engine step
  // (marginal-cost policies use it; others ignore it).
  virtual void SetLoadHint(int64_t step_tokens) { (void)step_tokens; }

  // Number of blocks currently evictable.
  virtual size_t evictable_count() const = 0;
  // Number of blocks tracked (indexed).
  virtual size_t tracked_count() const = 0;
};

// Options shared by the policy factory. Defaults documented per field.
struct EvictionPolicyOptions {
  // Half-life of the decayed distinct-sequence reuse rate of shared blocks (asym).
  absl::Duration shared_rate_half_life = absl::Seconds(60);
  // Caps the current values computed per victim search (asym, front-first);
  // 0 = the policy's own default search budget (AsymPolicyOptions::search_budget,
  // 8, with the documented error bound in cachecore/asym_policy.h).
  int sample_sequences = 0;
  // asym, front-first: exact victim search (AsymPolicyOptions::Exact(): keys
  // refreshed whenever the clock moved, no search budget). Slower at scale;
  // for experiments that must not depend on the search bound. Default false.
  // Cannot be combined with sample_sequences > 0.
  bool exact_victim_search = false;
};

// Names accepted by MakeEvictionPolicy, in report order.
std::vector<std::string> EvictionPolicyNames();

// Creates a policy by name. `cost` must outlive the policy (used by
// front-first and asym; may be null for the others). INVALID_ARGUMENT for an
// unknown name, listing the known ones.
absl::StatusOr<std::unique_ptr<EvictionPolicy>> MakeEvictionPolicy(
    absl::string_view name, const CostModel* cost, const EvictionPolicyOptions& options = {});

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_EVICTION_POLICY_H_
