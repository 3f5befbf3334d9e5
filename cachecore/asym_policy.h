// AsymPolicy ("asym"): position-aware, reuse-rate-weighted eviction
// (DESIGN.md §3.2). FrontFirstPolicy (Pensieve) is the same engine with the
// AsymCache refinements switched off (front_first_policy.h).
//
//   value(b) = reuse_rate(b) * (T_rebuild(b) + Δseg(b) * c_seg * L)   evict the lowest
//
// * reuse_rate: a block used by one distinct sequence ("private") has rate
//   1 / idle, idle = now - the last time that sequence accessed any block (or
//   wrote one). A block used by >= 2 distinct sequences ("shared") has rate
//   D(now) / W(age): D is an exponentially decayed count of the DISTINCT
//   sequences that used it (each counted once, at its first use, half-life
//   options.shared_rate_half_life = h), W(age) = (1 - 2^(-age/h)) * h / ln 2 is
//   the decay kernel integrated over the block's age, so D/W estimates the
//   arrival rate of new sequences per second, also for young blocks. To that
//   it adds 1 / idle_any, idle_any = now - the last access by ANY sequence:
//   the readers it already has come back too (Pensieve's signal, which a
//   private block gets through its sequence). Without that term a document
//   that two live sessions keep reading would be worth less than a private
//   block of either of them. Repeated accesses (steps) of one sequence never
//   raise D (they only reset idle_any, as they reset a private block's idle
//   time). Idle times and ages below kMinIdle count as kMinIdle.
// * T_rebuild: CostModel::RebuildCost at the block's position with the
//   marginal linear cost under the current load: SetLoadHint(tokens), floored
//   at kMinRebuildStepTokens (a rebuilt block is prefill work and rides in a
//   step that carries a prefill chunk, not in the decode-only step the last
//   hint may describe; on an H100 such a step is weight-bound, so without the
//   floor every rebuilt token would look free at light load and leading
//   blocks worthless); kDefaultLoadTokens until the first hint. σ = 1 when
//   both chain neighbours are resident
//   (evicting would leave an isolated hole whose KV scan nobody shares), else 0
//   (the hole joins an adjacent hole or the new-token tail and shares its scan).
// * Δseg: query segments added by evicting the block: +1 if both chain
//   neighbours are resident (a run is split), 0 at a run edge, -1 if neither is
//   (two holes merge). Position 0 counts as having a resident left neighbour
//   (evicting a leading block adds a segment); a block with no resident child
//   has none on the right (its hole merges with the next turn's tail).
//   Neighbours are found through IndexedBlockInfo.parent_hash: one hash
//   lookup per hash when a block is indexed (hash nodes list the blocks
//   holding a hash and the blocks naming it as parent); afterwards neighbour
//   links are plain indices, and a block leaving the index updates its
//   neighbours without hash lookups.
//
// Values are never frozen: PopVictim(now) evaluates CURRENT values (idle
// times grow). Values only fall while nothing happens (idle times and ages
// grow, decayed counts shrink), so a value computed for a later time is a
// lower bound of the value now. The search uses that:
// * Private blocks are grouped per sequence in a lazy 4-ary min-heap ordered
//   by the load-independent part of their cost (at equal idle time and equal
//   token counts the cheapest block of a sequence is its minimum; a partial
//   block, whose linear cost differs, may be ranked off by that difference).
//   Pinning a block leaves its entry in place (skipped while pinned, revived
//   for free on release unless it reached the top meanwhile); a cost change
//   pushes a new entry and kills the old one; dead entries are dropped when
//   they reach the top or by an O(n) compaction once they outnumber the live
//   ones: O(1) amortized per pin, release or access, O(log n) per entry popped.
//   Evictable shared blocks stand alone.
// * Two indexed min-heaps (sequences, shared blocks) are keyed by the value of
//   the sequence's cheapest block / of the shared block at the HORIZON
//   H = T_refresh + refresh_interval; for now <= H a key is <= the current
//   value. Every event that changes a value (access, seal, evictability,
//   neighbour change) re-keys its entry at H: shared blocks at once, a
//   sequence once per search (the event marks it dirty; the next PopVictim
//   normalizes its cost heap and re-keys it in O(log S)), so a batch of
//   accesses to one sequence costs one re-key.
// * PopVictim(now) walks both heaps best-first in key order, evaluates current
//   values, and stops when the next key is no lower than the best value found
//   (then the victim is the exact minimum) or after search_budget entries.
//   Budget bound (now <= H): the victim's value is at most the minimum times
//   (1 + (H - now) / idle) for a private victim, idle = its sequence's current
//   idle time (>= kMinIdle), or (1 + (H - now) / age) * 2^((H - now) / h) for
//   a shared victim of age `age`. With the 5 ms default and idle times of
//   seconds that is within ~0.5%: near-equal values are where a budget bites
//   (a min-value policy drives many sequences to near-equal values).
// * Keys are recomputed for a new horizon now + refresh_interval (O(S + shared
//   evictable), linear heapify) when a search finds now > H or the load hint
//   changed, but at most once per (entries / refresh_work_per_victim)
//   searches when the heaps hold more than kAlwaysRefreshBelow entries. While
//   a refresh is deferred the keys are values at H < now (or under an older
//   load): the bound above then holds with (now - H) + refresh_interval in
//   place of (H - now), and the load change on top.
// Cost per victim: O(log S) per dirty sequence, O(budget log budget) search, and
// at most refresh_work_per_victim key computations of refresh, amortized.
// AsymPolicyOptions::Exact() (no budget, refresh whenever now moved past H)
// always returns the exact minimum; options.sample_sequences = k > 0 caps the
// budget at k.
//
// Contract: implements EvictionPolicy (not thread-safe; the owner serializes
// calls with non-decreasing `now`). `cost` must outlive the policy. Calls
// naming an id that is not tracked are ignored; OnIndexed on a tracked id
// replaces the old block. Per operation: O(1) amortized plus the pops above
// (OnIndexed: one hash lookup per hash) and the victim search.
#ifndef ASYMCACHE_CACHECORE_ASYM_POLICY_H_
#define ASYMCACHE_CACHECORE_ASYM_POLICY_H_

#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "cachecore/cost_model.h"
#include "cachecore/eviction_policy.h"

namespace asymcache {

// Knobs of the victim search only (see above): they trade search work against
// how close the victim's value is to the exact minimum.
struct AsymPolicyOptions {
  // Keys are values this far ahead of their refresh. Short: tight keys, but a
  // refresh each time the clock has moved this far. 0: refresh whenever `now`
  // moved. Finite, >= 0. Default 5 ms: well below the idle times that decide
  // evictions (seconds), below one engine step.
  absl::Duration refresh_interval = absl::Milliseconds(5);
  // Current values computed per search at most; 0 = unbounded (exact).
  // Default 8.
  int search_budget = 8;
  // Refresh work allowed per victim, amortized, in key computations; 0 = no
  // limit (refresh as soon as the horizon passed). Default 32.
  int refresh_work_per_victim = 32;

  // Exact search: refresh whenever `now` moved, no budget, no refresh limit.
  static AsymPolicyOptions Exact() {
    return AsymPolicyOptions{.refresh_interval = absl::ZeroDuration(),
                             .search_budget = 0,
                             .refresh_work_per_victim = 0};
  }
  absl::Status Validate() const;  // INVALID_ARGUMENT naming the bad field
};

class AsymPolicy : public EvictionPolicy {
 public:
  // Load assumed until the first SetLoadHint: a typical chunked-prefill step.
  static constexpr int64_t kDefaultLoadTokens = 512;
  // Least load a rebuild is priced at (SetLoadHint floors its argument here):
  // the smallest prefill chunk of common serving engines (vLLM's 512).
  static constexpr int64_t kMinRebuildStepTokens = 512;
  // Floor for idle times and ages (a sequence used "right now").
  static constexpr absl::Duration kMinIdle = absl::Milliseconds(1);
  // Heaps this small are refreshed whenever needed (refresh_work_per_victim
  // does not apply).
  static constexpr size_t kAlwaysRefreshBelow = 1024;

  // Precondition: asym_options.Validate().ok() (invalid values are clamped:
  // interval into [0, 1 h], counts to >= 0). MakeEvictionPolicy uses the
  // defaults.
  AsymPolicy(const CostModel* cost, const EvictionPolicyOptions& options,
             const AsymPolicyOptions& asym_options = {});

  absl::string_view name() const override;
  void OnIndexed(const IndexedBlockInfo& info, absl::Time now) override;
  void SetEvictable(BlockId id, bool evictable, absl::Time now) override;
  void OnAccess(BlockId id, SequenceId seq, absl::Time now) override;
  void SetEvictableMany(absl::Span<const BlockId> ids, bool evictable, absl::Time now) override;
  void OnAccessMany(absl::Span<const BlockId> ids, SequenceId seq, absl::Time now) override;
  std::optional<BlockId> PopVictim(absl::Time now) override;
  void OnRemoved(BlockId id) override;
  void SetLoadHint(int64_t step_tokens) override;
  size_t evictable_count() const override { return evictable_; }
  size_t tracked_count() const override { return tracked_; }

  // Current value of a tracked block (for tests and diagnostics); nullopt if
  // the id is not tracked.
  std::optional<double> ValueOf(BlockId id, absl::Time now) const;

  // Work counters of the victim search (diagnostics, benchmarks).
  struct SearchStats {
    int64_t searches = 0;
    int64_t entries_evaluated = 0;  // current values computed while searching
    int64_t refreshes = 0;          // full key recomputations
  };
  const SearchStats& search_stats() const { return stats_; }

 protected:
  // What distinguishes Pensieve's front-first from asym.
  struct Mode {
    absl::string_view name = "asym";
    bool shared_rates = true;    // false: a block belongs to its last accessor
    bool segment_aware = true;   // false: σ = 1 and Δseg = 0 for every block
    bool follow_load = true;     // false: ignore SetLoadHint
  };
  AsymPolicy(const CostModel* cost, const EvictionPolicyOptions& options,
             const AsymPolicyOptions& asym_options, Mode mode);

 private:
  // Binary min-heap of (key, ref) that knows where each ref sits, so a key can
  // be changed or removed in O(log n). Refs are small non-negative integers.
  class KeyHeap {
   public:
    // key and ref, plus what the sequence heap needs to recompute a key
    // without touching the sequence (the shared heap leaves them zero).
    struct Entry {
      double key;
      int32_t ref;
      int32_t tokens = 0;    // tokens of the sequence's cheapest block
      double cost = 0;       // its load-independent cost
      int64_t last_ns = 0;   // the sequence's last access
    };
    void Set(int32_t ref, double key) { Set(Entry{key, ref}); }
    void Set(const Entry& entry);  // insert or re-key entry.ref
    void Remove(int32_t ref);           // no-op if absent
    // Replaces the contents (refs must be distinct); O(n).
    void Assign(std::vector<Entry> entries);
    // Recomputes every key as key_of(entry), then restores the heap; O(n).
    template <typename KeyOf>
    void Rekey(KeyOf key_of) {
      for (Entry& e : heap_) e.key = key_of(e);
      for (size_t i = heap_.size() / 2; i-- > 0;) SiftDown(i);
    }
    const std::vector<Entry>& entries() const { return heap_; }

   private:
    void Place(size_t i, Entry e);
    void SiftUp(size_t i);
    void SiftDown(size_t i);
    std::vector<Entry> heap_;
    std::vector<int32_t> pos_;  // by ref; -1 = absent
  };

  // One entry of a sequence's cost heap: a private block at the cost it had
  // when pushed. Live while `stamp` equals the block's stamp (every cost or
  // owner change bumps the block's stamp, killing old entries); a live entry of
  // a non-evictable (pinned) block stays in place and is revived for free when
  // the block becomes evictable again.
  struct CostEntry {
    double cost;  // load-independent cost (Block::static_cost)
    BlockId id;
    uint32_t stamp;
  };
  static bool CostLess(const CostEntry& a, const CostEntry& b) {
    return a.cost < b.cost || (a.cost == b.cost && a.id < b.id);
  }

  // Per-block state, dense by BlockId (ids are small: a pool's [0, capacity)).
  // What every operation reads fits one cache line; the rest is in BlockCold.
  struct alignas(64) Block {
    bool tracked = false;
    bool evictable = false;
    bool shared = false;
    bool has_entry = false;   // a live entry sits in its sequence's cost heap
    bool left = false;        // segment-aware: a resident left neighbour (or position 0)
    bool right = false;       // segment-aware: a resident child
    int8_t dseg = 0;
    uint32_t stamp = 0;       // see CostEntry; survives Forget
    int32_t seq_slot = -1;    // private: its sequence's slot in sequences_
    int32_t tokens = 0;
    int64_t position = 0;
    double static_cost = 0;   // attention + segment part, without linear time
    // Chain neighbours (segment-aware mode): the hash node of the block's own
    // hash and of its parent hash (-1 at position 0), and its links in the
    // node lists "blocks with this hash" (holders) and "blocks whose parent
    // has this hash" (children).
    int32_t node = -1;
    int32_t parent_node = -1;
    BlockId prev_holder = kNoBlock;
    BlockId next_holder = kNoBlock;
    BlockId prev_sibling = kNoBlock;
    BlockId next_sibling = kNoBlock;
  };
  // Per-block state read only by sharing and ownership changes.
  struct BlockCold {
    SequenceId owner = 0;        // the sequence that wrote it (front-first: its last accessor)
    int64_t first_use_ns = 0;    // indexing time, Unix nanoseconds
    double log_count_key = 0;    // shared: ln(sum over distinct seqs of 2^(t_i/h))
    int64_t last_access_ns = 0;  // shared: the last access by any sequence
  };
  // One hash seen in the index: who holds it, who names it as parent. Lets
  // neighbour changes be found without hash lookups once a block is indexed.
  // A node left empty stays in node_of_ (revived if its hash comes back) until
  // empty nodes outnumber the others: then one sequential sweep drops them all,
  // so a block leaving the index costs no hash lookup.
  struct HashNode {
    bool live = false;  // in node_of_
    BlockId first_holder = kNoBlock;
    BlockId first_child = kNoBlock;
  };
  // Per-sequence state, dense by slot (a slot is reused after the sequence
  // owns no private block any more).
  struct Sequence {
    SequenceId id = 0;
    bool in_use = false;
    bool dirty = false;           // queued in dirty_ (its key needs recomputing)
    int64_t last_access_ns = std::numeric_limits<int64_t>::min();  // Unix nanoseconds
    size_t private_blocks = 0;    // tracked private blocks naming it
    size_t evictable = 0;         // evictable private blocks naming it
    size_t live_entries = 0;      // blocks with has_entry naming it
    // [0, heap_size): min-heap by CostLess; [heap_size, size): pushed since
    // the last Normalize, unordered. Dead entries are dropped lazily.
    std::vector<CostEntry> heap;
    size_t heap_size = 0;
    // The cheapest evictable block, valid while !dirty and evictable > 0
    // (when keys_valid_; otherwise recomputed by the full refresh).
    CostEntry cheapest{0, kNoBlock, 0};
    int64_t cheapest_tokens = 0;  // blocks_[cheapest.id].tokens
  };

  bool IsTracked(BlockId id) const {
    return id >= 0 && static_cast<size_t>(id) < blocks_.size() && blocks_[id].tracked;
  }
  double LinearCost(int64_t tokens) const;
  void CacheLinearCosts();
  void CountEvictable(int delta);
  static double IdleSeconds(int64_t last_ns, int64_t now_ns);
  double SharedRate(BlockId id, absl::Time now) const;
  double Value(BlockId id, absl::Time now) const;
  // Value of the cheapest evictable block of `s` at `now` (s normalized, s.evictable > 0).
  double SequenceValue(const Sequence& s, int64_t now_ns) const;
  // The same from a sequence_heap_ entry.
  double EntryValue(const KeyHeap::Entry& e, int64_t now_ns) const {
    return (e.cost + LinearCost(e.tokens)) / IdleSeconds(e.last_ns, now_ns);
  }

  // Sequences.
  int32_t SlotFor(SequenceId seq);            // finds or creates
  int32_t FindSlot(SequenceId seq) const;     // -1 if none
  void TouchSlot(int32_t slot, int64_t now_ns);
  void MarkDirty(int32_t slot);
  void MaybeErase(int32_t slot);
  // Drops dead and dormant entries off the top and sets s.cheapest.
  void Normalize(Sequence& s);
  void Compact(Sequence& s);                  // drops dead entries, heapifies
  void ProcessDirty();                        // re-keys every dirty sequence
  void Kill(Block& b);                        // kills b's cost-heap entry

  // Structure maintenance.
  void SetEvictableOne(BlockId id, bool evictable);
  void OnAccessOne(BlockId id, SequenceId seq, absl::Time now, int64_t now_ns);
  void RekeyShared(BlockId id);    // shared_heap_ entry of id, at horizon_
  void Insert(BlockId id);   // into the evictable structures
  void Erase(BlockId id);    // from the evictable structures
  void RecomputeStatic(BlockId id);
  void Forget(BlockId id);

  // Hash nodes (segment-aware mode).
  int32_t NodeFor(const BlockHash& hash);  // finds or creates (or revives)
  void MaybeFreeNode(int32_t n);           // counts n as empty when it is
  void CollectNodes();                     // drops every empty node from node_of_
  // Sets `right` / `left` of every holder / child of node n, then RecomputeStatic.
  void RecomputeHolders(int32_t n, bool right);
  void RecomputeChildren(int32_t n, bool left);

  // Victim search.
  void RefreshKeys(absl::Time now);
  BlockId Search(absl::Time now);

  // Immutable after construction.
  const CostModel* cost_;
  const absl::Duration refresh_interval_;
  const int64_t search_budget_;          // 0 = unbounded
  const int64_t refresh_work_per_victim_;  // 0 = unbounded
  const Mode mode_;
  const double decay_per_s_;  // ln 2 / half-life
  const double seg_cost_;     // c_seg * L

  int64_t load_tokens_ = kDefaultLoadTokens;
  std::vector<double> linear_cost_by_tokens_;  // LinearCost(t) for t <= block_tokens
  std::vector<Block> blocks_;
  std::vector<BlockCold> cold_;  // by BlockId, as blocks_
  std::vector<HashNode> nodes_;
  std::vector<int32_t> free_nodes_;
  absl::flat_hash_map<BlockHash, int32_t> node_of_;
  size_t empty_nodes_ = 0;                            // in node_of_, no holder, no child
  std::vector<Sequence> sequences_;                   // by slot
  absl::flat_hash_map<SequenceId, int32_t> slot_of_;  // in-use sequences
  std::vector<int32_t> free_slots_;
  std::vector<int32_t> dirty_;                        // slots with dirty set
  absl::flat_hash_map<BlockId, absl::flat_hash_set<SequenceId>> shared_users_;

  // Victim search state. While keys_valid_, sequence_heap_ holds every
  // sequence with an evictable block keyed by SequenceValue(at horizon_)
  // (dirty sequences: once ProcessDirty ran, at the start of each search), and
  // shared_heap_ every evictable shared block keyed by Value(at horizon_).
  // While !keys_valid_ both are left alone and rebuilt by the next search.
  // load_changed_: keys still ordered, but computed under an older load.
  bool keys_valid_ = false;
  bool load_changed_ = false;         // keys were computed under another load hint
  int64_t searches_since_refresh_ = 0;
  absl::Time horizon_ = absl::InfinitePast();
  KeyHeap sequence_heap_;  // ref = sequence slot
  KeyHeap shared_heap_;    // ref = BlockId
  struct Candidate {
    double key;
    bool shared;
    size_t index;  // into the heap's entries()
  };
  std::vector<Candidate> frontier_;  // scratch of Search, kept for its capacity
  SearchStats stats_;
  size_t evictable_ = 0;
  size_t tracked_ = 0;
};

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_ASYM_POLICY_H_
