#include "cachecore/block_pool.h"

#include <utility>
#include <vector>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/str_cat.h"

namespace asymcache {
namespace {

// The lifecycle diagram of block_pool.h as a table: the only transitions the
// pool ever makes.
bool AllowedTransition(BlockState from, BlockState to) {
  using S = BlockState;
  switch (from) {
    case S::kFree:
      return to == S::kWriting || to == S::kInTransfer;
    case S::kWriting:
      return to == S::kPinned || to == S::kFree;
    case S::kInTransfer:
      return to == S::kPinned || to == S::kFree;
    case S::kPinned:
      return to == S::kSealed;
    case S::kSealed:
      return to == S::kPinned || to == S::kFree;
  }
  return false;
}

bool IsSealed(BlockState s) { return s == BlockState::kSealed || s == BlockState::kPinned; }

}  // namespace

absl::string_view BlockStateName(BlockState state) {
  switch (state) {
    case BlockState::kFree: return "free";
    case BlockState::kWriting: return "writing";
    case BlockState::kSealed: return "sealed";
    case BlockState::kPinned: return "pinned";
    case BlockState::kInTransfer: return "in-transfer";
  }
  return "unknown";
}

absl::Status BlockPoolOptions::Validate() const {
  if (capacity_blocks < 1 || capacity_blocks > int64_t{INT32_MAX}) {
    return absl::InvalidArgumentError(absl::StrCat(
        "BlockPoolOptions.capacity_blocks must be in [1, 2^31-1], got ", capacity_blocks));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- handles

BlockPool::PinHandle::PinHandle(PinHandle&& other) noexcept
    : pool_(std::exchange(other.pool_, nullptr)), id_(std::exchange(other.id_, kNoBlock)) {}

BlockPool::PinHandle& BlockPool::PinHandle::operator=(PinHandle&& other) noexcept {
  if (this != &other) {
    Reset();
    pool_ = std::exchange(other.pool_, nullptr);
    id_ = std::exchange(other.id_, kNoBlock);
  }
  return *this;
}

void BlockPool::PinHandle::Reset() {
  if (pool_ != nullptr) pool_->Unpin(id_);
  pool_ = nullptr;
  id_ = kNoBlock;
}

BlockPool::PinSet::PinSet(PinSet&& other) noexcept
    : pool_(std::exchange(other.pool_, nullptr)), ids_(std::move(other.ids_)) {
  other.ids_.clear();
}

BlockPool::PinSet& BlockPool::PinSet::operator=(PinSet&& other) noexcept {
  if (this != &other) {
    Reset();
    pool_ = std::exchange(other.pool_, nullptr);
    ids_ = std::move(other.ids_);
    other.ids_.clear();
  }
  return *this;
}

void BlockPool::PinSet::Reset() {
  if (pool_ != nullptr && !ids_.empty()) pool_->UnpinMany(ids_);
  ids_.clear();
  pool_ = nullptr;
}

void BlockPool::PinSet::Absorb(PinSet&& other) {
  if (other.ids_.empty()) return;
  ABSL_RAW_CHECK(pool_ == nullptr || other.pool_ == nullptr || pool_ == other.pool_,
                 "PinSet::Absorb across pools");
  if (pool_ == nullptr) pool_ = other.pool_;
  ids_.insert(ids_.end(), other.ids_.begin(), other.ids_.end());
  other.ids_.clear();
  other.pool_ = nullptr;
}

// ---------------------------------------------------------------- pool

// Writing / in-transfer slots have pins == 0; a -1 marks "seen" while checking
// a batch for duplicates, and every mark is cleared before returning.
absl::Status BlockPool::CheckDistinctLocked(size_t n, const std::function<BlockId(size_t)>& id_at) {
  if (n < 2) return absl::OkStatus();
  size_t marked = 0;
  absl::Status status;
  for (; marked < n; ++marked) {
    Slot& slot = slots_[static_cast<size_t>(id_at(marked))];
    if (slot.pins == -1) {
      status = absl::FailedPreconditionError(
          absl::StrCat("block ", id_at(marked), " listed twice in one batch"));
      break;
    }
    slot.pins = -1;
  }
  for (size_t i = 0; i < marked; ++i) slots_[static_cast<size_t>(id_at(i))].pins = 0;
  return status;
}

BlockPool::BlockPool(BlockPoolOptions options, std::unique_ptr<EvictionPolicy> policy,
                     Clock* clock)
    : capacity_(options.capacity_blocks),
      clock_(clock),
      policy_name_(policy ? std::string(policy->name()) : std::string()),
      contiguous_prefix_only_(policy ? policy->contiguous_prefix_only() : false),
      policy_(std::move(policy)) {
  ABSL_RAW_CHECK(options.Validate().ok(), "BlockPool: invalid options");
  ABSL_RAW_CHECK(policy_ != nullptr && clock_ != nullptr, "BlockPool: null policy or clock");
  absl::MutexLock lock(&mu_);
  slots_.resize(static_cast<size_t>(capacity_));
  free_list_.reserve(static_cast<size_t>(capacity_));
  // Stack order: block 0 is allocated first.
  for (int64_t id = capacity_ - 1; id >= 0; --id) free_list_.push_back(static_cast<BlockId>(id));
}

BlockPool::~BlockPool() = default;

void BlockPool::Transition(BlockId id, BlockState to) {
  Slot& slot = slots_[static_cast<size_t>(id)];
  const BlockState from = slot.state;
  if (!AllowedTransition(from, to)) {
    ABSL_RAW_LOG(FATAL, "BlockPool: illegal transition of block %d: %s -> %s", id,
                 std::string(BlockStateName(from)).c_str(),
                 std::string(BlockStateName(to)).c_str());
  }
  auto counter = [this](BlockState s) -> int64_t* {
    switch (s) {
      case BlockState::kWriting: return &writing_;
      case BlockState::kSealed: return &sealed_evictable_;
      case BlockState::kPinned: return &pinned_;
      case BlockState::kInTransfer: return &in_transfer_;
      case BlockState::kFree: return nullptr;  // free_list_.size()
    }
    return nullptr;
  };
  if (int64_t* c = counter(from)) --*c;
  if (int64_t* c = counter(to)) ++*c;
  slot.state = to;
  if (to == BlockState::kFree) {
    slot.pins = 0;
    slot.info = IndexedBlockInfo{};
    free_list_.push_back(id);
  }
}

void BlockPool::PinLocked(BlockId id, absl::Time now) {
  Slot& slot = slots_[static_cast<size_t>(id)];
  if (slot.pins++ == 0) {
    Transition(id, BlockState::kPinned);
    policy_->SetEvictable(id, false, now);
  }
}

bool BlockPool::UnpinLocked(BlockId id) {
  Slot& slot = slots_[static_cast<size_t>(id)];
  ABSL_RAW_CHECK(slot.state == BlockState::kPinned && slot.pins > 0,
                 "BlockPool: unpin of a block that is not pinned");
  if (--slot.pins != 0) return false;
  Transition(id, BlockState::kSealed);
  return true;
}

void BlockPool::Unpin(BlockId id) {
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  if (UnpinLocked(id)) policy_->SetEvictable(id, true, now);
}

void BlockPool::UnpinMany(absl::Span<const BlockId> ids) {
  const absl::Time now = clock_->Now();
  std::vector<BlockId> released;  // blocks whose last pin went: one policy call for all
  released.reserve(ids.size());
  absl::MutexLock lock(&mu_);
  for (BlockId id : ids) {
    if (UnpinLocked(id)) released.push_back(id);
  }
  policy_->SetEvictableMany(released, true, now);
}

absl::StatusOr<std::vector<BlockId>> BlockPool::AllocateLocked(
    int64_t n, SequenceId owner, BlockState target, std::vector<EvictedBlock>* evicted) {
  (void)owner;  // ownership is recorded at Seal (IndexedBlockInfo.owner)
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("Allocate: negative count ", n));
  const int64_t free = static_cast<int64_t>(free_list_.size());
  if (n > free + sealed_evictable_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "BlockPool: cannot allocate ", n, " blocks: free=", free,
        " evictable=", sealed_evictable_, " pinned=", pinned_, " writing=", writing_,
        " in_transfer=", in_transfer_, " capacity=", capacity_));
  }
  if (n > free) {
    const absl::Time now = clock_->Now();
    for (int64_t i = free; i < n; ++i) {
      const std::optional<BlockId> victim = policy_->PopVictim(now);
      ABSL_RAW_CHECK(victim.has_value(), "BlockPool: policy has fewer evictable blocks than the pool");
      ABSL_RAW_CHECK(ValidId(*victim), "BlockPool: policy returned an invalid block id");
      Slot& slot = slots_[static_cast<size_t>(*victim)];
      ABSL_RAW_CHECK(slot.state == BlockState::kSealed && slot.pins == 0,
                     "BlockPool: policy chose a block that is not evictable");
      if (evicted != nullptr) {
        evicted->push_back(EvictedBlock{*victim, slot.info.hash, slot.info.position});
      }
      Transition(*victim, BlockState::kFree);
      ++evictions_;
    }
  }
  std::vector<BlockId> ids;
  ids.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const BlockId id = free_list_.back();
    free_list_.pop_back();
    Transition(id, target);
    ids.push_back(id);
  }
  return ids;
}

absl::StatusOr<std::vector<BlockId>> BlockPool::Allocate(int64_t n, SequenceId owner,
                                                         std::vector<EvictedBlock>* evicted) {
  absl::MutexLock lock(&mu_);
  return AllocateLocked(n, owner, BlockState::kWriting, evicted);
}

absl::StatusOr<std::vector<BlockId>> BlockPool::AllocateForTransfer(
    int64_t n, SequenceId owner, std::vector<EvictedBlock>* evicted) {
  absl::MutexLock lock(&mu_);
  return AllocateLocked(n, owner, BlockState::kInTransfer, evicted);
}

absl::StatusOr<BlockPool::PinHandle> BlockPool::Seal(const IndexedBlockInfo& info) {
  PinSet pins;
  if (absl::Status s = SealMany(absl::MakeConstSpan(&info, 1), &pins); !s.ok()) return s;
  // Hand the single pin over to a PinHandle without unpinning.
  pins.ids_.clear();
  pins.pool_ = nullptr;
  return PinHandle(this, info.id);
}

absl::Status BlockPool::SealMany(absl::Span<const IndexedBlockInfo> infos, PinSet* pins) {
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  for (const IndexedBlockInfo& info : infos) {
    if (!ValidId(info.id)) {
      return absl::FailedPreconditionError(absl::StrCat("Seal: invalid block id ", info.id));
    }
    const BlockState s = slots_[static_cast<size_t>(info.id)].state;
    if (s != BlockState::kWriting && s != BlockState::kInTransfer) {
      return absl::FailedPreconditionError(absl::StrCat(
          "Seal: block ", info.id, " is ", BlockStateName(s), ", not writing or in-transfer"));
    }
    if (info.tokens <= 0 || info.position < 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "Seal: block ", info.id, " has tokens=", info.tokens, " position=", info.position));
    }
  }
  if (absl::Status s = CheckDistinctLocked(infos.size(), [&](size_t i) { return infos[i].id; });
      !s.ok()) {
    return s;
  }
  for (const IndexedBlockInfo& info : infos) {
    Slot& slot = slots_[static_cast<size_t>(info.id)];
    Transition(info.id, BlockState::kPinned);
    slot.pins = 1;
    slot.info = info;
    policy_->OnIndexed(info, now);
    policy_->OnAccess(info.id, info.owner, now);
  }
  if (pins->pool_ == nullptr) pins->pool_ = this;
  ABSL_RAW_CHECK(pins->pool_ == this, "SealMany: PinSet of another pool");
  for (const IndexedBlockInfo& info : infos) pins->ids_.push_back(info.id);
  return absl::OkStatus();
}

absl::Status BlockPool::Abort(BlockId id) { return AbortMany(absl::MakeConstSpan(&id, 1)); }

absl::Status BlockPool::AbortMany(absl::Span<const BlockId> ids) {
  absl::MutexLock lock(&mu_);
  for (BlockId id : ids) {
    if (!ValidId(id)) return absl::FailedPreconditionError(absl::StrCat("Abort: invalid block id ", id));
    const BlockState s = slots_[static_cast<size_t>(id)].state;
    if (s != BlockState::kWriting && s != BlockState::kInTransfer) {
      return absl::FailedPreconditionError(absl::StrCat(
          "Abort: block ", id, " is ", BlockStateName(s), ", not writing or in-transfer"));
    }
  }
  if (absl::Status s = CheckDistinctLocked(ids.size(), [&](size_t i) { return ids[i]; });
      !s.ok()) {
    return s;
  }
  for (BlockId id : ids) Transition(id, BlockState::kFree);
  return absl::OkStatus();
}

std::optional<BlockPool::PinHandle> BlockPool::PinIfIndexed(BlockId id, const BlockHash& hash) {
  PinSet pins;
  std::vector<bool> pinned;
  if (PinIndexedMany(absl::MakeConstSpan(&id, 1), absl::MakeConstSpan(&hash, 1),
                     /*accessor=*/std::nullopt, &pins, &pinned) == 0) {
    return std::nullopt;
  }
  // Hand the single pin over to a PinHandle without unpinning.
  pins.ids_.clear();
  pins.pool_ = nullptr;
  return PinHandle(this, id);
}

int64_t BlockPool::PinIndexedMany(absl::Span<const BlockId> ids,
                                  absl::Span<const BlockHash> hashes,
                                  std::optional<SequenceId> accessor, PinSet* pins,
                                  std::vector<bool>* pinned) {
  ABSL_RAW_CHECK(ids.size() == hashes.size(), "PinIndexedMany: size mismatch");
  pinned->assign(ids.size(), false);
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  if (pins->pool_ == nullptr) pins->pool_ = this;
  ABSL_RAW_CHECK(pins->pool_ == this, "PinIndexedMany: PinSet of another pool");
  // Pins first, then the policy hears of the batch in two calls (each block
  // still sees SetEvictable(false) before OnAccess, as with PinLocked).
  std::vector<BlockId> held;  // blocks that were evictable until now
  const size_t first_pin = pins->ids_.size();
  int64_t count = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const BlockId id = ids[i];
    if (!ValidId(id)) continue;
    Slot& slot = slots_[static_cast<size_t>(id)];
    if (!IsSealed(slot.state) || slot.info.hash != hashes[i]) continue;
    if (slot.pins++ == 0) {
      Transition(id, BlockState::kPinned);
      held.push_back(id);
    }
    pins->ids_.push_back(id);
    (*pinned)[i] = true;
    ++count;
  }
  policy_->SetEvictableMany(held, false, now);
  if (accessor.has_value()) {
    policy_->OnAccessMany(absl::MakeConstSpan(pins->ids_).subspan(first_pin), *accessor, now);
  }
  return count;
}

absl::StatusOr<BlockPool::PinHandle> BlockPool::PinSealed(BlockId id) {
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  if (!ValidId(id) || !IsSealed(slots_[static_cast<size_t>(id)].state)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "PinSealed: block ", id, " is not sealed",
        ValidId(id) ? absl::StrCat(" (", BlockStateName(slots_[static_cast<size_t>(id)].state), ")")
                    : std::string(" (invalid id)")));
  }
  PinLocked(id, now);
  return PinHandle(this, id);
}

absl::StatusOr<EvictedBlock> BlockPool::Invalidate(BlockId id) {
  absl::MutexLock lock(&mu_);
  if (!ValidId(id)) return absl::FailedPreconditionError(absl::StrCat("Invalidate: invalid block id ", id));
  Slot& slot = slots_[static_cast<size_t>(id)];
  if (slot.state != BlockState::kSealed) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Invalidate: block ", id, " is ", BlockStateName(slot.state), ", not sealed and unpinned"));
  }
  EvictedBlock dropped{id, slot.info.hash, slot.info.position};
  policy_->OnRemoved(id);
  Transition(id, BlockState::kFree);
  return dropped;
}

void BlockPool::SetLoadHint(int64_t step_tokens) {
  absl::MutexLock lock(&mu_);
  policy_->SetLoadHint(step_tokens);
}

BlockPool::Stats BlockPool::GetStats() const {
  absl::MutexLock lock(&mu_);
  Stats stats;
  stats.capacity = capacity_;
  stats.free = static_cast<int64_t>(free_list_.size());
  stats.writing = writing_;
  stats.sealed_evictable = sealed_evictable_;
  stats.pinned = pinned_;
  stats.in_transfer = in_transfer_;
  stats.evictions = evictions_;
  return stats;
}

BlockState BlockPool::state(BlockId id) const {
  absl::MutexLock lock(&mu_);
  ABSL_RAW_CHECK(ValidId(id), "BlockPool::state: invalid id");
  return slots_[static_cast<size_t>(id)].state;
}

int BlockPool::pin_count(BlockId id) const {
  absl::MutexLock lock(&mu_);
  ABSL_RAW_CHECK(ValidId(id), "BlockPool::pin_count: invalid id");
  return slots_[static_cast<size_t>(id)].pins;
}

std::optional<IndexedBlockInfo> BlockPool::sealed_info(BlockId id) const {
  absl::MutexLock lock(&mu_);
  if (!ValidId(id) || !IsSealed(slots_[static_cast<size_t>(id)].state)) return std::nullopt;
  return slots_[static_cast<size_t>(id)].info;
}

void BlockPool::WithPolicy(const std::function<void(const EvictionPolicy&)>& fn) const {
  absl::MutexLock lock(&mu_);
  fn(*policy_);
}

}  // namespace asymcache
