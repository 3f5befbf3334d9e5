// CacheDaemonState: the assembled core of one cache daemon — the objects the
// gRPC handlers adapt to, built from DaemonOptions in one place:
//   pool memory (host shm or CUDA) -> cost model (calibration file, on-start
//   GPU calibration or built-in) -> eviction policy -> KvCache -> agent pin
//   table -> KV event hub -> UCX transport + block transfer -> metrics.
// Periodic work (lease, export and pin expiry; gauges) runs in
// RunMaintenance(), called by the daemon's maintenance thread.
//
// Ownership: owns everything it lists. Thread-safety: the members are
// thread-safe objects; the state itself is immutable after Create().
#ifndef ASYMCACHE_SERVICES_DAEMON_DAEMON_STATE_H_
#define ASYMCACHE_SERVICES_DAEMON_DAEMON_STATE_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "cachecore/agent_pins.h"
#include "cachecore/clock.h"
#include "cachecore/cost_model.h"
#include "cachecore/kv_cache.h"
#include "services/common/metrics_exposer.h"
#include "services/daemon/block_transfer.h"
#include "services/daemon/daemon_metrics.h"
#include "services/daemon/daemon_options.h"
#include "services/daemon/event_hub.h"
#include "services/daemon/pool_memory.h"
#include "services/transport/block_transport.h"

namespace asymcache {

class CacheDaemonState {
 public:
  // Builds the core. Errors: INVALID_ARGUMENT (options, calibration file),
  // NOT_FOUND (calibration file missing), RESOURCE_EXHAUSTED (pool),
  // FAILED_PRECONDITION (cuda backend without a GPU), UNAVAILABLE (metrics port).
  static absl::StatusOr<std::unique_ptr<CacheDaemonState>> Create(const DaemonOptions& options);
  ~CacheDaemonState();

  // Expires leases, exports and agent pins; refreshes gauges.
  void RunMaintenance();

  const DaemonOptions& options() const { return options_; }
  const ModelConfig& model() const { return options_.model; }
  Clock& clock() const { return *clock_; }
  const CostModel& cost() const { return *cost_; }
  const CalibrationParams& calibration() const { return calibration_; }
  KvCache& cache() const { return *cache_; }
  AgentPinTable& pins() const { return *pins_; }
  KvEventHub& events() const { return *events_; }
  daemon::PoolMemory& pool() const { return *pool_; }
  BlockTransfer& transfer() const { return *transfer_; }
  // Null when metrics are disabled (metrics_port = -1).
  DaemonMetrics* metrics() const { return metrics_.get(); }
  int metrics_port() const { return exposer_ ? exposer_->port() : -1; }
  // Soft agent pins (DESIGN.md §3.5, AgentPinTable::ReleaseUnderPressure):
  // NoteBlocked records that a plan of `sequence` was refused for lack of
  // memory and returns how long its plans have been refused (zero the first
  // time); ClearBlocked forgets it once a plan succeeds. At most
  // kMaxBlockedSequences are remembered (past that the record restarts:
  // forgetting only shortens waits, so pins are released later, not wrongly).
  absl::Duration NoteBlocked(SequenceId sequence) ABSL_LOCKS_EXCLUDED(blocked_mu_);
  void ClearBlocked(SequenceId sequence) ABSL_LOCKS_EXCLUDED(blocked_mu_);
  static constexpr size_t kMaxBlockedSequences = 65536;

  // Unique per daemon run: lets event watchers notice a restart.
  const std::string& instance() const { return instance_; }
  absl::Time started() const { return started_; }

 private:
  explicit CacheDaemonState(const DaemonOptions& options);

  DaemonOptions options_;
  std::unique_ptr<Clock> owned_clock_;
  Clock* clock_ = nullptr;
  CalibrationParams calibration_;
  std::unique_ptr<CostModel> cost_;
  std::unique_ptr<daemon::PoolMemory> pool_;
  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<AgentPinTable> pins_;
  std::unique_ptr<KvEventHub> events_;
  std::unique_ptr<BlockTransport> transport_;
  std::unique_ptr<BlockTransfer> transfer_;
  std::unique_ptr<MetricsExposer> exposer_;
  std::unique_ptr<DaemonMetrics> metrics_;
  std::string instance_;
  absl::Time started_;
  int64_t evictions_seen_ = 0;  // maintenance thread only
  int64_t deferred_plans_seen_ = 0;  // maintenance thread only
  absl::Mutex blocked_mu_;
  absl::flat_hash_map<SequenceId, absl::Time> blocked_since_ ABSL_GUARDED_BY(blocked_mu_);
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_DAEMON_DAEMON_STATE_H_
