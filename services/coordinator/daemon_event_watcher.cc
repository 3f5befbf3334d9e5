#include "services/coordinator/daemon_event_watcher.h"

#include <algorithm>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/strings/str_cat.h"
#include "services/client/client.h"
#include "services/coordinator/coordinator_metrics.h"

namespace asymcache {

absl::Status DaemonEventWatcherOptions::Validate() const {
  if (member_id.empty()) return absl::InvalidArgumentError("DaemonEventWatcher: member_id is empty");
  if (address.empty()) return absl::InvalidArgumentError("DaemonEventWatcher: address is empty");
  if (backoff_initial <= absl::ZeroDuration() || backoff_max < backoff_initial ||
      backoff_max == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DaemonEventWatcher: backoff must satisfy 0 < initial (",
        absl::FormatDuration(backoff_initial), ") <= max (", absl::FormatDuration(backoff_max),
        ") < inf"));
  }
  if (connect_timeout <= absl::ZeroDuration() || connect_timeout == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("DaemonEventWatcher: connect_timeout must be > 0 and finite, got ",
                     absl::FormatDuration(connect_timeout)));
  }
  if (max_message_bytes <= 0) {
    return absl::InvalidArgumentError("DaemonEventWatcher: max_message_bytes must be positive");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DaemonEventWatcher>> DaemonEventWatcher::Start(
    DaemonEventWatcherOptions options, BlockLocationIndex* index, CoordinatorMetrics* metrics) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (index == nullptr) return absl::InvalidArgumentError("DaemonEventWatcher: index is null");
  if (options.slot >= static_cast<MemberSlot>(index->options().max_members)) {
    return absl::InvalidArgumentError(absl::StrCat("DaemonEventWatcher: slot ", options.slot,
                                                   " is outside the index's ",
                                                   index->options().max_members, " slots"));
  }
  std::unique_ptr<DaemonEventWatcher> watcher(
      new DaemonEventWatcher(std::move(options), index, metrics));
  DaemonEventWatcher* raw = watcher.get();
  watcher->thread_ = std::thread([raw] { raw->Run(); });
  return watcher;
}

DaemonEventWatcher::DaemonEventWatcher(DaemonEventWatcherOptions options, BlockLocationIndex* index,
                                       CoordinatorMetrics* metrics)
    : options_(std::move(options)), index_(index), metrics_(metrics) {}

DaemonEventWatcher::~DaemonEventWatcher() { Stop(); }

void DaemonEventWatcher::RequestStop() {
  absl::MutexLock lock(&mu_);
  stopping_ = true;
  if (stream_ != nullptr) stream_->Cancel();
}

void DaemonEventWatcher::Stop() {
  absl::MutexLock join_lock(&join_mu_);
  RequestStop();
  if (thread_.joinable()) thread_.join();
}

bool DaemonEventWatcher::stopping() const {
  absl::MutexLock lock(&mu_);
  return stopping_;
}

std::string DaemonEventWatcher::instance() const {
  absl::MutexLock lock(&mu_);
  return instance_;
}

absl::Status DaemonEventWatcher::last_error() const {
  absl::MutexLock lock(&mu_);
  return last_error_;
}

bool DaemonEventWatcher::SleepUnlessStopped(absl::Duration d) {
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(&stopping_), d);
  return !stopping_;
}

void DaemonEventWatcher::ApplyEvents(const std::vector<KvEvent>& events, bool snapshot) {
  const uint64_t applied = applied_.load();
  int64_t stored = 0;
  int64_t removed = 0;
  for (const KvEvent& e : events) {
    // A live event already applied (the resume re-delivers event N) is skipped.
    if (!snapshot && e.sequence_number != 0 && e.sequence_number <= applied) continue;
    if (e.kind == KvEvent::Kind::kStored) {
      index_->AddStored(options_.slot, e.hash, e.block, e.position);
      ++stored;
    } else {
      index_->ApplyRemoved(options_.slot, e.hash, e.block);
      ++removed;
    }
  }
  if (metrics_ != nullptr) {
    metrics_->AddKvEvents(KvEvent::Kind::kStored, stored);
    metrics_->AddKvEvents(KvEvent::Kind::kRemoved, removed);
  }
}

void DaemonEventWatcher::Run() {
  ClientOptions client_options;
  client_options.target = options_.address;
  client_options.max_message_bytes = options_.max_message_bytes;
  client_options.credentials = options_.credentials;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(client_options);
  if (!client.ok()) {
    absl::MutexLock lock(&mu_);
    last_error_ = client.status();
    ABSL_RAW_LOG(ERROR, "coordinator: cannot watch daemon '%s' at %s: %s",
                 options_.member_id.c_str(), options_.address.c_str(),
                 client.status().ToString().c_str());
    return;
  }

  absl::Duration backoff = options_.backoff_initial;
  bool need_snapshot = true;   // the next stream starts with a snapshot
  std::string seen_instance;   // the daemon run the index reflects
  bool first_stream = true;
  while (!stopping()) {
    if (!first_stream) {
      reconnects_.fetch_add(1);
      if (metrics_ != nullptr) metrics_->AddWatcherReconnect();
    }
    first_stream = false;

    WatchOptions watch;
    const uint64_t applied = applied_.load();
    // after_sequence 0 means "from now", so a resume point below 2 (an empty
    // or nearly empty daemon) takes the (tiny) snapshot instead.
    if (need_snapshot || applied < 2) {
      watch.snapshot = true;
    } else {
      watch.after_sequence = applied - 1;  // event `applied` comes back at once
    }
    // Registered before it connects: RequestStop() cancels the connect too.
    std::unique_ptr<EventStream> stream = (*client)->PrepareWatch(watch);
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) break;
      stream_ = stream.get();
    }
    bool resubscribe_now = false;
    bool delivered = false;
    absl::Status ended = stream->Open(options_.connect_timeout);
    if (ended.ok()) {
      bool in_snapshot = false;
      while (true) {
        absl::StatusOr<std::optional<KvEventBatch>> next = stream->Next();
        if (!next.ok()) {
          ended = next.status();
          break;
        }
        if (!next->has_value()) {
          ended = absl::UnavailableError("the daemon ended the event stream");
          break;
        }
        const KvEventBatch& batch = **next;
        delivered = true;
        connected_.store(true);
        if (!seen_instance.empty() && batch.daemon_instance != seen_instance &&
            !batch.snapshot_begin) {
          // The daemon restarted behind the same address: what the index
          // holds of it is gone, and these events are of another run.
          index_->RemoveMember(options_.slot);
          applied_.store(0);
          seen_instance = batch.daemon_instance;
          {
            absl::MutexLock lock(&mu_);
            instance_ = seen_instance;
          }
          need_snapshot = true;
          resubscribe_now = true;
          ended = absl::AbortedError("the daemon restarted (new daemon_instance)");
          break;
        }
        if (batch.daemon_instance != seen_instance) {
          seen_instance = batch.daemon_instance;
          absl::MutexLock lock(&mu_);
          instance_ = seen_instance;
        }
        if (batch.snapshot_begin) {
          index_->RemoveMember(options_.slot);
          in_snapshot = true;
        }
        ApplyEvents(batch.events, in_snapshot);
        if (batch.snapshot_end) {
          in_snapshot = false;
          snapshots_.fetch_add(1);
          if (metrics_ != nullptr) metrics_->AddSnapshot();
        }
        if (batch.snapshot_begin || batch.sequence_number > applied_.load()) {
          applied_.store(batch.sequence_number);
        }
        if (!in_snapshot) need_snapshot = false;
      }
      if (in_snapshot) need_snapshot = true;  // a partial snapshot is no view
    }
    {
      absl::MutexLock lock(&mu_);
      stream_ = nullptr;
    }
    stream.reset();
    connected_.store(false);
    {
      absl::MutexLock lock(&mu_);
      last_error_ = ended;
      if (stopping_) break;
    }
    if (resubscribe_now) {
      backoff = options_.backoff_initial;
      continue;
    }
    if (delivered) backoff = options_.backoff_initial;
    if (!SleepUnlessStopped(backoff)) break;
    backoff = std::min(backoff * 2, options_.backoff_max);
  }
  connected_.store(false);
}

}  // namespace asymcache
