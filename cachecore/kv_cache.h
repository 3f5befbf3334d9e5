// KvCache: the engine's KV cache, the facade the daemon and the simulator use.
//
// What it is: a BlockPool (blocks + lifecycle + eviction policy), a PrefixIndex
// (chain hash -> block), a StepPlanner, per-step leases and a bounded cache of
// session hash chains. One step of a request:
//   BeginStep   hash the context (only the new tokens for a known session),
//               plan it, pin the resident pages, allocate holes + tail;
//               returns a lease (id + plan). The engine then writes the
//               allocated blocks.
//   CommitStep  the allocated blocks were written: index and seal them (the
//               lease keeps them pinned). A block whose hash another block
//               indexed meanwhile is a duplicate: it stays private to the lease
//               and is freed at release.
//   ReleaseStep drop the lease's pins; allocated blocks not committed are freed.
//   ExtendLease (decode page rollover, after a CommitStep that kept the
//               partial last page private) the private page is full and
//               written: seal and index it under its full hash (a duplicate
//               stays private, as at commit) and give the lease a block for
//               the next page (its spare, else a new one), the lease's new
//               private page. No plan, no hashing of the context.
// Leases not released within lease_timeout (measured on the injected clock
// from BeginStep, renewed by CommitStep, ExtendLease and RenewLease) are
// released by ExpireLeases().
//
// Session chains: per SequenceId the cache keeps the HashChain of the last
// BeginStep (its salt, every token, every block hash) and the page ids of
// that plan. A follow-up BeginStep with the same salt whose tokens start with
// ALL the cached tokens (compared token by token, a memcmp) hashes only the
// new tokens (and the old partial last block); otherwise the chain is rebuilt
// from scratch. Chains are evicted least-recently-used when their total token
// count exceeds session_chain_token_budget.
//
// Invariant at quiescence (no call in flight), checked by CheckConsistency():
// every index entry maps to a sealed block with that hash and position, and
// every sealed block is indexed; every page recorded as being written
// (BeginStepOptions) belongs to an uncommitted lease of the recorded sequence
// that allocated it.
//
// Thread-safety: thread-safe. Locks: the pool's mutex, the index shards, and
// the cache's own leases_mu_ / sessions_mu_ / events_mu_ (never held while
// hashing or planning). The event listener runs under events_mu_ only (no
// pool/index lock), in sequence_number order; it must not call into KvCache.
#ifndef ASYMCACHE_CACHECORE_KV_CACHE_H_
#define ASYMCACHE_CACHECORE_KV_CACHE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "cachecore/block_hash.h"
#include "cachecore/block_pool.h"
#include "cachecore/clock.h"
#include "cachecore/eviction_policy.h"
#include "cachecore/model_config.h"
#include "cachecore/prefix_index.h"
#include "cachecore/step_plan.h"
#include "cachecore/step_planner.h"
#include "cachecore/types.h"

namespace asymcache {

struct KvCacheOptions {
  ModelConfig model;                                 // default: llama-3-8b shape, B = 16
  int64_t capacity_blocks = 0;                       // required, >= 1
  absl::Duration lease_timeout = absl::Seconds(30);  // > 0
  int64_t session_chain_token_budget = 16 << 20;     // tokens of cached session chains; 0 = none
  absl::Status Validate() const;                     // INVALID_ARGUMENT naming the field
};

struct StepRequest {
  std::string salt;
  SequenceId sequence = 0;
  std::vector<TokenId> tokens;  // the whole context after this step; not empty
};

struct StepLease {
  uint64_t lease_id = 0;
  StepPlan plan;
};

struct BeginStepOptions {
  // Deferral of duplicate work. Full pages an uncommitted lease of another
  // sequence allocated and is writing now are "being written": the cache does
  // not hold them yet, so a plan would allocate and compute its own copy (a
  // duplicate at commit). When at least this many of the context's tokens sit
  // in such pages (and the cache holds no other copy), BeginStep plans
  // nothing and returns ABORTED naming a writing lease: nothing is pinned,
  // allocated or evicted and no step is counted (GetStats().deferred_plans
  // is; the sequence's hash chain is cached as for any BeginStep); the
  // caller plans again once that lease committed (or ended) and hits those
  // pages. 0 (default) = never defer. A lease of the same sequence never
  // defers it (no self-wait). Only the first uncommitted lease allocating a
  // page is recorded for it, and the check is not atomic with the plan:
  // concurrent plans of the same pages may still both compute them.
  int64_t defer_if_pending_tokens = 0;
};

// A block stored in / removed from the index. `block` identifies the copy:
// an index change and its event are not one atomic step, so a REMOVED of an
// evicted copy can follow a STORED of a newer copy of the same hash; a
// receiver drops a REMOVED whose block is not the one it recorded for the
// hash (the daemon's event hub does; coordinators must too).
struct KvEvent {
  enum class Kind : uint8_t { kStored = 0, kRemoved = 1 };
  Kind kind = Kind::kStored;
  BlockHash hash;
  int64_t position = 0;
  uint64_t sequence_number = 0;  // 1, 2, 3, ... per KvCache
  BlockId block = kNoBlock;      // the block holding (STORED) / that held (REMOVED) it
};

class KvCache {
 public:
  // INVALID_ARGUMENT for bad options or a null policy/clock. The clock must
  // outlive the cache.
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(KvCacheOptions options,
                                                         std::unique_ptr<EvictionPolicy> policy,
                                                         Clock* clock);
  ~KvCache();

  // INVALID_ARGUMENT for empty tokens (or > INT32_MAX); RESOURCE_EXHAUSTED when
  // the pool cannot supply the holes and tail (nothing pinned or allocated
  // then); ABORTED when options.defer_if_pending_tokens defers it (see there).
  absl::StatusOr<StepLease> BeginStep(const StepRequest& request);
  absl::StatusOr<StepLease> BeginStep(absl::string_view salt, SequenceId sequence,
                                      absl::Span<const TokenId> tokens,
                                      const BeginStepOptions& options = {});
  // NOT_FOUND for an unknown (or expired) lease; FAILED_PRECONDITION if
  // already committed. `result`, when given, receives the counts.
  struct CommitResult {
    int64_t sealed_blocks = 0;     // indexed by this commit
    int64_t duplicate_blocks = 0;  // another block indexed the hash first (freed at release)
    int64_t private_blocks = 0;    // kept private by keep_partial_last_page (0 or 1)
  };
  struct CommitOptions {
    // A decoding engine keeps writing the context's partial last page after
    // the commit. true: when the plan's last page is partial and was
    // allocated by this lease, it is not sealed or indexed; it stays the
    // lease's private writable block (freed at release). The engine later
    // plans the longer context and copies the rows it already computed
    // (the full page is then sealed under its full hash). false (default):
    // every allocated page is sealed, the partial one under its partial hash.
    bool keep_partial_last_page = false;
  };
  absl::Status CommitStep(uint64_t lease_id, CommitResult* result = nullptr);
  absl::Status CommitStep(uint64_t lease_id, const CommitOptions& options,
                          CommitResult* result);
  // Decode page rollover without planning the context again. Precondition
  // (else FAILED_PRECONDITION, nothing changed): the lease is committed and
  // holds a private page (CommitStep kept the partial last page, or an earlier
  // ExtendLease allocated it) that starts at `position` (a stale or reordered
  // call names another page). `page_tokens` are that page's tokens, exactly
  // block_tokens of them (INVALID_ARGUMENT otherwise, or when they do not
  // start with the tokens the plan hashed for the page); the caller has
  // written every row (the daemon cannot check that).
  // The page is indexed and sealed under ChainBlock(its parent, page_tokens)
  // (pinned by the lease; a duplicate when that hash was indexed meanwhile:
  // then it stays private and is freed at release, as at commit), one block is
  // allocated for the next page (position = page position + block_tokens),
  // which becomes the lease's private page, and the lease is renewed.
  // RESOURCE_EXHAUSTED when the pool cannot supply that block (nothing
  // changed). NOT_FOUND for an unknown (or expired) lease.
  // Spare: with reserve_spare the lease also keeps one more block for the
  // page after that (allocated now if the pool can, else none: not an
  // error), and the next ExtendLease makes that spare the new private page
  // instead of allocating. An engine that knows the spare starts the next
  // page in it at once and sends the ExtendLease off its step's path.
  struct LeaseExtension {
    BlockId block = kNoBlock;  // the next page's block (private, being written)
    int64_t position = 0;      // its first token position
    bool sealed = false;       // the full page was indexed (false: a duplicate)
    BlockId spare = kNoBlock;  // the lease's spare block after the call (kNoBlock: none)
  };
  absl::StatusOr<LeaseExtension> ExtendLease(uint64_t lease_id, int64_t position,
                                             absl::Span<const TokenId> page_tokens,
                                             bool reserve_spare = false);
  // NOT_FOUND for an unknown (or expired) lease.
  absl::Status ReleaseStep(uint64_t lease_id);
  // Releases the lease like ReleaseStep but hands its pins (resident pages
  // and, once committed, the sealed allocated pages) to the caller instead of
  // dropping them, e.g. for an agent job's pins. NOT_FOUND as ReleaseStep.
  absl::StatusOr<BlockPool::PinSet> ReleaseStepKeepPins(uint64_t lease_id);
  // Pushes the lease's deadline to now + lease_timeout. NOT_FOUND as above.
  absl::Status RenewLease(uint64_t lease_id);
  // Releases every lease whose deadline is <= now. Returns how many.
  int64_t ExpireLeases();

  // Pins every resident page of a context (non-contiguous; nothing is
  // allocated) and hands the pins out, e.g. for an agent job waiting on a tool
  // call. An empty set is a miss, not an error. INVALID_ARGUMENT for empty tokens.
  absl::StatusOr<BlockPool::PinSet> PinContext(absl::string_view salt,
                                               absl::Span<const TokenId> tokens);
  // Block transfer between caches (the daemon's export/import).
  //
  // PinForExport: pins the indexed blocks among `hashes` (a miss is skipped,
  // not an error) and describes them in request order; the pins keep them
  // from being evicted while a peer reads them.
  struct ExportedBlocks {
    BlockPool::PinSet pins;
    std::vector<IndexedBlockInfo> blocks;
  };
  ExportedBlocks PinForExport(absl::Span<const BlockHash> hashes);
  // Which of `hashes` are indexed now (no pins; a hint that may be stale by
  // the time the caller acts on it). Positions of the indexed ones, -1 else.
  std::vector<int64_t> LookupPositions(absl::Span<const BlockHash> hashes) const;
  // AllocateForImport: n blocks in kInTransfer (evicting others, kRemoved
  // events); RESOURCE_EXHAUSTED and nothing allocated when the pool cannot.
  absl::StatusOr<std::vector<BlockId>> AllocateForImport(int64_t n);
  // The bytes of infos[i].id arrived completely: index and seal them
  // (kStored events), then drop the import's pins (they become evictable).
  // A hash indexed meanwhile by another block makes that import block a
  // duplicate, which is freed. Returns the number indexed. Every infos[i].id
  // must come from AllocateForImport and not be finished or aborted yet
  // (FAILED_PRECONDITION and nothing changed otherwise).
  absl::StatusOr<int64_t> FinishImport(absl::Span<const IndexedBlockInfo> infos);
  // The import failed: frees the blocks (nothing was indexed).
  absl::Status AbortImport(absl::Span<const BlockId> ids);

  // Drops an unpinned sealed block from pool and index (kRemoved event).
  // FAILED_PRECONDITION when it is pinned or not sealed.
  absl::Status InvalidateBlock(BlockId id);
  // Forgets the cached hash chain of a session (e.g. when it ends).
  void ForgetSession(SequenceId sequence);

  void SetEventListener(std::function<void(const KvEvent&)> listener);
  void SetLoadHint(int64_t step_tokens) { pool_.SetLoadHint(step_tokens); }

  struct Stats {
    BlockPool::Stats pool;
    int64_t indexed_blocks = 0;
    int64_t active_leases = 0;
    int64_t session_chains = 0;
    int64_t session_chain_tokens = 0;
    int64_t steps = 0;            // successful BeginStep calls
    int64_t hit_tokens = 0;       // summed over steps
    int64_t rebuild_tokens = 0;
    int64_t new_tokens = 0;
    int64_t hashed_tokens = 0;    // tokens hashed by BeginStep (chain reuse saves these)
    int64_t lease_extensions = 0;  // successful ExtendLease calls
    int64_t deferred_plans = 0;    // BeginStep calls deferred (ABORTED) by defer_if_pending_tokens
    int64_t writing_pages = 0;     // full pages uncommitted leases are writing now
  };
  Stats GetStats() const;

  // Verifies the quiescent invariant (see above) and the pool's counters.
  // FAILED_PRECONDITION describing the first violation. O(capacity + index).
  absl::Status CheckConsistency() const;

  const ModelConfig& model() const { return options_.model; }
  const KvCacheOptions& options() const { return options_; }
  BlockPool& pool() { return pool_; }
  const BlockPool& pool() const { return pool_; }
  const PrefixIndex& index() const { return index_; }

 private:
  // The writable last page a committed lease keeps for decode (also listed in
  // Lease::allocated, so that release frees it).
  struct PrivatePage {
    BlockId id = kNoBlock;
    int64_t position = 0;
    BlockHash parent;          // hash of the page before it (the salt root for page 0)
    int64_t planned_tokens = 0;  // tokens the plan hashed for it (0: allocated by ExtendLease)
    BlockHash planned_hash;    // ChainBlock(parent, those tokens) when planned_tokens > 0
  };
  struct Lease {
    uint64_t id = 0;
    SequenceId sequence = 0;
    absl::Time deadline;
    bool committed = false;
    BlockPool::PinSet pins;              // resident pages, then sealed allocated pages
    std::vector<BlockId> allocated;      // not yet sealed (uncommitted), duplicates, private page
    std::vector<IndexedBlockInfo> to_seal;  // identities of `allocated` (before commit)
    std::optional<PrivatePage> private_page;  // set by CommitStep(keep_partial) / ExtendLease
    BlockId spare = kNoBlock;  // ExtendLease's reserved next block (also in `allocated`)
    BlockHash last_page_parent;  // chain parent of the plan's last page (the root for page 0)
  };
  struct SessionChain {
    HashChain chain;
    std::vector<BlockId> page_ids;  // of the last plan (residency hint)
    std::list<SequenceId>::iterator lru_it;
  };

  KvCache(KvCacheOptions options, std::unique_ptr<EvictionPolicy> policy, Clock* clock);

  using SessionMap = absl::flat_hash_map<SequenceId, SessionChain>;

  // Takes the session's chain out of the cache (or builds one) and extends it
  // to `tokens`; sets *hashed to the tokens hashed doing so (not yet counted).
  SessionChain TakeChain(absl::string_view salt, SequenceId sequence,
                         absl::Span<const TokenId> tokens, int64_t* hashed)
      ABSL_LOCKS_EXCLUDED(sessions_mu_);
  // Returns the chain to the cache (unless over the session budget) and adds
  // `hashed` (TakeChain's count) to hashed_tokens.
  void PutChain(SequenceId sequence, SessionChain chain, int64_t hashed)
      ABSL_LOCKS_EXCLUDED(sessions_mu_);
  // Removes the entry at `it` from the map, the LRU list and session_tokens_;
  // returns its chain.
  SessionChain EraseSessionLocked(SessionMap::iterator it)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(sessions_mu_);
  void ReleaseLease(Lease lease) ABSL_LOCKS_EXCLUDED(leases_mu_);
  // Drops the lease's entries of writing_ (its pages are sealed, duplicates
  // or freed now).
  void ForgetWritingLocked(const Lease& lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(leases_mu_);
  uint64_t NextLeaseIdLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(leases_mu_);
  // One block for `owner` (evicting as Allocate does, kRemoved events).
  absl::StatusOr<BlockId> AllocateOne(SequenceId owner);
  // Puts a lease taken out by CommitStep/ExtendLease back (--committing_).
  void ReturnLease(uint64_t lease_id, Lease lease) ABSL_LOCKS_EXCLUDED(leases_mu_);
  // Takes the lease out of leases_ (NOT_FOUND naming `op` when absent).
  absl::StatusOr<Lease> TakeLease(uint64_t lease_id, absl::string_view op)
      ABSL_LOCKS_EXCLUDED(leases_mu_);
  // Indexes each info's hash -> id, as CommitStep and FinishImport do: a hash
  // already indexed by a live block leaves ours a duplicate. Appends to
  // *indexed or *duplicates.
  void IndexNewBlocks(absl::Span<const IndexedBlockInfo> infos,
                      std::vector<IndexedBlockInfo>* indexed, std::vector<BlockId>* duplicates);
  void Emit(KvEvent::Kind kind, absl::Span<const EvictedBlock> blocks)
      ABSL_LOCKS_EXCLUDED(events_mu_);
  void EmitStored(absl::Span<const IndexedBlockInfo> blocks) ABSL_LOCKS_EXCLUDED(events_mu_);
  // The one event loop behind Emit and EmitStored (Block has hash, position).
  template <typename Block>
  void EmitEach(KvEvent::Kind kind, absl::Span<const Block> blocks)
      ABSL_LOCKS_EXCLUDED(events_mu_);

  // Immutable after construction.
  const KvCacheOptions options_;
  Clock* const clock_;
  BlockPool pool_;
  PrefixIndex index_;
  const StepPlanner planner_;

  mutable absl::Mutex leases_mu_;
  absl::flat_hash_map<uint64_t, Lease> leases_ ABSL_GUARDED_BY(leases_mu_);
  // Leases taken out of leases_ by a CommitStep in progress (put back when
  // it ends): still active, so GetStats counts them.
  int64_t committing_ ABSL_GUARDED_BY(leases_mu_) = 0;
  uint64_t next_lease_id_ ABSL_GUARDED_BY(leases_mu_) = 1;
  // Lease ids are a keyed bijection of a counter (unique, never 0, not
  // guessable from another client's id): see NextLeaseIdLocked.
  const uint64_t lease_id_key_;
  int64_t steps_ ABSL_GUARDED_BY(leases_mu_) = 0;
  int64_t hit_tokens_ ABSL_GUARDED_BY(leases_mu_) = 0;
  int64_t rebuild_tokens_ ABSL_GUARDED_BY(leases_mu_) = 0;
  int64_t new_tokens_ ABSL_GUARDED_BY(leases_mu_) = 0;
  int64_t lease_extensions_ ABSL_GUARDED_BY(leases_mu_) = 0;
  int64_t deferred_plans_ ABSL_GUARDED_BY(leases_mu_) = 0;
  // Full pages uncommitted leases allocated and are writing: chain hash ->
  // the first such lease (BeginStepOptions::defer_if_pending_tokens).
  struct Writer {
    uint64_t lease_id = 0;
    SequenceId sequence = 0;
  };
  absl::flat_hash_map<BlockHash, Writer> writing_ ABSL_GUARDED_BY(leases_mu_);

  mutable absl::Mutex sessions_mu_;
  SessionMap sessions_ ABSL_GUARDED_BY(sessions_mu_);
  std::list<SequenceId> session_lru_ ABSL_GUARDED_BY(sessions_mu_);  // front = most recent
  int64_t session_tokens_ ABSL_GUARDED_BY(sessions_mu_) = 0;
  int64_t hashed_tokens_ ABSL_GUARDED_BY(sessions_mu_) = 0;

  mutable absl::Mutex events_mu_;
  std::function<void(const KvEvent&)> listener_ ABSL_GUARDED_BY(events_mu_);
  uint64_t next_event_ ABSL_GUARDED_BY(events_mu_) = 1;
};

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_KV_CACHE_H_
