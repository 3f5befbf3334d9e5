// CoordinatorMetrics: the Prometheus metrics of the coordinator, behind a
// small typed API so that the service code never touches prometheus types.
//
// Families (all names asymcache_coordinator_*, base units, help text each):
//   asymcache_coordinator_routes_total{reason,mode}              counter
//   asymcache_coordinator_route_duration_seconds                 histogram, 5 µs .. 100 ms
//   asymcache_coordinator_rpc_duration_seconds{method,code}      histogram, 20 µs .. 1 s
//   asymcache_coordinator_ttft_relative_error                    histogram of
//       (reported - predicted) / reported from ReportTtft, -4 .. 1
//   asymcache_coordinator_ttft_reports_total                     counter
//   asymcache_coordinator_index_entries                          gauge ((hash, daemon) pairs)
//   asymcache_coordinator_index_dropped_stored_total             counter (index full)
//   asymcache_coordinator_index_stale_removed_total              counter (stale REMOVED ignored)
//   asymcache_coordinator_members{kind,role}                     gauge (registered role)
//   asymcache_coordinator_event_lag{member}                      gauge, per daemon: its last
//       KV event (from its heartbeat) minus the last one applied here
//   asymcache_coordinator_events_connected{member}               gauge, 1 while the stream is up
//   asymcache_coordinator_kv_events_applied_total{kind=stored|removed}  counter
//   asymcache_coordinator_snapshots_total                        counter
//   asymcache_coordinator_watcher_reconnects_total               counter
//   asymcache_coordinator_agent_jobs                             gauge (affinities held)
//   asymcache_coordinator_proxy_backpressure_pauses_total        counter: times a proxied
//       Generate stopped reading its worker because its client's queue passed
//       --proxy-max-buffered-bytes (generate_proxy.h)
// Every series of a fixed label domain (reasons × the configured mode, kinds
// × roles, event kinds) exists from the first scrape. Per-daemon series are
// created when the daemon is first seen and removed when it leaves
// (RemoveDaemon), so the label set stays bounded by the members. rpcs
// series are created on first use per (method, code): pass RPC method names
// only (a bounded set), never request data.
//
// Ownership: the registry must outlive the CoordinatorMetrics; one
// CoordinatorMetrics per registry.
// Thread-safety: thread-safe (prometheus-cpp metrics are; the series caches
// are guarded by mutexes).
#ifndef ASYMCACHE_SERVICES_COORDINATOR_COORDINATOR_METRICS_H_
#define ASYMCACHE_SERVICES_COORDINATOR_COORDINATOR_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "cachecore/kv_cache.h"
#include "cachecore/router.h"
#include "services/common/metric_families.h"
#include "services/coordinator/member_registry.h"

namespace asymcache {

// Members by (kind, registered role).
struct MemberCounts {
  // [kind: 0 daemon, 1 worker][role: 0 both, 1 prefill, 2 decode]
  std::array<std::array<int64_t, 3>, 2> by_kind_role{};
  void Add(MemberKind kind, MemberRole role);
};

class CoordinatorMetrics {
 public:
  static const std::vector<double>& RouteLatencyBuckets();   // 5e-6 .. 0.1
  static const std::vector<double>& RelativeErrorBuckets();  // -4 .. 1
  static const std::vector<double>& RpcLatencyBuckets();     // 2e-5 .. 1

  // Registers the families in `registry` for routing mode `mode`.
  // ALREADY_EXISTS when the registry holds one of the names as another type
  // (the registry is left as it was).
  static absl::StatusOr<std::unique_ptr<CoordinatorMetrics>> Create(prometheus::Registry& registry,
                                                                    RoutingMode mode);
  CoordinatorMetrics(const CoordinatorMetrics&) = delete;
  CoordinatorMetrics& operator=(const CoordinatorMetrics&) = delete;

  void ObserveRoute(RouteReason reason, absl::Duration latency);
  // One finished RPC (negative latency counts as 0).
  void ObserveRpc(absl::string_view method, absl::StatusCode code, absl::Duration latency);
  void ObserveTtftReport(double relative_error);

  // Index gauges; the two totals are the index's cumulative counters (the
  // Prometheus counters advance by the difference since the last call).
  void SetIndex(int64_t entries, int64_t dropped_stored_total, int64_t stale_removed_total)
      ABSL_LOCKS_EXCLUDED(index_mu_);
  void SetMembers(const MemberCounts& counts);
  void SetAgentJobs(int64_t jobs);
  // Per-daemon stream state (series created on first use).
  void SetDaemonEvents(absl::string_view member_id, int64_t lag, bool connected)
      ABSL_LOCKS_EXCLUDED(daemon_mu_);
  void RemoveDaemon(absl::string_view member_id) ABSL_LOCKS_EXCLUDED(daemon_mu_);

  void AddKvEvents(KvEvent::Kind kind, int64_t events);
  void AddSnapshot();
  void AddWatcherReconnect();
  // A proxied Generate paused its worker leg for backpressure.
  void AddProxyPause();

 private:
  // Registers every family through `families` (Create removes them again if
  // a registration throws).
  CoordinatorMetrics(MetricFamilyRegistrar& families, RoutingMode mode);
  struct DaemonSeries {
    prometheus::Gauge* lag = nullptr;
    prometheus::Gauge* connected = nullptr;
  };

  // Immutable after construction (pointees are thread-safe, owned by the registry).
  std::array<prometheus::Counter*, 7> routes_{};  // by RouteReason
  prometheus::Histogram* route_duration_ = nullptr;
  std::unique_ptr<RpcDurationHistograms> rpcs_;
  prometheus::Histogram* ttft_error_ = nullptr;
  prometheus::Counter* ttft_reports_ = nullptr;
  prometheus::Gauge* index_entries_ = nullptr;
  prometheus::Counter* index_dropped_ = nullptr;
  prometheus::Counter* index_stale_ = nullptr;
  std::array<std::array<prometheus::Gauge*, 3>, 2> members_{};
  prometheus::Family<prometheus::Gauge>* lag_family_ = nullptr;
  prometheus::Family<prometheus::Gauge>* connected_family_ = nullptr;
  std::array<prometheus::Counter*, 2> kv_events_{};
  prometheus::Counter* snapshots_ = nullptr;
  prometheus::Counter* reconnects_ = nullptr;
  prometheus::Gauge* agent_jobs_ = nullptr;
  prometheus::Counter* proxy_pauses_ = nullptr;

  absl::Mutex index_mu_;
  int64_t last_dropped_ ABSL_GUARDED_BY(index_mu_) = 0;
  int64_t last_stale_ ABSL_GUARDED_BY(index_mu_) = 0;
  absl::Mutex daemon_mu_;
  absl::flat_hash_map<std::string, DaemonSeries> daemons_ ABSL_GUARDED_BY(daemon_mu_);
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COORDINATOR_COORDINATOR_METRICS_H_
