// KvEventHub: the daemon's KV event stream for coordinators (WatchEvents).
//
// Publish() is fed by KvCache's event listener, in sequence-number order. The
// hub keeps (1) the last `history` events in a ring, so a watcher can resume
// after a sequence number, and (2) a mirror of the index (hash -> position
// and block of every stored, not yet removed block), so a snapshot and its
// sequence number are taken together under one lock. A REMOVED whose block is
// not the mirror's block for that hash is stale (a newer copy was stored
// meanwhile, see KvEvent) and leaves the mirror alone; it is still delivered,
// with its block id, so watchers apply the same rule.
//
// A Watcher reads batches: first the snapshot (when asked for, or when its
// resume point has left the ring), then live events in order. A watcher that
// falls more than `history` events behind is not dropped: it gets a fresh
// snapshot (its batches say so), which bounds memory per watcher to nothing
// beyond the shared ring.
//
// Thread-safety: thread-safe. Watchers may be read from any one thread each;
// Close() wakes every waiting watcher. The hub must outlive its watchers.
#ifndef ASYMCACHE_SERVICES_DAEMON_EVENT_HUB_H_
#define ASYMCACHE_SERVICES_DAEMON_EVENT_HUB_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cachecore/kv_cache.h"
#include "cachecore/types.h"

namespace asymcache {

struct KvEventHubOptions {
  int64_t history = 262144;        // events kept for resume (>= 1)
  int max_watchers = 64;           // concurrent watchers (>= 1)
  int64_t max_batch_events = 4096; // events per batch (>= 1)
  absl::Status Validate() const;
};

struct KvEventBatchView {
  bool snapshot_begin = false;
  bool snapshot_end = false;
  uint64_t sequence_number = 0;    // snapshot: state as of this event; live: last event in batch
  std::vector<KvEvent> events;     // snapshot events have sequence_number 0
};

class KvEventHub {
 public:
  class Watcher;

  explicit KvEventHub(KvEventHubOptions options);  // options must validate
  ~KvEventHub();
  KvEventHub(const KvEventHub&) = delete;
  KvEventHub& operator=(const KvEventHub&) = delete;

  // Called in sequence-number order (KvCache's listener guarantees it).
  void Publish(const KvEvent& event);

  // A new watcher. after_sequence = 0: live events from now on; otherwise
  // events after it (a snapshot instead if they left the ring or
  // after_sequence is in the future). snapshot = true: a snapshot first.
  // RESOURCE_EXHAUSTED at max_watchers; UNAVAILABLE after Close().
  absl::StatusOr<std::unique_ptr<Watcher>> Watch(uint64_t after_sequence, bool snapshot);

  // Ends every watcher: pending events are still delivered, then Next()
  // returns UNAVAILABLE. New Watch() calls fail.
  void Close();

  uint64_t last_sequence() const;
  int64_t indexed_blocks() const;  // size of the mirror
  int watchers() const;

 private:
  friend class Watcher;
  struct Snapshot {
    uint64_t sequence = 0;
    std::vector<KvEvent> events;
  };
  Snapshot TakeSnapshotLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Oldest sequence number still in the ring (last_ + 1 when empty).
  uint64_t OldestLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const KvEventHubOptions options_;
  mutable absl::Mutex mu_;
  std::deque<KvEvent> ring_ ABSL_GUARDED_BY(mu_);
  uint64_t last_ ABSL_GUARDED_BY(mu_) = 0;
  struct Stored {
    int64_t position = 0;
    BlockId block = kNoBlock;
  };
  absl::flat_hash_map<BlockHash, Stored> mirror_ ABSL_GUARDED_BY(mu_);
  int watchers_ ABSL_GUARDED_BY(mu_) = 0;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

class KvEventHub::Watcher {
 public:
  ~Watcher();
  Watcher(const Watcher&) = delete;
  Watcher& operator=(const Watcher&) = delete;

  // The next batch, waiting up to `timeout` for one: nullopt on timeout (the
  // caller checks for cancellation and calls again); UNAVAILABLE once the hub
  // is closed and everything published before Close() was delivered.
  absl::StatusOr<std::optional<KvEventBatchView>> Next(absl::Duration timeout);

  uint64_t cursor() const { return cursor_; }  // last sequence number delivered

 private:
  friend class KvEventHub;
  Watcher(KvEventHub* hub, uint64_t cursor, bool snapshot_pending);

  KvEventHub* const hub_;
  uint64_t cursor_;
  bool snapshot_pending_;
  // A snapshot being sent in batches.
  std::vector<KvEvent> snapshot_;
  size_t snapshot_sent_ = 0;
  uint64_t snapshot_sequence_ = 0;
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_DAEMON_EVENT_HUB_H_
