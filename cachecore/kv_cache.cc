#include "cachecore/kv_cache.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/container/flat_hash_set.h"
#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "cachecore/mix64.h"

namespace asymcache {

absl::Status KvCacheOptions::Validate() const {
  if (absl::Status s = model.Validate(); !s.ok()) return s;
  if (absl::Status s = BlockPoolOptions{capacity_blocks}.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("KvCacheOptions.capacity_blocks must be in [1, 2^31-1], got ", capacity_blocks));
  }
  if (lease_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("KvCacheOptions.lease_timeout must be positive, got ",
                                                   absl::FormatDuration(lease_timeout)));
  }
  if (session_chain_token_budget < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KvCacheOptions.session_chain_token_budget must be >= 0, got ", session_chain_token_budget));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(KvCacheOptions options,
                                                         std::unique_ptr<EvictionPolicy> policy,
                                                         Clock* clock) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (policy == nullptr) return absl::InvalidArgumentError("KvCache::Create: null eviction policy");
  if (clock == nullptr) return absl::InvalidArgumentError("KvCache::Create: null clock");
  if (policy->tracked_count() != 0) {
    return absl::InvalidArgumentError("KvCache::Create: the eviction policy must be fresh");
  }
  return std::unique_ptr<KvCache>(new KvCache(std::move(options), std::move(policy), clock));
}

KvCache::KvCache(KvCacheOptions options, std::unique_ptr<EvictionPolicy> policy, Clock* clock)
    : options_(std::move(options)),
      clock_(clock),
      pool_(BlockPoolOptions{options_.capacity_blocks}, std::move(policy), clock),
      planner_(&pool_, &index_, options_.model.block_tokens),
      lease_id_key_(absl::Uniform<uint64_t>(absl::BitGen())) {}

uint64_t KvCache::NextLeaseIdLocked() {
  // Mix64 is a bijection of 64-bit values, so distinct
  // counters give distinct ids; 0 is skipped (it means "no lease" on the wire).
  for (;;) {
    const uint64_t id = Mix64(next_lease_id_++ ^ lease_id_key_);
    if (id != 0) return id;
  }
}

KvCache::~KvCache() = default;

// ---------------------------------------------------------------- sessions

KvCache::SessionChain KvCache::TakeChain(absl::string_view salt, SequenceId sequence,
                                         absl::Span<const TokenId> tokens, int64_t* hashed) {
  std::optional<SessionChain> cached;
  {
    absl::MutexLock lock(&sessions_mu_);
    auto it = sessions_.find(sequence);
    if (it != sessions_.end()) {
      cached.emplace(EraseSessionLocked(it));
    }
  }
  // Verified outside the lock: same salt, and every cached token matches.
  if (cached.has_value() && cached->chain.salt() == salt && cached->chain.IsPrefixOf(tokens)) {
    const int64_t before = cached->chain.token_count();
    const int64_t b = cached->chain.block_tokens();
    const int64_t added = static_cast<int64_t>(tokens.size()) - before;
    *hashed = added > 0 ? added + before % b : 0;
    cached->chain.Extend(tokens.subspan(static_cast<size_t>(before)));
    return std::move(*cached);
  }
  SessionChain fresh{HashChain(salt, options_.model.block_tokens), {}, {}};
  fresh.chain.Extend(tokens);
  *hashed = static_cast<int64_t>(tokens.size());
  return fresh;
}

KvCache::SessionChain KvCache::EraseSessionLocked(SessionMap::iterator it) {
  session_tokens_ -= it->second.chain.token_count();
  session_lru_.erase(it->second.lru_it);
  SessionChain removed = std::move(it->second);
  sessions_.erase(it);
  return removed;
}

void KvCache::PutChain(SequenceId sequence, SessionChain chain, int64_t hashed) {
  absl::MutexLock lock(&sessions_mu_);
  hashed_tokens_ += hashed;
  if (chain.chain.token_count() > options_.session_chain_token_budget) return;
  auto it = sessions_.find(sequence);
  if (it != sessions_.end()) {  // a concurrent step of the same session got there first
    EraseSessionLocked(it);
  }
  session_lru_.push_front(sequence);
  chain.lru_it = session_lru_.begin();
  session_tokens_ += chain.chain.token_count();
  sessions_.emplace(sequence, std::move(chain));
  while (session_tokens_ > options_.session_chain_token_budget) {
    auto victim = sessions_.find(session_lru_.back());
    EraseSessionLocked(victim);
  }
}

void KvCache::ForgetSession(SequenceId sequence) {
  absl::MutexLock lock(&sessions_mu_);
  auto it = sessions_.find(sequence);
  if (it == sessions_.end()) return;
  EraseSessionLocked(it);
}

// ---------------------------------------------------------------- steps

absl::StatusOr<StepLease> KvCache::BeginStep(const StepRequest& request) {
  return BeginStep(request.salt, request.sequence, request.tokens);
}

absl::StatusOr<StepLease> KvCache::BeginStep(absl::string_view salt, SequenceId sequence,
                                             absl::Span<const TokenId> tokens,
                                             const BeginStepOptions& options) {
  if (tokens.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("BeginStep: sequence ", sequence, " has no tokens"));
  }
  if (tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat("BeginStep: sequence ", sequence, " has ",
                                                   tokens.size(), " tokens, more than int32 positions"));
  }
  int64_t hashed = 0;
  SessionChain chain = TakeChain(salt, sequence, tokens, &hashed);
  // Every path below returns the chain through PutChain, which also counts
  // `hashed` under the lock it takes anyway.
  if (options.defer_if_pending_tokens > 0) {
    const int block_tokens = options_.model.block_tokens;
    const absl::Span<const BlockHash> hashes = chain.chain.hashes();
    const size_t full_pages = tokens.size() / static_cast<size_t>(block_tokens);
    std::vector<BlockHash> pending;
    std::vector<uint64_t> writers;
    {
      absl::MutexLock lock(&leases_mu_);
      if (!writing_.empty()) {
        for (size_t k = 0; k < full_pages; ++k) {
          auto it = writing_.find(hashes[k]);
          if (it == writing_.end() || it->second.sequence == sequence) continue;
          pending.push_back(hashes[k]);
          writers.push_back(it->second.lease_id);
        }
      }
    }
    // A page the cache holds in another block is a hit, not a wait. (Check
    // and plan are not one critical section: two plans racing on the same
    // pages may both compute them, as without deferral; one copy is a
    // duplicate at commit.)
    const std::vector<int64_t> held = LookupPositions(pending);
    int64_t pending_tokens = 0;
    uint64_t writer = 0;
    for (size_t i = 0; i < held.size(); ++i) {
      if (held[i] >= 0) continue;
      pending_tokens += block_tokens;
      if (writer == 0) writer = writers[i];
    }
    if (pending_tokens >= options.defer_if_pending_tokens) {
      PutChain(sequence, std::move(chain), hashed);
      {
        absl::MutexLock lock(&leases_mu_);
        ++deferred_plans_;
      }
      return absl::AbortedError(absl::StrCat(
          "BeginStep: sequence ", sequence, ": ", pending_tokens,
          " of the context's tokens are being written by lease ", writer,
          " (defer_if_pending_tokens = ", options.defer_if_pending_tokens,
          "); plan again after it commits"));
    }
  }
  PlanInput input;
  input.sequence = sequence;
  input.context_tokens = static_cast<int64_t>(tokens.size());
  input.hashes = chain.chain.hashes();
  input.residency_hint = chain.page_ids;
  input.contiguous_prefix_only = pool_.contiguous_prefix_only();
  absl::StatusOr<PlannedStep> planned = planner_.Plan(input);
  if (!planned.ok()) {
    PutChain(sequence, std::move(chain), hashed);
    return absl::Status(planned.status().code(),
                        absl::StrCat("BeginStep: sequence ", sequence, ": ", planned.status().message()));
  }
  Emit(KvEvent::Kind::kRemoved, planned->evicted);
  chain.page_ids = planned->plan.page_ids;

  const StepPlan& plan = planned->plan;
  Lease lease;
  lease.sequence = sequence;
  lease.deadline = clock_->Now() + options_.lease_timeout;
  lease.pins = std::move(planned->resident_pins);
  lease.allocated = plan.allocated;
  lease.last_page_parent = chain.chain.ParentOf(static_cast<int64_t>(plan.page_ids.size()) - 1);
  lease.to_seal.reserve(plan.allocated.size());
  for (size_t i = 0; i < plan.allocated.size(); ++i) {
    const int32_t k = plan.allocated_pages[i];
    IndexedBlockInfo info;
    info.id = plan.allocated[i];
    info.hash = plan.hashes[k];
    info.parent_hash = k == 0 ? BlockHash{} : plan.hashes[k - 1];
    info.position = plan.page_positions[k];
    info.tokens = plan.page_lengths[k];
    info.owner = sequence;
    lease.to_seal.push_back(info);
  }
  PutChain(sequence, std::move(chain), hashed);

  StepLease result;
  {
    absl::MutexLock lock(&leases_mu_);
    result.lease_id = NextLeaseIdLocked();
    lease.id = result.lease_id;
    for (const IndexedBlockInfo& info : lease.to_seal) {
      if (info.tokens == options_.model.block_tokens) {
        writing_.try_emplace(info.hash, Writer{result.lease_id, sequence});
      }
    }
    ++steps_;
    hit_tokens_ += plan.hit_tokens;
    rebuild_tokens_ += plan.rebuild_tokens;
    new_tokens_ += plan.new_tokens;
    leases_.emplace(result.lease_id, std::move(lease));
  }
  result.plan = std::move(planned->plan);
  return result;
}

void KvCache::IndexNewBlocks(absl::Span<const IndexedBlockInfo> infos,
                             std::vector<IndexedBlockInfo>* indexed,
                             std::vector<BlockId>* duplicates) {
  for (const IndexedBlockInfo& info : infos) {
    const PrefixIndex::Entry entry{info.id, info.position};
    bool done = false;
    for (int attempt = 0; attempt < 4 && !done; ++attempt) {
      if (index_.Insert(info.hash, entry).ok()) {
        done = true;
        break;
      }
      const std::optional<PrefixIndex::Entry> existing = index_.Lookup(info.hash);
      if (!existing.has_value()) continue;  // erased meanwhile: insert again
      // Stale only when the existing block is free or sealed under another
      // hash; a sealed twin or a block being written is kept (ours is a duplicate).
      const BlockState s = pool_.state(existing->id);
      const std::optional<IndexedBlockInfo> other = pool_.sealed_info(existing->id);
      const bool stale = s == BlockState::kFree || (other.has_value() && other->hash != info.hash);
      if (!stale) break;
      done = index_.Replace(info.hash, existing->id, entry);
    }
    if (done) {
      indexed->push_back(info);
    } else {
      duplicates->push_back(info.id);
    }
  }
}

absl::Status KvCache::CommitStep(uint64_t lease_id, CommitResult* result) {
  return CommitStep(lease_id, CommitOptions{}, result);
}

absl::Status KvCache::CommitStep(uint64_t lease_id, const CommitOptions& options,
                                 CommitResult* result) {
  Lease lease;
  {
    absl::MutexLock lock(&leases_mu_);
    auto it = leases_.find(lease_id);
    if (it == leases_.end()) {
      return absl::NotFoundError(absl::StrCat("CommitStep: no lease ", lease_id,
                                              " (never issued, released or expired)"));
    }
    if (it->second.committed) {
      return absl::FailedPreconditionError(
          absl::StrCat("CommitStep: lease ", lease_id, " is already committed"));
    }
    // Taken out while the pool and index are updated (no lock held); a
    // concurrent Commit/Release of the same lease sees NOT_FOUND meanwhile,
    // GetStats still counts it (committing_).
    lease = std::move(it->second);
    leases_.erase(it);
    ++committing_;
  }
  // Index first, then seal: a concurrent planner that finds the entry before
  // the seal fails PinIfIndexed (block still writing) and treats it as a miss.
  // The partial last page stays private when asked (to_seal is in position
  // order, so it is the last entry; a partial page is always the context's last).
  std::vector<BlockId> kept_private;
  if (options.keep_partial_last_page && !lease.to_seal.empty() &&
      lease.to_seal.back().tokens < options_.model.block_tokens) {
    const IndexedBlockInfo& last = lease.to_seal.back();
    kept_private.push_back(last.id);
    lease.private_page = PrivatePage{last.id, last.position, lease.last_page_parent, last.tokens,
                                     last.hash};
    lease.to_seal.pop_back();
  }
  std::vector<IndexedBlockInfo> sealing;
  std::vector<BlockId> duplicates;
  sealing.reserve(lease.to_seal.size());
  IndexNewBlocks(lease.to_seal, &sealing, &duplicates);
  const absl::Status sealed = pool_.SealMany(sealing, &lease.pins);
  ABSL_RAW_CHECK(sealed.ok(), "CommitStep: sealing the lease's own blocks failed");
  if (result != nullptr) {
    result->sealed_blocks = static_cast<int64_t>(sealing.size());
    result->duplicate_blocks = static_cast<int64_t>(duplicates.size());
    result->private_blocks = static_cast<int64_t>(kept_private.size());
  }
  // Freed at release: duplicates and the private partial page (still writing).
  duplicates.insert(duplicates.end(), kept_private.begin(), kept_private.end());
  lease.allocated = std::move(duplicates);
  {
    absl::MutexLock lock(&leases_mu_);
    ForgetWritingLocked(lease);  // indexed now (or duplicates of indexed pages)
  }
  lease.to_seal.clear();
  lease.committed = true;
  lease.deadline = clock_->Now() + options_.lease_timeout;
  EmitStored(sealing);
  ReturnLease(lease_id, std::move(lease));
  return absl::OkStatus();
}

void KvCache::ReturnLease(uint64_t lease_id, Lease lease) {
  absl::MutexLock lock(&leases_mu_);
  leases_.emplace(lease_id, std::move(lease));
  --committing_;
}

absl::StatusOr<KvCache::LeaseExtension> KvCache::ExtendLease(
    uint64_t lease_id, int64_t position, absl::Span<const TokenId> page_tokens,
    bool reserve_spare) {
  const int block_tokens = options_.model.block_tokens;
  if (page_tokens.size() != static_cast<size_t>(block_tokens)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ExtendLease: lease ", lease_id, ": page_tokens has ", page_tokens.size(),
        " tokens; the private page's full content is block_tokens = ", block_tokens));
  }
  Lease lease;
  {
    absl::MutexLock lock(&leases_mu_);
    auto it = leases_.find(lease_id);
    if (it == leases_.end()) {
      return absl::NotFoundError(absl::StrCat("ExtendLease: no lease ", lease_id,
                                              " (never issued, released or expired)"));
    }
    if (!it->second.committed) {
      return absl::FailedPreconditionError(absl::StrCat(
          "ExtendLease: lease ", lease_id,
          " is not committed (CommitStep with keep_partial_last_page comes first)"));
    }
    if (!it->second.private_page.has_value()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "ExtendLease: lease ", lease_id,
          " has no private page (its last page was sealed or resident: plan the longer "
          "context instead)"));
    }
    if (it->second.private_page->position != position) {
      return absl::FailedPreconditionError(absl::StrCat(
          "ExtendLease: lease ", lease_id, ": its private page starts at position ",
          it->second.private_page->position, ", not ", position,
          " (a stale or reordered call)"));
    }
    // Taken out as CommitStep does (a concurrent call on it sees NOT_FOUND).
    lease = std::move(it->second);
    leases_.erase(it);
    ++committing_;
  }
  const PrivatePage page = *lease.private_page;
  if (page.planned_tokens > 0 &&
      ChainBlock(page.parent, page_tokens.first(static_cast<size_t>(page.planned_tokens))) !=
          page.planned_hash) {
    ReturnLease(lease_id, std::move(lease));
    return absl::InvalidArgumentError(absl::StrCat(
        "ExtendLease: lease ", lease_id, ": page_tokens do not start with the ",
        page.planned_tokens, " tokens planned for the page at position ", page.position));
  }
  // The next page's block first (the spare, else a new one): when the pool
  // cannot supply it nothing changes.
  BlockId next_block = lease.spare;
  if (next_block == kNoBlock) {
    absl::StatusOr<BlockId> allocated = AllocateOne(lease.sequence);
    if (!allocated.ok()) {
      ReturnLease(lease_id, std::move(lease));
      return absl::Status(allocated.status().code(),
                          absl::StrCat("ExtendLease: lease ", lease_id, ": ",
                                       allocated.status().message()));
    }
    next_block = *allocated;
    lease.allocated.push_back(next_block);
  }
  lease.spare = kNoBlock;
  IndexedBlockInfo full;
  full.id = page.id;
  full.hash = ChainBlock(page.parent, page_tokens);
  full.parent_hash = page.position == 0 ? BlockHash{} : page.parent;  // as BeginStep's to_seal
  full.position = page.position;
  full.tokens = block_tokens;
  full.owner = lease.sequence;
  std::vector<IndexedBlockInfo> sealing;
  std::vector<BlockId> duplicates;
  IndexNewBlocks(absl::MakeConstSpan(&full, 1), &sealing, &duplicates);
  const absl::Status sealed = pool_.SealMany(sealing, &lease.pins);
  ABSL_RAW_CHECK(sealed.ok(), "ExtendLease: sealing the lease's private page failed");
  if (!sealing.empty()) {
    // Sealed: the lease's pin holds it now. A duplicate stays in `allocated`.
    lease.allocated.erase(std::find(lease.allocated.begin(), lease.allocated.end(), page.id));
  }
  lease.private_page = PrivatePage{next_block, page.position + block_tokens, full.hash, 0, {}};
  if (reserve_spare) {
    // Best effort: a pool that cannot spare a block leaves the lease without one.
    if (absl::StatusOr<BlockId> spare = AllocateOne(lease.sequence); spare.ok()) {
      lease.spare = *spare;
      lease.allocated.push_back(*spare);
    }
  }
  const BlockId spare = lease.spare;
  lease.deadline = clock_->Now() + options_.lease_timeout;
  EmitStored(sealing);
  {
    absl::MutexLock lock(&leases_mu_);
    leases_.emplace(lease_id, std::move(lease));
    --committing_;
    ++lease_extensions_;
  }
  return LeaseExtension{next_block, page.position + block_tokens, !sealing.empty(), spare};
}

absl::StatusOr<BlockId> KvCache::AllocateOne(SequenceId owner) {
  std::vector<EvictedBlock> evicted;
  absl::StatusOr<std::vector<BlockId>> ids = pool_.Allocate(1, owner, &evicted);
  for (const EvictedBlock& e : evicted) index_.EraseIf(e.hash, e.id);
  Emit(KvEvent::Kind::kRemoved, evicted);
  if (!ids.ok()) return ids.status();
  return ids->front();
}

void KvCache::ForgetWritingLocked(const Lease& lease) {
  if (writing_.empty()) return;
  for (const IndexedBlockInfo& info : lease.to_seal) {
    auto it = writing_.find(info.hash);
    if (it != writing_.end() && it->second.lease_id == lease.id) writing_.erase(it);
  }
}

void KvCache::ReleaseLease(Lease lease) {
  if (!lease.to_seal.empty()) {  // released before its commit: nothing will be written
    absl::MutexLock lock(&leases_mu_);
    ForgetWritingLocked(lease);
  }
  lease.pins.Reset();
  const absl::Status aborted = pool_.AbortMany(lease.allocated);
  ABSL_RAW_CHECK(aborted.ok(), "ReleaseStep: freeing the lease's own blocks failed");
}

absl::StatusOr<KvCache::Lease> KvCache::TakeLease(uint64_t lease_id, absl::string_view op) {
  absl::MutexLock lock(&leases_mu_);
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) {
    return absl::NotFoundError(
        absl::StrCat(op, ": no lease ", lease_id, " (never issued, released or expired)"));
  }
  Lease lease = std::move(it->second);
  leases_.erase(it);
  return lease;
}

absl::Status KvCache::ReleaseStep(uint64_t lease_id) {
  absl::StatusOr<Lease> lease = TakeLease(lease_id, "ReleaseStep");
  if (!lease.ok()) return lease.status();
  ReleaseLease(*std::move(lease));
  return absl::OkStatus();
}

absl::StatusOr<BlockPool::PinSet> KvCache::ReleaseStepKeepPins(uint64_t lease_id) {
  absl::StatusOr<Lease> lease = TakeLease(lease_id, "ReleaseStepKeepPins");
  if (!lease.ok()) return lease.status();
  BlockPool::PinSet pins = std::move(lease->pins);
  ReleaseLease(*std::move(lease));
  return pins;
}

absl::Status KvCache::RenewLease(uint64_t lease_id) {
  absl::MutexLock lock(&leases_mu_);
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) {
    return absl::NotFoundError(absl::StrCat("RenewLease: no lease ", lease_id,
                                            " (never issued, released or expired)"));
  }
  it->second.deadline = clock_->Now() + options_.lease_timeout;
  return absl::OkStatus();
}

int64_t KvCache::ExpireLeases() {
  const absl::Time now = clock_->Now();
  std::vector<Lease> expired;
  {
    absl::MutexLock lock(&leases_mu_);
    for (auto it = leases_.begin(); it != leases_.end();) {
      if (it->second.deadline <= now) {
        expired.push_back(std::move(it->second));
        leases_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  for (Lease& lease : expired) ReleaseLease(std::move(lease));
  return static_cast<int64_t>(expired.size());
}

// ---------------------------------------------------------------- pins, invalidation

absl::StatusOr<BlockPool::PinSet> KvCache::PinContext(absl::string_view salt,
                                                      absl::Span<const TokenId> tokens) {
  if (tokens.empty()) return absl::InvalidArgumentError("PinContext: no tokens");
  const std::vector<BlockHash> hashes = ChainHashes(salt, tokens, options_.model.block_tokens);
  std::vector<PrefixIndex::Entry> found;
  index_.LookupMany(hashes, &found);
  std::vector<BlockId> ids;
  ids.reserve(found.size());
  for (const PrefixIndex::Entry& e : found) ids.push_back(e.id);
  BlockPool::PinSet pins;
  std::vector<bool> pinned;
  pool_.PinIndexedMany(ids, hashes, std::nullopt, &pins, &pinned);
  return pins;
}

KvCache::ExportedBlocks KvCache::PinForExport(absl::Span<const BlockHash> hashes) {
  std::vector<PrefixIndex::Entry> found;
  index_.LookupMany(hashes, &found);
  std::vector<BlockId> ids;
  ids.reserve(found.size());
  for (const PrefixIndex::Entry& e : found) ids.push_back(e.id);
  ExportedBlocks out;
  std::vector<bool> pinned;
  pool_.PinIndexedMany(ids, hashes, std::nullopt, &out.pins, &pinned);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!pinned[i]) continue;
    std::optional<IndexedBlockInfo> info = pool_.sealed_info(ids[i]);
    ABSL_RAW_CHECK(info.has_value(), "PinForExport: a pinned block is not sealed");
    out.blocks.push_back(*info);
  }
  return out;
}

std::vector<int64_t> KvCache::LookupPositions(absl::Span<const BlockHash> hashes) const {
  std::vector<PrefixIndex::Entry> found;
  index_.LookupMany(hashes, &found);
  std::vector<int64_t> positions(found.size(), -1);
  for (size_t i = 0; i < found.size(); ++i) {
    if (found[i].id != kNoBlock) positions[i] = found[i].position;
  }
  return positions;
}

absl::StatusOr<std::vector<BlockId>> KvCache::AllocateForImport(int64_t n) {
  std::vector<EvictedBlock> evicted;
  absl::StatusOr<std::vector<BlockId>> ids = pool_.AllocateForTransfer(n, 0, &evicted);
  for (const EvictedBlock& e : evicted) index_.EraseIf(e.hash, e.id);
  Emit(KvEvent::Kind::kRemoved, evicted);
  if (!ids.ok()) {
    return absl::Status(ids.status().code(),
                        absl::StrCat("AllocateForImport: ", ids.status().message()));
  }
  return ids;
}

absl::StatusOr<int64_t> KvCache::FinishImport(absl::Span<const IndexedBlockInfo> infos) {
  absl::flat_hash_set<BlockId> seen;
  for (const IndexedBlockInfo& info : infos) {
    if (info.id < 0 || info.id >= pool_.capacity() ||
        pool_.state(info.id) != BlockState::kInTransfer) {
      return absl::FailedPreconditionError(
          absl::StrCat("FinishImport: block ", info.id, " is not an import in transfer"));
    }
    if (!seen.insert(info.id).second) {
      return absl::FailedPreconditionError(
          absl::StrCat("FinishImport: block ", info.id, " listed twice"));
    }
    // SealMany refuses these; checked here so that nothing is indexed first.
    if (info.tokens <= 0 || info.tokens > options_.model.block_tokens || info.position < 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("FinishImport: block ", info.id, " has tokens=", info.tokens,
                       " position=", info.position));
    }
  }
  std::vector<IndexedBlockInfo> sealing;
  std::vector<BlockId> duplicates;
  IndexNewBlocks(infos, &sealing, &duplicates);
  BlockPool::PinSet pins;
  const absl::Status sealed = pool_.SealMany(sealing, &pins);
  ABSL_RAW_CHECK(sealed.ok(), "FinishImport: sealing in-transfer blocks failed");
  const absl::Status freed = pool_.AbortMany(duplicates);
  ABSL_RAW_CHECK(freed.ok(), "FinishImport: freeing duplicate imports failed");
  EmitStored(sealing);
  pins.Reset();
  return static_cast<int64_t>(sealing.size());
}

absl::Status KvCache::AbortImport(absl::Span<const BlockId> ids) {
  // Only in-transfer blocks: a lease's writing blocks are not an import's to free.
  for (BlockId id : ids) {
    if (id < 0 || id >= pool_.capacity() || pool_.state(id) != BlockState::kInTransfer) {
      return absl::FailedPreconditionError(
          absl::StrCat("AbortImport: block ", id, " is not an import in transfer"));
    }
  }
  return pool_.AbortMany(ids);
}

absl::Status KvCache::InvalidateBlock(BlockId id) {
  absl::StatusOr<EvictedBlock> dropped = pool_.Invalidate(id);
  if (!dropped.ok()) return dropped.status();
  index_.EraseIf(dropped->hash, dropped->id);
  Emit(KvEvent::Kind::kRemoved, absl::MakeConstSpan(&*dropped, 1));
  return absl::OkStatus();
}

// ---------------------------------------------------------------- events, stats

void KvCache::SetEventListener(std::function<void(const KvEvent&)> listener) {
  absl::MutexLock lock(&events_mu_);
  listener_ = std::move(listener);
}

// EvictedBlock and IndexedBlockInfo both carry `hash` and `position`: one
// loop numbers and delivers the events for either.
template <typename Block>
void KvCache::EmitEach(KvEvent::Kind kind, absl::Span<const Block> blocks) {
  if (blocks.empty()) return;
  absl::MutexLock lock(&events_mu_);
  for (const Block& b : blocks) {
    const KvEvent event{kind, b.hash, b.position, next_event_++, b.id};
    if (listener_) listener_(event);
  }
}

void KvCache::Emit(KvEvent::Kind kind, absl::Span<const EvictedBlock> blocks) {
  EmitEach(kind, blocks);
}

void KvCache::EmitStored(absl::Span<const IndexedBlockInfo> blocks) {
  EmitEach(KvEvent::Kind::kStored, blocks);
}

KvCache::Stats KvCache::GetStats() const {
  Stats stats;
  stats.pool = pool_.GetStats();
  stats.indexed_blocks = static_cast<int64_t>(index_.size());
  {
    absl::MutexLock lock(&leases_mu_);
    stats.active_leases = static_cast<int64_t>(leases_.size()) + committing_;
    stats.steps = steps_;
    stats.hit_tokens = hit_tokens_;
    stats.rebuild_tokens = rebuild_tokens_;
    stats.new_tokens = new_tokens_;
    stats.lease_extensions = lease_extensions_;
    stats.deferred_plans = deferred_plans_;
    stats.writing_pages = static_cast<int64_t>(writing_.size());
  }
  {
    absl::MutexLock lock(&sessions_mu_);
    stats.session_chains = static_cast<int64_t>(sessions_.size());
    stats.session_chain_tokens = session_tokens_;
    stats.hashed_tokens = hashed_tokens_;
  }
  return stats;
}

absl::Status KvCache::CheckConsistency() const {
  auto fail = [](auto&&... parts) {
    return absl::FailedPreconditionError(absl::StrCat("KvCache inconsistent: ", parts...));
  };
  const BlockPool::Stats stats = pool_.GetStats();
  if (stats.free + stats.writing + stats.sealed_evictable + stats.pinned + stats.in_transfer !=
      stats.capacity) {
    return fail("pool counts free=", stats.free, " writing=", stats.writing,
                " evictable=", stats.sealed_evictable, " pinned=", stats.pinned,
                " in_transfer=", stats.in_transfer, " do not add up to ", stats.capacity);
  }
  const auto entries = index_.Snapshot();
  for (const auto& [hash, entry] : entries) {
    const std::optional<IndexedBlockInfo> info = pool_.sealed_info(entry.id);
    if (!info.has_value()) {
      return fail("index entry ", hash.ToHex(), " -> block ", entry.id, " which is ",
                  entry.id >= 0 && entry.id < pool_.capacity() ? BlockStateName(pool_.state(entry.id))
                                                               : "out of range");
    }
    if (info->hash != hash || info->position != entry.position) {
      return fail("index entry ", hash.ToHex(), " -> block ", entry.id, " at ", entry.position,
                  " but the block holds ", info->hash.ToHex(), " at ", info->position);
    }
  }
  int64_t sealed = 0;
  int64_t pins_seen = 0;
  for (BlockId id = 0; id < pool_.capacity(); ++id) {
    const BlockState s = pool_.state(id);
    const int pins = pool_.pin_count(id);
    if ((s == BlockState::kPinned) != (pins > 0)) {
      return fail("block ", id, " is ", BlockStateName(s), " with ", pins, " pins");
    }
    pins_seen += pins > 0;
    sealed += s == BlockState::kSealed || s == BlockState::kPinned;
  }
  if (pins_seen != stats.pinned) return fail("pinned counter ", stats.pinned, " vs ", pins_seen);
  {
    // Every page being written belongs to an uncommitted lease that allocated it.
    absl::MutexLock lock(&leases_mu_);
    for (const auto& entry : writing_) {
      const BlockHash& hash = entry.first;
      const Writer& writer = entry.second;
      auto it = leases_.find(writer.lease_id);
      const bool owns =
          it != leases_.end() && !it->second.committed &&
          it->second.sequence == writer.sequence &&
          std::any_of(it->second.to_seal.begin(), it->second.to_seal.end(),
                      [&hash](const IndexedBlockInfo& info) { return info.hash == hash; });
      if (!owns) {
        return fail("page ", hash.ToHex(), " is listed as being written by lease ",
                    writer.lease_id, " of sequence ", writer.sequence,
                    ", which is not an uncommitted lease of it allocating the page");
      }
    }
  }
  if (sealed != static_cast<int64_t>(entries.size())) {
    return fail(sealed, " sealed blocks but ", entries.size(), " index entries");
  }
  size_t tracked = 0, evictable = 0;
  pool_.WithPolicy([&](const EvictionPolicy& policy) {
    tracked = policy.tracked_count();
    evictable = policy.evictable_count();
  });
  if (static_cast<int64_t>(tracked) != sealed ||
      static_cast<int64_t>(evictable) != stats.sealed_evictable) {
    return fail("policy tracks ", tracked, " (", evictable, " evictable), pool has ", sealed,
                " sealed (", stats.sealed_evictable, " evictable)");
  }
  return absl::OkStatus();
}

}  // namespace asymcache
