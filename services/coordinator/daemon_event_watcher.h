// DaemonEventWatcher: follows one cache daemon's KV event stream
// (CacheDaemon.WatchEvents, cache_daemon.proto) and applies it to the
// coordinator's BlockLocationIndex under the daemon's member slot.
//
// Protocol (one thread per watched daemon):
//   * connect: WatchEvents(snapshot=true), opened with Client::PrepareWatch +
//     EventStream::Open: each attempt waits at most connect_timeout for the
//     channel (an address that drops connects fails it with
//     DEADLINE_EXCEEDED; a refused one at once with UNAVAILABLE), then the
//     backoff below. A snapshot (snapshot_begin ... snapshot_end) replaces
//     the daemon's entries: RemoveMember on its first batch, then AddStored
//     for every block.
//   * live events: STORED -> AddStored, REMOVED -> ApplyRemoved (the index
//     ignores a stale REMOVED that names another block than recorded).
//     Events at or below the applied sequence number are skipped, so a
//     batch delivered twice changes nothing.
//   * a broken stream: reconnect with exponential backoff (reset once a
//     stream delivers), resuming after the applied sequence number. The
//     resume asks for the events after N-1, so the daemon answers at once
//     with event N (already applied, skipped) and the stream is known to be
//     up; a resume point the daemon no longer holds gets a snapshot. A
//     stream that broke inside a snapshot starts over with a snapshot.
//   * a batch from another daemon_instance than the one seen before (the
//     daemon restarted behind the same address) that is not a snapshot:
//     drop the daemon's entries and resubscribe with a snapshot at once.
//   * Stop(): cancels the stream (EventStream::Cancel) and the backoff wait
//     and joins the thread. Prompt in every state (well under a second, no
//     network round trip): the stream is registered for cancellation before
//     it connects, a connecting Open() sees the cancel within 100 ms, a
//     blocked Next() at once. Safe to call under the caller's locks.
//
// Ownership: the index (and the metrics, when given) must outlive the
// watcher. The watcher writes only its own slot's entries.
// Thread-safety: the accessors and Stop() are thread-safe; Stop() must not
// be called from the watcher's own callbacks (there are none).
#ifndef ASYMCACHE_SERVICES_COORDINATOR_DAEMON_EVENT_WATCHER_H_
#define ASYMCACHE_SERVICES_COORDINATOR_DAEMON_EVENT_WATCHER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cachecore/block_location_index.h"
#include "cachecore/kv_cache.h"
#include "grpcpp/security/credentials.h"

namespace asymcache {

class EventStream;              // services/client/client.h
class CoordinatorMetrics;       // services/coordinator/coordinator_metrics.h

struct DaemonEventWatcherOptions {
  std::string member_id;        // for messages and metrics; required
  std::string address;          // the daemon's gRPC address (host:port); required
  MemberSlot slot = 0;          // the daemon's slot in the index
  // Reconnect backoff: first retry after backoff_initial, doubling up to
  // backoff_max (CoordinatorOptions::watch_backoff_*). > 0, initial <= max.
  absl::Duration backoff_initial = absl::Milliseconds(100);
  absl::Duration backoff_max = absl::Seconds(5);
  // Longest wait for one connect attempt (EventStream::Open), after which
  // the attempt fails (DEADLINE_EXCEEDED) and is retried after the backoff.
  // 5 s: a daemon in the cluster connects in milliseconds even on a loaded
  // node, and a dead address (a pod IP that drops connects) shows up as an
  // error well before gRPC's own 20 s connect timeout. > 0, finite.
  absl::Duration connect_timeout = absl::Seconds(5);
  // Largest event batch accepted (bytes). > 0.
  int max_message_bytes = 64 << 20;
  // Channel credentials of the stream (the coordinator's transport
  // security). nullptr = insecure (plaintext), the library default.
  std::shared_ptr<grpc::ChannelCredentials> credentials;

  absl::Status Validate() const;  // INVALID_ARGUMENT naming the field
};

class DaemonEventWatcher {
 public:
  // Starts the watcher thread. INVALID_ARGUMENT for bad options, a null
  // index or a slot outside the index.
  static absl::StatusOr<std::unique_ptr<DaemonEventWatcher>> Start(
      DaemonEventWatcherOptions options, BlockLocationIndex* index,
      CoordinatorMetrics* metrics = nullptr);
  ~DaemonEventWatcher();  // Stop()
  DaemonEventWatcher(const DaemonEventWatcher&) = delete;
  DaemonEventWatcher& operator=(const DaemonEventWatcher&) = delete;

  // Ends the stream and joins the thread. Idempotent. The daemon's entries
  // stay in the index (the caller drops them with RemoveMember).
  void Stop() ABSL_LOCKS_EXCLUDED(mu_, join_mu_);
  // Stop() without the join: cancels the stream (also one still connecting)
  // and the backoff wait and returns at once (stopping many watchers:
  // request all, then Stop each).
  void RequestStop() ABSL_LOCKS_EXCLUDED(mu_);

  const DaemonEventWatcherOptions& options() const { return options_; }
  // A stream is open and has delivered a batch.
  bool connected() const { return connected_.load(); }
  // The sequence number the index reflects (0 before the first snapshot).
  uint64_t applied_sequence() const { return applied_.load(); }
  // Streams opened after the first (reconnects and resubscriptions).
  int64_t reconnects() const { return reconnects_.load(); }
  // Snapshots applied.
  int64_t snapshots() const { return snapshots_.load(); }
  // The daemon run seen on the stream ("" before the first batch).
  std::string instance() const ABSL_LOCKS_EXCLUDED(mu_);
  // Why the last stream ended (OK while none has).
  absl::Status last_error() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  DaemonEventWatcher(DaemonEventWatcherOptions options, BlockLocationIndex* index,
                     CoordinatorMetrics* metrics);
  void Run();
  // Applies live events above the applied sequence number.
  void ApplyEvents(const std::vector<KvEvent>& events, bool snapshot);
  // Waits `d` or until Stop(); returns false when stopping.
  bool SleepUnlessStopped(absl::Duration d) ABSL_LOCKS_EXCLUDED(mu_);
  bool stopping() const ABSL_LOCKS_EXCLUDED(mu_);

  // Immutable after construction.
  const DaemonEventWatcherOptions options_;
  BlockLocationIndex* const index_;
  CoordinatorMetrics* const metrics_;

  std::atomic<bool> connected_{false};
  std::atomic<uint64_t> applied_{0};
  std::atomic<int64_t> reconnects_{0};
  std::atomic<int64_t> snapshots_{0};

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // The stream being opened or read (owned by Run); registered before it
  // connects so that RequestStop() can cancel the connect.
  EventStream* stream_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::string instance_ ABSL_GUARDED_BY(mu_);
  absl::Status last_error_ ABSL_GUARDED_BY(mu_);

  std::thread thread_;  // started last, joined by Stop()
  absl::Mutex join_mu_;  // serializes Stop()
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COORDINATOR_DAEMON_EVENT_WATCHER_H_
