#include "services/daemon/event_hub.h"

#include <algorithm>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/str_cat.h"

namespace asymcache {

absl::Status KvEventHubOptions::Validate() const {
  if (history < 1) {
    return absl::InvalidArgumentError(absl::StrCat("event history must be >= 1, got ", history));
  }
  if (max_watchers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max watchers must be >= 1, got ", max_watchers));
  }
  if (max_batch_events < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max batch events must be >= 1, got ", max_batch_events));
  }
  return absl::OkStatus();
}

KvEventHub::KvEventHub(KvEventHubOptions options) : options_(options) {
  ABSL_RAW_CHECK(options_.Validate().ok(), "KvEventHub: invalid options");
}

KvEventHub::~KvEventHub() {
  absl::MutexLock lock(&mu_);
  ABSL_RAW_CHECK(watchers_ == 0, "KvEventHub destroyed with live watchers");
}

void KvEventHub::Publish(const KvEvent& event) {
  absl::MutexLock lock(&mu_);
  ABSL_RAW_CHECK(event.sequence_number == last_ + 1, "KvEventHub: events out of order");
  last_ = event.sequence_number;
  if (event.kind == KvEvent::Kind::kStored) {
    mirror_[event.hash] = Stored{event.position, event.block};
  } else {
    auto it = mirror_.find(event.hash);
    // A stale REMOVED (another copy stored since) leaves the mirror alone.
    if (it != mirror_.end() &&
        (event.block == kNoBlock || it->second.block == kNoBlock || it->second.block == event.block)) {
      mirror_.erase(it);
    }
  }
  ring_.push_back(event);
  while (static_cast<int64_t>(ring_.size()) > options_.history) ring_.pop_front();
}

uint64_t KvEventHub::OldestLocked() const {
  return ring_.empty() ? last_ + 1 : ring_.front().sequence_number;
}

KvEventHub::Snapshot KvEventHub::TakeSnapshotLocked() const {
  Snapshot snap;
  snap.sequence = last_;
  snap.events.reserve(mirror_.size());
  for (const auto& [hash, stored] : mirror_) {
    snap.events.push_back(KvEvent{KvEvent::Kind::kStored, hash, stored.position, 0, stored.block});
  }
  // Position order: a receiver can rebuild chains front to back.
  std::sort(snap.events.begin(), snap.events.end(),
            [](const KvEvent& a, const KvEvent& b) { return a.position < b.position; });
  return snap;
}

absl::StatusOr<std::unique_ptr<KvEventHub::Watcher>> KvEventHub::Watch(uint64_t after_sequence,
                                                                       bool snapshot) {
  absl::MutexLock lock(&mu_);
  if (closed_) return absl::UnavailableError("WatchEvents: the daemon is shutting down");
  if (watchers_ >= options_.max_watchers) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "WatchEvents: ", watchers_, " watchers already (max ", options_.max_watchers, ")"));
  }
  uint64_t cursor = last_;
  bool need_snapshot = snapshot;
  if (after_sequence != 0) {
    // Resumable iff every event after it is still in the ring.
    if (after_sequence <= last_ && after_sequence + 1 >= OldestLocked()) {
      cursor = after_sequence;
    } else {
      need_snapshot = true;
    }
  }
  ++watchers_;
  return std::unique_ptr<Watcher>(new Watcher(this, cursor, need_snapshot));
}

void KvEventHub::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
}

uint64_t KvEventHub::last_sequence() const {
  absl::MutexLock lock(&mu_);
  return last_;
}

int64_t KvEventHub::indexed_blocks() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(mirror_.size());
}

int KvEventHub::watchers() const {
  absl::MutexLock lock(&mu_);
  return watchers_;
}

KvEventHub::Watcher::Watcher(KvEventHub* hub, uint64_t cursor, bool snapshot_pending)
    : hub_(hub), cursor_(cursor), snapshot_pending_(snapshot_pending) {}

KvEventHub::Watcher::~Watcher() {
  absl::MutexLock lock(&hub_->mu_);
  --hub_->watchers_;
}

absl::StatusOr<std::optional<KvEventBatchView>> KvEventHub::Watcher::Next(absl::Duration timeout) {
  KvEventBatchView batch;
  const size_t max_batch = static_cast<size_t>(hub_->options_.max_batch_events);
  if (snapshot_sent_ < snapshot_.size() || snapshot_pending_) {
    if (snapshot_pending_) {
      absl::MutexLock lock(&hub_->mu_);
      Snapshot snap = hub_->TakeSnapshotLocked();
      snapshot_ = std::move(snap.events);
      snapshot_sequence_ = snap.sequence;
      snapshot_sent_ = 0;
      snapshot_pending_ = false;
      batch.snapshot_begin = true;
    }
    const size_t n = std::min(max_batch, snapshot_.size() - snapshot_sent_);
    batch.events.assign(snapshot_.begin() + static_cast<std::ptrdiff_t>(snapshot_sent_),
                        snapshot_.begin() + static_cast<std::ptrdiff_t>(snapshot_sent_ + n));
    snapshot_sent_ += n;
    batch.sequence_number = snapshot_sequence_;
    if (snapshot_sent_ == snapshot_.size()) {
      batch.snapshot_end = true;
      cursor_ = snapshot_sequence_;
      snapshot_.clear();
      snapshot_.shrink_to_fit();
      snapshot_sent_ = 0;
    }
    return std::optional<KvEventBatchView>(std::move(batch));
  }

  bool fell_behind = false;
  {
    absl::MutexLock lock(&hub_->mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(hub_->mu_) {
      return hub_->last_ > cursor_ || hub_->closed_;
    };
    hub_->mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
    if (hub_->last_ <= cursor_) {
      if (hub_->closed_) return absl::UnavailableError("WatchEvents: the daemon is shutting down");
      return std::optional<KvEventBatchView>();
    }
    fell_behind = cursor_ + 1 < hub_->OldestLocked();
    if (!fell_behind) {
      const uint64_t first = hub_->ring_.front().sequence_number;
      const size_t start = static_cast<size_t>(cursor_ + 1 - first);
      const size_t n = std::min(max_batch, hub_->ring_.size() - start);
      batch.events.assign(hub_->ring_.begin() + static_cast<std::ptrdiff_t>(start),
                          hub_->ring_.begin() + static_cast<std::ptrdiff_t>(start + n));
      cursor_ = batch.events.back().sequence_number;
      batch.sequence_number = cursor_;
    }
  }
  if (fell_behind) {
    // More than `history` events behind: resynchronize with a snapshot.
    snapshot_pending_ = true;
    return Next(timeout);
  }
  return std::optional<KvEventBatchView>(std::move(batch));
}

}  // namespace asymcache
